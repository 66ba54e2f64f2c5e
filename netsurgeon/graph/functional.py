"""Handlers for ``call_function`` and ``call_method`` nodes that keep the channel dim in place.

Each class covers one family of ops and registers the functional, ``torch.*`` and ``Tensor`` method
spellings of it. What an op does to the channels decides its answer: pass them on (activations,
pooling, padding), join groups (``add``, ``mul``, ``where``), or block the groups it touches with
the reason (a softmax or a reduction over the channels, a matmul that mixes them). Ops that move,
merge or split the channel dim (``cat``, ``chunk``, ``permute``, ``view``) are in
:mod:`netsurgeon.graph.reshaping`.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import fx

from netsurgeon.graph.layout import Layout
from netsurgeon.graph.nodes import Pieces, first_layout, node_arg
from netsurgeon.graph.registry import OpHandler, register_function, register_method
from netsurgeon.graph.sizes import SizeValue, read_size

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext

__all__ = ["softmax_flow"]

_ELEMENTWISE_FUNCTIONS = (
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.leaky_relu_, F.elu, F.elu_,
    F.celu, F.selu, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.hardtanh, F.softplus,
    F.logsigmoid, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, torch.exp, torch.abs, torch.clamp,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
    torch.neg, operator.neg, torch.sqrt, torch.rsqrt, torch.log, torch.square, F.softsign,
    torch.erf, torch.sin, torch.cos, torch.clamp_min, torch.clamp_max, torch.nan_to_num,
)  # fmt: skip
_ELEMENTWISE_METHODS = (
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "abs", "contiguous", "clone",
    "float", "double", "half", "bfloat16", "clamp", "clamp_", "clamp_min", "clamp_max", "neg",
    "sqrt", "rsqrt", "log", "square", "to", "type_as", "detach", "pow", "erf", "sin", "cos",
)  # fmt: skip
_POOL_FUNCTIONS = {
    1: (F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool1d, F.adaptive_max_pool1d,
        torch.max_pool1d, torch.avg_pool1d, torch.adaptive_avg_pool1d, torch.adaptive_max_pool1d),
    2: (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
        torch.max_pool2d),
    3: (F.max_pool3d, F.avg_pool3d, F.adaptive_avg_pool3d, F.adaptive_max_pool3d,
        torch.max_pool3d),
}  # fmt: skip
_JOIN_FUNCTIONS = (
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub,
    operator.imul, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div, torch.maximum,
    torch.minimum, torch.where, torch.pow,
)  # fmt: skip
_JOIN_METHODS = ("add", "sub", "mul", "div", "add_", "mul_", "sub_", "div_", "maximum", "minimum")
_MIXING_FUNCTIONS = (
    torch.matmul, operator.matmul, torch.bmm, torch.mm, torch.einsum, F.linear, torch.baddbmm,
    F.scaled_dot_product_attention,
)  # fmt: skip


# ------------------------------------------------------------------------ passing through


@register_function(*_ELEMENTWISE_FUNCTIONS)
@register_method(*_ELEMENTWISE_METHODS)
class ElementwiseHandler(OpHandler):
    """Element-wise activations, dropout, ``contiguous`` and dtype casts."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        layout = first_layout(node, ctx)
        if layout is None:  # the channels arrive in another argument (``pow(2, x)``)
            return ctx.join(node, node.all_input_nodes, ctx.op_name(node))
        return layout.with_path(ctx.op_name(node))


@register_function(*(f for fs in _POOL_FUNCTIONS.values() for f in fs), F.interpolate)
class PoolFunctionHandler(OpHandler):
    """Functional pooling and interpolation over the trailing spatial dims."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        from netsurgeon.graph.handlers import spatial_flow

        if node.kwargs.get("return_indices"):
            ctx.refuse(node, "pooling with return_indices=True", fix="use return_indices=False")
        spatial = next((d for d, fs in _POOL_FUNCTIONS.items() if node.target in fs), 0)
        return spatial_flow(node, first_layout(node, ctx), spatial, ctx.op_name(node), ctx)


# ------------------------------------------------------------------------ joins


@register_function(*_JOIN_FUNCTIONS)
@register_method(*_JOIN_METHODS)
class JoinHandler(OpHandler):
    """``a + b``, ``a * gate``, ``torch.where(c, a, b)``: the operands' channels become one group.

    A residual ``add`` makes the block's last layer a producer of the stream's group; a gating
    ``mul`` makes the gate's producer one too. Scalars pass; per-channel free parameters (layer
    scales, biases) become followers; size-1 channel dims broadcast.
    """

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        label = getattr(node.target, "__name__", str(node.target))
        operands = [*node.args, *node.kwargs.values()]
        check_known_ranks(node, operands, label, ctx)
        return ctx.join(node, operands, label)


def check_known_ranks(node: fx.Node, operands: list[Any], label: str, ctx: FlowContext) -> None:
    """Operands whose channels may or may not line up, for want of a rank: ask for shapes."""
    tracked = [lay for a in operands if (lay := ctx.layout(a)) is not None]
    if len({(lay.dim, lay.rank) for lay in tracked}) < 2:
        return
    if any(lay.normalized_dim() is None for lay in tracked):
        where = " and ".join(dict.fromkeys(describe_dim(lay) for lay in tracked))
        ctx.unknown(
            node, f"'{label}' combines channels on {where}: whether they line up is unknown"
        )


def describe_dim(layout: Layout) -> str:
    """``dim 1 of a rank-4 tensor``, or ``dim -1 (counted from the end) of a tensor of unknown rank``."""
    if layout.rank is None:
        return f"dim {layout.dim} (counted from the end) of a tensor of unknown rank"
    return f"dim {layout.normalized_dim()} of a rank-{layout.rank} tensor"


@register_function(torch.addcmul, torch.addcdiv)
@register_method("addcmul", "addcdiv", "addcmul_", "addcdiv_")
class AddcmulHandler(OpHandler):
    """``addcmul(x, t1, t2, value=v) = x + v * t1 * t2`` (``addcdiv``: ``t1 / t2``): a join of three.

    A free per-channel parameter among the factors becomes a follower with new entries 1 (so a
    divisor stays finite), one in the summand's place with new entries 0.
    """

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        name = str(getattr(node.target, "__name__", node.target)).strip("_")
        inner = "mul" if name == "addcmul" else "div"
        summand, t1, t2 = (node_arg(node, i, n, None) for i, n in enumerate(_ADDC_ARGS))
        check_known_ranks(node, [summand, t1, t2], name, ctx)
        factors = [t for t in (t1, t2) if ctx.layout(t) is not None]
        if not factors:  # only the summand carries channels
            return ctx.join(node, [summand, t1, t2], inner)
        ctx.join(node, [t1, t2], inner)
        return ctx.join(node, [factors[0], summand], "add")


_ADDC_ARGS = ("input", "tensor1", "tensor2")


@register_function(*_MIXING_FUNCTIONS)
class MixingHandler(OpHandler):
    """``matmul``, ``einsum``, ``F.linear``, attention: they mix channels with other tensors.

    The groups they read cannot grow (the other operand's size is fixed by the forward); what they
    produce is not tracked.
    """

    def flow(self, node: fx.Node, ctx: FlowContext) -> None:
        ctx.block(
            node,
            ctx.tracked_inputs(node),
            f"'{ctx.op_name(node)}' mixes these channels with a tensor of fixed size",
        )
        return None


# ------------------------------------------------------------------------ reductions and queries


@register_function(
    torch.mean, torch.sum, torch.amax, torch.amin, torch.std, torch.var, torch.logsumexp
)
@register_method("mean", "sum", "amax", "amin", "std", "var", "logsumexp")
class ReductionHandler(OpHandler):
    """``x.mean((2, 3))``: reducing other dims keeps the channels; reducing them blocks."""

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


@register_function(F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, F.normalize)
@register_method("softmax", "log_softmax")
class SoftmaxHandler(OpHandler):
    """Softmax (or ``F.normalize``) over other dims is per channel; over the channels it blocks."""

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


@register_function(F.layer_norm)
class LayerNormFunctionHandler(OpHandler):
    """``F.layer_norm(x, normalized_shape, ...)``: across the channels it blocks."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        from netsurgeon.graph.handlers import layer_norm_flow

        shape = node_arg(node, 1, "normalized_shape", ())
        return layer_norm_flow(node, first_layout(node, ctx), len(shape), ctx)


@register_function(F.group_norm, F.batch_norm, F.instance_norm)
class NormFunctionHandler(OpHandler):
    """Functional normalisations with parameters passed in: the parameters' sizes are fixed."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        layout = first_layout(node, ctx)
        ctx.block(
            node,
            layout,
            f"functional '{ctx.op_name(node)}' takes per-channel tensors netsurgeon cannot grow; "
            "use the nn module",
        )
        return layout


@register_method("size", "dim", "numel", "ndimension")
class QueryHandler(OpHandler):
    """``x.size(d)``, ``x.numel()``, ``x.dim()``: no channel data flows on, but a size read of a
    channel dim depends on the width (:mod:`netsurgeon.graph.sizes` follows it to its uses)."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> SizeValue:
        layout = first_layout(node, ctx)
        name = str(node.target)
        if name == "size":
            dim = node_arg(node, 1, "dim", None)
            return read_size(node, layout, "shape" if dim is None else "dim", dim)
        return read_size(node, layout, "numel" if name == "numel" else "rank")


@register_function(getattr)
class GetattrHandler(OpHandler):
    """``x.shape`` (a size read, see :class:`QueryHandler`), ``x.dtype``, ``x.T``."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | SizeValue | None:
        if len(node.args) > 1 and node.args[1] in ("shape", "ndim"):
            what = "shape" if node.args[1] == "shape" else "rank"
            return read_size(node, first_layout(node, ctx), what)
        if len(node.args) > 1 and node.args[1] in ("dtype", "device", "is_cuda"):
            return None
        if len(node.args) > 1 and node.args[1] in ("T", "mT"):
            layout = first_layout(node, ctx)
            rank = layout.rank
            channel = layout.normalized_dim()
            if rank is None or channel is None:
                ctx.unknown(node, "transpose of a tensor of unknown rank")
            order = list(range(rank))
            if node.args[1] == "T":
                order.reverse()
            else:
                order[-1], order[-2] = order[-2], order[-1]
            return layout.replace(dim=order.index(channel)).with_path(str(node.args[1]))
        ctx.refuse(node, f"attribute access {node.args[1:]!r} on a tensor", fix="remove it")


# ------------------------------------------------------------------------ torchvision's wrapped ops
# torchvision marks a few functions as fx leaves (``torch.fx.wrap``); they appear as single nodes.


def _register_torchvision() -> None:
    try:
        from torchvision.models import swin_transformer
        from torchvision.ops import stochastic_depth
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return
    # the per-sample drop path scales whole samples: element-wise on the channels
    register_function(stochastic_depth)(type("StochasticDepthHandler", (ElementwiseHandler,), {}))
    # Swin's window attention takes its projection weights as arguments: it mixes the channels
    for name in ("shifted_window_attention", "shifted_window_attention_3d"):
        if hasattr(swin_transformer, name):
            function = getattr(swin_transformer, name)
            register_function(function)(type("WindowAttentionHandler", (MixingHandler,), {}))
    # patch merging gathers the 2x2 (3-d: 2x2x2) neighbours of a (..., H, W, C) map into the
    # channels: the output's last dim is 4 (8) copies of the input's segments
    for name, copies in (("_patch_merging_pad", 4), ("_patch_merging_pad_3d", 8)):
        if hasattr(swin_transformer, name):
            register_function(getattr(swin_transformer, name))(
                type("PatchMergingHandler", (_PatchMergingHandler,), {"copies": copies})
            )


class _PatchMergingHandler(OpHandler):
    copies = 4

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        layout = first_layout(node, ctx)
        if layout is None:
            return None
        if not layout.is_last_dim() or layout.factor != 1:
            ctx.refuse(node, "patch merging reads the channels on the last dim", fix="-")
        label = ctx.op_name(node)
        return layout.replace(segments=layout.segments * self.copies).with_path(label)


_register_torchvision()
