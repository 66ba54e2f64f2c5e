"""The chunked parallel normal draw behind the paper init: deterministic and well scaled."""

from __future__ import annotations

import pytest
import torch

from netsurgeon.surgery.init import PARALLEL_NORMAL_MIN, normal_


def _draw(shape, threads: int, seed: int = 3, strided: bool = False) -> torch.Tensor:
    torch.set_num_threads(threads)
    base = torch.zeros(shape[0], shape[1] + (7 if strided else 0))
    out = base[:, : shape[1]]
    normal_(out, 0.5, torch.Generator().manual_seed(seed))
    if strided:
        assert torch.count_nonzero(base[:, shape[1] :]) == 0  # nothing written outside the view
    return out


SHAPE = (512, PARALLEL_NORMAL_MIN // 512 + 1)  # just above the parallel threshold


def test_large_draws_do_not_depend_on_the_thread_count_or_the_strides():
    one = _draw(SHAPE, threads=1)
    assert torch.equal(one, _draw(SHAPE, threads=2))
    assert torch.equal(one, _draw(SHAPE, threads=2, strided=True))


def test_large_draws_follow_the_generator_and_have_the_requested_scale():
    a, b = _draw(SHAPE, 2, seed=3), _draw(SHAPE, 2, seed=4)
    assert not torch.equal(a, b)
    assert a.std().item() == pytest.approx(0.5, rel=0.01)
    assert abs(a.mean().item()) < 0.005
    # chunks are independent streams: no two rows of different chunks coincide
    assert not torch.equal(a[0], a[-1])


def test_small_draws_use_the_generator_directly():
    out = torch.empty(4, 5)
    normal_(out, 1.0, torch.Generator().manual_seed(0))
    expected = torch.empty(4, 5).normal_(0.0, 1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, expected)
