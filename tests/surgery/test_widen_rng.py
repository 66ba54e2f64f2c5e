"""The chunked parallel normal draw behind the paper init: deterministic and well scaled."""

from __future__ import annotations

import pytest
import torch

import netsurgeon
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


def test_a_widen_large_enough_for_the_chunked_draw_gets_distinct_kaiming_rows():
    """A real ``widen`` whose new-row block takes the chunked path: every chunk its own stream.

    ``fan_in`` 2048 and 2100 new rows: 4.3M elements, above ``PARALLEL_NORMAL_MIN``, so the rows
    are drawn in several chunks. Chunks that reused one seed would repeat whole rows; Kaiming
    scale is ``sqrt(2 / fan_in)``, which 4.3M draws estimate to about 0.05 %.
    """
    fan_in, width, k = 2048, 4, 2100
    assert k * fan_in >= PARALLEL_NORMAL_MIN
    model = torch.nn.Sequential(
        torch.nn.Linear(fan_in, width), torch.nn.ReLU(), torch.nn.Linear(width, 2)
    )
    netsurgeon.widen(model, {"0": k}, generator=torch.Generator().manual_seed(0))
    rows = model[0].weight.detach()[width:]
    assert rows.shape == (k, fan_in)
    assert torch.unique(rows, dim=0).shape[0] == k  # no row repeats another (of another chunk)
    assert torch.unique(rows[:, 0]).numel() == k  # not even in their first element
    std = (2.0 / fan_in) ** 0.5
    assert rows.std().item() == pytest.approx(std, rel=0.01)
    assert abs(rows.mean().item()) < 0.005 * std  # ten standard errors of the mean
