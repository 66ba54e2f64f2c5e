"""torchvision's wrapped functions (``torch.fx.wrap``): they appear as single fx nodes.

Registered by qualified name (``__module__`` + ``__qualname__``), so neither ``torchvision.ops``
nor ``torchvision.models`` is imported by ``import netsurgeon``:

* ``stochastic_depth`` (drop path) scales whole samples: element-wise on the channels;
* Swin's ``shifted_window_attention`` takes its projection weights as arguments: called
  directly it mixes the channels (blocks); the module that calls it, ``ShiftedWindowAttention``,
  is one layer grown by whole heads (:mod:`.window_attention`);
* Swin's ``_patch_merging_pad`` gathers the 2x2 neighbours of a ``(..., H, W, C)`` map into the
  channels: the output's last dim holds 4 copies of the input's segments.

And one module, by qualified name too: ``VisionTransformer`` (traced through) reshapes its patch
embedding with ``x.reshape(n, self.hidden_dim, n_h * n_w)``; its handler vouches for that literal
(:mod:`netsurgeon.graph.width_attrs`) and grows ``hidden_dim`` with the stream; its
``EncoderBlock`` records its attention's head count, which grows with the heads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import fx

from netsurgeon.graph.layout import Layout
from netsurgeon.graph.nodes import first_layout
from netsurgeon.graph.ops.attention import MixingHandler
from netsurgeon.graph.ops.elementwise import ElementwiseHandler
from netsurgeon.graph.ops.window_attention import WindowAttentionLayerHandler
from netsurgeon.graph.registry import OpHandler, register_function, register_module
from netsurgeon.graph.width_attrs import WidthOwnerHandler

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext

__all__ = [
    "EncoderBlockHandler",
    "PatchMerging3dHandler",
    "PatchMergingHandler",
    "ShiftedWindowAttentionHandler",
    "StochasticDepthHandler",
    "VisionTransformerHandler",
    "WindowAttentionHandler",
]


_SWIN = "torchvision.models.swin_transformer"


@register_module("torchvision.models.vision_transformer.VisionTransformer")
class VisionTransformerHandler(WidthOwnerHandler):
    """torchvision's ViT: ``hidden_dim`` is the width of the stream ``conv_proj`` writes, read in
    ``_process_input`` (``reshape(n, self.hidden_dim, n_h * n_w)``); nothing else in its forward
    sizes a channel dim. ``mlp_dim`` only builds the blocks (each MLP's width is its own)."""

    width_attrs = ("hidden_dim",)
    relies_on = ("forward", "_process_input")


@register_module("torchvision.models.vision_transformer.EncoderBlock")
class EncoderBlockHandler(WidthOwnerHandler):
    """torchvision ViT's block: ``num_heads`` records ``self_attention``'s head count (its forward
    never reads it); it grows with the heads, so the block describes itself truly."""

    head_counts = (("num_heads", "self_attention"),)


@register_function("torchvision.ops.stochastic_depth.stochastic_depth")
class StochasticDepthHandler(ElementwiseHandler):
    """``torchvision.ops.stochastic_depth``: scales whole samples, element-wise on the channels."""

    stream_effect = "same"  # one factor per sample: a mean over the channels scales alike

    def stream_effect_of(self, node: fx.Node, ctx: FlowContext) -> str:
        return self.stream_effect


@register_function(f"{_SWIN}.shifted_window_attention", f"{_SWIN}.shifted_window_attention_3d")
class WindowAttentionHandler(MixingHandler):
    """Swin's window attention: its projection weights are arguments; it mixes the channels."""


@register_function(f"{_SWIN}._patch_merging_pad")
class PatchMergingHandler(OpHandler):
    """Swin's patch merging: the 2x2 (3-d: 2x2x2) neighbours of ``(..., H, W, C)`` into the channels."""

    copies = 4

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        layout = first_layout(node, ctx)
        if layout is None:
            return None
        if not layout.is_last_dim() or layout.factor != 1:
            ctx.refuse(node, "patch merging reads the channels on the last dim", fix="-")
        label = ctx.op_name(node)
        return layout.replace(segments=layout.segments * self.copies).with_path(label)


@register_function(f"{_SWIN}._patch_merging_pad_3d")
class PatchMerging3dHandler(PatchMergingHandler):
    """The 3-d patch merging: 2x2x2 neighbours, 8 copies of the input's segments."""

    copies = 8


@register_module(f"{_SWIN}.ShiftedWindowAttention")
class ShiftedWindowAttentionHandler(WindowAttentionLayerHandler):
    """torchvision's ``ShiftedWindowAttention``: its forward calls ``shifted_window_attention(x,
    qkv.weight, proj.weight, bias, window, num_heads, ...)``, which pads, shifts and partitions
    the spatial dims of ``(B, H, W, C)`` and cuts ``qkv(x)`` into ``num_heads`` heads of
    ``C // num_heads`` (``C`` read off ``x``): grown as :mod:`.window_attention` says.
    ``ShiftedWindowAttentionV2`` (cosine attention, a bias MLP) overrides ``forward``: traced
    through, the function blocks."""

    qualified = f"{_SWIN}.ShiftedWindowAttention"
    relies_on = ("forward", "get_relative_position_bias")
    rank = 4
