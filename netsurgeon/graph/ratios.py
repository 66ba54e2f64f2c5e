"""Grouped-query attention: a query group that grows ``g`` times as fast as a key/value group.

With ``H = g * H_kv`` query heads and ``H_kv`` key/value heads, query head ``i`` reads key/value
head ``i // g`` (``k.repeat_interleave(g, dim=1)``, or SDPA's ``enable_gqa=True``). A new
key/value head appended at the end serves ``g`` new query heads appended at the end, so the query
group is not joined to the key/value group (equal growth) but tied to it at a ratio: the
analysis merges it into the key/value group, and its producers' rows hold ``g`` entries per
channel of that group (``ChannelGroup.multiplicity``). Growing the group by ``k`` channels (whole
heads) adds ``k`` rows to ``k_proj``/``v_proj`` and ``g * k`` to ``q_proj``; readers of the query
group (the attention output, merged back and read by ``o_proj``) see ``g`` entries per channel.

Example, LLaMA with 8 query heads and 2 key/value heads of 16::

    q_proj 128 rows, k_proj, v_proj 32 rows      group 'k_proj' (width 32, granularity 16)
    widen {'k_proj': 16}: k_proj, v_proj 48 rows, q_proj 192 rows, o_proj 192 columns

Only a query group that nothing else joins is tied this way (one producer group, the whole
group, no split); anything else blocks with the reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import fx

from netsurgeon.graph.layout import Layout

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext

__all__ = ["resolve_ratios", "tie"]


def tie(node: fx.Node, q: Layout, kv: Layout, ctx: FlowContext) -> Layout | None:
    """Record that ``q``'s group grows ``g = |q| / |kv|`` times as fast as ``kv``'s."""
    qs, ks = q.segments, kv.segments
    channels = sum(s.channels for s in qs)
    kv_channels = sum(s.channels for s in ks)
    if (
        len(qs) != 1
        or len(ks) != 1
        or qs[0].group is None
        or ks[0].group is None
        or kv_channels == 0
        or channels % kv_channels
    ):
        ctx.block(
            node,
            [q, kv],
            "grouped-query attention between query and key/value heads that are not each one "
            "whole group",
        )
        return None
    ctx.ratios.append((node, qs[0], ks[0], channels // kv_channels))
    return q


def resolve_ratios(ctx: FlowContext) -> dict[int, tuple[int, int]]:
    """``{query root: (key/value root, g)}`` for the ties that hold, once joins are final; the
    others block both groups, naming the node. The key and value groups tied to one query group
    join (head ``i`` of each serves the same query heads)."""
    for _, q, kv, _ in ctx.ratios:
        first = next(k for _, q2, k, _ in ctx.ratios if ctx.find(q2.group) == ctx.find(q.group))
        ctx.union(first.group, kv.group)
    found: dict[int, tuple[int, int]] = {}
    for node, q, kv, g in ctx.ratios:
        rq, rk = ctx.find(q.group), ctx.find(kv.group)
        problem = None
        if rq == rk:
            problem = "the query heads are also joined to the key/value heads they share"
        elif q.start != 0 or q.stop != ctx.widths[rq] or kv.start != 0 or kv.stop != ctx.widths[rk]:
            problem = "the query or key/value heads are part of a larger group"
        elif found.get(rq, (rk, g)) != (rk, g) or rk in found:
            problem = "the query group is tied at two ratios, or tied both ways"
        elif _splits(ctx, rq) != 1 or _splits(ctx, rk) != 1:
            problem = "the query or key/value group is cut into splits (a fused projection)"
        if problem is None:
            found[rq] = (rk, g)
            continue
        for gid in (rq, rk):
            ctx.blocked[gid].append(
                f"grouped-query attention ({g} query heads per key/value head): {problem} "
                f"(at {node.format_node()})"
            )
    return found


def _splits(ctx: FlowContext, root: int) -> int:
    """The splits of a union-find class (the largest of its members')."""
    return max(ctx.splits[gid] for gid in range(len(ctx.parent)) if ctx.find(gid) == root)
