"""Element-wise ops: activations pass the channels, binary ops join their operands' groups.

Unary: the activation and dropout modules, ``Identity``, their functional, ``torch.*`` and
``Tensor`` method spellings, dtype casts and ``contiguous`` pass the channels on. ``PReLU`` with
one weight per channel is a follower. Binary and ternary: ``a + b``, ``a * gate``,
``torch.where(c, a, b)``, ``addcmul``/``addcdiv`` put every operand's channels into one group
(a per-channel free parameter becomes a follower; scalars and size-1 dims broadcast).
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from netsurgeon.graph.axes import Axis
from netsurgeon.graph.batch_channels import batched_join
from netsurgeon.graph.layout import Layout
from netsurgeon.graph.nodes import first_layout, node_arg
from netsurgeon.graph.ops.base import FollowerHandler
from netsurgeon.graph.registry import OpHandler, register_function, register_method, register_module

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext

__all__ = [
    "ElementwiseHandler",
    "JoinHandler",
    "PReLUHandler",
    "PassModuleHandler",
    "check_known_ranks",
    "describe_dim",
]


_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.LogSigmoid,
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.FeatureAlphaDropout, nn.Softsign, nn.Tanhshrink, nn.GLU,
)  # fmt: skip


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


# ops that keep each entry's value (dropout scales kept entries alike; a cast rounds)
_SAME_MODULES = (
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)  # fmt: skip
_SAME_OPS = frozenset(
    {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, "contiguous", "clone", "float", "double",
     "half", "bfloat16", "to", "type_as", "detach"}
)  # fmt: skip


_JOIN_FUNCTIONS = (
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub,
    operator.imul, operator.itruediv, operator.pow, torch.add, torch.sub, torch.mul, torch.div, torch.maximum,
    torch.minimum, torch.where, torch.pow,
)  # fmt: skip


_JOIN_METHODS = ("add", "sub", "mul", "div", "add_", "mul_", "sub_", "div_", "maximum", "minimum")


@register_module(*(m for m in _ELEMENTWISE_MODULES if m is not nn.GLU))
class PassModuleHandler(OpHandler):
    """Element-wise activations, dropout and ``Identity``: the channels pass unchanged."""

    knows_heads = True  # per element: any layout passes, attention heads included
    knows_batch = True  # and channels on a batch dim

    def stream_effect_of(self, node: fx.Node, ctx: FlowContext) -> str:
        return "same" if isinstance(ctx.module_of(node), _SAME_MODULES) else "opaque"

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        layout = ctx.input(node)
        return None if layout is None else layout.with_path(type(ctx.module_of(node)).__name__)


@register_function(*_ELEMENTWISE_FUNCTIONS)
@register_method(*_ELEMENTWISE_METHODS)
class ElementwiseHandler(OpHandler):
    """Element-wise activations, dropout, ``contiguous`` and dtype casts."""

    knows_heads = True  # per element: any layout passes, attention heads included
    knows_batch = True  # and channels on a batch dim

    def stream_effect_of(self, node: fx.Node, ctx: FlowContext) -> str:
        return "same" if node.target in _SAME_OPS else "opaque"

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        layout = first_layout(node, ctx)
        if layout is None:  # the channels arrive in another argument (``pow(2, x)``)
            return _join(ctx, node, node.all_input_nodes, ctx.op_name(node))
        return layout.with_path(ctx.op_name(node))


@register_module(nn.PReLU)
class PReLUHandler(FollowerHandler):
    """``PReLU``: element-wise with one slope; a follower with one slope per channel."""

    width_attr = "num_parameters"

    def entries(self, module: nn.Module) -> tuple[Axis, ...]:
        return (Axis("weight", 0, 0.25),)

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        if ctx.module_of(node).num_parameters == 1:
            layout = ctx.input(node)
            return None if layout is None else layout.with_path("PReLU")
        return super().flow(node, ctx)


@register_function(*_JOIN_FUNCTIONS)
@register_method(*_JOIN_METHODS)
class JoinHandler(OpHandler):
    """``a + b``, ``a * gate``, ``torch.where(c, a, b)``: the operands' channels become one group.

    A residual ``add`` makes the block's last layer a producer of the stream's group; a gating
    ``mul`` makes the gate's producer one too. Scalars pass; per-channel free parameters (layer
    scales, biases) become followers; size-1 channel dims broadcast.
    """

    knows_heads = True  # operands cut into the same heads join (``FlowContext.join`` checks)
    knows_batch = True  # each tracked dim joins on its own (``batch_channels.batched_join``)

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        label = getattr(node.target, "__name__", str(node.target))
        operands = [*node.args, *node.kwargs.values()]
        check_known_ranks(node, operands, label, ctx)
        return _join(ctx, node, operands, label)


def _join(ctx: FlowContext, node: fx.Node, operands: list[Any], label: str) -> Layout | None:
    """``FlowContext.join``, or per dim where an operand carries channels on a batch dim."""
    if any(lay.batch is not None for a in operands if (lay := ctx.layout(a)) is not None):
        return batched_join(ctx, node, operands, label)
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
