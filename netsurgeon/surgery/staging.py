"""Staging one module's growth: its handler says which tensor dims hold units, this fills them.

Nothing here knows a weight layout. A layer's handler gives its rows (output units) and columns
(input units) as :class:`~netsurgeon.graph.axes.Axis` records; the first row axis is the weight
that the init strategy fills. The strategy sees that weight as a view with the rows on dim 0 and
the columns on dim 1 (``(out, in, *rest)``), whatever the stored order (a ``ConvTranspose``'s
``(in, out, *k)``, an ``Embedding``'s ``(vocabulary, out)``), so one strategy serves every layer.
A follower's handler gives its per-channel tensors the same way. Every staged tensor is new: the
model is untouched until :meth:`Surgery.commit`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from netsurgeon.graph import ConsumerRef, FollowerRef, IndexMap, Insertion, LayerGraph, Piece
from netsurgeon.graph.axes import Axis, NormOf, module_tensor
from netsurgeon.surgery.ahead import ahead_for
from netsurgeon.surgery.constructions import fill_free_columns, weight_rows_by_scale
from netsurgeon.surgery.index import added, grow, grown_size, slots
from netsurgeon.surgery.init import InitStrategy, PaperInit
from netsurgeon.surgery.inner import inner_inserts, stage_inner
from netsurgeon.surgery.tensors import like_format, replace_tensor_

__all__ = [
    "AttrChange",
    "Growth",
    "Surgery",
    "TensorChange",
    "stage_follower",
    "stage_layer",
]

Inserts = dict[int, list[Insertion]]


@dataclass(frozen=True)
class TensorChange:
    """One parameter or buffer and its staged value; ``inserts`` grow its grad and state too."""

    name: str
    tensor: torch.Tensor
    new: torch.Tensor
    inserts: Mapping[int, Sequence[Insertion]]
    #: the factor the old entries' gradient takes (a padded norm's rescaled weight): ``.grad``
    #: and the optimizer's moments are rescaled with it
    grad_scale: float = 1.0


@dataclass(frozen=True)
class AttrChange:
    """A size attribute of a module (``out_channels``, ``num_features``, ``groups``, ...), or a
    plain tensor attribute derived from staged tensors (a legacy weight norm's ``weight``)."""

    module: nn.Module
    attr: str
    value: int | torch.Tensor


@dataclass
class Surgery:
    """Everything a widening will change, computed but not yet applied (typed records)."""

    tensors: list[TensorChange] = field(default_factory=list)
    attrs: list[AttrChange] = field(default_factory=list)
    optimizer_state: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = field(
        default_factory=list
    )

    def new_shapes(self) -> dict[str, tuple[int, ...]]:
        return {c.name: tuple(c.new.shape) for c in self.tensors}

    def commit(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Apply the staged changes. Nothing here validates or allocates beyond ``.grad``."""
        for c in self.tensors:
            replace_tensor_(c.tensor, c.new, lambda g, c=c: _scaled(grow(g, c.inserts), c))
        for a in self.attrs:
            setattr(a.module, a.attr, a.value)
        if optimizer is not None:
            for param, state in self.optimizer_state:
                optimizer.state[param].update(state)


def _scaled(grad: torch.Tensor, change: TensorChange) -> torch.Tensor:
    """A grown ``.grad`` (new entries 0) with its old entries times ``change.grad_scale``."""
    return grad if change.grad_scale == 1.0 else grad.mul_(change.grad_scale)


@dataclass(frozen=True)
class Growth:
    """The plan as every module's staging reads it.

    Attributes:
        spec: ``{group: (width, k, blocks)}`` for :meth:`IndexMap.insertions`.
        sources: ``{group: old channel of each new channel}`` (the strategy's).
        widths: ``{group: old width}``.
        strategy: the init strategy.
        generator: random source for new entries.
        constructions: ``{group: construction}`` of the planned groups (consumers reading a
            padded group's zero entries get random columns).
        row_scales: ``{producer: layer scale tensor}`` for mean-padded producers whose output a
            layer scale multiplies (their new rows are weighted by it).
        ahead: a :class:`~netsurgeon.surgery.ahead.DrawAhead` for plain layers' rows, or ``None``.
    """

    spec: Mapping[str, tuple[int, int, int]]
    sources: Mapping[str, torch.Tensor | None]
    widths: Mapping[str, int]
    strategy: InitStrategy
    generator: torch.Generator | None
    constructions: Mapping[str, str] = field(default_factory=dict)
    row_scales: Mapping[str, torch.Tensor] = field(default_factory=dict)
    #: where the layers' drawn rows may go (:mod:`netsurgeon.surgery.ahead`), or ``None``
    ahead: Any = field(default=None, repr=False, compare=False)
    _found: dict[IndexMap, list[Insertion]] = field(default_factory=dict, repr=False, compare=False)

    def insertions(self, index_map: IndexMap) -> list[Insertion]:
        """``index_map.insertions(spec)``, computed once per distinct map (a group's followers
        and consumers mostly read it through equal maps: one per depthwise conv of a stream)."""
        found = self._found.get(index_map)
        if found is None:
            found = self._found[index_map] = index_map.insertions(self.spec)
        return found


def stage_layer(
    graph: LayerGraph, name: str, own: str, consumer: ConsumerRef | None, growth: Growth
) -> Surgery:
    """Every tensor and size attribute of layer ``name`` under the plan (nothing is modified).

    Args:
        own: the group ``name`` produces into (its rows grow when it is in the plan).
        consumer: how ``name`` reads the growing groups (its columns), or ``None``.
    """
    module = graph.module(name)
    handler = graph.registry.for_module(module)
    old_out = handler.out_width(module)
    group = graph.group_of(name)
    rows_each = group.rows_per_channel(name)  # grouped-query attention's q projection
    mine = getattr(growth.strategy, "by_group", {}).get(own, growth.strategy)  # PerGroupInit
    own_map = IndexMap((Piece(own, 0, old_out // rows_each, rows_each),))
    rows = growth.insertions(own_map) if own in growth.spec else []
    cols = growth.insertions(consumer.index_map) if consumer is not None else []
    old_in = handler.in_width(module) if handler.in_attr else 0
    row_axes, col_axes = handler.rows(module), handler.columns(module)
    inserts = _inserts(row_axes, rows, old_out, handler.conv_groups(module))
    for tensor, dims in _inserts(col_axes, cols, old_in, handler.conv_groups(module)).items():
        inserts.setdefault(tensor, {}).update(dims)
    for tensor, dims in inner_inserts(handler, module, own, old_out, growth.spec).items():
        inserts.setdefault(tensor, {}).update(dims)  # MultiheadAttention's heads (surgery.inner)
    main = row_axes[0]
    column = next((a for a in col_axes if a.tensor == main.tensor), None)
    ahead = ahead_for(growth, handler, module, name, consumer, row_axes)  # waits unless plain
    keep = any(isinstance(a.fill, NormOf) for a in row_axes)  # weight norm: g reads the rows
    new, pre, post = _stage_weight(
        module, handler, (main, column, keep), inserts, consumer, (own, mine, ahead), growth
    )
    staged = {main.tensor: new}
    for axis in row_axes[1:]:
        dims = inserts[axis.tensor]
        if isinstance(axis.fill, NormOf):
            staged[axis.tensor] = _stage_norms(
                module, axis, dims[axis.dim], pre, post, own_map, growth
            )
        elif any(dims.values()):
            staged[axis.tensor] = _stage_entries(module, axis, dims[axis.dim], own_map, growth)
    staged.update(stage_inner(name, handler, module, inserts, staged, growth))
    if rows and name in growth.row_scales:
        weight_rows_by_scale(staged, row_axes, rows, old_out, growth.row_scales[name], name)
    handler.fill_new_units(module, staged, rows)
    surgery = Surgery()
    for tensor, value in staged.items():
        old = module_tensor(module, tensor)
        surgery.tensors.append(
            TensorChange(f"{name}.{tensor}", old, like_format(value, old), inserts[tensor])
        )
    sizes = handler.size_attrs(
        module, out_width=grown_size(old_out, rows), in_width=grown_size(old_in, cols)
    )
    surgery.attrs.extend(_changed(module, sizes))
    derived = handler.derived_attrs(module, staged).items()
    surgery.attrs.extend(AttrChange(module, attr, value) for attr, value in derived)
    return surgery


def _inserts(
    axes: Sequence[Axis], found: list[Insertion], size: int, groups: int
) -> dict[str, Inserts]:
    """``{tensor: {dim: insertions}}``; a per-group dim keeps the first conv group's insertions."""
    out: dict[str, Inserts] = {}
    for axis in axes:
        ins = [i for i in found if i.position <= size // groups] if axis.per_group else found
        out.setdefault(axis.tensor, {})[axis.dim] = ins
    return out


def _stage_weight(module, handler, axes, inserts, consumer, own_and_init, growth):
    """The grown weight, and (with a :class:`NormOf` row) its rows-first view before/after columns.

    The strategy fills the new rows first, then the new columns: a copied row is split along with
    its source, and weight norm's ``g`` can follow what the columns did to each ``v`` row. The
    paper's rows are drawn over every old column, so the new rows are not zeroed first.
    """
    (main, column, keep), (own, mine, ahead) = axes, own_and_init
    old = module_tensor(module, main.tensor)
    dims = inserts[main.tensor]
    drawn = dims[main.dim] and type(mine).fill_rows is PaperInit.fill_rows
    new = grow(old.detach(), dims, written=main.dim if drawn else None)
    if column is None:
        view = new.movedim(main.dim, 0)
    else:
        view = torch.movedim(new, (main.dim, column.dim), (0, 1))
    row_ins, col_ins = dims[main.dim], dims[column.dim] if column is not None else []
    strategy = growth.strategy
    if row_ins:
        fill = partial(
            strategy.fill_rows,
            view,
            row_inserts=row_ins,
            col_inserts=col_ins,
            fan_in=handler.fan_in(module),
            sources=growth.sources[own],
            generator=growth.generator,
        )
        if ahead is not None:
            ahead.submit(fill)
        else:
            fill()
    pre = view.clone() if keep else None
    if col_ins and not column.per_group:  # a grouped consumer's new columns stay zero
        strategy.fill_columns(
            view,
            index_map=consumer.index_map,
            inserts=col_ins,
            sources=growth.sources,
            widths=growth.widths,
            generator=growth.generator,
        )
        if consumer.zero_input:
            fill_free_columns(view, col_ins, consumer, growth.constructions, growth.generator)
    return new, pre, view


def _stage_entries(module, axis, ins, index_map, growth, fill=None) -> torch.Tensor:
    """A per-unit tensor grown along ``axis.dim``, new entries as the strategy fills them."""
    value = axis.fill if fill is None else fill
    old = module_tensor(module, axis.tensor).detach()
    if type(growth.strategy).fill_entries is PaperInit.fill_entries and _number(value):
        return grow(old, {axis.dim: ins}, fill=value)  # the paper's neutral value, written once
    new = grow(old, {axis.dim: ins})
    growth.strategy.fill_entries(
        new,
        dim=axis.dim,
        index_map=index_map,
        inserts=ins,
        fill=value,
        sources=growth.sources,
        generator=growth.generator,
    )
    return new


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _stage_norms(module, axis, ins, pre, post, index_map, growth) -> torch.Tensor:
    """Weight norm's ``g``: new units get their ``v`` row's norm; rows whose ``v`` the columns
    changed are rescaled by ``||v_after|| / ||v_before||``, so ``g * v / ||v||`` is the weight the
    strategy wrote (bit-identical where nothing changed)."""
    norms = [pre.narrow(0, at, i.count).flatten(1).norm(dim=1) for at, i in slots(ins)]
    fill = torch.cat(norms) if norms else pre.new_zeros(0)
    new = _stage_entries(module, axis, ins, index_map, growth, fill=fill)
    changed = (pre != post).flatten(1).any(dim=1)
    before, after = pre.flatten(1).norm(dim=1), post.flatten(1).norm(dim=1)
    scale = torch.where(changed & (before > 0), after / before, torch.ones_like(before))
    rows = new.movedim(axis.dim, 0)
    rows.copy_(rows * scale.view(-1, *[1] * (rows.dim() - 1)))
    return new


def _changed(module: nn.Module, sizes: Mapping[str, int]) -> list[AttrChange]:
    """The size attributes that change; a dotted name is a submodule's (``"qkv.in_features"``)."""
    found = []
    for name, value in sizes.items():
        path, _, attr = name.rpartition(".")
        owner = module.get_submodule(path) if path else module
        if getattr(owner, attr) != value:
            found.append(AttrChange(owner, attr, value))
    return found


def stage_follower(graph: LayerGraph, follower: FollowerRef, growth: Growth) -> Surgery:
    """Every tensor and size attribute of a follower module or parameter under the plan."""
    surgery = Surgery()
    ins = growth.insertions(follower.index_map)
    if not ins:
        return surgery
    if follower.kind == "parameter":
        owner, _, attr = follower.name.rpartition(".")
        module = graph.model.get_submodule(owner) if owner else graph.model
        axes, prefix = (Axis(attr, follower.dim, follower.fill),), owner
    else:
        module = graph.module(follower.name)
        handler = graph.registry.for_module(module)
        axes, prefix = handler.entries(module), follower.name
    for axis in axes:
        old = module_tensor(module, axis.tensor)
        new = _stage_entries(module, axis, ins, follower.index_map, growth)
        name = f"{prefix}.{axis.tensor}" if prefix else axis.tensor
        surgery.tensors.append(TensorChange(name, old, like_format(new, old), {axis.dim: ins}))
    if follower.kind == "module":
        attrs = handler.follower_attrs(module, added(ins))
        surgery.attrs.extend(_changed(module, attrs))
    return surgery
