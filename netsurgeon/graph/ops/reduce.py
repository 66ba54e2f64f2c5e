"""Ops along one dim: reductions, cumulative ops, sorting, ``index_select`` and softmax.

Along a dim other than the channels they work per channel and the channels pass; along the
channels they combine or reorder channels, so adding channels would change the old outputs: the
groups block with the reason. ``nn.Softmax``/``nn.LogSoftmax`` and their function spellings
(and ``F.normalize``) share :func:`softmax_flow`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from netsurgeon.graph.layout import Layout
from netsurgeon.graph.nodes import Pieces, first_layout, node_arg
from netsurgeon.graph.registry import OpHandler, register_function, register_method, register_module

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext

__all__ = ["along_dim_flow", "softmax_flow"]


@register_function(
    torch.mean, torch.sum, torch.amax, torch.amin, torch.std, torch.var, torch.logsumexp
)
@register_method("mean", "sum", "amax", "amin", "std", "var", "logsumexp")
class ReductionHandler(OpHandler):
    """``x.mean((2, 3))``: reducing other dims keeps the channels; reducing them blocks."""

    def stream_effect_of(self, node: fx.Node, ctx: FlowContext) -> str:
        """A mean or sum over other dims is linear and alike on every channel: a channel that
        is the mean of the others (or 0) stays so."""
        name = getattr(node.target, "__name__", node.target)
        return "same" if name in ("mean", "sum") else "opaque"

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        layout = first_layout(node, ctx)
        dims = node_arg(node, 1, "dim", None)
        dims = (dims,) if isinstance(dims, int) else dims
        channel, rank = layout.normalized_dim(), layout.rank
        if not isinstance(dims, (tuple, list)) or not dims:
            ctx.block(node, layout, f"{ctx.op_name(node)} over every dim reduces the channels")
            return None
        if channel is None or rank is None:
            ctx.unknown(node, f"reduction over dims {tuple(dims)} of a tensor of unknown rank")
        reduced = sorted(d % rank for d in dims)
        if channel in reduced:
            ctx.block(
                node,
                layout,
                f"{ctx.op_name(node)} over dims {tuple(dims)} reduces across the channels, which "
                "changes when channels are added",
            )
            return None
        if bool(node_arg(node, 2, "keepdim", False)):
            return layout.with_path(ctx.op_name(node))
        shift = sum(1 for d in reduced if d < channel)
        return layout.replace(dim=channel - shift, rank=rank - len(reduced)).with_path(
            ctx.op_name(node)
        )


@register_function(torch.cumsum, torch.cumprod, torch.logcumsumexp)
@register_method("cumsum", "cumprod", "logcumsumexp", "cumsum_", "cumprod_")
class CumulativeHandler(OpHandler):
    """``x.cumsum(dim)``: along other dims per channel; along the channels it blocks.

    A running sum over the channels would hold for the old channels (new ones come after them)
    only under an init whose new channels feed zero columns; a copied unit (``"net2net"``) or a
    concatenation of several groups (new channels in the middle) changes the sums of old ones.
    """

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        return along_dim_flow(node, first_layout(node, ctx), node_arg(node, 1, "dim", None), ctx)


@register_function(torch.sort, torch.argsort, torch.topk, torch.msort)
@register_method("sort", "argsort", "topk", "msort")
class SortHandler(OpHandler):
    """``sort``/``argsort``/``topk`` along other dims are per channel; along the channels, block.

    ``sort`` and ``topk`` return ``(values, indices)``; both keep the input's layout (the indices
    count positions along the sorted dim, which does not grow).
    """

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | Pieces | None:
        layout = first_layout(node, ctx)
        name = str(getattr(node.target, "__name__", node.target))
        default = 0 if name == "msort" else -1
        dim = node_arg(node, 2 if name == "topk" else 1, "dim", default)
        out = along_dim_flow(node, layout, dim, ctx)
        if out is None or name in ("argsort", "msort"):
            return out
        return Pieces(same=out)


def along_dim_flow(
    node: fx.Node, layout: Layout | None, dim: Any, ctx: FlowContext
) -> Layout | None:
    """An op working along ``dim`` only: per channel elsewhere, blocking along the channels."""
    if layout is None:
        return None
    label = ctx.op_name(node)
    if not isinstance(dim, int):
        ctx.block(node, layout, f"{label} with dim={dim!r} works along every entry")
        return None
    same = layout.same_dim(dim)
    if same is None:
        ctx.unknown(node, f"{label} along dim {dim} of a tensor of unknown rank")
    if same:
        ctx.block(
            node,
            layout,
            f"{label} along dim {dim} works across these channels, so its result changes when "
            "channels are added",
        )
        return None
    return layout.with_path(label)


@register_function(torch.index_select)
@register_method("index_select")
class IndexSelectHandler(OpHandler):
    """``x.index_select(dim, index)``: along other dims per channel; along the channels, block."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        layout = first_layout(node, ctx)
        index = node_arg(node, 2, "index", None)
        if ctx.layout(index) is not None:
            ctx.block(node, ctx.layout(index), "the channels are used as indices")
        if layout is None:
            return None
        dim = node_arg(node, 1, "dim", None)
        same = layout.same_dim(dim) if isinstance(dim, int) else None
        if same is None:
            ctx.unknown(node, f"index_select along dim {dim!r} of a tensor of unknown rank")
        if same:
            ctx.block(node, layout, "index_select along the channel dim picks channels by index")
            return None
        return layout.with_path("index_select")


@register_module(nn.Softmax, nn.LogSoftmax)
class SoftmaxModuleHandler(OpHandler):
    """``nn.Softmax(dim)``: over the channels it blocks their groups."""

    knows_heads = True  # over the keys or a head's own dim: per head

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        return softmax_flow(node, ctx.input(node), ctx.module_of(node).dim, ctx)


@register_function(F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, F.normalize)
@register_method("softmax", "log_softmax")
class SoftmaxHandler(OpHandler):
    """Softmax (or ``F.normalize``) over other dims is per channel; over the channels it blocks."""

    knows_heads = True  # over the keys or a head's own dim: per head

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        default = 1 if node.target is F.normalize else None
        return softmax_flow(node, first_layout(node, ctx), node_arg(node, 1, "dim", default), ctx)


def softmax_flow(node: fx.Node, layout: Layout | None, dim: Any, ctx: FlowContext) -> Layout | None:
    if layout is None:
        return None
    if not isinstance(dim, int) or layout.same_dim(dim) is not False:
        ctx.block(
            node,
            layout,
            f"{ctx.op_name(node)} over dim {dim} normalises across these channels, which "
            "changes when channels are added",
        )
    return layout.with_path(ctx.op_name(node))
