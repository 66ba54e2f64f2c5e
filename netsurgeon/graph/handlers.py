"""Module handlers: layers that own a width, followers that grow with one, and the rest.

Each handler has two parts:

* the **flow** (:meth:`flow`), used by the analysis: how the module reads and passes channels;
* the **layout** (:meth:`out_tensors`, :meth:`in_tensors`, :meth:`tensors`, :meth:`grow_attrs`),
  used by the surgery: which ``(tensor, dim)`` pairs grow and which size attributes change.

A *layer* (``Conv1d/2d/3d``, ``Linear``) produces a group and consumes its input's groups. A
*follower* holds one entry per channel and grows with the groups it reads: ``BatchNormNd``,
``InstanceNormNd``, ``GroupNorm`` (with several channels per group it grows by whole groups),
per-channel ``PReLU``, and a depthwise conv (``groups == in == out``: a follower with a weight).
Roles are decided per instance: a grouped conv with ``1 < groups`` is a layer whose input and
output are split into ``groups`` blocks.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from torch import fx, nn

from netsurgeon.graph.layout import Layout, Segment
from netsurgeon.graph.registry import OpHandler, register_module

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext

__all__ = [
    "ConvHandler",
    "FollowerHandler",
    "LayerHandler",
    "LinearHandler",
    "PassModuleHandler",
]


class LayerHandler(OpHandler):
    """A module that owns a width: ``weight`` is ``(out, in / groups, *kernel)``."""

    role = "layer"
    out_attr: str = ""
    in_attr: str = ""

    def out_width(self, module: nn.Module) -> int:
        return int(getattr(module, self.out_attr))

    def in_width(self, module: nn.Module) -> int:
        return int(getattr(module, self.in_attr))

    def conv_groups(self, module: nn.Module) -> int:
        return int(getattr(module, "groups", 1))

    def out_tensors(self, module: nn.Module) -> dict[str, int]:
        """``{attribute: dim}`` of tensors indexed by output unit."""
        return {"weight": 0} | ({"bias": 0} if getattr(module, "bias", None) is not None else {})

    def fan_in(self, module: nn.Module) -> int:
        """Inputs per output unit (per conv group), kernel included."""
        weight = module.weight
        return math.prod(weight.shape[1:])

    def set_widths(self, module: nn.Module, *, out_width: int, in_width: int) -> None:
        """Record new widths on the module's attributes so ``repr`` and ``state_dict`` agree."""
        setattr(module, self.out_attr, out_width)
        setattr(module, self.in_attr, in_width)

    def unsupported_reason(self, module: nn.Module) -> str | None:
        """Why this module can be neither widened nor read as a consumer, or ``None``."""
        return None

    def output_layout(
        self, node: fx.Node, module: nn.Module, group: int, ctx: FlowContext
    ) -> Layout:
        raise NotImplementedError

    def check_input(self, node: fx.Node, module: nn.Module, layout: Layout, ctx: FlowContext):
        raise NotImplementedError

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout:
        module = ctx.module_of(node)
        reason = self.unsupported_reason(module)
        if reason is not None:
            ctx.refuse(node, reason, fix="replace it with a supported layer")
        layout = ctx.input(node)
        if layout is not None:
            self.check_input(node, module, layout, ctx)
            ctx.consume(node, layout, self.in_width(module), groups=self.conv_groups(module))
        group = ctx.new_group(str(node.target), self.out_width(module))
        out = self.output_layout(node, module, group, ctx)
        ctx.require_blocks(node, out, self.conv_groups(module), what="grouped convolution")
        return out


@register_module(nn.Conv1d, nn.Conv2d, nn.Conv3d)
class ConvHandler(LayerHandler):
    """``ConvNd``: channels on dim 1. ``groups == in == out`` makes it a (depthwise) follower."""

    out_attr = "out_channels"
    in_attr = "in_channels"
    relies_on = ("forward", "_conv_forward")

    def role_of(self, module: nn.Module) -> str:
        return "follower" if is_depthwise(module) else "layer"

    def output_layout(self, node, module, group, ctx) -> Layout:
        rank = ctx.rank_of(node)
        return Layout(
            dim=1,
            rank=rank if rank is not None else module.weight.dim(),
            segments=(Segment(group, 0, self.out_width(module)),),
        )

    def check_input(self, node, module, layout, ctx) -> None:
        if layout.rank is None and layout.dim < 0:  # a conv's batched input has its weight's rank
            layout = layout.replace(rank=module.weight.dim())
        if layout.flattened or layout.normalized_dim() != 1:
            ctx.refuse(
                node,
                f"it reads channels on dim 1 but they arrive on dim {layout.normalized_dim()} "
                f"(flattened={layout.flattened})",
                fix="feed convolutions a channel-first map",
            )

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout:
        module = ctx.module_of(node)
        if not is_depthwise(module):
            return super().flow(node, ctx)
        layout = ctx.input(node)
        if layout is None:
            return None  # type: ignore[return-value]
        self.check_input(node, module, layout, ctx)
        ctx.follow(node, str(node.target), layout, module.in_channels)
        return layout.with_path(type(module).__name__)

    # -- as a follower (depthwise) ---------------------------------------------------------------
    def tensors(self, module: nn.Module) -> dict[str, float | None]:
        """Per-channel tensors and the paper's fill (``None``: Kaiming over the kernel)."""
        return {"weight": None} | ({"bias": 0.0} if module.bias is not None else {})

    def grow_attrs(self, module: nn.Module, added: int) -> None:
        module.in_channels += added
        module.out_channels += added
        module.groups += added


def is_depthwise(module: nn.Module) -> bool:
    """A conv whose every channel is filtered on its own: ``groups == in == out > 1``."""
    groups = getattr(module, "groups", 1)
    return groups > 1 and groups == module.in_channels == module.out_channels


@register_module(nn.Linear)
class LinearHandler(LayerHandler):
    """``Linear``: features on the last dim; reads a flattened map as ``C x multiplicity``."""

    out_attr = "out_features"
    in_attr = "in_features"

    def output_layout(self, node, module, group, ctx) -> Layout:
        rank = ctx.rank_of(node)
        if rank is None:  # a Linear keeps its input's rank; unknown: count from the end
            source = ctx.input(node)
            rank = source.rank if source is not None else ctx.rank_of(node.args[0])
        return Layout(
            dim=-1 if rank is None else rank - 1,
            rank=rank,
            segments=(Segment(group, 0, self.out_width(module)),),
        )

    def check_input(self, node, module, layout, ctx) -> None:
        if not layout.is_last_dim():
            ctx.refuse(
                node,
                f"it reads features on the last dim but the channels are on dim "
                f"{layout.normalized_dim()} of a rank-{layout.rank} tensor",
                fix="flatten the map first (torch.flatten(x, 1)) or move the channels last",
            )


class FollowerHandler(OpHandler):
    """A per-channel module: each of :meth:`tensors` holds one entry per channel on dim 0.

    ``tensors`` maps attribute names to the value a new channel gets under the paper's init.
    ``channel_dim`` is where the module reads channels (dim 1 for the normalisations).
    """

    role = "follower"
    width_attr = "num_features"

    def width(self, module: nn.Module) -> int:
        return int(getattr(module, self.width_attr))

    def grow_attrs(self, module: nn.Module, added: int) -> None:
        setattr(module, self.width_attr, self.width(module) + added)

    def tensors(self, module: nn.Module) -> dict[str, float | None]:
        raise NotImplementedError

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        module = ctx.module_of(node)
        layout = ctx.input(node)
        if layout is None:
            return None
        if layout.rank is None and layout.dim == -1:  # a Linear's (B, C) output, unchecked
            layout = layout.replace(dim=1, rank=2)
        if layout.normalized_dim() != 1:
            ctx.refuse(
                node,
                f"{type(module).__name__} reads channels on dim 1 but they arrive on dim "
                f"{layout.normalized_dim()}",
                fix="apply it to a channel-first tensor",
            )
        ctx.follow(node, str(node.target), layout, self.width(module))
        return layout.with_path(type(module).__name__)


def _present(module: nn.Module, fills: dict[str, float]) -> dict[str, float | None]:
    return {name: fill for name, fill in fills.items() if getattr(module, name, None) is not None}


@register_module(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
class BatchNormHandler(FollowerHandler):
    """``BatchNormNd`` normalises each channel of dim 1 (after a flatten: ``C x m`` features)."""

    def tensors(self, module: nn.Module) -> dict[str, float | None]:
        return _present(
            module, {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}
        )


@register_module(nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
class InstanceNormHandler(BatchNormHandler):
    """``InstanceNormNd``: per sample and channel; affine and running statistics optional."""


@register_module(nn.GroupNorm)
class GroupNormHandler(FollowerHandler):
    """``GroupNorm``: per channel with one channel per group; else it grows by whole groups.

    Normalisation groups are contiguous runs of ``C / G`` channels. New channels that form whole
    new groups (``k`` a multiple of ``C / G`` per insertion point) leave every old group's
    statistics untouched, so the widening stays exact; ``num_groups`` grows with them.
    """

    width_attr = "num_channels"

    def tensors(self, module: nn.Module) -> dict[str, float | None]:
        return _present(module, {"weight": 1.0, "bias": 0.0})

    def grow_attrs(self, module: nn.Module, added: int) -> None:
        per_group = module.num_channels // module.num_groups
        module.num_channels += added
        module.num_groups += added // per_group

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        layout = super().flow(node, ctx)
        module = ctx.module_of(node)
        per_group = module.num_channels // module.num_groups
        if layout is not None and per_group > 1:
            if len(layout.segments) != 1 or layout.flattened:
                ctx.block(
                    node,
                    layout,
                    f"GroupNorm with {per_group} channels per group over a concatenation mixes "
                    "the statistics of several groups",
                )
            else:
                ctx.require_unit(layout, per_group)
        return layout


@register_module(nn.PReLU)
class PReLUHandler(FollowerHandler):
    """``PReLU``: element-wise with one slope; a follower with one slope per channel."""

    width_attr = "num_parameters"

    def tensors(self, module: nn.Module) -> dict[str, float | None]:
        return {"weight": 0.25}

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        if ctx.module_of(node).num_parameters == 1:
            layout = ctx.input(node)
            return None if layout is None else layout.with_path("PReLU")
        return super().flow(node, ctx)


@register_module(nn.LayerNorm)
class LayerNormHandler(OpHandler):
    """``LayerNorm`` over the last dims: across the channels it blocks their groups.

    The mean and variance over the channels change with every channel added, so no new unit can
    leave the output unchanged; over other dims it is per channel and passes.
    """

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        layout = ctx.input(node)
        if layout is None:
            return None
        normalized = len(ctx.module_of(node).normalized_shape)
        return layer_norm_flow(node, layout, normalized, ctx)


def layer_norm_flow(node: fx.Node, layout: Layout, normalized: int, ctx: FlowContext) -> Layout:
    """Shared by ``nn.LayerNorm`` and ``F.layer_norm``: normalising the last ``normalized`` dims."""
    label = ctx.op_name(node)
    channel = layout.normalized_dim()
    over_channels = layout.dim < 0 and -layout.dim <= normalized
    if channel is not None and layout.rank is not None:
        over_channels = channel >= layout.rank - normalized
    elif layout.dim >= 0 and layout.rank is None:
        over_channels = True  # cannot tell: be safe
    if over_channels:
        ctx.block(
            node,
            layout,
            f"{label} normalises across these channels; adding channels changes its mean and "
            "variance, so the widening cannot be exact",
        )
    return layout.with_path(label)


@register_module(nn.MultiheadAttention)
class MultiheadAttentionHandler(OpHandler):
    """``nn.MultiheadAttention``: its embedding dim cannot grow; the result is a new blocked group."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> tuple[Layout | None, ...]:
        module = ctx.module_of(node)
        reason = (
            f"the embedding dim of attention '{node.target}' (embed_dim={module.embed_dim}) is "
            "split into heads and mixed by the attention weights; widening it is not supported"
        )
        ctx.block(node, ctx.tracked_inputs(node), reason)
        group = ctx.new_group(str(node.target), module.embed_dim, producer=False)
        ctx.blocked[group].append(reason)
        query = ctx.input(node)
        rank = query.rank if query is not None else ctx.rank_of(node.args[0])
        segments = (Segment(group, 0, module.embed_dim),)
        out = Layout(dim=-1 if rank is None else rank - 1, rank=rank, segments=segments)
        return (out, None)


_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.LogSigmoid,
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.FeatureAlphaDropout, nn.Softsign, nn.Tanhshrink, nn.GLU,
)  # fmt: skip
_POOL_MODULES = {
    1: (nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d, nn.LPPool1d),
    2: (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d),
    3: (nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d),
}


@register_module(*(m for m in _ELEMENTWISE_MODULES if m is not nn.GLU))
class PassModuleHandler(OpHandler):
    """Element-wise activations, dropout and ``Identity``: the channels pass unchanged."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        layout = ctx.input(node)
        return None if layout is None else layout.with_path(type(ctx.module_of(node)).__name__)


@register_module(*_POOL_MODULES[1], *_POOL_MODULES[2], *_POOL_MODULES[3], nn.Upsample)
class PoolModuleHandler(OpHandler):
    """Pooling and upsampling over the trailing spatial dims keep the channels."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        module = ctx.module_of(node)
        if getattr(module, "return_indices", False):
            ctx.refuse(node, "pooling with return_indices=True", fix="use return_indices=False")
        spatial = next((d for d, types in _POOL_MODULES.items() if isinstance(module, types)), 0)
        return spatial_flow(node, ctx.input(node), spatial, type(module).__name__, ctx)


def spatial_flow(
    node: fx.Node, layout: Layout | None, spatial: int, label: str, ctx: FlowContext
) -> Layout | None:
    """An op over the last ``spatial`` dims (0: unknown, at least one): channels must be before."""
    if layout is None:
        return None
    channel = layout.normalized_dim()
    inside = layout.flattened or channel is None
    if not inside and layout.rank is not None:
        inside = channel >= layout.rank - max(spatial, 1)
    if inside:
        ctx.refuse(
            node,
            f"'{label}' works on the trailing spatial dims but the channels are on dim "
            f"{channel} (flattened={layout.flattened})",
            fix="apply it to a channel-first map before flattening",
        )
    return layout.with_path(label)


@register_module(nn.Flatten)
class FlattenModuleHandler(OpHandler):
    """``nn.Flatten(start_dim, end_dim)``."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        from netsurgeon.graph.reshaping import flatten_flow

        module = ctx.module_of(node)
        return flatten_flow(node, ctx.input(node), module.start_dim, module.end_dim, "Flatten", ctx)


@register_module(nn.Softmax, nn.LogSoftmax)
class SoftmaxModuleHandler(OpHandler):
    """``nn.Softmax(dim)``: over the channels it blocks their groups."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        from netsurgeon.graph.functional import softmax_flow

        return softmax_flow(node, ctx.input(node), ctx.module_of(node).dim, ctx)
