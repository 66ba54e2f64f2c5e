"""The vectorised init strategies write what the per-channel loops wrote, bit for bit.

Invariant: ``"paper"`` and ``"net2net"`` are functions of the old tensors and the generator's
stream. Batching their writes (one draw buffer for the new rows, one gather and one scatter per
group for net2net's column split) changes neither the draws nor their order (a layer's new rows
and a depthwise filter's new entries are one draw each, in order, in both), so a widening with
the strategies below (the per-slot, per-channel loops the batched code replaced, written on
:func:`_reference_place`) and one with the built-in strategies give identical tensors: weights,
buffers, ``.grad`` and AdamW state, on models with concatenations (uneven insertions), grouped and
depthwise convolutions, chunks and channels_last weights.
"""

from __future__ import annotations

import contextlib
import copy
import math
from unittest import mock

import pytest
import torch
from coupled_models import DagSpec
from hypothesis import given
from hypothesis import strategies as st
from test_index_fast_paths import _reference_place

import netsurgeon
from netsurgeon.surgery.index import kept_index, slots
from netsurgeon.surgery.init import Net2NetInit, PaperInit, normal_


class _LoopPaper(PaperInit):
    def fill_rows(self, weight, *, row_inserts, col_inserts, fan_in, sources, generator):
        std = math.sqrt(2.0 / fan_in)
        old_in = weight.shape[1] - sum(i.count for i in col_inserts)
        new_rows = sum(i.count for i in row_inserts)
        draw = weight.new_empty((new_rows, old_in, *weight.shape[2:]))
        normal_(draw, std, generator)  # one draw for every new row, in order
        done = 0
        for at, ins in slots(row_inserts):
            rows = weight.narrow(0, at, ins.count)
            _reference_place(draw.narrow(0, done, ins.count), rows, {1: col_inserts})
            done += ins.count

    def fill_entries(self, tensor, *, dim, index_map, inserts, fill, sources, generator):
        if fill is None:  # one draw for every new entry, in order
            shape = list(tensor.shape)
            shape[dim] = sum(i.count for i in inserts)
            fill = tensor.new_empty(shape)
            normal_(fill, math.sqrt(2.0 / math.prod(tensor.shape[dim + 1 :])), generator)
        done = 0
        for at, ins in slots(inserts):
            entries = tensor.narrow(dim, at, ins.count)
            if isinstance(fill, torch.Tensor) and fill.dim() == tensor.dim():
                entries.copy_(fill.narrow(dim, done, ins.count))
            elif isinstance(fill, torch.Tensor):
                values = fill[done : done + ins.count].to(entries.dtype)
                shape = [ins.count if d == dim else 1 for d in range(entries.dim())]
                entries.copy_(values.view(*shape))
            else:
                entries.fill_(fill)
            done += ins.count


def _entries_in_piece(index_map, ins, channel, kept):
    for offset, piece in index_map.offsets():
        end = offset + piece.entries
        inside = piece.start <= channel < piece.stop
        if piece.group == ins.group and offset < ins.position <= end and inside:
            first = offset + (channel - piece.start) * piece.per_channel
            return kept[first : first + piece.per_channel]
    first_entries = index_map.entries_of(ins.group, channel)[: ins.per_channel]
    return kept[torch.tensor(first_entries, dtype=torch.long)]


class _LoopNet2Net(Net2NetInit):
    def fill_columns(self, weight, *, index_map, inserts, sources, widths, generator):
        kept = kept_index(index_map.size, inserts)
        added = {id(ins): at for at, ins in slots(inserts)}
        originals = weight.clone()
        for group in index_map.groups:
            source = sources.get(group)
            if source is None:
                continue
            width = widths[group]
            fraction, copies = self._shares(width, source, generator)
            fraction = fraction.to(weight.dtype)
            for offset, piece in index_map.offsets():
                if piece.group != group:
                    continue
                m = piece.per_channel
                for c in range(piece.start, piece.stop):
                    if copies[c] > 1:
                        cols = kept[offset + (c - piece.start) * m :][:m]
                        weight[:, cols] = originals[:, cols] * fraction[c]
            for ins in (i for i in inserts if i.group == group):
                at = added[id(ins)]
                for n, i in enumerate(ins.new_channels):
                    cols = _entries_in_piece(index_map, ins, int(source[i]), kept)
                    dst = slice(at + n * ins.per_channel, at + (n + 1) * ins.per_channel)
                    weight[:, dst] = originals[:, cols] * fraction[width + i]

    def fill_rows(self, weight, *, row_inserts, col_inserts, fan_in, sources, generator):
        kept = kept_index(weight.shape[0] - sum(i.count for i in row_inserts), row_inserts)
        for at, ins in slots(row_inserts):
            weight.narrow(0, at, ins.count).copy_(weight[kept[sources[list(ins.new_channels)]]])

    def fill_entries(self, tensor, *, dim, index_map, inserts, fill, sources, generator):
        kept = kept_index(index_map.size, inserts)
        for at, ins in slots(inserts):
            for n, i in enumerate(ins.new_channels):
                cols = _entries_in_piece(index_map, ins, int(sources[ins.group][i]), kept)
                dst = tensor.narrow(dim, at + n * ins.per_channel, ins.per_channel)
                dst.copy_(tensor.index_select(dim, cols))


SPECS = {
    "concat and dense": DagSpec(
        2,
        4,
        "relu",
        (("branches", "relu", (3, 5)), ("dense", "gelu", 3), ("transition", "relu", 6)),
        ("mlp", "relu", 5, 3),
    ),
    "grouped and depthwise": DagSpec(
        3,
        8,
        "silu",
        (("grouped", "relu", 4, 2, 3), ("dwsep", "relu", 8), ("se", "relu", 3)),
        ("sequence", "gelu", 6, 5, 2),
    ),
    "chunks and residuals": DagSpec(
        2,
        6,
        "relu",
        (("chunked", "relu", 2, 3, (4, 5)), ("residual", "relu", 4, 0), ("layerscale", "tanh")),
        ("mlp", "relu", 4, 2),
    ),
}


def _state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = dict(model.state_dict())
    for name, p in model.named_parameters():
        if p.grad is not None:
            out[f"{name}.grad"] = p.grad
        out.update({f"{name}.{k}": v for k, v in opt.state[p].items()})
    return out


def draw_model_and_plan(name: str, seed: int, data) -> tuple[torch.nn.Module, dict[str, int]]:
    """Model ``name`` (float32 or float64, maybe channels_last) and a plan over some of its
    widenable groups, 1 to 3 granularities each."""
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]), label="dtype")
    model = SPECS[name].build(seed % 1000, dtype)
    if data.draw(st.booleans(), label="channels_last"):
        model = model.to(memory_format=torch.channels_last)
    groups = [g for g in netsurgeon.trace(model).groups if g.widenable]
    chosen = data.draw(
        st.lists(st.sampled_from(groups), min_size=1, unique_by=lambda g: g.name), label="groups"
    )
    plan = {g.name: g.granularity * data.draw(st.integers(1, 3), label=g.name) for g in chosen}
    return model, plan


def _widen(model, plan, init, seed, poison=False):
    model = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters())
    for i, p in enumerate(model.parameters()):
        p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(i), dtype=p.dtype)
    opt.step()
    for p in list(model.parameters())[::2]:
        p.grad = None
    generator = torch.Generator().manual_seed(seed)
    with mock.patch.object(torch, "empty", _nan_empty) if poison else contextlib.nullcontext():
        netsurgeon.widen(model, plan, optimizer=opt, generator=generator, init=init)
    return _state(model, opt)


_EMPTY = torch.empty


def _nan_empty(*args, **kwargs) -> torch.Tensor:
    """``torch.empty`` holding NaN (or -7): an entry a widening does not write shows."""
    new = _EMPTY(*args, **kwargs)
    return new.fill_(math.nan if new.is_floating_point() else -7)


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize(
    ("fast", "loop"), [("paper", _LoopPaper), ("net2net", _LoopNet2Net)], ids=["paper", "net2net"]
)
@given(seed=st.integers(0, 2**31 - 1), data=st.data())
def test_batched_strategies_write_what_the_per_channel_loops_wrote(
    name: str, fast: str, loop: type, seed: int, data: st.DataObject
) -> None:
    model, plan = draw_model_and_plan(name, seed, data)
    expected = _widen(model, plan, loop(), seed)
    # new memory poisoned: the fast paths leave the zero fill out where they write the entries
    poison = data.draw(st.booleans(), label="poison")
    found = _widen(model, plan, fast, seed, poison=poison)
    assert found.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(found[key], value, rtol=0, atol=0, msg=key)
        assert found[key].stride() == value.stride(), key
