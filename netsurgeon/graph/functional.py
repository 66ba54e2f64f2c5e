"""Handlers for ``call_function`` and ``call_method`` nodes (``F.relu(x)``, ``x.view(b, -1)``, ...).

Each class covers one family of ops and registers the functional, ``torch.*`` and ``Tensor`` method
spellings of it. Ops that combine two tensors (``add``, ``mul``, ``cat``) couple the widths of their
operands; until a handler for coupled groups exists they are refused by name, never treated as
element-wise.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import fx

from netsurgeon.graph.flow import ChannelState, Flow, FlowKind
from netsurgeon.graph.registry import OpHandler, register_function, register_method

if TYPE_CHECKING:
    from netsurgeon.graph.analysis import WalkContext

__all__: list[str] = []

_ELEMENTWISE_FUNCTIONS = (
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.leaky_relu_, F.elu, F.elu_,
    F.celu, F.selu, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.hardtanh, F.softplus,
    F.logsigmoid, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, torch.exp, torch.abs, torch.clamp,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
)  # fmt: skip
_ELEMENTWISE_METHODS = (
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "abs", "contiguous", "clone",
    "float", "double", "half", "bfloat16", "clamp", "clamp_", "clamp_min", "clamp_max",
)  # fmt: skip
_POOL_FUNCTIONS = (
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
    torch.max_pool1d, torch.max_pool2d, torch.max_pool3d, torch.avg_pool1d,
    torch.adaptive_avg_pool1d, torch.adaptive_max_pool1d,
)  # fmt: skip
_ARITHMETIC = (
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.iadd,
    operator.imul, operator.isub, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div,
    torch.neg,
)  # fmt: skip
_ARITHMETIC_METHODS = ("add", "sub", "mul", "div", "neg", "add_", "mul_", "sub_", "div_")
_COUPLING_FUNCTIONS = (
    torch.cat,
    torch.concat,
    torch.stack,
    torch.matmul,
    operator.matmul,
    torch.bmm,
)


@register_function(*_ELEMENTWISE_FUNCTIONS)
@register_method(*_ELEMENTWISE_METHODS)
class ElementwiseHandler(OpHandler):
    """Element-wise activations, dropout, ``contiguous`` and dtype casts."""

    def flow(self, node: fx.Node, state: ChannelState, ctx: WalkContext) -> Flow:
        return Flow(FlowKind.PASS, state, label=ctx.op_name(node))


@register_function(*_POOL_FUNCTIONS)
class PoolFunctionHandler(OpHandler):
    """Functional pooling over spatial dims."""

    def flow(self, node: fx.Node, state: ChannelState, ctx: WalkContext) -> Flow:
        if node.kwargs.get("return_indices"):
            ctx.refuse(node, "pooling with return_indices=True", fix="use return_indices=False")
        return ctx.pool_flow(node, state, ctx.op_name(node))


@register_function(*_ARITHMETIC)
@register_method(*_ARITHMETIC_METHODS)
class ScalarArithmeticHandler(OpHandler):
    """``x * 2``, ``x + 1``: arithmetic with Python scalars is width-preserving.

    With a second tensor operand the op couples two widths (a residual ``add``, a gating
    ``mul``): refused until a coupled-group handler exists.
    """

    def flow(self, node: fx.Node, state: ChannelState, ctx: WalkContext) -> Flow:
        operands = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, fx.Node)]
        if len(operands) > 1:
            ctx.refuse(
                node,
                f"'{ctx.op_name(node)}' combines two tensors, which couples their widths "
                "(residual add / gating mul are not supported yet)",
                fix="mark the model non-strict (trace(model, strict=False)) to analyse the rest",
            )
        return Flow(FlowKind.PASS, state, label=ctx.op_name(node))


@register_function(*_COUPLING_FUNCTIONS)
class CouplingHandler(OpHandler):
    """``cat``/``stack``/``matmul`` mix or join widths: refused by name."""

    def flow(self, node: fx.Node, state: ChannelState, ctx: WalkContext) -> Flow:
        ctx.refuse(
            node,
            f"'{ctx.op_name(node)}' couples the widths of its operands (not supported yet)",
            fix="mark the model non-strict (trace(model, strict=False)) to analyse the rest",
        )


@register_function(F.softmax, F.log_softmax, torch.softmax, torch.log_softmax)
@register_method("softmax", "log_softmax")
class SoftmaxHandler(OpHandler):
    """Softmax over other dims is per-channel; over the channel dim it forbids widening."""

    def flow(self, node: fx.Node, state: ChannelState, ctx: WalkContext) -> Flow:
        dim = _arg(node, 1, "dim", None)
        if dim is None or (isinstance(dim, int) and ctx.same_dim(dim, state)):
            return Flow(
                FlowKind.BLOCK,
                state,
                label=ctx.op_name(node),
                reason="a softmax over its channels would change when channels are added",
            )
        return Flow(FlowKind.PASS, state, label=ctx.op_name(node))


@register_function(torch.mean, torch.sum, torch.amax, torch.amin)
@register_method("mean", "sum", "amax", "amin")
class SpatialReductionHandler(OpHandler):
    """``x.mean((2, 3))``: reducing spatial dims keeps the channels; reducing them is refused."""

    def flow(self, node: fx.Node, state: ChannelState, ctx: WalkContext) -> Flow:
        dims = _arg(node, 1, "dim", None)
        dims = (dims,) if isinstance(dims, int) else dims
        channel = state.normalized_dim()
        rank = state.rank
        if (
            not isinstance(dims, (tuple, list))
            or not dims
            or rank is None
            or channel is None
            or state.flattened
            or not all(isinstance(d, int) for d in dims)
        ):
            ctx.refuse(
                node,
                f"reduction over dims {dims!r} of a tensor whose channels are on dim {channel}",
                fix="reduce over explicit spatial dims, e.g. x.mean((2, 3)) or use AdaptiveAvgPool",
            )
        reduced = sorted(d % rank for d in dims)
        if 0 in reduced or channel in reduced:
            ctx.refuse(
                node,
                f"reduction over dims {tuple(dims)} includes the batch or channel dim",
                fix="reduce over spatial dims only",
            )
        keepdim = bool(_arg(node, 2, "keepdim", False))
        new_rank = rank if keepdim else rank - len(reduced)
        return Flow(FlowKind.PASS, state.replace(rank=new_rank), label=ctx.op_name(node))


@register_function(torch.squeeze, torch.unsqueeze)
@register_method("squeeze", "unsqueeze")
class SqueezeHandler(OpHandler):
    """``x.squeeze(-1)`` / ``x.unsqueeze(2)`` of a non-channel dim: the channel dim index shifts.

    ``squeeze()`` without a dim is refused: it would also drop the batch dim of a batch of one.
    """

    def flow(self, node: fx.Node, state: ChannelState, ctx: WalkContext) -> Flow:
        dim = _arg(node, 1, "dim", None)
        channel, rank = state.normalized_dim(), state.rank
        unsqueeze = str(getattr(node.target, "__name__", node.target)) == "unsqueeze"
        if not isinstance(dim, int) or channel is None or rank is None:
            ctx.refuse(
                node,
                f"{ctx.op_name(node)} with dim={dim!r} on a tensor of unknown layout",
                fix="name the dim explicitly (x.squeeze(-1)) or pass example_inputs",
            )
        new_rank = rank + 1 if unsqueeze else rank - 1
        position = dim % (new_rank if unsqueeze else rank)
        if not unsqueeze and position == 0:
            ctx.refuse(node, f"squeezing dim {dim} removes the batch dim", fix="squeeze other dims")
        if not unsqueeze and position == channel:  # legal only at width 1: e.g. a 1-unit head
            return Flow(
                FlowKind.BLOCK,
                state,
                label=ctx.op_name(node),
                reason=f"{ctx.op_name(node)} removes the channel dim, which only a width of 1 allows",
            )
        if unsqueeze and position == 0:
            ctx.refuse(node, "unsqueezing before the batch dim", fix="unsqueeze after dim 0")
        if unsqueeze:
            channel = channel + 1 if position <= channel else channel
        else:
            channel = channel - 1 if position < channel else channel
        return Flow(
            FlowKind.PASS, state.replace(dim=channel, rank=new_rank), label=ctx.op_name(node)
        )


@register_method("size", "dim", "numel")
class QueryHandler(OpHandler):
    """``x.size(0)``, ``x.dim()``: metadata only, no channel data flows on."""

    def flow(self, node: fx.Node, state: ChannelState, ctx: WalkContext) -> Flow:
        return Flow(FlowKind.QUERY, label=ctx.op_name(node))


@register_function(getattr)
class GetattrHandler(OpHandler):
    """``x.shape`` / ``x.dtype``: metadata only."""

    def flow(self, node: fx.Node, state: ChannelState, ctx: WalkContext) -> Flow:
        if len(node.args) > 1 and node.args[1] in ("shape", "dtype", "device", "ndim"):
            return Flow(FlowKind.QUERY, label=f"getattr {node.args[1]}")
        ctx.refuse(node, f"attribute access {node.args[1:]!r} on a tensor", fix="remove it")


@register_function(torch.flatten)
@register_method("flatten")
class FlattenHandler(OpHandler):
    """``torch.flatten(x, 1)`` / ``x.flatten(1)``."""

    def flow(self, node: fx.Node, state: ChannelState, ctx: WalkContext) -> Flow:
        start = _arg(node, 1, "start_dim", 0)
        end = _arg(node, 2, "end_dim", -1)
        return ctx.flatten_flow(node, state, start, end, ctx.op_name(node))


@register_function(torch.reshape)
@register_method("view", "reshape")
class ReshapeHandler(OpHandler):
    """``x.view(x.size(0), -1)`` / ``x.reshape(b, -1)`` flatten; literal widths block widening."""

    def flow(self, node: fx.Node, state: ChannelState, ctx: WalkContext) -> Flow:
        shape: Any = list(node.args[1:]) if node.op == "call_method" else node.args[1]
        if node.op == "call_method" and len(shape) == 1 and isinstance(shape[0], (list, tuple)):
            shape = list(shape[0])
        shape = list(shape) if isinstance(shape, (list, tuple)) else [shape]
        if len(shape) == 2 and shape[1] == -1 and ctx.is_batch_size(shape[0]):
            return ctx.flatten_flow(node, state, 1, -1, f"{ctx.op_name(node)}(batch, -1)")
        return Flow(
            FlowKind.BLOCK,
            None,
            label=ctx.op_name(node),
            reason=(
                f"{ctx.op_name(node)} to the shape {tuple(shape)!r} fixes a size that depends on "
                "this layer's width; use torch.flatten(x, 1) instead"
            ),
        )


def _arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)
