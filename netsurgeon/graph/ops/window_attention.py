"""Swin's window attention as one layer that grows by whole heads with the stream it reads.

torchvision's ``ShiftedWindowAttention`` and timm's ``WindowAttention`` hold ``qkv`` and ``proj``
Linears, ``num_heads`` and a relative position bias table of one column per head. Their forward
cuts ``qkv(x)`` into ``num_heads`` heads whose size is computed (``C // num_heads`` or ``-1``), so
the heads' total width must stay the stream's width ``C``: as for ``nn.MultiheadAttention``
(:mod:`.multihead`), the input group and the output group are one, growing by multiples of
``d = C / num_heads`` (``num_heads`` grows; ``d`` and the softmax scale stay). Window padding,
the cyclic shift and the window partition move spatial dims only, and the shift mask is per
window, the same for every head. Grown by ``k = m d``:

* ``qkv.weight`` ``(3C, C)``: ``k`` new rows at the end of each of ``q``, ``k``, ``v`` (the
  ``m`` new heads: drawn), new columns as a consumer of the stream; ``qkv.bias`` new entries 0;
* ``proj.weight`` ``(C, C)``: new rows as a producer of the stream (its construction), new
  columns 0, so the new heads are read through zeros and any head output is exact;
* ``relative_position_bias_table`` ``((2w-1)^2, heads)``: ``m`` new columns 0, one per new
  head (added to the new heads' scores only);
* ``num_heads`` (and ``dim``) and the Linears' ``in_features``/``out_features`` follow.

Example: a window attention of ``C = 8`` in 2 heads grown by 8 has 4 heads of 4, ``qkv``
``(48, 16)``, ``proj`` ``(16, 16)``, a bias table ``(L, 4)``.

Blocked with the reason: an input that is not one whole group on the last dim, weights not of
these shapes (timm's ``head_dim`` set apart from ``dim // num_heads``), a ``qkv``/``proj`` that is
not a plain ``nn.Linear`` the soundness rule accepts, other submodules than element-wise ones.
A subclass with its own forward is traced through (:meth:`role_of`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import fx, nn

from netsurgeon.graph.axes import Axis
from netsurgeon.graph.layout import Layout, Segment
from netsurgeon.graph.ops.base import LayerHandler
from netsurgeon.graph.ops.multihead import join_stream, whole_group_last
from netsurgeon.graph.soundness import module_reason

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext

__all__ = ["WindowAttentionLayerHandler"]

#: submodules that may sit beside ``qkv`` and ``proj`` (timm's dropouts and softmax)
_ELEMENTWISE = (nn.Dropout, nn.Identity, nn.Softmax)


class WindowAttentionLayerHandler(LayerHandler):
    """A Swin window attention: a layer of width ``C`` whose input is its own group."""

    #: the registered class's qualified name (``role_of`` finds it in a module's MRO)
    qualified = ""
    #: the rank of the input (torchvision: ``(B, H, W, C)``; timm: ``(B * windows, N, C)``)
    rank = 4
    #: plain attributes holding the width (timm's ``dim``)
    width_attrs: tuple[str, ...] = ()

    def role_of(self, module: nn.Module) -> str:
        """A layer (an fx leaf) only where the methods it relies on are the registered class's:
        a subclass with its own (torchvision's ``ShiftedWindowAttentionV2``) is traced through."""
        base = next((c for c in type(module).__mro__ if _name(c) == self.qualified), None)
        own = base is not None and all(
            getattr(type(module), m) is getattr(base, m) and m not in vars(module)
            for m in self.relies_on
        )
        return "layer" if own else "op"

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
        } | {a: out_width for a in self.width_attrs}

    def output_layout(self, node: fx.Node, module: nn.Module, group: int, ctx: FlowContext):
        query = ctx.input(node)
        rank = query.rank if query is not None else ctx.rank_of(node.args[0])
        segments = (Segment(group, 0, self.out_width(module)),)
        return Layout(dim=-1 if rank is None else rank - 1, rank=rank, segments=segments)

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        module = ctx.module_of(node)
        group = ctx.new_group(str(node.target), self.out_width(module))
        query = ctx.input(node)
        out = self.output_layout(node, module, group, ctx)
        problem = self.problem(node, module, query, ctx)
        reason = (
            None
            if problem is None
            else (
                f"window attention '{node.target}' grows by whole heads with its input, but {problem}"
            )
        )
        join_stream(node, ctx, group, out, (self.in_width(module), _head_dim(module)), reason)
        return out

    def problem(
        self, node: fx.Node, module: nn.Module, query: Layout | None, ctx: FlowContext
    ) -> str | None:
        """Why growing ``module`` by whole heads with its input would not be exact, or ``None``."""
        if query is None:
            return "its input carries no channels netsurgeon tracks"
        if not whole_group_last(query, ctx):
            return "its input is not one whole group on the last dim"
        if query.factor != 1 or query.rank != self.rank:
            return f"its input is not of rank {self.rank} with the channels last"
        if any(ctx.layout(n) is not None for n in node.all_input_nodes if n is not node.args[0]):
            return "another of its arguments (the mask) carries channels"
        width, heads = self.out_width(module), int(module.num_heads)
        shapes = (tuple(module.qkv.weight.shape), tuple(module.proj.weight.shape))
        if shapes != ((3 * width, width), (width, width)) or width % heads:
            return (
                f"its qkv/proj weights {shapes} are not (3C, C)/(C, C) with C = {width} in "
                f"{heads} heads (a head size set apart from the width)"
            )
        table = module.relative_position_bias_table
        if table.dim() != 2 or table.shape[1] != heads:
            return f"its relative_position_bias_table {tuple(table.shape)} is not (L, num_heads)"
        return _submodule_problem(module, ctx)


def _submodule_problem(module: nn.Module, ctx: FlowContext) -> str | None:
    """``qkv``/``proj`` plain ``nn.Linear``s, the rest element-wise (a softmax over the keys),
    each as the soundness rule accepts it (no hook, parametrization or pruning)."""
    for name, sub in module.named_children():
        linear = name in ("qkv", "proj")
        allowed = type(sub) is nn.Linear if linear else isinstance(sub, _ELEMENTWISE)
        if isinstance(sub, nn.Softmax) and sub.dim not in (-1, 3):
            allowed = False
        handler = ctx.registry.for_module(sub)
        why = None if allowed and handler is not None else f"is a {type(sub).__qualname__}"
        why = why or module_reason(sub, handler, ctx.registry.registered_type(sub))
        if why is not None:
            return f"its '{name}' {why}"
    return None


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _head_dim(module: nn.Module) -> int:
    return int(module.proj.weight.shape[0]) // int(module.num_heads)
