"""Channels on a batch dim of a layer: one map applied to every channel (MLP-Mixer's token MLP).

A ``Linear`` maps the last dim of its input and treats every other dim as batch. When the channels
of a group sit on another dim, as in MLP-Mixer's token MLP::

    y = x + fc2(act(fc1(norm1(x).transpose(1, 2)))).transpose(1, 2)   # x: (B, N, C), C channels

``fc1`` reads a ``(B, C, N)`` tensor: it maps each channel's ``N`` entries with the same
``W h + b``, so ``y[:, :, c]`` depends on channel ``c`` alone, through one function ``f`` shared by
every channel. The layer is then, for those channels, a **per-channel identical op** (like an
activation), and its output carries two things (:class:`~netsurgeon.graph.layout.Layout`'s
``batch``): its own new group on the last dim (``fc1``'s hidden units, read by ``fc2``: an
ordinary group) and the old channels on their dim, untouched by the widening of ``fc1``.

What stays exact when the carried group grows (``docs/widen.md``):

* ``append`` (new channels read through zero columns): ``f`` of a new channel lands on that new
  channel only; every old channel is unchanged.
* ``tile`` (channel ``c + C q`` copies channel ``c``): ``f(x_c)`` is again a copy.
* ``mean_pad`` and ``zero_pad`` are **not** exact: a padded stream's norm outputs 0 on the new
  channels, and ``f(0) = W2 act(b1) + b2`` is not 0, nor the mean of the old outputs
  (``mean_c f(x_c) != f(mean_c x_c)`` for a nonlinear ``f``). The layer restricts the carried
  groups to ``append``/``tile`` (recorded with its reason, shown by ``summary()``), and every
  tensor with a batch layout carries no construction tags, so a norm reading the stream afterwards
  tiles.

Only the ops that know batch layouts see them (``knows_batch``): element-wise ops, ``permute`` and
``transpose`` (both dims move), ``Linear`` (maps the last dim) and the element-wise joins, where
each tracked dim joins on its own (:func:`batched_join`). Anything else refuses, blocking both
groups, naming the op.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch import fx

from netsurgeon.graph.constructions import APPEND, TILE
from netsurgeon.graph.layout import Layout

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext

__all__ = ["batch_input", "batched_join", "check_batch", "parts"]


def check_batch(node: fx.Node, handler: Any, inputs: list[Layout], ctx: FlowContext) -> None:
    """Channels on a batch dim reach only handlers that follow them (``knows_batch``)."""
    if getattr(handler, "knows_batch", False) or all(lay.batch is None for lay in inputs):
        return
    carried = next(lay.batch for lay in inputs if lay.batch is not None)
    ctx.refuse(
        node,
        f"'{ctx.op_name(node)}' takes a tensor whose {ctx.describe(carried)} are a batch dim of "
        "an earlier layer (a token-mixing Linear), and netsurgeon does not follow them through it",
        fix="move the channels back to the last dim (transpose) before it",
    )


def batch_input(node: fx.Node, layout: Layout, ctx: FlowContext) -> tuple[Layout | None, Layout]:
    """``(features, carried)`` for a layer mapping the last dim of ``layout``'s tensor.

    ``features``: what it reads on its last dim (``None``: an untracked dim), ``carried``: the
    channels it treats as batch, restricted to the constructions a shared map keeps exact.

    Example: ``fc1`` reading ``norm1(x).transpose(1, 2)`` of a ``(B, N, C)`` stream gets
    ``(None, Layout(dim=1, rank=3, [stream 0:C]))``.
    """
    features, carried = None, layout
    if layout.batch is not None and not layout.batch.is_last_dim():
        return layout.replace(batch=None), layout.batch  # restricted where they became batch
    if layout.batch is not None:  # the carried channels are back on the last dim: features
        features, carried = layout.batch, layout.replace(batch=None)
    channel = carried.normalized_dim()
    if channel is None or carried.rank is None:
        ctx.unknown(node, f"'{node.target}' reads a tensor of unknown rank")
    if carried.flattened or carried.heads is not None:
        ctx.refuse(
            node,
            f"it reads features on the last dim but the channels are on dim {channel} of a "
            f"rank-{carried.rank} tensor, {'flattened' if carried.flattened else 'cut into heads'}",
            fix="flatten the map first (torch.flatten(x, 1)) or move the channels last",
        )
    ctx.require_construction(
        node,
        carried,
        (APPEND, TILE),
        f"'{node.target}' applies one map to each of these channels (they are a batch dim of it): "
        "copies stay copies, but padded channels do not (f(0) != 0, mean_c f(x_c) != "
        "f(mean_c x_c)), so append or tile",
    )
    return features, carried.with_path(f"batch of {node.target}")


def parts(layout: Layout, rank: int) -> dict[int, Layout]:
    """``{dim: layout on it}`` for the primary and the carried channels, dims counted in a
    tensor of ``rank`` (broadcasting aligns a smaller rank from the end)."""
    shift = rank - layout.rank  # type: ignore[operator]
    found = {}
    for part in (layout.replace(batch=None), layout.batch):
        if part is not None:
            dim = part.normalized_dim() + shift  # type: ignore[operator]
            found[dim] = part.replace(dim=dim, rank=rank)
    return found


def batched_join(
    ctx: FlowContext, node: fx.Node, operands: Sequence[Any], label: str
) -> Layout | None:
    """An element-wise join where an operand carries channels on a batch dim: each tracked dim
    joins on its own, against every operand (``FlowContext.join``'s rules per dim).

    An operand without channels on a tracked dim broadcasts there (size 1) or is fixed there: a
    group joined with fixed entries blocks and is no longer followed (``y = x + token_mlp(x)``:
    ``fc2``'s tokens meet the fixed token dim of ``x``). The output carries no tags.
    """
    tracked = [(a, lay) for a in operands if (lay := ctx.layout(a)) is not None]
    if any(lay.rank is None for _, lay in tracked):
        ctx.unknown(node, f"'{label}' joins channels on a batch dim in a tensor of unknown rank")
    rank = max(lay.rank for _, lay in tracked)  # type: ignore[type-var]
    found = [parts(lay, rank) for _, lay in tracked]
    joined: dict[int, Layout] = {}
    for dim in sorted({d for each in found for d in each}):
        base = _join_dim(ctx, node, [each.get(dim) for each in found], tracked, label, rank)
        if base is not None:
            joined[dim] = base
    for arg in operands:
        if isinstance(arg, fx.Node) and ctx.layouts.get(arg) is None:
            for base in joined.values():
                ctx._join_untracked(node, arg, base, label)
    ctx.states[node] = frozenset()
    if not joined or len(joined) > 2:
        if joined:
            ctx.block(node, list(joined.values()), f"'{label}' joins channels on three dims")
        return None
    first = next(iter(parts(tracked[0][1], rank)))
    primary = first if first in joined else next(iter(joined))
    rest = [lay for d, lay in joined.items() if d != primary]
    return joined[primary].replace(batch=rest[0] if rest else None).with_path(label)


def _join_dim(
    ctx: FlowContext, node: fx.Node, found: list, tracked: list, label: str, rank: int
) -> Layout | None:
    """The layout on one dim after the join, or ``None`` when its groups blocked."""
    present = [lay for lay in found if lay is not None]
    base = present[0]
    for other in present[1:]:
        if not ctx._compatible(base, other):
            ctx.block(
                node,
                [base, other],
                f"'{label}' joins channels laid out differently ({ctx.describe(base)} vs "
                f"{ctx.describe(other)})",
            )
            return None
        for a, b in zip(base.segments, other.segments, strict=True):
            if a.group is not None and b.group is not None:
                ctx.union(a.group, b.group)
    for (arg, _), part in zip(tracked, found, strict=True):
        if part is not None:
            continue
        shape = ctx.shape_of(arg)
        dim = base.dim - (rank - len(shape)) if shape is not None else None
        size = 1 if dim is not None and dim < 0 else (None if shape is None else shape[dim])
        if size != 1:
            ctx.block(
                node,
                base,
                f"'{label}' joins these {ctx.describe(base)} with dim {base.dim} of "
                f"'{arg.name}' ({'unknown size' if size is None else f'{size} fixed entries'}), "
                "which does not grow with them: their width is fixed by that tensor (in a token "
                "MLP: the token count, set by the input size)",
            )
            return None
    return base
