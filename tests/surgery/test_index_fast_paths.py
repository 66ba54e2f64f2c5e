"""The block-view writes of :mod:`netsurgeon.surgery.index` equal element placement exactly.

Invariant: growing a tensor is a pure re-indexing. An old entry at index ``(i_0, ..., i_n)`` lands
at ``(kept_0[i_0], ..., kept_n[i_n])`` where ``kept_d`` is :func:`kept_index` of dim ``d`` (the
identity on dims that do not grow); every other entry is new and holds the fill. The reference
below writes exactly that, one old run at a time with ``narrow`` (the placement the fast paths
replaced); the fast paths split regular dims into ``(blocks, size + count)`` views instead. Both
must agree bit for bit, for any shape, any insertion sets on up to three dims, any strides of the
destination (a ``movedim`` view, channels_last) and either float dtype.
"""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from netsurgeon.graph import Insertion
from netsurgeon.surgery.index import (
    fill_new_,
    grow,
    kept_index,
    kept_part,
    place,
    place_new,
    regular,
    runs,
    slots,
)
from netsurgeon.surgery.tensors import memory_format_of


def _reference_place(old: torch.Tensor, new: torch.Tensor, inserts: dict) -> None:
    """Old entries into ``new``, one run of every grown dim at a time (the pre-view placement)."""
    dims = sorted(d for d, ins in inserts.items() if ins)
    if not dims:
        new.copy_(old)
        return
    d, rest = dims[0], {e: inserts[e] for e in dims[1:]}
    for start, stop, at in runs(old.shape[d], inserts[d]):
        _reference_place(old.narrow(d, start, stop - start), new.narrow(d, at, stop - start), rest)


def _grown_shape(shape: tuple[int, ...], inserts: dict) -> list[int]:
    out = list(shape)
    for d, ins in inserts.items():
        out[d] += sum(i.count for i in ins)
    return out


def _reference_grow(old: torch.Tensor, inserts: dict, fill: float) -> torch.Tensor:
    new = torch.full(_grown_shape(old.shape, inserts), fill, dtype=old.dtype)
    _reference_place(old, new, inserts)
    return new


@st.composite
def insertions(draw: st.DrawFn, size: int) -> list[Insertion]:
    """A regular pattern (``b`` equal blocks, ``c`` new entries after each) or any sorted set."""
    if draw(st.booleans()):
        b = draw(st.sampled_from([d for d in range(1, size + 1) if size % d == 0]))
        c = draw(st.integers(1, 3))
        return [Insertion((j + 1) * (size // b), c, "g", range(c), 1) for j in range(b)]
    positions = sorted(draw(st.lists(st.integers(0, size), min_size=1, max_size=4)))
    return [Insertion(p, draw(st.integers(1, 3)), "g", range(1), 1) for p in positions]


@st.composite
def cases(draw: st.DrawFn) -> tuple[torch.Tensor, dict[int, list[Insertion]]]:
    """A random tensor (float32 or float64, channels_last when 4-d and drawn so) and insertion
    sets on one to three of its dims."""
    shape = draw(st.lists(st.integers(1, 6), min_size=1, max_size=5))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    seed = draw(st.integers(0, 2**16))
    old = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    if len(shape) == 4 and draw(st.booleans()):
        old = old.contiguous(memory_format=torch.channels_last)
    dims = draw(st.lists(st.integers(0, len(shape) - 1), min_size=1, max_size=3, unique=True))
    return old, {d: draw(insertions(shape[d])) for d in dims}


@given(case=cases(), fill=st.sampled_from([0.0, 1.0, -2.5]))
def test_grow_equals_element_placement_and_keeps_the_memory_format(case, fill) -> None:
    old, inserts = case
    new = grow(old, inserts, fill=fill)
    torch.testing.assert_close(new, _reference_grow(old, inserts, fill), rtol=0, atol=0)
    assert memory_format_of(new) == memory_format_of(old)


def _is_new(size: int, ins: list[Insertion], dim: int, rank: int) -> torch.Tensor:
    """``True`` at the new positions of a grown dim, shaped to broadcast along ``dim``."""
    flags = torch.ones(size + sum(i.count for i in ins), dtype=torch.bool)
    flags[kept_index(size, ins)] = False
    return flags.view([-1 if e == dim else 1 for e in range(rank)])


@given(case=cases(), data=st.data())
def test_grow_leaves_a_written_dim_to_the_caller_and_nothing_else(case, data) -> None:
    """With ``written=d``, the entries new along ``d`` and old along every other grown dim are
    the caller's (left as they are); every other entry is what a plain grow gives."""
    old, inserts = case
    d = data.draw(st.sampled_from(sorted(inserts)), label="written")
    new = grow(old, inserts, fill=1.0, written=d)
    rank = old.dim()
    theirs = _is_new(old.shape[d], inserts[d], d, rank)
    for e, ins in inserts.items():
        if e != d:
            theirs = theirs & ~_is_new(old.shape[e], ins, e, rank)
    theirs = theirs.expand(new.shape)
    expected = _reference_grow(old, inserts, 1.0)
    assert memory_format_of(new) == memory_format_of(old)
    torch.testing.assert_close(new[~theirs], expected[~theirs], rtol=0, atol=0)


@given(case=cases(), data=st.data())
def test_place_into_a_permuted_view_writes_only_the_kept_positions(case, data) -> None:
    old, inserts = case
    order = data.draw(st.permutations(range(old.dim())), label="order")
    shape = _grown_shape(old.shape, inserts)
    storage = torch.full([shape[d] for d in order], 9.0, dtype=old.dtype)
    view = storage.permute([order.index(d) for d in range(old.dim())])  # a strided view
    expected = torch.full(shape, 9.0, dtype=old.dtype)
    _reference_place(old, expected, inserts)
    place(old, view, inserts)
    torch.testing.assert_close(view, expected, rtol=0, atol=0)


@given(case=cases())
def test_kept_part_gives_back_the_old_tensor(case) -> None:
    old, inserts = case
    torch.testing.assert_close(kept_part(grow(old, inserts, 7.0), inserts), old, rtol=0, atol=0)


@given(case=cases(), data=st.data())
def test_fill_new_sets_exactly_the_new_entries_of_one_dim(case, data) -> None:
    old, inserts = case
    dim = data.draw(st.sampled_from(sorted(inserts)), label="dim")
    new = grow(old, inserts, fill=0.0)
    expected = new.clone()
    for at, ins in slots(inserts[dim]):
        expected.narrow(dim, at, ins.count).fill_(3.0)
    fill_new_(new, dim, inserts[dim], 3.0)
    torch.testing.assert_close(new, expected, rtol=0, atol=0)


@given(case=cases(), data=st.data())
def test_place_new_writes_values_slot_by_slot_at_the_kept_positions_of_other_dims(
    case, data
) -> None:
    old, inserts = case
    dim = data.draw(st.sampled_from(sorted(inserts)), label="dim")
    others = {d: ins for d, ins in inserts.items() if d != dim}
    new = grow(old, inserts, fill=0.0)
    values_shape = list(old.shape)
    values_shape[dim] = sum(i.count for i in inserts[dim])
    values = torch.randn(values_shape, dtype=old.dtype)
    expected = new.clone()
    done = 0
    for at, ins in slots(inserts[dim]):
        part = values.narrow(dim, done, ins.count)
        _reference_place(part, expected.narrow(dim, at, ins.count), others)
        done += ins.count
    place_new(values, new, dim, inserts[dim], others)
    torch.testing.assert_close(new, expected, rtol=0, atol=0)


def test_regular_recognises_equal_blocks_and_nothing_else() -> None:
    def ins(*pairs: tuple[int, int]) -> list[Insertion]:
        return [Insertion(p, c, "g", range(c), 1) for p, c in pairs]

    assert regular(6, ins((6, 2))) == (1, 6, 2)
    assert regular(6, ins((3, 1), (6, 1))) == (2, 3, 1)
    assert regular(6, ins((2, 1), (4, 1), (6, 1))) == (3, 2, 1)
    assert regular(6, ins((3, 1), (6, 2))) is None  # unequal counts
    assert regular(6, ins((2, 1), (6, 1))) is None  # unequal blocks
    assert regular(6, ins((0, 1))) is None  # at the front
    assert regular(6, []) is None
