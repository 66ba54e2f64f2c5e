"""Memory for a widening (``netsurgeon.surgery.memory``): what it hands out, not how fast.

Invariants: :func:`empty` gives what ``torch.empty`` gives (shape, dtype, device, memory format,
its own storage), whether or not the huge-page advice is taken; inside :func:`scratch_space`,
:func:`scratch` reuses one buffer (grown to the largest request), outside it and after it each
call is a fresh tensor; a widening's tensors own their storage (no staged tensor is a view of the
scratch buffer).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import netsurgeon
from netsurgeon.surgery import memory
from netsurgeon.surgery.memory import empty, scratch, scratch_space


@pytest.mark.parametrize("numel", [10, memory.HUGE_PAGE, 3 * memory.HUGE_PAGE + 7])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_empty_is_torch_empty_whatever_its_size(numel: int, fmt: torch.memory_format) -> None:
    shape = (numel, 1, 1, 1)
    t = empty(shape, dtype=torch.float32, device=torch.device("cpu"), memory_format=fmt)
    assert t.shape == shape and t.dtype == torch.float32 and t.device.type == "cpu"
    assert t.is_contiguous(memory_format=fmt)
    t.fill_(3.0)  # every page writable, after the advice
    assert t.untyped_storage().nbytes() == numel * 4
    assert torch.equal(t, torch.full(shape, 3.0))


def test_huge_page_advice_covers_only_whole_huge_pages_inside_the_tensor(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(memory, "_madvise", lambda: lambda *a: calls.append(a) or 0)
    page = memory.HUGE_PAGE
    memory._advise_huge(page + 100, 3 * page)  # [page + 100, 4 page + 100)
    assert calls == [(2 * page, 2 * page, memory._MADV_HUGEPAGE)]
    calls.clear()
    memory._advise_huge(page + 100, page)  # no whole huge page inside
    assert calls == []


@given(st.lists(st.lists(st.integers(1, 9), min_size=1, max_size=3), min_size=1, max_size=6))
def test_scratch_reuses_one_buffer_inside_its_space_only(shapes: list[list[int]]) -> None:
    like = torch.zeros(1, dtype=torch.float64)
    with scratch_space():
        views = [scratch(s, like) for s in shapes]
        largest = max(v.numel() for v in views)
        last = views[-1]
        assert last.untyped_storage().nbytes() >= largest * 8
        assert len({v.untyped_storage().data_ptr() for v in views}) <= len(views)
        if len(views) > 1 and views[1].numel() <= views[0].numel():
            assert views[1].data_ptr() == views[0].data_ptr()
        for v, s in zip(views, shapes, strict=True):
            assert v.shape == tuple(s) and v.dtype == torch.float64 and v.is_contiguous()
    outside = [scratch(s, like) for s in shapes[:2]]
    if len(outside) == 2:
        assert outside[0].data_ptr() != outside[1].data_ptr()


def test_a_widening_leaves_no_tensor_on_the_scratch_buffer() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))
    model.eval()
    x = torch.randn(2, 3, 9, 9)
    before = model(x)
    netsurgeon.widen(model, {"0": 4})
    storages = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    assert len(storages) == len([*model.parameters(), *model.buffers()])
    assert torch.allclose(model(x), before, atol=1e-5)
