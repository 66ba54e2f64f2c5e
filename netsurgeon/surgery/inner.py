"""Tensors of a layer whose dims hold its own units *inside* it, not on its rows or columns.

``nn.MultiheadAttention`` is one layer of width ``E`` whose ``in_proj_weight`` rows hold three
blocks of ``E`` (the ``q``, ``k``, ``v`` heads) and whose ``out_proj.weight`` columns hold one:
its handler lists them as ``inner_axes(module)``: ``(Axis, copies)`` pairs
(:mod:`netsurgeon.graph.ops.multihead`), or ``(Axis, copies, per)`` for a dim holding one entry
per ``per`` channels (one per head: Swin's relative position bias table, ``(L, heads)``).
Growing the layer by ``k`` inserts ``k`` (``k / per``) entries at the end of each block. New entries of an axis with ``fill=None`` are new units' weights (new heads),
drawn as the paper's init draws rows whatever the group's init (copies of old heads, read through
zero columns, would stay copies: the same gradient forever); their other grown dim, the new
columns, stays 0, and so does every other new entry. Zero columns are exact under every init:
whatever the new stream channels hold, the old heads do not read them. The checkpoint loader's
placeholder strategy fills them instead (zeros, overwritten by the checkpoint: nothing drawn).

Example, ``MultiheadAttention(8, 2)`` grown by 4: ``in_proj_weight`` ``(24, 8) -> (36, 12)``
(rows 8:12, 20:24, 32:36 drawn; columns 8:12 zero), ``out_proj.weight`` columns 8:12 zero.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from netsurgeon.graph import IndexMap, Insertion, Piece
from netsurgeon.graph.axes import module_tensor
from netsurgeon.surgery.index import grow
from netsurgeon.surgery.init import PaperInit

__all__ = ["inner_inserts", "stage_inner"]

Inserts = dict[int, list[Insertion]]
#: new heads are new, independent units whatever the group's init: drawn (Kaiming) so that they
#: differ from each other; read through zero columns, they change nothing
_HEADS = PaperInit()


def inner_inserts(
    handler, module: nn.Module, own: str, width: int, spec: Mapping[str, tuple[int, int, int]]
) -> dict[str, Inserts]:
    """``{tensor: {dim: insertions}}`` of the handler's inner axes (none if it has none)."""
    found: dict[str, Inserts] = {}
    for entry in getattr(handler, "inner_axes", lambda _: ())(module):
        axis, copies, per = (*entry, 1)[:3]
        index_map = IndexMap((Piece(own, 0, width // per),) * copies)
        found.setdefault(axis.tensor, {})[axis.dim] = (
            index_map.insertions(_per_entry(spec, own, per)) if own in spec else []
        )
    return found


def _per_entry(
    spec: Mapping[str, tuple[int, int, int]], own: str, per: int
) -> Mapping[str, tuple[int, int, int]]:
    """The growth of ``own`` counted in entries of ``per`` channels (one per head: a per-head
    table such as Swin's relative position bias); the group's unit makes the counts whole."""
    if per == 1:
        return spec
    width, k, splits = spec[own]
    if width % (per * splits) or k % (per * splits):
        raise RuntimeError(f"internal: growth {k} of {width} channels is not whole heads of {per}")
    return {own: (width // per, k // per, splits)}


def stage_inner(
    name: str, handler, module: nn.Module, inserts: Mapping[str, Inserts], staged, growth
) -> dict[str, torch.Tensor]:
    """The grown tensors with insertions that the rows and columns did not stage."""
    drawn = {(e[0].tensor, e[0].dim) for e in getattr(handler, "inner_axes", lambda _: ())(module)
             if e[0].fill is None}  # fmt: skip
    out: dict[str, torch.Tensor] = {}
    for tensor, dims in inserts.items():
        if tensor in staged or not any(dims.values()):
            continue
        new = grow(module_tensor(module, tensor).detach(), dims)
        for dim, ins in dims.items():
            if (tensor, dim) not in drawn or not ins:
                continue
            other = next((d for d in dims if d != dim), None)
            view = (
                new.movedim(dim, 0) if other is None else torch.movedim(new, (dim, other), (0, 1))
            )
            drawn_by = growth.strategy if getattr(growth.strategy, "placeholder", False) else _HEADS
            drawn_by.fill_rows(
                view,
                row_inserts=ins,
                col_inserts=[] if other is None else dims[other],
                fan_in=handler.fan_in(module),
                sources=None,
                generator=growth.generator,
            )
        out[tensor] = new
    return out
