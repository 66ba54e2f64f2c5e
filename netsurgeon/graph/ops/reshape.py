"""Ops that move, merge or un-merge the channel dim: ``permute``, ``flatten``, ``view``, ``squeeze``.

``permute`` and friends move the channel dim; ``flatten`` (``nn.Flatten`` and ``torch.flatten``
share :func:`flatten_flow`), ``view`` and ``reshape`` merge it with the dims after it (each channel
then spans ``factor`` entries) or un-flatten it, and block a group whose width a literal shape
fixes. ``squeeze``/``unsqueeze`` shift it; ``expand``/``repeat`` broadcast. Splitting the channel
dim back (``unflatten``) is in :mod:`.unflatten`; joining and splitting tensors in :mod:`.concat`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn

from netsurgeon.graph.layout import Layout
from netsurgeon.graph.nodes import first_layout, node_arg
from netsurgeon.graph.ops import heads
from netsurgeon.graph.ops.owners import owned_width
from netsurgeon.graph.registry import OpHandler, register_function, register_method, register_module
from netsurgeon.graph.sizes import SizeValue, claim_channel_size
from netsurgeon.graph.width_attrs import vouch, width_literal

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext

__all__ = ["flatten_flow"]


@register_function(torch.permute, torch.transpose, torch.swapaxes, torch.swapdims, torch.movedim)
@register_method("permute", "transpose", "swapaxes", "swapdims", "movedim")
class PermuteHandler(OpHandler):
    """``permute``/``transpose``/``movedim``: the channel dim moves; nothing else changes."""

    knows_heads = True
    knows_batch = True  # both dims move
    stream_effect = "same"

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        layout = first_layout(node, ctx)
        name = getattr(node.target, "__name__", str(node.target))
        channel, rank = layout.normalized_dim(), layout.rank
        if channel is None or rank is None:
            ctx.unknown(node, f"{name} of a tensor of unknown rank")
        order = list(range(rank))
        args = list(node.args[1:])
        if name == "permute":
            dims = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
            order = [d % rank for d in _arg_list(dims, node.kwargs.get("dims"))]
        elif name in ("transpose", "swapaxes", "swapdims"):
            a, b = (node_arg(node, 1, "dim0", 0) % rank, node_arg(node, 2, "dim1", 1) % rank)
            order[a], order[b] = order[b], order[a]
        else:  # movedim(source, destination)
            src, dst = node_arg(node, 1, "source", 0), node_arg(node, 2, "destination", 0)
            src = [src] if isinstance(src, int) else list(src)
            dst = [dst] if isinstance(dst, int) else list(dst)
            moved = dict(zip((d % rank for d in dst), (s % rank for s in src), strict=True))
            rest = iter(d for d in range(rank) if d not in moved.values())
            order = [moved[i] if i in moved else next(rest) for i in range(rank)]
        if layout.flattened and order.index(channel) != channel:
            ctx.block(node, layout, f"{name} of flattened channels")
            return None
        if layout.heads is not None:
            return heads.moved(layout, {d: order.index(d) for d in range(rank)}, rank).with_path(
                name
            )
        carried = layout.batch
        if carried is not None:  # channels on a batch dim (checked known rank, not flattened)
            carried = carried.replace(dim=order.index(carried.normalized_dim()))
        return layout.replace(dim=order.index(channel), batch=carried).with_path(name)


def _arg_list(dims: Any, fallback: Any) -> list[int]:
    return list(dims if dims else fallback or ())


@register_module(nn.Flatten)
class FlattenModuleHandler(OpHandler):
    """``nn.Flatten(start_dim, end_dim)``."""

    knows_heads = True
    stream_effect = "same"

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        module = ctx.module_of(node)
        return flatten_flow(node, ctx.input(node), module.start_dim, module.end_dim, "Flatten", ctx)


@register_function(torch.flatten)
@register_method("flatten")
class FlattenHandler(OpHandler):
    """``torch.flatten(x, start, end)``."""

    knows_heads = True
    stream_effect = "same"

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        start = node_arg(node, 1, "start_dim", 0)
        end = node_arg(node, 2, "end_dim", -1)
        return flatten_flow(node, first_layout(node, ctx), start, end, ctx.op_name(node), ctx)


def flatten_flow(
    node: fx.Node, layout: Layout | None, start: int, end: int, label: str, ctx: FlowContext
) -> Layout | None:
    """Merge dims ``start..end``. Channels first in the range become channel-major blocks."""
    if layout is None:
        return None
    channel, rank = layout.normalized_dim(), layout.rank
    if channel is None or rank is None:
        ctx.unknown(node, f"{label} of a tensor of unknown rank")
    s, e = start % rank, end % rank
    if e <= s:
        return layout.with_path(label)
    if layout.heads is not None:
        return heads.flatten_heads(node, layout, s, e, label, ctx)
    if channel < s:
        return layout.replace(rank=rank - (e - s)).with_path(label)
    if channel > e:
        return layout.replace(dim=channel - (e - s), rank=rank - (e - s)).with_path(label)
    if channel == e and channel != s:
        copies = _copies_side_by_side(node, layout, s, e, ctx)
        if copies is not None:
            return copies.with_path(label)
    if channel != s:
        ctx.block(
            node,
            layout,
            f"{label}(start_dim={start}, end_dim={end}) merges the channels into the dim before "
            "them, which interleaves them; use torch.flatten(x, 1)",
        )
        return None
    shape = ctx.shape_of(node.args[0]) if node.args else None
    factor = None
    if shape is not None and layout.factor is not None:
        factor = layout.factor * math.prod(shape[s + 1 : e + 1])
    return layout.replace(rank=rank - (e - s), flattened=True, factor=factor).with_path(label)


#: the most copies a flatten of dims before the channels is followed for (one index-map piece each)
MAX_COPIES = 256


def _copies_side_by_side(node, layout: Layout, s: int, e: int, ctx: FlowContext) -> Layout | None:
    """``(..., a, b, C) -> (..., a * b * C)``, channels last of the merged dims: ``a * b`` copies
    of the channels' segments side by side (entry ``(i * b + j) * C + c``), as a concatenation;
    a grown channel is inserted at the end of every copy. Needs the sizes (fixed: not the
    channels') and channels not already merged (Swin's patch merging: 2x2 neighbours)."""
    shape = ctx.shape_of(node.args[0]) if node.args else None
    if shape is None or layout.factor != 1 or layout.flattened:
        return None
    n = math.prod(shape[s:e])
    if not 1 <= n <= MAX_COPIES:
        return None
    return layout.replace(dim=s, rank=layout.rank - (e - s), segments=layout.segments * n)


@register_function(torch.reshape)
@register_method("view", "reshape")
class ReshapeHandler(OpHandler):
    """``view``/``reshape``: a flatten or un-flatten that keeps the channels whole passes.

    With shapes known, the channel dim may merge with the dims after it (channel-major) or be
    split from them again; its own size must come from the tensor (``-1`` or ``x.size(...)``),
    not a literal, or the forward would break after a widening. A cut into attention heads of a
    fixed size (``(B, N, -1, d)``) and its merge back are :mod:`.heads`'. A literal channel size
    that is a width attribute of a module vouching for it (torchvision ViT's ``self.hidden_dim``,
    :mod:`netsurgeon.graph.width_attrs`) passes, the module following the group. Anything else
    that splits the channels (a channel shuffle's ``view(b, g, c // g, h, w)``) or merges them
    with earlier dims blocks.
    """

    knows_heads = True
    stream_effect = "same"

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        layout = first_layout(node, ctx)
        shape, _ = _spec(node)
        label = ctx.op_name(node)
        before, after = ctx.shape_of(node.args[0]), ctx.shape_of(node)
        cut = self._heads(node, layout, shape, before, after, label, ctx)
        if cut is not False:
            return cut
        if len(shape) == 2 and shape[1] == -1 and _is_batch_size(shape[0]):
            return flatten_flow(node, layout, 1, -1, f"{label}(batch, -1)", ctx)
        if before is not None and after is not None and layout.normalized_dim() is not None:
            return self._with_shapes(node, layout, shape, before, after, label, ctx)
        return self._fixed(node, layout, shape, label, ctx)

    def _heads(self, node, layout, spec, before, after, label, ctx) -> Layout | bool | None:
        """The cut into heads or the merge back (:mod:`.heads`); ``False``: neither applies."""
        known = before is not None and after is not None and layout.normalized_dim() is not None
        if layout.heads is not None:
            if not known:
                ctx.unknown(node, f"{label} of channels cut into heads")
            return heads.reshape_heads(node, layout, spec, before, after, label, ctx)
        if not known or layout.flattened or layout.factor != 1 or len(spec) != len(after):
            return False
        middle = heads.head_split(tuple(before), tuple(after), layout.normalized_dim())
        if middle is None:
            return False
        return heads.split_heads(node, layout, spec, middle, label, ctx)

    def _with_shapes(self, node, layout, spec, before, after, label, ctx) -> Layout | None:
        channel = layout.normalized_dim()
        leading = math.prod(before[:channel])
        j = _channel_position(node, spec, after, leading, ctx)
        if j is None or j >= len(after):
            ctx.block(
                node, layout, f"{label} to {tuple(after)} merges the channels with earlier dims"
            )
            return None
        size, out = before[channel], after[j]
        if len(spec) != len(after) or not (
            _channel_size_arg(spec[j], layout, ctx)
            or vouch(node, _spec(node)[1](j), layout, ctx)
            or (out == size and owned_width(node, ctx, spec[j], size, layout))
        ):
            return self._fixed(node, layout, spec, label, ctx)
        if out == size:
            return layout.replace(dim=j, rank=len(after)).with_path(label)
        if out > size and out % size == 0 and layout.factor is not None:
            merged = out // size  # channel-major merge with the dims after the channels
            if math.prod(before[: channel + 1]) * merged in _prefix_products(before):
                return layout.replace(
                    dim=j, rank=len(after), flattened=True, factor=layout.factor * merged
                ).with_path(label)
        if out < size and size % out == 0 and layout.factor is not None:
            split = size // out  # un-flatten: each channel's block of entries becomes new dims
            if layout.factor % split == 0:
                return layout.replace(
                    dim=j,
                    rank=len(after),
                    factor=layout.factor // split,
                    flattened=layout.factor // split > 1,
                ).with_path(label)
        ctx.block(
            node,
            layout,
            f"{label} from {tuple(before)} to {tuple(after)} splits or interleaves the channels "
            "(a channel shuffle, or heads of attention)",
        )
        return None

    def _fixed(self, node, layout, shape, label, ctx) -> None:
        known = ctx.shape_of(node.args[0]) is not None and ctx.shape_of(node) is not None
        ctx.block(
            node,
            layout,
            f"{label} to the shape {tuple(shape)!r} fixes a size that depends on these channels' "
            "width; use torch.flatten(x, 1) (or -1 for the channel dim)"
            + ("" if known else ", or pass example_inputs to trace/widen so shapes are known"),
        )
        return None


def _spec(node: fx.Node) -> tuple[list[Any], Callable[[int], tuple[int, ...]]]:
    """The shape a ``view``/``reshape`` asks for, and where its ``i``-th size is in ``node.args``
    (``x.view(b, c, n)``, ``x.view((b, c, n))``, ``torch.reshape(x, (b, c, n))``)."""
    if node.op == "call_method":
        if len(node.args) == 2 and isinstance(node.args[1], (list, tuple)):
            return list(node.args[1]), lambda i: (1, i)
        return list(node.args[1:]), lambda i: (1 + i,)
    shape = node.args[1]
    if isinstance(shape, (list, tuple)):
        return list(shape), lambda i: (1, i)
    return [shape], lambda i: (1,)


def _channel_position(
    node: fx.Node, spec: list[Any], after: Sequence[int], leading: int, ctx: FlowContext
):
    """Where the channels land in ``after``: the dims before them hold ``leading`` entries. Size-1
    dims (a batch of one) make several positions fit; the one the spec sizes from the tensor
    (``-1``, a channel size read or a width attribute) is taken first."""
    fits = [i for i in range(len(after) + 1) if math.prod(after[:i]) == leading]
    at = _spec(node)[1]
    follows = [
        i
        for i in fits
        if i < len(spec)
        and (
            _is_channel_read(spec[i], ctx)
            if isinstance(spec[i], fx.Node)
            else spec[i] == -1 or width_literal(node, at(i)) is not None
        )
    ]
    return (follows or fits or [None])[0]


def _is_channel_read(arg: fx.Node, ctx: FlowContext) -> bool:
    value = ctx.layouts.get(arg)
    return isinstance(value, SizeValue) and value.direct_channel_read is not None


def _channel_size_arg(arg: Any, layout: Layout, ctx: FlowContext) -> bool:
    """Whether ``arg``, the size a reshape asks for at the channel position, follows the width:
    ``-1``, or ``x.size(c)`` of a tensor whose channels grow as ``layout``'s do (checked when the
    groups are final, :func:`netsurgeon.graph.sizes.claim_channel_size`)."""
    if isinstance(arg, fx.Node):
        return claim_channel_size(ctx, arg, layout)
    return arg == -1


def _prefix_products(shape: Sequence[int]) -> set[int]:
    return {math.prod(shape[:i]) for i in range(len(shape) + 1)}


def _is_batch_size(arg: Any) -> bool:
    """``x.size(0)``, ``x.size(dim=0)``, ``x.shape[0]`` or ``x.size()[0]`` of a traced tensor."""
    if not isinstance(arg, fx.Node):
        return False
    if arg.op == "call_method" and arg.target == "size":
        dim = arg.args[1] if len(arg.args) > 1 else arg.kwargs.get("dim")
        return dim == 0
    if arg.op == "call_function" and getattr(arg.target, "__name__", "") == "getitem":
        source, index = arg.args[0], arg.args[1]
        return (
            index == 0
            and isinstance(source, fx.Node)
            and (
                (source.op == "call_method" and source.target == "size" and len(source.args) == 1)
                or (source.op == "call_function" and source.args[1:] == ("shape",))
            )
        )
    return False


@register_function(torch.squeeze, torch.unsqueeze)
@register_method("squeeze", "unsqueeze")
class SqueezeHandler(OpHandler):
    """``x.squeeze(-1)`` / ``x.unsqueeze(2)`` of a non-channel dim: the channel index shifts.

    ``squeeze()`` without a dim is refused: it would also drop the batch dim of a batch of one.
    Channels cut into heads: a new dim anywhere (``k[:, :, None]``, exported as ``unsqueeze``)
    moves the heads' dims; a squeeze of them blocks.
    """

    knows_heads = True
    stream_effect = "same"

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        layout = first_layout(node, ctx)
        dim = node_arg(node, 1, "dim", None)
        channel, rank = layout.normalized_dim(), layout.rank
        unsqueeze = str(getattr(node.target, "__name__", node.target)) == "unsqueeze"
        if layout.heads is not None:
            return self._heads(node, layout, dim, unsqueeze, ctx)
        if isinstance(dim, int) and dim < 0 and rank is None and layout.dim < 0:
            return self._from_the_end(node, layout, dim, unsqueeze, ctx)
        if not isinstance(dim, int) or channel is None or rank is None:
            ctx.unknown(node, f"{ctx.op_name(node)} with dim={dim!r} on a tensor of unknown layout")
        new_rank = rank + 1 if unsqueeze else rank - 1
        position = dim % (new_rank if unsqueeze else rank)
        if not unsqueeze and position == channel:  # legal only at width 1: e.g. a 1-unit head
            ctx.block(node, layout, f"{ctx.op_name(node)} removes the channel dim (width 1)")
            return None
        if unsqueeze:
            channel = channel + 1 if position <= channel else channel
        else:
            channel = channel - 1 if position < channel else channel
        return layout.replace(dim=channel, rank=new_rank).with_path(ctx.op_name(node))

    def _heads(self, node, layout, dim, unsqueeze, ctx) -> Layout | None:
        rank = layout.rank
        if not unsqueeze or not isinstance(dim, int) or rank is None:
            ctx.block(node, layout, f"{ctx.op_name(node)}({dim!r}) of channels cut into heads")
            return None
        at = dim % (rank + 1)
        where = {d: d + (d >= at) for d in range(rank)}
        return heads.moved(layout, where, rank + 1).with_path(ctx.op_name(node))

    def _from_the_end(self, node, layout, dim, unsqueeze, ctx) -> Layout | None:
        """Rank unknown, channels counted from the end (a Linear's): count ``dim`` so too."""
        channel = layout.dim
        if unsqueeze:
            return layout.replace(dim=channel - 1 if dim >= channel else channel).with_path(
                ctx.op_name(node)
            )
        if dim == channel:
            ctx.block(node, layout, f"{ctx.op_name(node)} removes the channel dim (width 1)")
            return None
        return layout.replace(dim=channel + 1 if dim > channel else channel).with_path(
            ctx.op_name(node)
        )


@register_method("expand", "expand_as", "repeat", "tile")
@register_function(torch.tile)
class ExpandHandler(OpHandler):
    """``expand`` keeps the channels (right-aligned); ``repeat`` along them blocks.

    ``y.expand_as(x)`` of an untracked ``y`` takes ``x``'s shape: with size 1 along ``x``'s
    channels it is a broadcast (one value for every channel, old and new) and carries ``x``'s
    layout; with more it ties a fixed tensor to ``x``'s width and blocks. Channels cut into heads:
    :func:`~netsurgeon.graph.ops.heads.expand_heads` (grouped-query ``repeat_kv``).
    """

    knows_heads = True

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        layout = first_layout(node, ctx)
        name = str(getattr(node.target, "__name__", node.target))
        if layout is None:
            return self._untracked(node, name, ctx) if name == "expand_as" else None
        after = ctx.shape_of(node)
        if layout.heads is not None:
            before = ctx.shape_of(node.args[0])
            if name != "expand" or after is None or before is None:
                ctx.block(node, layout, f"'{name}' of channels cut into heads")
                return None
            return heads.expand_heads(node, layout, tuple(before), tuple(after), ctx)
        channel, rank = layout.normalized_dim(), layout.rank
        if after is None or channel is None or rank is None:
            if name in ("expand", "expand_as"):
                return layout.with_path(name)
            ctx.unknown(node, f"{name} of a tensor of unknown shape")
        new_channel = channel + len(after) - rank
        if name in ("repeat", "tile") and after[new_channel] != ctx.shape_of(node.args[0])[channel]:
            ctx.block(node, layout, f"{name} repeats the channels")
            return None
        return layout.replace(dim=new_channel, rank=len(after)).with_path(name)

    def _untracked(self, node: fx.Node, name: str, ctx: FlowContext) -> Layout | None:
        target = ctx.layout(node_arg(node, 1, "other", None))
        if target is None:
            return None
        source = ctx.shape_of(node.args[0])
        channel, rank = target.normalized_dim(), target.rank
        if source is None or channel is None or rank is None:
            ctx.unknown(
                node,
                f"{name} gives '{getattr(node.args[0], 'name', node.args[0])}' the shape of "
                "these channels, and whether it broadcasts along them is unknown",
            )
        dim = channel - (rank - len(source))
        if dim < 0 or source[dim] == 1:
            return target.with_path(name)
        ctx.block(
            node,
            target,
            f"{name} stretches a fixed tensor of {source[dim]} entries over these channels",
        )
        return None
