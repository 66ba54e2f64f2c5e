"""``nn.MultiheadAttention`` as one layer that grows by whole heads with the stream it reads.

Its width ``embed_dim = E`` is three things at once: the query's features (the stream it reads),
its output's features (the stream it writes) and its internal width ``num_heads * head_dim``. So
its input group and its output group are one group (they grow together, by ``k``), in multiples
of ``head_dim`` (the heads stay of ``head_dim``: the scale ``1/sqrt(head_dim)`` stays):

* ``in_proj_weight`` ``(3E, E)``: ``k`` new rows at the end of each of the ``q``, ``k``, ``v``
  blocks (the new heads: drawn), ``k`` new columns (the new stream channels: 0);
* ``in_proj_bias`` ``(3E)``, ``bias_k``/``bias_v`` ``(1, 1, E)``: new entries 0;
* ``out_proj.weight`` ``(E, E)``: ``k`` new rows (new stream channels: drawn, like any
  producer's) and ``k`` new columns (the new heads: 0); ``out_proj.bias``: new entries 0;
* ``embed_dim``, ``num_heads`` (and ``kdim``/``vdim`` when equal to ``embed_dim``) follow, and
  so does a parent's record of the head count (torchvision's ``EncoderBlock.num_heads``,
  :func:`~netsurgeon.graph.width_attrs.follow_head_count`).

Exact: the old heads read the new stream channels through zero columns, and the new heads are
read through zero columns, so the old output channels are unchanged; the new output channels
are the stream's business (they are read through zero columns wherever nothing normalises the
stream, and a norm's construction otherwise). Refused (the group blocks, naming the reason):
a key or value that carries other channels than the query (cross-attention over tracked
channels), a query that carries none (its width could not grow), the averaged attention weights
used (they change with the head count), a 3-d ``attn_mask`` (one per head), a query that is not
one whole group on its last dim. New heads are drawn under every init (``surgery.inner``).
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING

from torch import fx, nn

from netsurgeon.graph.axes import Axis
from netsurgeon.graph.layout import Layout, Segment
from netsurgeon.graph.nodes import node_arg
from netsurgeon.graph.ops.base import LayerHandler
from netsurgeon.graph.registry import register_module
from netsurgeon.graph.width_attrs import follow_head_count

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext

__all__ = ["MultiheadAttentionHandler", "join_stream", "whole_group_last"]


@register_module(nn.MultiheadAttention)
class MultiheadAttentionHandler(LayerHandler):
    """``nn.MultiheadAttention``: a layer of width ``embed_dim`` whose query is its own group."""

    out_attr = "embed_dim"
    in_attr = "embed_dim"

    def fan_in(self, module: nn.Module) -> float:
        return float(module.embed_dim)

    def conv_groups(self, module: nn.Module) -> int:
        return 1

    def rows(self, module: nn.Module) -> tuple[Axis, ...]:
        bias = module.out_proj.bias is not None
        return (
            Axis("out_proj.weight", 0, None),
            *([Axis("out_proj.bias", 0, 0.0)] if bias else []),
        )

    def columns(self, module: nn.Module) -> tuple[Axis, ...]:
        if module._qkv_same_embed_dim:
            return (Axis("in_proj_weight", 1, 0.0),)
        return (Axis("q_proj_weight", 1, 0.0),)

    def inner_axes(self, module: nn.Module) -> tuple[tuple[Axis, int], ...]:
        """``(axis, copies)``: dims holding ``copies`` blocks of one entry per unit, inside."""
        found = [(Axis("out_proj.weight", 1, 0.0), 1)]
        if module._qkv_same_embed_dim:
            found.append((Axis("in_proj_weight", 0, None), 3))
        else:
            found += [(Axis(f"{p}_proj_weight", 0, None), 1) for p in "qkv"]
        if module.in_proj_bias is not None:
            found.append((Axis("in_proj_bias", 0, 0.0), 3))
        found += [
            (Axis(n, 2, 0.0), 1) for n in ("bias_k", "bias_v") if getattr(module, n) is not None
        ]
        return tuple(found)

    def tensor_names(self, module: nn.Module) -> frozenset[str]:
        axes = (*self.rows(module), *self.columns(module), *(a for a, _ in self.inner_axes(module)))
        return frozenset(a.tensor for a in axes)

    def size_attrs(self, module: nn.Module, *, out_width: int, in_width: int) -> dict[str, int]:
        found = {"embed_dim": out_width, "num_heads": out_width // module.head_dim}
        return found | {
            a: out_width for a in ("kdim", "vdim") if getattr(module, a) == module.embed_dim
        }

    def out_width(self, module: nn.Module) -> int:
        return int(module.embed_dim)

    def output_layout(self, node: fx.Node, module: nn.Module, group: int, ctx: FlowContext):
        query = ctx.input(node)
        rank = query.rank if query is not None else ctx.rank_of(node.args[0])
        segments = (Segment(group, 0, module.embed_dim),)
        return (Layout(dim=-1 if rank is None else rank - 1, rank=rank, segments=segments), None)

    def flow(self, node: fx.Node, ctx: FlowContext) -> tuple[Layout | None, ...]:
        module = ctx.module_of(node)
        group = ctx.new_group(str(node.target), module.embed_dim)
        out = self.output_layout(node, module, group, ctx)
        query = ctx.input(node)
        problem = _problem(node, module, query, ctx)
        reason = (
            None
            if problem is None
            else (
                f"the embedding dim of attention '{node.target}' (embed_dim={module.embed_dim}) "
                f"is split into heads and {problem}"
            )
        )
        if join_stream(node, ctx, group, out[0], (module.embed_dim, module.head_dim), reason):
            follow_head_count(node, out[0], ctx)  # a parent's record of the head count grows too
        return out


def whole_group_last(layout: Layout, ctx: FlowContext) -> bool:
    """Whether ``layout`` holds one whole group on its last dim, not cut into heads."""
    seg = layout.segments[0]
    whole = len(layout.segments) == 1 and seg.group is not None and seg.start == 0
    return whole and seg.stop == ctx.width(seg.group) and layout.is_last_dim() and not layout.heads


def join_stream(
    node: fx.Node,
    ctx: FlowContext,
    group: int,
    out: Layout,
    sizes: tuple[int, int],
    reason: str | None,
) -> bool:
    """An attention layer whose output group is its input's, grown by whole heads: blocked with
    ``reason`` (named at ``node``), else it reads its query's ``sizes[0]`` channels and joins its
    group in units of ``sizes[1]`` (the head size). Returns whether it joined."""
    if reason is not None:
        ctx.block(node, ctx.tracked_inputs(node), reason)
        ctx.blocked[group].append(f"{reason} (at {node.format_node()})")
        return False
    query = ctx.input(node)
    ctx.consume(node, query, sizes[0])
    ctx.union(group, query.segments[0].group)
    ctx.require_unit(out, sizes[1])
    return True


def _problem(
    node: fx.Node, module: nn.Module, query: Layout | None, ctx: FlowContext
) -> str | None:
    """Why growing ``module`` by whole heads with its query would not be exact, or ``None``."""
    key, value = node_arg(node, 1, "key", None), node_arg(node, 2, "value", None)
    if query is None:
        return "its query carries no channels netsurgeon tracks, so its width cannot grow"
    if not whole_group_last(query, ctx):
        return "its query is not one whole group on the last dim"
    for name, other in (("key", key), ("value", value)):
        layout = ctx.layout(other)
        if not module._qkv_same_embed_dim:
            if layout is not None:  # read through k/v_proj_weight, whose columns do not grow
                return f"its {name} carries channels, read through its own projection"
            continue
        if other is node.args[0] or (layout is not None and _same(layout, query, ctx)):
            continue
        if layout is None:
            return f"its {name} is a fixed tensor of embed_dim features, which cannot grow"
        return f"its {name} carries other channels than its query (cross-attention)"
    if _weights_used(node):
        return "the attention weights it returns, averaged over the heads, are used"
    mask = node_arg(node, 5, "attn_mask", None)
    shape = ctx.shape_of(mask)
    if mask is not None and (shape is None or len(shape) == 3):
        return "its attn_mask may hold one mask per head (3-d), which would not grow"
    return None


def _same(a: Layout, b: Layout, ctx: FlowContext) -> bool:
    def key(layout: Layout) -> tuple:
        return (
            *tuple(
                (None if s.group is None else ctx.find(s.group), s.start, s.stop, s.multiplicity)
                for s in layout.segments
            ),
            layout.normalized_dim(),
            layout.factor,
        )

    return key(a) == key(b)


def _weights_used(node: fx.Node) -> bool:
    """Whether anything reads output 1 (the attention weights) or the tuple as a whole."""
    for user in node.users:
        if user.op != "call_function" or user.target is not operator.getitem:
            return True
        if user.args[1] != 0 and user.users:
            return True
    return False
