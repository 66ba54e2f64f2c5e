"""Handlers for ops that give a tensor back a shape: ``unflatten`` and ``reshape_as``.

``x.unflatten(dim, sizes)`` (and ``nn.Unflatten``) splits one dim. Splitting another dim only
moves the channel index. Splitting the channel dim is exact only as ``(-1, *trailing)`` where the
trailing sizes divide the entries each channel owns (what a flatten merged into it: the factor),
so the channels stay whole and their count is left to the tensor; literal channel counts (heads)
block. ``x.reshape_as(y)`` / ``view_as(y)`` is exact when ``x`` and ``y`` carry the same channels
the same way; their groups then join, since ``y``'s shape must keep matching ``x``'s entries.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn

from netsurgeon.graph.layout import Layout
from netsurgeon.graph.nodes import first_layout, node_arg
from netsurgeon.graph.ops.factories import size_source
from netsurgeon.graph.registry import OpHandler, register_function, register_method, register_module

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext

__all__ = ["unflatten_flow"]


@register_method("reshape_as", "view_as")
class ReshapeAsHandler(OpHandler):
    """``x.reshape_as(y)``: exact when ``x`` and ``y`` carry the same channels the same way.

    Then ``y``'s shape follows the same widths, and the result has ``y``'s layout (their groups
    join). Without shapes, the two layouts must be the same; with them, each channel must own the
    same run of entries in both (the same leading size, the same entries per channel).
    """

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        source, target = node.args[0], node_arg(node, 1, "other", None)
        a, b = ctx.layout(source), ctx.layout(target)
        label = ctx.op_name(node)
        if a is None or b is None:
            ctx.block(
                node,
                a or b,
                f"{label} ties these channels to a tensor whose shape does not follow them",
            )
            return None
        if a.replace(segments=()) == b.replace(segments=()):
            return ctx.join(node, [source, target], label)
        before, after = ctx.shape_of(source), ctx.shape_of(target)
        if before is None or after is None:
            ctx.unknown(node, f"{label} between tensors laid out differently, of unknown shapes")
        if not self._same_runs(a, b, before, after):
            ctx.block(
                node,
                [a, b],
                f"{label} maps {ctx.describe(a)} onto {ctx.describe(b)}: the channels do not own "
                "the same entries in both",
            )
            return None
        for x, y in zip(a.segments, b.segments, strict=True):
            if x.group is not None and y.group is not None:
                ctx.union(x.group, y.group)
        return b.with_path(label)

    @staticmethod
    def _same_runs(a: Layout, b: Layout, before: Any, after: Any) -> bool:
        ca, cb = a.normalized_dim(), b.normalized_dim()
        if before is None or after is None or ca is None or cb is None:
            return False
        if a.factor is None or b.factor is None or len(a.segments) != len(b.segments):
            return False
        if any(
            x.channels != y.channels or x.multiplicity != y.multiplicity
            for x, y in zip(a.segments, b.segments, strict=True)
        ):
            return False
        return math.prod(before[:ca]) == math.prod(after[:cb]) and a.factor * math.prod(
            before[ca + 1 :]
        ) == b.factor * math.prod(after[cb + 1 :])


@register_function(torch.unflatten)
@register_method("unflatten")
class UnflattenHandler(OpHandler):
    """``x.unflatten(dim, sizes)``: split one dim into several."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        dim = node_arg(node, 1, "dim", None)
        sizes = node_arg(node, 2, "sizes", None)
        return unflatten_flow(node, first_layout(node, ctx), dim, sizes, ctx)


@register_module(nn.Unflatten)
class UnflattenModuleHandler(OpHandler):
    """``nn.Unflatten(dim, unflattened_size)``."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        module = ctx.module_of(node)
        return unflatten_flow(node, ctx.input(node), module.dim, module.unflattened_size, ctx)


def unflatten_flow(
    node: fx.Node, layout: Layout | None, dim: Any, sizes: Any, ctx: FlowContext
) -> Layout | None:
    """Split ``dim`` into ``sizes``: another dim moves the channels; the channel dim itself may
    only give back the entries a flatten merged into it (``(-1, h, w)``: the channels first, their
    count left to the tensor)."""
    if layout is None:
        return None
    label = ctx.op_name(node)
    sizes = tuple(sizes) if isinstance(sizes, (tuple, list)) else (sizes,)
    same = layout.same_dim(dim) if isinstance(dim, int) else None
    if same is None:
        ctx.unknown(node, f"{label} of dim {dim!r} of a tensor of unknown rank")
    added = len(sizes) - 1
    rank = None if layout.rank is None else layout.rank + added
    if not same:
        channel = layout.normalized_dim()
        position = dim if dim >= 0 else (None if layout.rank is None else dim + layout.rank)
        if channel is None or position is None:
            ctx.unknown(node, f"{label} of dim {dim} of a tensor of unknown rank")
        shift = added if position < channel else 0
        return layout.replace(dim=channel + shift, rank=rank).with_path(label)
    rest = _trailing_sizes(node, layout, sizes, ctx)
    if sizes[0] != -1 or rest is None:
        ctx.block(
            node,
            layout,
            f"{label} of the channel dim into {sizes!r} fixes how the channels split; only "
            "(-1, *trailing sizes) that undo a flatten keep them whole",
        )
        return None
    split = math.prod(rest)
    if layout.factor is None:
        ctx.unknown(node, f"{label} of channels flattened to an unknown size")
    if layout.factor % split:
        ctx.block(
            node,
            layout,
            f"{label} into {sizes!r} splits each channel's entries (heads, or groups of "
            "channels), which changes when channels are added",
        )
        return None
    factor = layout.factor // split
    new_dim = layout.dim if layout.dim >= 0 else layout.dim - added
    return layout.replace(dim=new_dim, rank=rank, factor=factor, flattened=factor > 1).with_path(
        label
    )


def _trailing_sizes(
    node: fx.Node, layout: Layout, sizes: tuple[Any, ...], ctx: FlowContext
) -> tuple[int, ...] | None:
    """The sizes after the channels: literals, or reads of other dims (values from the shapes)."""

    rest = sizes[1:]
    if all(isinstance(s, int) and s > 0 for s in rest):
        return tuple(rest)
    for entry in rest:
        if isinstance(entry, int):
            continue
        source = size_source(entry)
        read = None if source is None else ctx.layout(source[0])
        if source is None or (read is not None and read.same_dim(source[1]) is not False):
            return None  # computed, or read off a channel dim
    after = ctx.shape_of(node)
    channel = layout.normalized_dim()
    if after is None or channel is None:
        ctx.unknown(node, f"{ctx.op_name(node)} into sizes {sizes!r} read off the tensor")
    return tuple(after[channel + 1 : channel + len(sizes)])
