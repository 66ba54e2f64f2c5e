"""Attention heads: channels cut into heads of fixed size, followed through attention, merged back.

Multi-head attention is exact to grow by **whole heads**: the heads are independent (each has its
own ``q``, ``k``, ``v`` channels and its own softmax), so a new head's rows in the ``q``/``k``/``v``
projections change nothing the old heads compute, and zero columns in the output projection keep
the output. The head size ``d`` stays, so the softmax scale ``1/sqrt(d)`` and RoPE tables stay.

The analysis follows the usual spellings (``Layout.heads``, see :mod:`netsurgeon.graph.layout`):

* **cut**: ``view``/``reshape`` ``(B, N, H*d) -> (B, N, -1, d)``, fused ``(B, N, 3, -1, d)``
  (the group is cut into 3 equal splits); ``d`` must be fixed (a literal, or a size read of a dim
  that carries no channels). The group then grows in multiples of ``d`` per split. A literal head
  count ``H`` would be stale after a growth: it blocks (use ``-1``), unless the enclosing module's
  handler owns that count (:class:`HeadOwnerHandler`: timm's ``Attention``'s ``num_heads``);
* ``permute``/``transpose``, ``unbind``/indexing of the fused split dim (``q, k, v``), slicing
  and ``cat`` on the head's own dim (RoPE's rotate-half), element-wise ops, scalar scales,
  masks that broadcast over the heads, softmax over the keys;
* **per-head ops**: ``F.scaled_dot_product_attention(q, k, v)`` (the head dim is a batch dim; the
  ``q``, ``k`` and ``v`` groups join), ``q @ k.transpose(-2, -1)`` (contracts each head's ``d``:
  the scores keep the head dim, ``heads.inner`` becomes ``None``), ``attn @ v``;
* **merge**: ``transpose(1, 2).reshape(B, N, -1)`` or ``flatten(2)``: channels again, head-major,
  which the output projection reads as its columns.

Grouped-query attention (``repeat_interleave(g, dim=head)`` of ``k``/``v``, or SDPA's
``enable_gqa=True``) ties ``g`` query heads to each key/value head: :mod:`netsurgeon.graph.ratios`
records that the query group grows ``g`` times as fast as the key/value group.

Example (GPT-2)::

    q, k, v = self.c_attn(x).split(C, dim=2)        # or chunk(3, dim=-1): 3 equal splits
    q = q.view(B, T, -1, 64).transpose(1, 2)        # heads of 64 channels, head dim 1
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    y = y.transpose(1, 2).reshape(B, T, -1)         # channels again
    y = self.c_proj(y)                              # reads them: new columns 0
"""

from __future__ import annotations

import math
import operator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from torch import fx

from netsurgeon.graph.layout import Heads, Layout, Segment
from netsurgeon.graph.nodes import Pieces
from netsurgeon.graph.ops.owners import HeadOwnerHandler, enclosing, follow_owner, owner_of
from netsurgeon.graph.ratios import tie
from netsurgeon.graph.sizes import SizeValue, claim_channel_size

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext

__all__ = [
    "HeadOwnerHandler",
    "expand_heads",
    "flatten_heads",
    "head_split",
    "index_heads",
    "join_heads",
    "matmul_heads",
    "moved",
    "repeat_heads",
    "reshape_heads",
    "split_heads",
    "unbind_heads",
]


# -- cut and merge ---------------------------------------------------------------------------------
def head_split(
    before: tuple[int, ...], after: tuple[int, ...], channel: int
) -> tuple[int, ...] | None:
    """The sizes ``after`` cuts dim ``channel`` of ``before`` into, when nothing else changes and
    the last part is more than one entry (``(B, C) -> (B, C, 1, 1)`` is no cut), else ``None``."""
    tail = len(before) - channel - 1
    if len(after) <= len(before) or tuple(after[:channel]) != tuple(before[:channel]):
        return None
    if tail and tuple(after[len(after) - tail :]) != tuple(before[channel + 1 :]):
        return None
    middle = tuple(after[channel : len(after) - tail])
    if math.prod(middle) != before[channel] or middle[-1] < 2:
        return None
    return middle


def split_heads(node, layout, spec, middle, label, ctx: FlowContext) -> Layout | bool | None:
    """``(..., C, ...) -> (..., [s,] H, d, ...)``: the channels cut into heads of ``d``
    (``False``: the sizes asked for keep the channels whole, not a cut)."""
    channel = layout.normalized_dim()
    *splits, count, size = middle
    at = channel + len(middle) - 1
    size_arg, count_arg = spec[at], spec[at - 1]
    where = f"{label} to {tuple(spec)!r}"
    if not _fixed(size_arg, ctx):
        if size_arg == -1 or _channel_read(size_arg, ctx) or _channel_read(count_arg, ctx):
            return False  # the channels kept whole at the -1: no cut (``(B, 1, -1)``)
        return _block(
            node,
            layout,
            f"{where} splits or interleaves the channels into parts whose size is computed "
            "from a width (a channel shuffle, or attention heads whose size would change); for "
            "attention use a fixed head size (a literal head_dim) and -1 for the head count",
            ctx,
        )
    bad = [s for s in spec[channel : at - 1] if not isinstance(s, int)]
    even = all(s.channels % size == 0 and s.multiplicity == 1 for s in layout.segments)
    if len(splits) > 1 or bad or not even:
        return _block(node, layout, f"{where} cuts the channels into heads of {size} unevenly", ctx)
    n = splits[0] if splits else 1
    owner = None
    if count_arg != -1:  # only a literal can be the owner's attribute, traced
        owner = owner_of(node, ctx, count, size, None) if isinstance(count_arg, int) else None
        if owner is None:
            return _block(
                node,
                layout,
                f"{where} fixes the head count at {_spell(count_arg)} ({count} heads of {size}), "
                "which a widening by whole heads would leave stale; use -1 for the head count",
                ctx,
            )
    if n > 1:
        ctx.require_splits(node, layout, n, what=f"{label} into {n} parts (fused q, k, v)")
    ctx.require_unit(layout, size)
    ctx.head_sizes.update((gid, size) for gid in layout.groups)
    if owner is not None:
        follow_owner(node, owner, layout, n, ctx)
    heads = Heads(size, inner=at, split=channel if splits else None, splits=n)
    return layout.replace(dim=at - 1, rank=len(spec), heads=heads).with_path(label)


def reshape_heads(node, layout, spec, before, after, label, ctx: FlowContext) -> Layout | None:
    """A reshape of channels cut into heads: the merge ``(..., H, d, ...) -> (..., H*d, ...)``
    (its size ``-1``, a size the enclosing head owner holds, or a read of a same-width channel
    dim), or the merge of the head dim with the copies right after it (``repeat_kv``), else
    blocked."""
    heads, dim = layout.heads, layout.normalized_dim()
    if heads.copies is not None:
        return _merge_copies(node, layout, spec, before, after, label, ctx)
    same = tuple(before) == tuple(after) and len(spec) == len(after)
    if same and spec[dim] == -1 and (heads.inner is None or _fixed(spec[heads.inner], ctx)):
        return layout.with_path(label)  # the same shape: (B, -1, N, d) of (B, H, N, d)
    merges = (
        heads.split is None
        and all(s.multiplicity == 1 for s in layout.segments)
        and heads.inner == dim + 1
        and before[dim + 1] == heads.size
        and len(after) == len(before) - 1
        and tuple(after[:dim]) == tuple(before[:dim])
        and tuple(after[dim + 1 :]) == tuple(before[dim + 2 :])
        and len(spec) == len(after)
    )
    if not merges:
        return _block(
            node,
            layout,
            f"{label} from {tuple(before)} to {tuple(after)} reshapes channels cut into heads "
            "other than merging the head dim with the head's own dim right after it",
            ctx,
        )
    merged = Layout(dim, len(after), layout.segments, layout.flattened, layout.factor)
    arg = spec[dim]
    if arg == -1 or claim_channel_size(ctx, arg, merged):
        return _follow_any_owner(node, merged, before[dim], heads.size, ctx)
    owner = owner_of(node, ctx, None, heads.size, arg) if isinstance(arg, int) else None
    if owner is None:
        return _block(
            node,
            layout,
            f"{label} merges the heads into {arg!r} channels, a size that does not follow a "
            "widening by whole heads (a literal, or computed); use -1 (reshape(B, N, -1))",
            ctx,
        )
    follow_owner(node, owner, merged, 1, ctx)
    return merged.with_path(label)


def _follow_any_owner(node, merged: Layout, count: int, size: int, ctx) -> Layout | None:
    """A merge sized from the tensor: an enclosing head owner's attributes still grow with the
    heads (``num_heads``, a stored width), and one whose attributes say other heads blocks."""
    found = enclosing(node, ctx, HeadOwnerHandler)
    if found is None:
        return merged.with_path(ctx.op_name(node))
    path, handler, module = found
    if not handler.owns(module, count, size, None):
        why = handler.refusal(module) or f"its attributes do not say {count} heads of {size}"
        return _block(node, merged, f"'{path}' ({type(module).__qualname__}): {why}", ctx)
    follow_owner(node, (path, handler), merged, 1, ctx)
    return merged.with_path(ctx.op_name(node))


def expand_heads(node, layout: Layout, before, after, ctx: FlowContext) -> Layout | None:
    """``k[:, :, None].expand(B, H_kv, g, N, d)``: a size-1 dim right after the head dim made
    ``g`` copies of every head (HF's ``repeat_kv``); other broadcasts (the batch) and new leading
    dims pass. Expanding the head dim, the head's own dim or the split dim blocks. The head count
    may be passed as a read of the head dim (``k.shape[1]``)."""
    spec = _sizes(node)
    shift = len(after) - len(before)
    if len(spec) == len(after):
        claim_channel_size(ctx, spec[layout.normalized_dim() + shift], layout)
    where = {d: d + shift for d in range(len(before))}
    grown = [d for d in range(len(before)) if before[d] != after[d + shift]]
    dim, heads = layout.normalized_dim(), layout.heads
    held = (dim, heads.inner, heads.split, heads.copies)
    copies = dim + 1 in grown and heads.copies is None and heads.split is None
    if not any(d in held for d in grown) and (copies or dim + 1 not in grown):
        out = moved(layout, where, len(after))
        if copies:  # every head the same along it: g copies in a row once merged
            out = out.replace(heads=replace(out.heads, copies=dim + 1 + shift))
        return out.with_path("expand")
    return _block(
        node,
        layout,
        f"expand of channels cut into heads from {before} to {after}: only copies of each "
        "head right after the head dim (grouped-query attention) are followed",
        ctx,
    )


def _merge_copies(node, layout, spec, before, after, label, ctx) -> Layout | None:
    """``(B, H_kv, g, N, d) -> (B, H_kv * g, N, d)``: each head ``g`` times in a row, as
    ``repeat_interleave(g, dim=1)`` (the segments' multiplicity counts the copies)."""
    dim, copies = layout.normalized_dim(), layout.heads.copies
    merges = (
        copies == dim + 1
        and len(after) == len(before) - 1
        and len(spec) == len(after)
        and tuple(after[:dim]) == tuple(before[:dim])
        and after[dim] == before[dim] * before[dim + 1]
        and tuple(after[dim + 1 :]) == tuple(before[dim + 2 :])
        and (
            spec[dim] == -1
            or _claim_copied_count(spec[dim], layout, before[dim + 1], ctx)
            or _owned_count(node, spec[dim], after[dim], layout.heads.size, ctx)
        )
    )
    if not merges:
        return _block(
            node, layout, f"{label} of copied heads other than merging them with their head", ctx
        )
    where = {d: d - (d > dim) for d in range(len(before)) if d != copies}
    out = moved(replace(layout, heads=replace(layout.heads, copies=None)), where, len(after))
    return repeat_heads(node, out, before[dim + 1], dim, ctx)


def _owned_count(node: fx.Node, arg: Any, count: int, size: int, ctx: FlowContext) -> bool:
    """A literal merged head count that the enclosing head owner holds (export records
    ``num_key_value_heads * n_rep`` of HF's ``repeat_kv`` as a number)."""
    return (
        isinstance(arg, int) and arg == count and owner_of(node, ctx, count, size, None) is not None
    )


def _claim_copied_count(arg: Any, layout: Layout, n: int, ctx: FlowContext) -> bool:
    """``k.shape[1] * n``: the head count read off a tensor of these heads, times the copies."""
    if not (isinstance(arg, fx.Node) and arg.op == "call_function" and arg.target is operator.mul):
        return False
    read = [a for a in arg.args if a != n]
    if len(read) != 1 or len(arg.args) != 2 or not _channel_read(read[0], ctx):
        return False
    value = ctx.layouts[read[0]].direct_channel_read
    ctx.require_same_width(value.node, value.layout, layout)
    ctx.size_claims.add(arg)
    return True


def _sizes(node: fx.Node) -> list[Any]:
    """The sizes a ``view``/``reshape``/``expand`` method call asks for."""
    sizes = list(node.args[1:])
    return list(sizes[0]) if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)) else sizes


def flatten_heads(node, layout: Layout, start: int, end: int, label, ctx) -> Layout | None:
    """``flatten(start, end)`` of channels cut into heads: the merge ``flatten(2)`` of
    ``(B, N, H, d)``, or a flatten of dims the heads do not touch."""
    heads, dim, rank = layout.heads, layout.normalized_dim(), layout.rank
    if (start, end) == (dim, dim + 1) and heads.inner == dim + 1 and heads.split is None:
        return Layout(dim, rank - 1, layout.segments, layout.flattened, layout.factor).with_path(
            label
        )
    held = {dim, heads.inner, heads.split, heads.copies} - {None}
    if any(start <= d <= end for d in held):
        return _block(node, layout, f"{label} merges a dim of the heads with others", ctx)
    where = {d: d if d < start else d - (end - start) for d in range(rank) if not start < d <= end}
    return moved(layout, where, rank - (end - start)).with_path(label)


# -- dims moving ------------------------------------------------------------------------------------
def moved(layout: Layout, where: dict[int, int], rank: int, pick: int | None = None) -> Layout:
    """``layout`` with its dims renumbered (``where``: old -> new); ``pick``: the fused split
    dim was indexed, keep that part's channels only."""
    heads, segments = layout.heads, layout.segments
    if pick is not None:
        seg, n = segments[0], heads.splits
        size, j = seg.channels // n, pick % n
        start = seg.start + j * size
        segments = (Segment(seg.group, start, start + size, seg.multiplicity, seg.path),)
        heads = Heads(heads.size, heads.inner)
    heads = heads.moved(where)
    if heads is None:  # callers keep the head's own dim and the split dim (or pick the split)
        raise RuntimeError(f"internal: a dim of the heads was dropped ({layout}, {where})")
    return layout.replace(
        dim=where[layout.normalized_dim()], rank=rank, heads=heads, segments=segments
    )


def index_heads(node, layout: Layout, items: tuple[Any, ...], ctx: FlowContext) -> Layout | None:
    """``x[...]`` of channels cut into heads: ints and full slices on other dims, any slice of the
    head's own dim (the same in every head), an int on the fused split dim (``qkv[0]``)."""
    heads, rank, dim = layout.heads, layout.rank, layout.normalized_dim()
    explicit = sum(1 for i in items if i is not None and i is not Ellipsis)
    where: dict[int, int] = {}
    dim_in = dim_out = 0
    pick = None
    for item in items:
        if item is Ellipsis:
            for _ in range(rank - explicit):
                where[dim_in] = dim_out
                dim_in, dim_out = dim_in + 1, dim_out + 1
        elif item is None:
            dim_out += 1
        elif isinstance(item, int) and dim_in == heads.split:
            pick, dim_in = item, dim_in + 1
        elif isinstance(item, int) and dim_in not in (dim, heads.inner):
            dim_in += 1
        elif isinstance(item, slice) and (item == slice(None) or dim_in == heads.inner):
            where[dim_in] = dim_out
            dim_in, dim_out = dim_in + 1, dim_out + 1
        else:
            return _block(node, layout, f"indexing {items!r} picks heads or part of them", ctx)
    for rest in range(dim_in, rank):
        where[rest] = dim_out + rest - dim_in
    return moved(layout, where, dim_out + rank - dim_in, pick).with_path("getitem")


def unbind_heads(node, layout: Layout, name: str, dim: int, count: Any, ctx) -> Pieces:
    """``unbind``/``chunk``/``split`` of channels cut into heads: ``unbind`` of the fused split dim
    gives ``q, k, v``; along the head's own dim (rotate-half) or other dims each piece keeps the
    layout; along the head dim they would pick heads (blocked)."""
    heads, rank = layout.heads, layout.rank
    dim %= rank
    if dim == heads.split and name == "unbind":
        where = {d: d - (d > dim) for d in range(rank) if d != dim}
        return Pieces([moved(layout, where, rank - 1, j) for j in range(heads.splits)])
    if dim in (layout.normalized_dim(), heads.split):
        _block(node, layout, f"'{name}' along dim {dim} picks heads", ctx)
        return Pieces()
    if name == "unbind":
        if dim == heads.inner:
            _block(node, layout, "'unbind' of the head's own dim picks single channels", ctx)
            return Pieces()
        where = {d: d - (d > dim) for d in range(rank) if d != dim}
        return Pieces(same=moved(layout, where, rank - 1))
    return Pieces(same=layout.with_path(name))


# -- per-head products ------------------------------------------------------------------------------
def matmul_heads(node, a: fx.Node, b: fx.Node, ctx: FlowContext) -> Layout | None:
    """``a @ b`` of two tensors cut into the same heads on a batch dim: contracting each head's
    ``d`` (``q @ k^T``: no inner dim left) or none of it (``attn @ v``)."""
    la, lb = ctx.layout(a), ctx.layout(b)
    both = [lay for lay in (la, lb) if lay is not None]
    r = la.rank if la is not None else None
    ok = len(both) == 2 and all(lay.heads is not None and lay.heads.split is None for lay in both)
    ok = ok and r == lb.rank and la.normalized_dim() == lb.normalized_dim() and r is not None
    ok = ok and la.normalized_dim() < r - 2 and la.heads.size == lb.heads.size
    ok = ok and la.heads.inner in (None, r - 2, r - 1) and lb.heads.inner in (None, r - 2, r - 1)
    contracts = ok and la.heads.inner == r - 1
    if ok and contracts != (lb.heads.inner == r - 2):
        ok = False  # one side contracts its d against another dim of the other
    if not ok:
        return _block(
            node,
            both,
            f"'{ctx.op_name(node)}' mixes these channels with a tensor that is not cut into the "
            "same heads on the same batch dim",
            ctx,
        )
    joined = join_heads(node, [a, b], ctx)
    if joined is None:
        return None
    inner = r - 1 if lb.heads.inner == r - 1 else r - 2 if la.heads.inner == r - 2 else None
    # the output's heads are those of the side not repeated (grouped-query: the query heads)
    plain = all(s.multiplicity == 1 for s in lb.segments)
    segments = lb.segments if inner == r - 1 and plain else la.segments
    heads = Heads(la.heads.size, inner)
    return la.replace(segments=segments, heads=heads).with_path(ctx.op_name(node))


def join_heads(node: fx.Node, operands: list[Any], ctx: FlowContext) -> Layout | None:
    """Pair head ``i`` of every operand: groups of tensors cut into the same heads unify; a
    tensor whose heads are repeated (``repeat_interleave(g)``: segment multiplicity ``g``) ties
    the others' group to its own at the ratio ``g`` (grouped-query attention,
    :mod:`netsurgeon.graph.ratios`). Returns the first operand's layout (``None``: blocked)."""
    layouts = [ctx.layout(o) for o in operands]
    by_key: dict[tuple[Any, ...], Layout] = {}
    for lay in layouts:
        key = tuple((s.channels, s.multiplicity, s.group is None) for s in lay.segments)
        first = by_key.setdefault(key, lay)
        for x, y in zip(first.segments, lay.segments, strict=True):
            if x.group is not None and y.group is not None:
                ctx.union(x.group, y.group)
    if len(by_key) == 1:
        return layouts[0]
    plain = [lay for lay in by_key.values() if all(s.multiplicity == 1 for s in lay.segments)]
    repeated = [lay for lay in by_key.values() if lay not in plain]
    entries = {sum(s.channels * s.multiplicity for s in lay.segments) for lay in layouts}
    if len(by_key) == 2 and len(plain) == 1 and len(entries) == 1:
        return None if tie(node, plain[0], repeated[0], ctx) is None else layouts[0]
    return _block(
        node,
        layouts,
        f"'{ctx.op_name(node)}' pairs heads of tensors whose channels are laid out "
        f"differently ({'; '.join(ctx.describe(lay) for lay in layouts)})",
        ctx,
    )


def repeat_heads(node: fx.Node, layout: Layout, repeats: Any, dim: Any, ctx) -> Layout | None:
    """``k.repeat_interleave(g, dim=head)``: each head ``g`` times in a row (grouped-query
    attention); the segments' multiplicity counts the copies."""
    if not isinstance(repeats, int) or not isinstance(dim, int) or dim % layout.rank != layout.dim:
        return _block(
            node,
            layout,
            f"repeat_interleave({repeats!r}, dim={dim!r}) of channels cut into heads: only a fixed "
            "count along the head dim (grouped-query attention) is followed",
            ctx,
        )
    segments = tuple(
        Segment(s.group, s.start, s.stop, s.multiplicity * repeats, s.path) for s in layout.segments
    )
    return layout.replace(segments=segments).with_path("repeat_interleave")


# -- helpers ----------------------------------------------------------------------------------------
def _fixed(arg: Any, ctx: FlowContext) -> bool:
    """A size that no widening changes: a positive literal, or a read of a channel-free dim."""
    if isinstance(arg, int):
        return arg > 0
    value = ctx.layouts.get(arg) if isinstance(arg, fx.Node) else None
    return isinstance(value, SizeValue) and not value.depends


def _spell(arg: Any) -> str:
    return f"node '{arg.name}'" if isinstance(arg, fx.Node) else repr(arg)


def _channel_read(arg: Any, ctx: FlowContext) -> bool:
    value = ctx.layouts.get(arg) if isinstance(arg, fx.Node) else None
    return isinstance(value, SizeValue) and value.direct_channel_read is not None


def _block(node: fx.Node, layouts, reason: str, ctx: FlowContext) -> None:
    ctx.block(node, layouts, reason)
    return None
