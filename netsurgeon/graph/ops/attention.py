"""Ops that mix the channels with other tensors: matmul-like ops and attention.

``matmul``/``bmm``/``einsum``/``F.linear`` with a weight passed in mix the channels they read:
those groups block, unless both operands of a ``matmul`` are cut into the same attention heads
(``q @ k.transpose(-2, -1)``, ``attn @ v``: per head, see :mod:`.heads`).
``F.scaled_dot_product_attention(q, k, v)`` of tensors cut into heads ``(B, H, N, d)`` is per
head: the head dim is a batch dim, so the ``q``, ``k`` and ``v`` groups join and the output
carries ``v``'s channels; a mask must broadcast over the heads. Anything else blocks.
``nn.MultiheadAttention`` is a layer of its own (:mod:`.multihead`), ``nn.Transformer*`` modules
are :mod:`.transformer`'s.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import fx

from netsurgeon.graph.layout import Layout
from netsurgeon.graph.nodes import node_arg
from netsurgeon.graph.ops.heads import join_heads, matmul_heads, repeat_heads
from netsurgeon.graph.ratios import tie
from netsurgeon.graph.registry import (
    OpHandler,
    register_function,
    register_method,
)

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext

__all__ = [
    "AttentionHandler",
    "MaskedFillHandler",
    "MixingHandler",
]


_MIXING_FUNCTIONS = (
    torch.matmul, operator.matmul, torch.bmm, torch.mm, torch.einsum, F.linear, torch.baddbmm,
)  # fmt: skip
_MATMUL = (torch.matmul, operator.matmul)


@register_function(*_MIXING_FUNCTIONS)
class MixingHandler(OpHandler):
    """``matmul``, ``einsum``, ``F.linear``, attention: they mix channels with other tensors.

    The groups they read cannot grow (the other operand's size is fixed by the forward); what they
    produce is not tracked. A ``matmul`` of two tensors cut into the same heads is per head.
    """

    knows_heads = True

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        if node.target in _MATMUL and any(lay.heads for lay in ctx.tracked_inputs(node)):
            return matmul_heads(node, node.args[0], node.args[1], ctx)
        ctx.block(
            node,
            ctx.tracked_inputs(node),
            f"'{ctx.op_name(node)}' mixes these channels with a tensor of fixed size",
        )
        return None


@register_function(F.scaled_dot_product_attention)
class AttentionHandler(OpHandler):
    """``F.scaled_dot_product_attention(q, k, v)`` of tensors cut into heads ``(..., H, N, d)``.

    Per head: the ``q``, ``k`` and ``v`` groups join head by head (with ``enable_gqa=True`` and
    fewer key/value heads, the query group grows ``H / H_kv`` times as fast:
    :mod:`netsurgeon.graph.ratios`). The output carries ``v``'s channels. ``attn_mask`` must
    broadcast over the heads (a per-head mask would keep its size). Anything else blocks.
    """

    knows_heads = True

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        names = ("query", "key", "value")
        operands = [node_arg(node, i, name, None) for i, name in enumerate(names)]
        q, k, v = (ctx.layout(o) for o in operands)
        problem = _attention_problem(q, k, v) or _mask_problem(node, q, ctx)
        if problem is not None:
            ctx.block(node, ctx.tracked_inputs(node), f"scaled_dot_product_attention: {problem}")
            return None
        if _entries(q) != _entries(k) and node_arg(node, 7, "enable_gqa", False):
            joined = join_grouped_query(node, operands[0], operands[1:], ctx)
        else:
            joined = join_heads(node, operands, ctx)
        if joined is None:
            return None
        if _entries(q) != _entries(v) or any(s.multiplicity != 1 for s in v.segments):
            v = v.replace(segments=q.segments)  # grouped-query: one output head per query head
        return v.with_path("scaled_dot_product_attention")


@register_function(torch.repeat_interleave)
@register_method("repeat_interleave")
class RepeatInterleaveHandler(OpHandler):
    """``k.repeat_interleave(g, dim=1)`` of key/value heads (grouped-query attention); on
    channels not cut into heads it repeats channels and blocks."""

    knows_heads = True

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        layout = ctx.input(node)
        repeats, dim = node_arg(node, 1, "repeats", None), node_arg(node, 2, "dim", None)
        if layout.heads is None:
            ctx.block(node, layout, "repeat_interleave repeats channels")
            return None
        return repeat_heads(node, layout, repeats, dim, ctx)


def join_grouped_query(node: fx.Node, query: fx.Node, kv: list[fx.Node], ctx: FlowContext):
    """SDPA with ``enable_gqa=True``: ``k``/``v`` join each other; ``q`` is tied to them at the
    ratio of head counts (:mod:`netsurgeon.graph.ratios`). ``None``: blocked."""
    if join_heads(node, kv, ctx) is None:
        return None
    return tie(node, ctx.layout(query), ctx.layout(kv[0]), ctx)


def _entries(layout: Layout) -> int:
    """Entries on the head dim (copies of repeated heads included)."""
    return sum(s.channels * s.multiplicity for s in layout.segments) // layout.heads.size


def _attention_problem(q: Layout | None, k: Layout | None, v: Layout | None) -> str | None:
    """Why ``q``, ``k``, ``v`` are not three tensors cut into heads on one batch dim, or ``None``."""
    if q is None or k is None or v is None:
        return "it mixes these channels with a tensor netsurgeon does not track"
    layouts = (q, k, v)
    if any(lay.heads is None for lay in layouts):
        return (
            "q, k and v are not all cut into heads of a fixed size (reshape them to "
            "(B, N, -1, head_dim) and transpose to (B, H, N, d))"
        )
    rank, dim = q.rank, q.normalized_dim()
    for lay in layouts:
        if lay.rank != rank or lay.normalized_dim() != dim or lay.heads.split is not None:
            return "q, k and v do not hold their heads on one batch dim"
        if rank is None or dim >= rank - 2 or lay.heads.inner != rank - 1:
            return "the heads are not on a batch dim with each head's channels last"
    if q.heads.size != k.heads.size or q.heads.size != v.heads.size:
        return f"q, k and v have heads of different sizes ({q.heads.size}, {k.heads.size}, {v.heads.size})"
    return None


def _mask_problem(node: fx.Node, q: Layout, ctx: FlowContext) -> str | None:
    """A mask that is not a broadcast over the heads (the heads are ``q``'s dim)."""
    mask = node_arg(node, 3, "attn_mask", None)
    if mask is None or _not_passed(mask, ctx):
        return None
    if ctx.layout(mask) is not None:
        return "its attn_mask carries channels"
    shape = ctx.shape_of(mask)
    if shape is None:
        return f"the shape of its attn_mask '{getattr(mask, 'name', mask)}' is unknown"
    at = q.normalized_dim() - (q.rank - len(shape))
    if at >= 0 and shape[at] != 1:
        return (
            f"its attn_mask has {shape[at]} entries on the head dim, a per-head mask that a "
            "widening would not grow"
        )
    return None


def _not_passed(value: object, ctx: FlowContext) -> bool:
    """A model input left at its default ``None`` when traced (timm's ``attn_mask=None``)."""
    return (
        isinstance(value, fx.Node)
        and value.op == "placeholder"
        and value.args[:1] == (None,)
        and ctx.shape_of(value) is None
    )


@register_method("masked_fill", "masked_fill_")
@register_function(torch.masked_fill)
class MaskedFillHandler(OpHandler):
    """``scores.masked_fill(mask, value)``: element-wise; the mask joins like an operand (a fixed
    mask must broadcast along the channels, or over the heads)."""

    knows_heads = True

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        return ctx.join(node, [a for a in node.args[:2]], "masked_fill")
