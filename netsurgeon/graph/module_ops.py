"""Module handlers that own no tensors: the channels pass, move or block.

Activations, dropout and ``Identity`` pass the channels; pooling and upsampling keep them (on a
channel-first map); ``Flatten`` and ``Softmax`` share the function handlers' logic; ``LayerNorm``
across the channels and ``MultiheadAttention`` block their groups. The handlers that own a width
or grow with one (and own their tensor layouts) are in :mod:`netsurgeon.graph.handlers`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import fx, nn

from netsurgeon.graph.layout import Layout, Segment
from netsurgeon.graph.registry import OpHandler, register_module

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext

__all__ = [
    "FlattenModuleHandler",
    "LayerNormHandler",
    "MultiheadAttentionHandler",
    "PassModuleHandler",
    "PoolModuleHandler",
    "SoftmaxModuleHandler",
    "layer_norm_flow",
    "spatial_flow",
]


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
