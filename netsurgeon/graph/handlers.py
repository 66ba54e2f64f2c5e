"""Module handlers: layers that own a width, followers that grow with one, width-preserving modules.

A *layer* (``Conv1d/2d/3d``, ``Linear``) produces channels and consumes a producer's channels on its
input dimension. A *follower* (``BatchNorm1d/2d/3d``, ``PReLU`` with one slope per channel) holds
one entry per channel and must grow with the producer it follows. Everything else here passes the
channels through unchanged.

Layers and followers also describe their tensor layout for the surgery
(:mod:`netsurgeon.surgery`): every layer weight is viewed as ``(out, in, *kernel)`` and every
follower tensor as a per-channel vector, so one set of pure functions grows them all.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from torch import fx, nn

from netsurgeon.graph.flow import ChannelState, Flow, FlowKind
from netsurgeon.graph.registry import OpHandler, register_module

if TYPE_CHECKING:
    from netsurgeon.graph.analysis import WalkContext

__all__ = [
    "ConvHandler",
    "FollowerHandler",
    "LayerHandler",
    "LinearHandler",
    "PassModuleHandler",
]


class LayerHandler(OpHandler):
    """A module that owns a width: ``weight`` is ``(out, in, *kernel)``, ``bias`` is ``(out,)``."""

    role = "layer"
    out_attr: str = ""
    in_attr: str = ""

    def out_width(self, module: nn.Module) -> int:
        return int(getattr(module, self.out_attr))

    def in_width(self, module: nn.Module) -> int:
        return int(getattr(module, self.in_attr))

    def kernel_volume(self, module: nn.Module) -> int:
        weight = module.weight
        return math.prod(weight.shape[2:]) if weight.dim() > 2 else 1

    def set_widths(self, module: nn.Module, *, out_width: int, in_width: int) -> None:
        """Record new widths on the module's attributes so ``repr`` and ``state_dict`` agree."""
        setattr(module, self.out_attr, out_width)
        setattr(module, self.in_attr, in_width)

    def unsupported_reason(self, module: nn.Module) -> str | None:
        """Why this module can be neither widened nor read as a consumer, or ``None``."""
        return None

    def producer_state(self, node: fx.Node, module: nn.Module, ctx: WalkContext) -> ChannelState:
        raise NotImplementedError

    def consume(
        self, node: fx.Node, module: nn.Module, state: ChannelState, ctx: WalkContext
    ) -> Flow:
        raise NotImplementedError

    def flow(self, node: fx.Node, state: ChannelState, ctx: WalkContext) -> Flow:
        module = ctx.module_of(node)
        reason = self.unsupported_reason(module)
        if reason is not None:
            ctx.refuse(
                node, reason, fix="replace it with a supported layer or mark the model non-strict"
            )
        return self.consume(node, module, state, ctx)


@register_module(nn.Conv1d, nn.Conv2d, nn.Conv3d)
class ConvHandler(LayerHandler):
    """``ConvNd``: channels on dim 1 of a rank ``N + 2`` tensor; ``groups`` must be 1."""

    out_attr = "out_channels"
    in_attr = "in_channels"

    def unsupported_reason(self, module: nn.Module) -> str | None:
        if module.groups != 1:
            return (
                f"grouped convolution (groups={module.groups}) couples input and output channel "
                "groups; widening it is not supported"
            )
        return None

    def producer_state(self, node: fx.Node, module: nn.Module, ctx: WalkContext) -> ChannelState:
        rank = ctx.rank_of(node)
        return ChannelState(dim=1, rank=rank if rank is not None else module.weight.dim())

    def consume(
        self, node: fx.Node, module: nn.Module, state: ChannelState, ctx: WalkContext
    ) -> Flow:
        if state.flattened or state.normalized_dim() != 1:
            ctx.refuse(
                node,
                f"it reads channels on dim 1 but the producer's channels arrive on dim "
                f"{state.normalized_dim()} (flattened={state.flattened})",
                fix="feed convolutions directly from a channel-first map",
            )
        ctx.expect_width(node, self.in_width(module), ctx.width, what="in_channels")
        return Flow(FlowKind.CONSUMER, state.replace(multiplicity=1), label=type(module).__name__)


@register_module(nn.Linear)
class LinearHandler(LayerHandler):
    """``Linear``: features on the last dim. Reads a flattened map as ``C x multiplicity``."""

    out_attr = "out_features"
    in_attr = "in_features"

    def producer_state(self, node: fx.Node, module: nn.Module, ctx: WalkContext) -> ChannelState:
        # Without shapes, a Linear's output is taken as (batch, features): a documented
        # assumption, verified whenever ``example_inputs`` are given.
        rank = ctx.rank_of(node) or 2
        return ChannelState(dim=rank - 1, rank=rank)

    def consume(
        self, node: fx.Node, module: nn.Module, state: ChannelState, ctx: WalkContext
    ) -> Flow:
        if not state.is_last_dim():
            ctx.refuse(
                node,
                f"it reads features on the last dim but the producer's channels are on dim "
                f"{state.normalized_dim()} of a rank-{state.rank} tensor",
                fix="flatten the map first with torch.flatten(x, 1)",
            )
        in_width = self.in_width(module)
        multiplicity = state.multiplicity
        if multiplicity is None:  # flattened without shapes: infer from the consumer's width
            if in_width % ctx.width:
                ctx.refuse(
                    node,
                    f"in_features={in_width} is not a multiple of the producer's width {ctx.width}",
                    fix="check the flatten, or pass example_inputs so shapes are known",
                )
            multiplicity = in_width // ctx.width
        ctx.expect_width(node, in_width, ctx.width * multiplicity, what="in_features")
        return Flow(
            FlowKind.CONSUMER, state.replace(multiplicity=multiplicity), label=type(module).__name__
        )


class FollowerHandler(OpHandler):
    """A channel-wise module: each of ``tensors(module)`` holds one entry per channel.

    ``tensors`` maps attribute names to the value a new channel gets under the paper's
    initialisation (BatchNorm: weight 1, bias 0, running_mean 0, running_var 1).
    """

    role = "follower"
    width_attr = "num_features"

    def width(self, module: nn.Module) -> int:
        return int(getattr(module, self.width_attr))

    def set_width(self, module: nn.Module, width: int) -> None:
        setattr(module, self.width_attr, width)

    def tensors(self, module: nn.Module) -> dict[str, float]:
        raise NotImplementedError


@register_module(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
class BatchNormHandler(FollowerHandler):
    """``BatchNormNd`` normalises dim 1; after a flatten, ``BatchNorm1d`` covers ``C x m`` features."""

    def tensors(self, module: nn.Module) -> dict[str, float]:
        fills = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}
        return {name: fill for name, fill in fills.items() if getattr(module, name) is not None}

    def flow(self, node: fx.Node, state: ChannelState, ctx: WalkContext) -> Flow:
        module = ctx.module_of(node)
        if state.normalized_dim() != 1:
            ctx.refuse(
                node,
                f"BatchNorm normalises dim 1 but the producer's channels are on dim "
                f"{state.normalized_dim()}",
                fix="apply BatchNorm to a channel-first tensor",
            )
        multiplicity = ctx.per_channel(node, state, self.width(module), what="num_features")
        return Flow(
            FlowKind.FOLLOWER, state.replace(multiplicity=multiplicity), label=type(module).__name__
        )


@register_module(nn.PReLU)
class PReLUHandler(FollowerHandler):
    """``PReLU``: element-wise with one slope; a follower with one slope per channel."""

    width_attr = "num_parameters"

    def tensors(self, module: nn.Module) -> dict[str, float]:
        return {"weight": 0.25}

    def flow(self, node: fx.Node, state: ChannelState, ctx: WalkContext) -> Flow:
        module = ctx.module_of(node)
        if module.num_parameters == 1:
            return Flow(FlowKind.PASS, state, label="PReLU")
        if state.normalized_dim() != 1:
            ctx.refuse(
                node, "per-channel PReLU reads dim 1", fix="apply it to a channel-first tensor"
            )
        multiplicity = ctx.per_channel(node, state, module.num_parameters, what="num_parameters")
        return Flow(FlowKind.FOLLOWER, state.replace(multiplicity=multiplicity), label="PReLU")


_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.LogSigmoid,
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)  # fmt: skip
_POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)  # fmt: skip


@register_module(*_ELEMENTWISE_MODULES)
class PassModuleHandler(OpHandler):
    """Element-wise activations, dropout and ``Identity``: the channels pass unchanged."""

    def flow(self, node: fx.Node, state: ChannelState, ctx: WalkContext) -> Flow:
        return Flow(FlowKind.PASS, state, label=type(ctx.module_of(node)).__name__)


@register_module(*_POOL_MODULES)
class PoolModuleHandler(OpHandler):
    """Pooling over spatial dims keeps the channels on dim 1; spatial size may change."""

    def flow(self, node: fx.Node, state: ChannelState, ctx: WalkContext) -> Flow:
        module = ctx.module_of(node)
        if getattr(module, "return_indices", False):
            ctx.refuse(node, "pooling with return_indices=True", fix="use return_indices=False")
        return ctx.pool_flow(node, state, type(module).__name__)


@register_module(nn.Flatten)
class FlattenModuleHandler(OpHandler):
    """``nn.Flatten(start_dim=1, end_dim=-1)``: channels become blocks of ``H*W`` features."""

    def flow(self, node: fx.Node, state: ChannelState, ctx: WalkContext) -> Flow:
        module = ctx.module_of(node)
        return ctx.flatten_flow(node, state, module.start_dim, module.end_dim, "Flatten")
