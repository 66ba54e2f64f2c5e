"""torchvision's wrapped functions (``torch.fx.wrap``): they appear as single fx nodes.

Registered by qualified name (``__module__`` + ``__qualname__``), so neither ``torchvision.ops``
nor ``torchvision.models`` is imported by ``import netsurgeon``:

* ``stochastic_depth`` (drop path) scales whole samples: element-wise on the channels;
* Swin's ``shifted_window_attention`` takes its projection weights as arguments: called
  directly it mixes the channels (blocks); the module that calls it, ``ShiftedWindowAttention``,
  is one layer grown by whole heads (:class:`ShiftedWindowAttentionHandler`);
* Swin's ``_patch_merging_pad`` gathers the 2x2 neighbours of a ``(..., H, W, C)`` map into the
  channels: the output's last dim holds 4 copies of the input's segments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import fx, nn

from netsurgeon.graph.axes import Axis
from netsurgeon.graph.layout import Layout, Segment
from netsurgeon.graph.nodes import first_layout
from netsurgeon.graph.ops.base import LayerHandler
from netsurgeon.graph.ops.attention import MixingHandler
from netsurgeon.graph.ops.elementwise import ElementwiseHandler
from netsurgeon.graph.registry import OpHandler, register_function, register_module
from netsurgeon.graph.soundness import module_reason

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext

__all__ = [
    "PatchMerging3dHandler",
    "PatchMergingHandler",
    "ShiftedWindowAttentionHandler",
    "StochasticDepthHandler",
    "WindowAttentionHandler",
]


_SWIN = "torchvision.models.swin_transformer"
_WINDOW_ATTENTION = f"{_SWIN}.ShiftedWindowAttention"


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


@register_module(_WINDOW_ATTENTION)
class ShiftedWindowAttentionHandler(LayerHandler):
    """Swin's ``ShiftedWindowAttention`` (torchvision) as one layer of width ``C``, grown by
    whole heads with the stream it reads, as ``nn.MultiheadAttention`` (:mod:`.multihead`).

    Its forward calls ``shifted_window_attention(x, qkv.weight, proj.weight, bias, window,
    num_heads, ...)``, which cuts ``qkv(x)`` into ``num_heads`` heads of ``C // num_heads`` (``C``
    read off ``x``): the stream's width is its internal width, so its input and output groups are
    one, growing by multiples of ``d = C // num_heads`` (``num_heads`` grows, ``d`` and the
    softmax scale stay). Padding, the cyclic shift and the window partition move spatial dims
    only. Grown by ``k = m d``:

    * ``qkv.weight`` ``(3C, C)``: ``k`` new rows at the end of each of ``q``, ``k``, ``v`` (the
      ``m`` new heads: drawn), new columns as a consumer of the stream; ``qkv.bias`` new 0;
    * ``proj.weight`` ``(C, C)``: new rows as a producer of the stream (its construction), new
      columns 0 (the new heads are read through zeros, so any head output is exact);
    * ``relative_position_bias_table`` ``((2w-1)^2, heads)``: ``m`` new columns 0, one per new
      head (added to the new heads' scores only);
    * ``num_heads`` and the Linears' ``in_features``/``out_features`` follow.

    Example: ``ShiftedWindowAttention(8, [2, 2], [0, 0], 2)`` grown by 8 has 4 heads of 4,
    ``qkv`` ``(48, 16)``, ``proj`` ``(16, 16)``, a bias table ``(9, 4)``.
    """

    relies_on = ("forward", "get_relative_position_bias")

    def out_width(self, module: nn.Module) -> int:
        return int(module.proj.weight.shape[0])

    in_width = out_width
    in_attr = "qkv.in_features"  # read through in_width/size_attrs; marks an input width

    def fan_in(self, module: nn.Module) -> float:
        return float(self.in_width(module))

    def conv_groups(self, module: nn.Module) -> int:
        return 1

    def rows(self, module: nn.Module) -> tuple[Axis, ...]:
        bias = module.proj.bias is not None
        return (Axis("proj.weight", 0, None), *([Axis("proj.bias", 0, 0.0)] if bias else []))

    def columns(self, module: nn.Module) -> tuple[Axis, ...]:
        return (Axis("qkv.weight", 1, 0.0),)

    def inner_axes(self, module: nn.Module) -> tuple[tuple, ...]:
        """``(axis, copies[, channels per entry])`` of the heads inside (``surgery.inner``)."""
        found: list[tuple] = [(Axis("proj.weight", 1, 0.0), 1), (Axis("qkv.weight", 0, None), 3)]
        if module.qkv.bias is not None:
            found.append((Axis("qkv.bias", 0, 0.0), 3))
        found.append((Axis("relative_position_bias_table", 1, 0.0), 1, _head_dim(module)))
        return tuple(found)

    def tensor_names(self, module: nn.Module) -> frozenset[str]:
        axes = (*self.rows(module), *self.columns(module), *(e[0] for e in self.inner_axes(module)))
        # the index buffer holds window positions, no channels
        return frozenset(a.tensor for a in axes) | {"relative_position_index"}

    def size_attrs(self, module: nn.Module, *, out_width: int, in_width: int) -> dict[str, int]:
        return {
            "num_heads": out_width // _head_dim(module),
            "qkv.in_features": out_width,
            "qkv.out_features": 3 * out_width,
            "proj.in_features": out_width,
            "proj.out_features": out_width,
        }

    def role_of(self, module: nn.Module) -> str:
        """A layer (an fx leaf) only where its forward is torchvision's: a subclass with its own
        (``ShiftedWindowAttentionV2``'s cosine attention and bias MLP) is traced through."""
        base = next((c for c in type(module).__mro__ if _name(c) == _WINDOW_ATTENTION), None)
        own = base is not None and all(
            getattr(type(module), m) is getattr(base, m) and m not in vars(module)
            for m in self.relies_on
        )
        return "layer" if own else "op"

    def output_layout(self, node: fx.Node, module: nn.Module, group: int, ctx: FlowContext):
        query = ctx.input(node)
        rank = query.rank if query is not None else ctx.rank_of(node.args[0])
        segments = (Segment(group, 0, self.out_width(module)),)
        return Layout(dim=-1 if rank is None else rank - 1, rank=rank, segments=segments)

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        module = ctx.module_of(node)
        width = self.out_width(module)
        group = ctx.new_group(str(node.target), width)
        query = ctx.input(node)
        out = self.output_layout(node, module, group, ctx)
        problem = _window_problem(module, query, ctx)
        if problem is not None:
            reason = f"window attention '{node.target}' grows by whole heads with its input, but {problem}"
            ctx.block(node, ctx.tracked_inputs(node), reason)
            ctx.blocked[group].append(f"{reason} (at {node.format_node()})")
            return out
        ctx.consume(node, query, width)
        ctx.union(group, query.segments[0].group)
        ctx.require_unit(out, _head_dim(module))
        return out


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _head_dim(module: nn.Module) -> int:
    return int(module.proj.weight.shape[0]) // int(module.num_heads)


def _window_problem(module: nn.Module, query: Layout | None, ctx: FlowContext) -> str | None:
    """Why growing ``module`` by whole heads with its input would not be exact, or ``None``."""
    if query is None:
        return "its input carries no channels netsurgeon tracks"
    seg = query.segments[0]
    whole = len(query.segments) == 1 and seg.group is not None and seg.start == 0
    if not whole or seg.stop != ctx.width(seg.group) or not query.is_last_dim() or query.heads:
        return "its input is not one whole group on the last dim"
    if query.factor != 1 or query.rank != 4:
        return f"its input is not a (B, H, W, C) map (rank {query.rank})"
    width = int(module.proj.weight.shape[0])
    shapes = (tuple(module.qkv.weight.shape), tuple(module.proj.weight.shape))
    if shapes != ((3 * width, width), (width, width)) or width % module.num_heads:
        return f"its qkv/proj weights {shapes} are not (3C, C)/(C, C) with C heads-divisible"
    table = module.relative_position_bias_table
    if table.dim() != 2 or table.shape[1] != module.num_heads:
        return f"its relative_position_bias_table {tuple(table.shape)} is not (L, num_heads)"
    linear = ctx.registry.for_module(module.qkv)
    for name in ("qkv", "proj"):
        sub = getattr(module, name)
        why = None if type(sub) is nn.Linear else f"is a {type(sub).__qualname__}, not nn.Linear"
        why = why or module_reason(sub, linear, nn.Linear)
        if why is not None:
            return f"its '{name}' {why} (its weights are read directly)"
    return None
