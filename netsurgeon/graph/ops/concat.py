"""Joining and splitting tensors along a dim: ``cat``/``stack``, ``chunk``/``split``, ``getitem``.

Concatenating along the channels stacks the operands' segments (each keeps its group; a later
segment's offset shifts when an earlier one grows); ``chunk``/``split`` are the mirror, and
require their group to grow in equal splits; ``getitem`` picks one piece (or indexes a tensor).
Along any other dim, ``cat``/``stack`` join their operands' groups.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING

import torch
from torch import fx

from netsurgeon.graph.layout import Layout, Segment
from netsurgeon.graph.nodes import Pieces, first_layout, node_arg, normalize_dim
from netsurgeon.graph.ops.heads import index_heads, unbind_heads
from netsurgeon.graph.ops.owners import owned_split
from netsurgeon.graph.registry import OpHandler, register_function, register_method

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext

__all__ = ["CatHandler", "GetitemHandler", "SplitHandler", "StackHandler"]


@register_function(torch.cat, torch.concat, torch.concatenate)
class CatHandler(OpHandler):
    """``torch.cat``: along the channels the segments concatenate; along another dim they join.

    Channels cut into attention heads join along another dim (RoPE's rotate-half on the head's
    own dim); along the head dim they are refused.
    """

    knows_heads = True

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        tensors = list(node_arg(node, 0, "tensors", ()))
        dim = node_arg(node, 1, "dim", 0)
        tracked = [lay for t in tensors if (lay := ctx.layout(t)) is not None]
        base = tracked[0]
        same = base.same_dim(dim)
        if same is None:
            ctx.unknown(node, f"cat along dim {dim} of tensors whose rank is unknown")
        if not same:
            return ctx.join(node, tensors, "cat")
        if any(lay.heads is not None for lay in tracked):
            ctx.block(node, tracked, "cat along the head dim of channels cut into heads")
            return None
        segments: list[Segment] = []
        for t in tensors:
            layout = ctx.layout(t)
            if layout is None:
                shape = ctx.shape_of(t)
                if shape is None:
                    ctx.unknown(
                        node,
                        f"cat of the channels with '{getattr(t, 'name', t)}', whose size is unknown",
                    )
                segments.append(Segment(None, 0, shape[base.normalized_dim() or 0]))
                continue
            if layout.normalized_dim() != base.normalized_dim() or layout.factor is None:
                ctx.unknown(
                    node,
                    f"cat of tensors with their channels on different dims or flattened to an "
                    f"unknown size ({ctx.describe(layout)})",
                )
            for s in layout.segments:
                segments.append(
                    Segment(s.group, s.start, s.stop, s.multiplicity * layout.factor, s.path)
                )
        flattened = any(lay.flattened for lay in tracked)
        return Layout(base.dim, base.rank, tuple(s.with_path("cat") for s in segments), flattened)


@register_function(torch.stack)
class StackHandler(OpHandler):
    """``torch.stack``: the operands join, and a new dim is inserted."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        tensors = list(node_arg(node, 0, "tensors", ()))
        dim = node_arg(node, 1, "dim", 0)
        joined = ctx.join(node, tensors, "stack")
        if joined is None:
            return None
        channel, rank = joined.normalized_dim(), joined.rank
        position = normalize_dim(dim, None if rank is None else rank + 1)
        if channel is None or position is None:
            ctx.unknown(node, "stack of tensors of unknown rank")
        return joined.replace(
            dim=channel + 1 if position <= channel else channel,
            rank=None if rank is None else rank + 1,
        )


@register_function(torch.chunk, torch.split, torch.tensor_split, torch.unbind)
@register_method("chunk", "split", "tensor_split", "unbind")
class SplitHandler(OpHandler):
    """``chunk(n, dim)`` along the channels cuts each group into ``n`` equal splits; ``split``
    with literal sizes fixes the widths and blocks, unless the enclosing head owner sizes it
    (GPT-2's ``split(self.split_size)``: equal parts, :func:`~.owners.owned_split`). Along other
    dims every piece keeps the layout.
    Channels cut into attention heads: :func:`~netsurgeon.graph.ops.heads.unbind_heads`.
    """

    knows_heads = True

    def flow(self, node: fx.Node, ctx: FlowContext) -> Pieces:
        layout = first_layout(node, ctx)
        name = getattr(node.target, "__name__", str(node.target))
        dim = node_arg(node, 1 if name == "unbind" else 2, "dim", 0)
        if layout is None:
            return Pieces()
        if layout.heads is not None and isinstance(dim, int):
            return unbind_heads(node, layout, name, dim, node_arg(node, 1, "chunks", None), ctx)
        same = layout.same_dim(dim)
        if same is None:
            ctx.unknown(node, f"{name} along dim {dim} of a tensor of unknown rank")
        if not same:
            if name == "unbind":
                channel = layout.normalized_dim()
                position = normalize_dim(dim, layout.rank)
                if channel is None or position is None:
                    ctx.unknown(node, "unbind of a tensor of unknown rank")
                layout = layout.replace(
                    dim=channel - 1 if position < channel else channel,
                    rank=None if layout.rank is None else layout.rank - 1,
                )
            return Pieces(same=layout.with_path(name))
        count = node_arg(node, 1, "chunks", None)
        if name == "split" and not layout.flattened:  # a fused projection its owner sizes
            shape = ctx.shape_of(node.args[0])
            width = shape[layout.normalized_dim()] if shape is not None else None
            parts = owned_split(node, ctx, count, width)
            count, name = (parts, "chunk") if parts is not None else (count, name)
        if name != "chunk" or not isinstance(count, int) or layout.flattened:
            ctx.block(
                node,
                layout,
                f"'{name}' along the channels with fixed sizes ties them to today's widths; "
                "use chunk(n, dim) to split them into equal parts",
            )
            return Pieces()
        ctx.require_splits(node, layout, count, what=f"chunk({count})")
        if len(layout.segments) != 1:
            return Pieces()
        seg = layout.segments[0]
        size = seg.channels // count
        return Pieces(
            [
                layout.replace(
                    segments=(
                        Segment(
                            seg.group,
                            seg.start + j * size,
                            seg.start + (j + 1) * size,
                            seg.multiplicity,
                            (*seg.path, f"chunk[{j}]"),
                        ),
                    )
                )
                for j in range(count)
            ]
        )


@register_function(operator.getitem)
class GetitemHandler(OpHandler):
    """One output of a multi-output op, or ``x[:, 0]``-style indexing of a tensor.

    Integer indices and full slices of non-channel dims move the channel dim; slicing or indexing
    the channels themselves fixes their count and blocks. Channels cut into attention heads:
    :func:`~netsurgeon.graph.ops.heads.index_heads`.
    """

    knows_heads = True
    stream_effect = "same"

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        source, index = node.args[0], node.args[1]
        value = ctx.layouts.get(source)  # type: ignore[arg-type]
        if isinstance(value, Pieces):
            return value.get(index)
        if isinstance(value, tuple):
            return value[index] if isinstance(index, int) else None
        layout = value
        if layout is None:
            return None
        items = index if isinstance(index, tuple) else (index,)
        if any(isinstance(i, (fx.Node, list, torch.Tensor)) for i in items):
            return _gather_before_channels(node, layout, items, ctx)
        if layout.heads is not None:
            return index_heads(node, layout, items, ctx)
        channel, rank = layout.normalized_dim(), layout.rank
        if channel is None or rank is None:
            ctx.unknown(node, f"indexing {index!r} a tensor of unknown rank")
        explicit = sum(1 for i in items if i is not None and i is not Ellipsis)
        dim_in, dim_out, new_channel = 0, 0, None
        for item in items:
            if item is Ellipsis:
                skipped = rank - explicit
                if dim_in <= channel < dim_in + skipped:
                    new_channel = dim_out + channel - dim_in
                dim_in += skipped
                dim_out += skipped
            elif item is None:
                dim_out += 1
            elif isinstance(item, int):
                if dim_in == channel:
                    ctx.block(node, layout, f"indexing {index!r} picks single channels")
                    return None
                dim_in += 1
            elif isinstance(item, slice):
                if dim_in == channel:
                    if item != slice(None):
                        ctx.block(
                            node, layout, f"slicing {index!r} fixes how many channels are kept"
                        )
                        return None
                    new_channel = dim_out
                dim_in += 1
                dim_out += 1
            else:
                ctx.refuse(node, f"index {item!r}", fix="index with ints and slices")
        if new_channel is None:
            new_channel = dim_out + channel - dim_in
        new_rank = dim_out + rank - dim_in
        return layout.replace(dim=new_channel, rank=new_rank).with_path("getitem")


def _gather_before_channels(
    node: fx.Node, layout: Layout, items, ctx: FlowContext
) -> Layout | None:
    """``x[rows, cols]`` with index tensors (carrying no channels) on adjacent dims before the
    channels and full slices elsewhere (``logits[arange(B), last]``, a classifier's pick of one
    position): every channel is kept, counted from the end as before; else blocked."""
    channel, rank, shape = layout.normalized_dim(), layout.rank, ctx.shape_of(node)
    tensors = [d for d, i in enumerate(items) if isinstance(i, fx.Node)]
    plain = all(i == slice(None) for d, i in enumerate(items) if d not in tensors)
    untracked = all(ctx.layout(items[d]) is None for d in tensors)
    adjacent = tensors == list(range(tensors[0], tensors[0] + len(tensors))) if tensors else False
    if (
        channel is None
        or shape is None
        or not (adjacent and plain and untracked and tensors[-1] < channel)
    ):
        ctx.block(node, layout, "indexing with a tensor selects channels by value")
        return None
    new_rank = len(shape)
    return layout.replace(dim=new_rank - (rank - channel), rank=new_rank).with_path("getitem")
