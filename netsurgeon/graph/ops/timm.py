"""timm's layers that override ``forward`` of a handled class, each with the handler it needs.

``timm.layers.Linear`` overrides ``nn.Linear.forward`` only to cast for TorchScript; outside
scripting it computes ``F.linear(x, weight, bias)``, so the ``Linear`` handler describes it.

``timm.layers.Conv2dSame`` overrides ``nn.Conv2d.forward`` with TensorFlow's "same" padding: it
pads the two spatial dims by amounts computed from the kernel, stride and dilation (never from the
channels), then runs ``F.conv2d`` with the module's own tensors, so the conv handler describes it.

``timm.layers.LayerNorm`` and ``LayerNorm2d`` override ``nn.LayerNorm.forward`` with
``F.layer_norm`` of the module's own tensors (``LayerNorm2d`` over dim 1, between two permutes):
the LayerNorm handlers of :mod:`.layer_norm` describe them. ``GroupNorm1`` (PoolFormer's norm)
overrides ``nn.GroupNorm.forward`` with ``F.group_norm(x, self.num_groups, ...)`` of its own
tensors: the GroupNorm handler describes it (one group of all channels grows by whole groups).
MetaFormer's ``Scale`` multiplies by ``scale.view(self.shape)``, a stored shape: its handler makes
it a follower and grows ``shape`` with it.

``timm.layers.BatchNormAct2d`` subclasses ``nn.BatchNorm2d`` and overrides ``forward`` with
``act(drop(batch_norm(x)))``; ``GroupNormAct`` does the same over ``nn.GroupNorm``. By the
soundness rule (:mod:`netsurgeon.graph.soundness`) the parent's handler does not describe them;
these handlers do: the parent's flow, once the ``drop`` and ``act`` submodules are checked to be
element-wise modules the registry knows (and that the soundness rule accepts). They register
themselves when timm is in use (:func:`register_timm_layers`, called by the tracer), so importing
netsurgeon never imports timm.

``timm.layers.attention.Attention`` (ViT's) is traced through: its forward cuts ``qkv`` with
``reshape(B, N, 3, self.num_heads, self.head_dim)`` and merges with
``reshape(B, N, self.attn_dim)``, literals that :class:`TimmAttentionHandler` vouches for and
updates (``num_heads``, ``attn_dim``) when the heads grow, with ``fused_attn`` either way. Its
explicit path calls ``resolve_self_attn_mask(N, attn, attn_mask, is_causal)`` (a causal
``(N, N)`` bias, or the caller's mask) and ``maybe_add_mask(attn, bias)``: the bias must
broadcast over the heads, or be ``None`` as traced.

Swin's ``WindowAttention`` is a leaf layer tied to its stream (:class:`TimmWindowAttentionHandler`,
:mod:`.window_attention`): its head size is ``-1`` in the cut and its bias table is per head.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from torch import fx, nn

from netsurgeon.graph.axes import Axis
from netsurgeon.graph.ops.base import FollowerHandler
from netsurgeon.graph.ops.elementwise import PassModuleHandler
from netsurgeon.graph.ops.layer_norm import LayerNorm2dHandler, LayerNormHandler
from netsurgeon.graph.ops.linear import ConvHandler, LinearHandler
from netsurgeon.graph.ops.norm import BatchNormHandler, GroupNormHandler
from netsurgeon.graph.ops.owners import HeadOwnerHandler
from netsurgeon.graph.ops.window_attention import WindowAttentionLayerHandler
from netsurgeon.graph.registry import OpHandler, Registry, register_function
from netsurgeon.graph.soundness import module_reason

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext
    from netsurgeon.graph.layout import Layout

__all__ = ["register_timm_layers"]


class _NormActMixin:
    """``act(drop(norm(x)))``: the norm's flow, after checking ``drop`` and ``act``."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        module = ctx.module_of(node)
        for name in ("drop", "act"):
            reason = _elementwise_reason(getattr(module, name, None), ctx.registry)
            if reason is not None:
                ctx.refuse(
                    node,
                    f"its '{name}' ({type(getattr(module, name)).__qualname__}) {reason}",
                    fix="use an element-wise activation torch.nn provides",
                )
        return super().flow(node, ctx)  # type: ignore[misc]


class BatchNormActHandler(_NormActMixin, BatchNormHandler):
    """timm's ``BatchNormAct2d``: a BatchNorm follower followed by element-wise modules."""


class GroupNormActHandler(_NormActMixin, GroupNormHandler):
    """timm's ``GroupNormAct``: a GroupNorm follower followed by element-wise modules."""


class MetaFormerScaleHandler(FollowerHandler):
    """timm's MetaFormer ``Scale`` (PoolFormer's layer scale): ``x * self.scale.view(self.shape)``
    with ``shape`` ``(C, 1, 1)`` (channels on dim 1 of a 4-d map) or ``(C,)`` (channels last). A
    follower whose new entries are 1; ``shape`` is a size attribute that grows with it."""

    def width(self, module: nn.Module) -> int:
        return int(module.scale.shape[0])

    def entries(self, module: nn.Module) -> tuple[Axis, ...]:
        return (Axis("scale", 0, 1.0),)

    def follower_attrs(self, module: nn.Module, added: int) -> dict[str, object]:
        return {"shape": (self.width(module) + added, *tuple(module.shape)[1:])}

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        module, layout = ctx.module_of(node), ctx.input(node)
        if layout is None:
            return None
        shape = tuple(module.shape)
        rank = layout.rank if layout.rank is not None else len(shape)  # unknown: from the end
        where = layout.dim if layout.dim < 0 else layout.dim - rank
        fits = shape[0] == self.width(module) and all(n == 1 for n in shape[1:])
        if not fits or where != -len(shape) or layout.flattened or layout.heads is not None:
            ctx.refuse(
                node,
                f"Scale with shape {shape} scales dim {-len(shape)} (from the end) but the "
                f"{ctx.describe(layout)}",
                fix="scale the channels where they are",
            )
        ctx.follow(node, str(node.target), layout, self.width(module))
        return layout.with_path("Scale")


class TimmAttentionHandler(HeadOwnerHandler):
    """timm's ``Attention``: ``num_heads`` heads of ``head_dim``, merged to ``attn_dim``."""

    count_attr = "num_heads"
    size_attr = "head_dim"
    width_attrs = ("attn_dim",)


class TimmWindowAttentionHandler(WindowAttentionLayerHandler):
    """timm's Swin ``WindowAttention`` (:mod:`.window_attention`): a leaf layer of ``dim``
    channels over ``(B * windows, N, C)``; its forward cuts ``qkv(x).reshape(B, N, 3,
    self.num_heads, -1)``, adds ``_get_rel_pos_bias()`` (the per-head table) and the shift mask
    (one per window, broadcast over the heads), with ``fused_attn`` either way."""

    qualified = "timm.models.swin_transformer.WindowAttention"
    relies_on = ("forward", "_get_rel_pos_bias")
    rank = 3
    width_attrs = ("dim",)


_ATTENTION = "timm.layers.attention"


@register_function(f"{_ATTENTION}.resolve_self_attn_mask")
class TimmResolveMaskHandler(OpHandler):
    """``resolve_self_attn_mask(N, attn, mask, causal)``: reads ``attn`` for its dtype and device
    only; the bias it returns carries no channels (checked where it is added)."""

    knows_heads = True

    def flow(self, node: fx.Node, ctx: FlowContext) -> None:
        return None


@register_function(f"{_ATTENTION}.maybe_add_mask")
class TimmAddMaskHandler(OpHandler):
    """``maybe_add_mask(scores, bias)``: ``scores + bias``; a bias that was ``None`` as traced
    (no tensor when the shapes were propagated) leaves the scores as they are."""

    knows_heads = True

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        scores, bias = node.args[0], node.args[1] if len(node.args) > 1 else None
        was_none = (
            isinstance(bias, fx.Node)
            and "tensor_meta" not in bias.meta
            and ctx.shape_of(scores) is not None
        )
        if bias is None or was_none:
            return ctx.layout(scores)
        return ctx.join(node, [scores, bias], "maybe_add_mask")


def _elementwise_reason(module: Any, registry: Registry) -> str | None:
    if module is None:
        return "is missing"
    handler = registry.for_module(module)
    if not isinstance(handler, PassModuleHandler):
        return "is not an element-wise module netsurgeon knows"
    return module_reason(module, handler, registry.registered_type(module))  # type: ignore[arg-type]


def register_timm_layers(registry: Registry) -> None:
    """Register the handlers for timm's layers, if timm is imported (idempotent)."""
    layers = (
        ("timm.layers.norm_act", "BatchNormAct2d", BatchNormActHandler),
        ("timm.layers.norm_act", "GroupNormAct", GroupNormActHandler),
        ("timm.layers.linear", "Linear", LinearHandler),
        # ``F.layer_norm`` (or timm's fused kernel of the same function) with the module's own
        # tensors; ``LayerNorm2d`` permutes the channels last around it
        ("timm.layers.norm", "LayerNorm", LayerNormHandler),
        ("timm.layers.norm", "LayerNorm2d", LayerNorm2dHandler),
        # ``F.group_norm`` (or timm's fused kernel of it) with ``num_groups`` and its own tensors
        ("timm.layers.norm", "GroupNorm1", GroupNormHandler),
        # ``pad_same`` pads the spatial dims only, then runs the parent's convolution
        ("timm.layers.conv2d_same", "Conv2dSame", ConvHandler),
        ("timm.layers.attention", "Attention", TimmAttentionHandler),
        # Swin's window attention as one layer grown by heads with its stream
        ("timm.models.swin_transformer", "WindowAttention", TimmWindowAttentionHandler),
        ("timm.models.metaformer", "Scale", MetaFormerScaleHandler),
    )
    for module_name, name, handler_type in layers:
        layer = getattr(sys.modules.get(module_name), name, None)
        new = isinstance(layer, type) and not registry.has_module(layer)
        if new and issubclass(layer, nn.Module):
            registry.add_module(layer, handler_type())
