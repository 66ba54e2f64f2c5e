"""Handlers for ``call_function`` and ``call_method`` nodes (``F.relu(x)``, ``x.view(b, -1)``, ...).

Each class covers one family of ops and registers the functional, ``torch.*`` and ``Tensor`` method
spellings of it. What an op does to the channels decides its answer: pass them on (activations,
pooling), move them (``permute``, ``flatten``), join groups (``add``, ``mul``, ``cat`` along
other dims), concatenate or split their segments (``cat``/``chunk`` along the channel dim), or
block the groups it touches with the reason (a softmax or a reduction over the channels, a reshape
that fixes a width, a matmul that mixes them).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import fx

from netsurgeon.graph.layout import Layout, Segment
from netsurgeon.graph.registry import OpHandler, register_function, register_method

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext

__all__ = ["Pieces", "flatten_flow", "softmax_flow"]

_ELEMENTWISE_FUNCTIONS = (
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.leaky_relu_, F.elu, F.elu_,
    F.celu, F.selu, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.hardtanh, F.softplus,
    F.logsigmoid, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, torch.exp, torch.abs, torch.clamp,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
    torch.neg, operator.neg, torch.sqrt, torch.rsqrt, torch.log, torch.square, F.softsign,
    torch.erf, torch.sin, torch.cos, torch.clamp_min, torch.clamp_max, torch.nan_to_num,
)  # fmt: skip
_ELEMENTWISE_METHODS = (
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "abs", "contiguous", "clone",
    "float", "double", "half", "bfloat16", "clamp", "clamp_", "clamp_min", "clamp_max", "neg",
    "sqrt", "rsqrt", "log", "square", "to", "type_as", "detach", "pow", "erf", "sin", "cos",
)  # fmt: skip
_POOL_FUNCTIONS = {
    1: (F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool1d, F.adaptive_max_pool1d,
        torch.max_pool1d, torch.avg_pool1d, torch.adaptive_avg_pool1d, torch.adaptive_max_pool1d),
    2: (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
        torch.max_pool2d),
    3: (F.max_pool3d, F.avg_pool3d, F.adaptive_avg_pool3d, F.adaptive_max_pool3d,
        torch.max_pool3d),
}  # fmt: skip
_JOIN_FUNCTIONS = (
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub,
    operator.imul, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div, torch.maximum,
    torch.minimum, torch.where, torch.pow,
)  # fmt: skip
_JOIN_METHODS = ("add", "sub", "mul", "div", "add_", "mul_", "sub_", "div_", "maximum", "minimum")
_MIXING_FUNCTIONS = (
    torch.matmul, operator.matmul, torch.bmm, torch.mm, torch.einsum, F.linear, torch.baddbmm,
    F.scaled_dot_product_attention,
)  # fmt: skip


class Pieces:
    """The layouts of an op with several outputs (``chunk``, attention), read by ``getitem``."""

    def __init__(
        self, layouts: Sequence[Layout | None] | None = None, *, same: Layout | None = None
    ):
        self.layouts = tuple(layouts or ())
        self.same = same

    def get(self, index: Any) -> Layout | None:
        if self.same is not None:
            return self.same
        return self.layouts[index] if isinstance(index, int) else None


def _arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _first(node: fx.Node, ctx: FlowContext) -> Layout | None:
    layout = ctx.input(node)
    return layout if isinstance(layout, Layout) else None


def _normalize(dim: int, rank: int | None) -> int | None:
    if dim >= 0:
        return dim
    return None if rank is None else dim + rank


# ------------------------------------------------------------------------ passing through


@register_function(*_ELEMENTWISE_FUNCTIONS)
@register_method(*_ELEMENTWISE_METHODS)
class ElementwiseHandler(OpHandler):
    """Element-wise activations, dropout, ``contiguous`` and dtype casts."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        layout = _first(node, ctx)
        if layout is None:  # the channels arrive in another argument (``pow(2, x)``)
            return ctx.join(node, node.all_input_nodes, ctx.op_name(node))
        return layout.with_path(ctx.op_name(node))


@register_function(*(f for fs in _POOL_FUNCTIONS.values() for f in fs), F.interpolate)
class PoolFunctionHandler(OpHandler):
    """Functional pooling and interpolation over the trailing spatial dims."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        from netsurgeon.graph.handlers import spatial_flow

        if node.kwargs.get("return_indices"):
            ctx.refuse(node, "pooling with return_indices=True", fix="use return_indices=False")
        spatial = next((d for d, fs in _POOL_FUNCTIONS.items() if node.target in fs), 0)
        return spatial_flow(node, _first(node, ctx), spatial, ctx.op_name(node), ctx)


@register_function(F.pad)
class PadHandler(OpHandler):
    """``F.pad(x, pad)`` pads the last ``len(pad) // 2`` dims; the channels must come before."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        from netsurgeon.graph.handlers import spatial_flow

        pad = _arg(node, 1, "pad", ())
        return spatial_flow(node, _first(node, ctx), len(pad) // 2, "pad", ctx)


# ------------------------------------------------------------------------ joins


@register_function(*_JOIN_FUNCTIONS)
@register_method(*_JOIN_METHODS)
class JoinHandler(OpHandler):
    """``a + b``, ``a * gate``, ``torch.where(c, a, b)``: the operands' channels become one group.

    A residual ``add`` makes the block's last layer a producer of the stream's group; a gating
    ``mul`` makes the gate's producer one too. Scalars pass; per-channel free parameters (layer
    scales, biases) become followers; size-1 channel dims broadcast.
    """

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        label = getattr(node.target, "__name__", str(node.target))
        return ctx.join(node, [*node.args, *node.kwargs.values()], label)


@register_function(*_MIXING_FUNCTIONS)
class MixingHandler(OpHandler):
    """``matmul``, ``einsum``, ``F.linear``, attention: they mix channels with other tensors.

    The groups they read cannot grow (the other operand's size is fixed by the forward); what they
    produce is not tracked.
    """

    def flow(self, node: fx.Node, ctx: FlowContext) -> None:
        ctx.block(
            node,
            ctx.tracked_inputs(node),
            f"'{ctx.op_name(node)}' mixes these channels with a tensor of fixed size",
        )
        return None


# ------------------------------------------------------------------------ concatenation and splits


@register_function(torch.cat, torch.concat, torch.concatenate)
class CatHandler(OpHandler):
    """``torch.cat``: along the channels the segments concatenate; along another dim they join."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        tensors = list(_arg(node, 0, "tensors", ()))
        dim = _arg(node, 1, "dim", 0)
        tracked = [lay for t in tensors if (lay := ctx.layout(t)) is not None]
        base = tracked[0]
        same = base.same_dim(dim)
        if same is None:
            ctx.unknown(node, f"cat along dim {dim} of tensors whose rank is unknown")
        if not same:
            return ctx.join(node, tensors, "cat")
        segments: list[Segment] = []
        for t in tensors:
            layout = ctx.layout(t)
            if layout is None:
                shape = ctx.shape_of(t)
                if shape is None:
                    ctx.unknown(
                        node,
                        f"cat of the channels with '{getattr(t, 'name', t)}', whose size is unknown",
                    )
                segments.append(Segment(None, 0, shape[base.normalized_dim() or 0]))
                continue
            if layout.normalized_dim() != base.normalized_dim() or layout.factor is None:
                ctx.unknown(
                    node,
                    f"cat of tensors with their channels on different dims or flattened to an "
                    f"unknown size ({ctx.describe(layout)})",
                )
            for s in layout.segments:
                segments.append(
                    Segment(s.group, s.start, s.stop, s.multiplicity * layout.factor, s.path)
                )
        flattened = any(lay.flattened for lay in tracked)
        return Layout(base.dim, base.rank, tuple(s.with_path("cat") for s in segments), flattened)


@register_function(torch.stack)
class StackHandler(OpHandler):
    """``torch.stack``: the operands join, and a new dim is inserted."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        tensors = list(_arg(node, 0, "tensors", ()))
        dim = _arg(node, 1, "dim", 0)
        joined = ctx.join(node, tensors, "stack")
        if joined is None:
            return None
        channel, rank = joined.normalized_dim(), joined.rank
        position = _normalize(dim, None if rank is None else rank + 1)
        if channel is None or position is None:
            ctx.unknown(node, "stack of tensors of unknown rank")
        return joined.replace(
            dim=channel + 1 if position <= channel else channel,
            rank=None if rank is None else rank + 1,
        )


@register_function(torch.chunk, torch.split, torch.tensor_split, torch.unbind)
@register_method("chunk", "split", "tensor_split", "unbind")
class SplitHandler(OpHandler):
    """``chunk(n, dim)`` along the channels splits each group into ``n`` blocks; ``split``
    with literal sizes fixes the widths and blocks. Along other dims every piece keeps the layout.
    """

    def flow(self, node: fx.Node, ctx: FlowContext) -> Pieces:
        layout = _first(node, ctx)
        name = getattr(node.target, "__name__", str(node.target))
        dim = _arg(node, 1 if name == "unbind" else 2, "dim", 0)
        if layout is None:
            return Pieces()
        same = layout.same_dim(dim)
        if same is None:
            ctx.unknown(node, f"{name} along dim {dim} of a tensor of unknown rank")
        if not same:
            if name == "unbind":
                channel = layout.normalized_dim()
                position = _normalize(dim, layout.rank)
                if channel is None or position is None:
                    ctx.unknown(node, "unbind of a tensor of unknown rank")
                layout = layout.replace(
                    dim=channel - 1 if position < channel else channel,
                    rank=None if layout.rank is None else layout.rank - 1,
                )
            return Pieces(same=layout.with_path(name))
        count = _arg(node, 1, "chunks", None)
        if name != "chunk" or not isinstance(count, int) or layout.flattened:
            ctx.block(
                node,
                layout,
                f"'{name}' along the channels with fixed sizes ties them to today's widths; "
                "use chunk(n, dim) to split them into equal parts",
            )
            return Pieces()
        ctx.require_blocks(node, layout, count, what=f"chunk({count})")
        if len(layout.segments) != 1:
            return Pieces()
        seg = layout.segments[0]
        size = seg.channels // count
        return Pieces(
            [
                layout.replace(
                    segments=(
                        Segment(
                            seg.group,
                            seg.start + j * size,
                            seg.start + (j + 1) * size,
                            seg.multiplicity,
                            (*seg.path, f"chunk[{j}]"),
                        ),
                    )
                )
                for j in range(count)
            ]
        )


@register_function(operator.getitem)
class GetitemHandler(OpHandler):
    """One output of a multi-output op, or ``x[:, 0]``-style indexing of a tensor.

    Integer indices and full slices of non-channel dims move the channel dim; slicing or indexing
    the channels themselves fixes their count and blocks.
    """

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        source, index = node.args[0], node.args[1]
        value = ctx.layouts.get(source)  # type: ignore[arg-type]
        if isinstance(value, Pieces):
            return value.get(index)
        if isinstance(value, tuple):
            return value[index] if isinstance(index, int) else None
        layout = value
        if layout is None:
            return None
        items = index if isinstance(index, tuple) else (index,)
        if any(isinstance(i, (fx.Node, list, torch.Tensor)) for i in items):
            ctx.block(node, layout, "indexing with a tensor selects channels by value")
            return None
        channel, rank = layout.normalized_dim(), layout.rank
        if channel is None or rank is None:
            ctx.unknown(node, f"indexing {index!r} a tensor of unknown rank")
        explicit = sum(1 for i in items if i is not None and i is not Ellipsis)
        dim_in, dim_out, new_channel = 0, 0, None
        for item in items:
            if item is Ellipsis:
                skipped = rank - explicit
                if dim_in <= channel < dim_in + skipped:
                    new_channel = dim_out + channel - dim_in
                dim_in += skipped
                dim_out += skipped
            elif item is None:
                dim_out += 1
            elif isinstance(item, int):
                if dim_in == channel:
                    ctx.block(node, layout, f"indexing {index!r} picks single channels")
                    return None
                dim_in += 1
            elif isinstance(item, slice):
                if dim_in == channel:
                    if item != slice(None):
                        ctx.block(
                            node, layout, f"slicing {index!r} fixes how many channels are kept"
                        )
                        return None
                    new_channel = dim_out
                dim_in += 1
                dim_out += 1
            else:
                ctx.refuse(node, f"index {item!r}", fix="index with ints and slices")
        if new_channel is None:
            new_channel = dim_out + channel - dim_in
        new_rank = dim_out + rank - dim_in
        return layout.replace(dim=new_channel, rank=new_rank).with_path("getitem")


# ------------------------------------------------------------------------ moving the channel dim


@register_function(torch.permute, torch.transpose, torch.swapaxes, torch.swapdims, torch.movedim)
@register_method("permute", "transpose", "swapaxes", "swapdims", "movedim")
class PermuteHandler(OpHandler):
    """``permute``/``transpose``/``movedim``: the channel dim moves; nothing else changes."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        layout = _first(node, ctx)
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
            a, b = (_arg(node, 1, "dim0", 0) % rank, _arg(node, 2, "dim1", 1) % rank)
            order[a], order[b] = order[b], order[a]
        else:  # movedim(source, destination)
            src, dst = _arg(node, 1, "source", 0), _arg(node, 2, "destination", 0)
            src = [src] if isinstance(src, int) else list(src)
            dst = [dst] if isinstance(dst, int) else list(dst)
            moved = dict(zip((d % rank for d in dst), (s % rank for s in src), strict=True))
            rest = iter(d for d in range(rank) if d not in moved.values())
            order = [moved[i] if i in moved else next(rest) for i in range(rank)]
        if layout.flattened and order.index(channel) != channel:
            ctx.block(node, layout, f"{name} of flattened channels")
            return None
        return layout.replace(dim=order.index(channel)).with_path(name)


def _arg_list(dims: Any, fallback: Any) -> list[int]:
    return list(dims if dims else fallback or ())


@register_function(torch.flatten)
@register_method("flatten")
class FlattenHandler(OpHandler):
    """``torch.flatten(x, start, end)``."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        start = _arg(node, 1, "start_dim", 0)
        end = _arg(node, 2, "end_dim", -1)
        return flatten_flow(node, _first(node, ctx), start, end, ctx.op_name(node), ctx)


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
    if channel < s:
        return layout.replace(rank=rank - (e - s)).with_path(label)
    if channel > e:
        return layout.replace(dim=channel - (e - s), rank=rank - (e - s)).with_path(label)
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


@register_function(torch.reshape)
@register_method("view", "reshape")
class ReshapeHandler(OpHandler):
    """``view``/``reshape``: a flatten or un-flatten that keeps the channels whole passes.

    With shapes known, the channel dim may merge with the dims after it (channel-major) or be
    split from them again; its own size must come from the tensor (``-1`` or ``x.size(...)``),
    not a literal, or the forward would break after a widening. Anything that splits the channels
    (a channel shuffle's ``view(b, g, c // g, h, w)``) or merges them with earlier dims blocks.
    """

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        layout = _first(node, ctx)
        shape: Any = list(node.args[1:]) if node.op == "call_method" else node.args[1]
        if node.op == "call_method" and len(shape) == 1 and isinstance(shape[0], (list, tuple)):
            shape = list(shape[0])
        shape = list(shape) if isinstance(shape, (list, tuple)) else [shape]
        label = ctx.op_name(node)
        if len(shape) == 2 and shape[1] == -1 and _is_batch_size(shape[0]):
            return flatten_flow(node, layout, 1, -1, f"{label}(batch, -1)", ctx)
        before, after = ctx.shape_of(node.args[0]), ctx.shape_of(node)
        if before is not None and after is not None and layout.normalized_dim() is not None:
            return self._with_shapes(node, layout, shape, before, after, label, ctx)
        return self._fixed(node, layout, shape, label, ctx)

    def _with_shapes(self, node, layout, spec, before, after, label, ctx) -> Layout | None:
        channel = layout.normalized_dim()
        leading = math.prod(before[:channel])
        j = next((i for i in range(len(after) + 1) if math.prod(after[:i]) == leading), None)
        if j is None or j >= len(after):
            ctx.block(
                node, layout, f"{label} to {tuple(after)} merges the channels with earlier dims"
            )
            return None
        size, out = before[channel], after[j]
        if (isinstance(spec[j], int) and spec[j] != -1) or (len(spec) != len(after)):
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
        ctx.block(
            node,
            layout,
            f"{label} to the shape {tuple(shape)!r} fixes a size that depends on these channels' "
            "width; use torch.flatten(x, 1) (or -1 for the channel dim)",
        )
        return None


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
    """

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        layout = _first(node, ctx)
        dim = _arg(node, 1, "dim", None)
        channel, rank = layout.normalized_dim(), layout.rank
        unsqueeze = str(getattr(node.target, "__name__", node.target)) == "unsqueeze"
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
    """``expand`` keeps the channels (right-aligned); ``repeat`` along them blocks."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        layout = _first(node, ctx)
        after = ctx.shape_of(node)
        channel, rank = layout.normalized_dim(), layout.rank
        name = str(getattr(node.target, "__name__", node.target))
        if after is None or channel is None or rank is None:
            if name in ("expand", "expand_as"):
                return layout.with_path(name)
            ctx.unknown(node, f"{name} of a tensor of unknown shape")
        new_channel = channel + len(after) - rank
        if name in ("repeat", "tile") and after[new_channel] != ctx.shape_of(node.args[0])[channel]:
            ctx.block(node, layout, f"{name} repeats the channels")
            return None
        return layout.replace(dim=new_channel, rank=len(after)).with_path(name)


# ------------------------------------------------------------------------ reductions and queries


@register_function(
    torch.mean, torch.sum, torch.amax, torch.amin, torch.std, torch.var, torch.logsumexp
)
@register_method("mean", "sum", "amax", "amin", "std", "var", "logsumexp")
class ReductionHandler(OpHandler):
    """``x.mean((2, 3))``: reducing other dims keeps the channels; reducing them blocks."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        layout = _first(node, ctx)
        dims = _arg(node, 1, "dim", None)
        dims = (dims,) if isinstance(dims, int) else dims
        channel, rank = layout.normalized_dim(), layout.rank
        if not isinstance(dims, (tuple, list)) or not dims:
            ctx.block(node, layout, f"{ctx.op_name(node)} over every dim reduces the channels")
            return None
        if channel is None or rank is None:
            ctx.unknown(node, f"reduction over dims {tuple(dims)} of a tensor of unknown rank")
        reduced = sorted(d % rank for d in dims)
        if channel in reduced:
            ctx.block(
                node,
                layout,
                f"{ctx.op_name(node)} over dims {tuple(dims)} reduces across the channels, which "
                "changes when channels are added",
            )
            return None
        if bool(_arg(node, 2, "keepdim", False)):
            return layout.with_path(ctx.op_name(node))
        shift = sum(1 for d in reduced if d < channel)
        return layout.replace(dim=channel - shift, rank=rank - len(reduced)).with_path(
            ctx.op_name(node)
        )


@register_function(F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, F.normalize)
@register_method("softmax", "log_softmax")
class SoftmaxHandler(OpHandler):
    """Softmax (or ``F.normalize``) over other dims is per channel; over the channels it blocks."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        default = 1 if node.target is F.normalize else None
        return softmax_flow(node, _first(node, ctx), _arg(node, 1, "dim", default), ctx)


def softmax_flow(node: fx.Node, layout: Layout | None, dim: Any, ctx: FlowContext) -> Layout | None:
    if layout is None:
        return None
    if not isinstance(dim, int) or layout.same_dim(dim) is not False:
        ctx.block(
            node,
            layout,
            f"{ctx.op_name(node)} over dim {dim} normalises across these channels, which "
            "changes when channels are added",
        )
    return layout.with_path(ctx.op_name(node))


@register_function(F.layer_norm)
class LayerNormFunctionHandler(OpHandler):
    """``F.layer_norm(x, normalized_shape, ...)``: across the channels it blocks."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        from netsurgeon.graph.handlers import layer_norm_flow

        shape = _arg(node, 1, "normalized_shape", ())
        return layer_norm_flow(node, _first(node, ctx), len(shape), ctx)


@register_function(F.group_norm, F.batch_norm, F.instance_norm)
class NormFunctionHandler(OpHandler):
    """Functional normalisations with parameters passed in: the parameters' sizes are fixed."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        layout = _first(node, ctx)
        ctx.block(
            node,
            layout,
            f"functional '{ctx.op_name(node)}' takes per-channel tensors netsurgeon cannot grow; "
            "use the nn module",
        )
        return layout


@register_method("size", "dim", "numel", "ndimension")
class QueryHandler(OpHandler):
    """``x.size(0)``, ``x.dim()``: metadata only, no channel data flows on."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> None:
        return None


@register_function(getattr)
class GetattrHandler(OpHandler):
    """``x.shape`` / ``x.dtype``: metadata only."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        if len(node.args) > 1 and node.args[1] in ("shape", "dtype", "device", "ndim", "is_cuda"):
            return None
        if len(node.args) > 1 and node.args[1] in ("T", "mT"):
            layout = _first(node, ctx)
            rank = layout.rank
            channel = layout.normalized_dim()
            if rank is None or channel is None:
                ctx.unknown(node, "transpose of a tensor of unknown rank")
            order = list(range(rank))
            if node.args[1] == "T":
                order.reverse()
            else:
                order[-1], order[-2] = order[-2], order[-1]
            return layout.replace(dim=order.index(channel)).with_path(str(node.args[1]))
        ctx.refuse(node, f"attribute access {node.args[1:]!r} on a tensor", fix="remove it")


# ------------------------------------------------------------------------ torchvision's wrapped ops
# torchvision marks a few functions as fx leaves (``torch.fx.wrap``); they appear as single nodes.


def _register_torchvision() -> None:
    try:
        from torchvision.models import swin_transformer
        from torchvision.ops import stochastic_depth
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return
    # the per-sample drop path scales whole samples: element-wise on the channels
    register_function(stochastic_depth)(type("StochasticDepthHandler", (ElementwiseHandler,), {}))
    # Swin's window attention takes its projection weights as arguments: it mixes the channels
    for name in ("shifted_window_attention", "shifted_window_attention_3d"):
        if hasattr(swin_transformer, name):
            function = getattr(swin_transformer, name)
            register_function(function)(type("WindowAttentionHandler", (MixingHandler,), {}))
    # patch merging gathers the 2x2 (3-d: 2x2x2) neighbours of a (..., H, W, C) map into the
    # channels: the output's last dim is 4 (8) copies of the input's segments
    for name, copies in (("_patch_merging_pad", 4), ("_patch_merging_pad_3d", 8)):
        if hasattr(swin_transformer, name):
            register_function(getattr(swin_transformer, name))(
                type("PatchMergingHandler", (_PatchMergingHandler,), {"copies": copies})
            )


class _PatchMergingHandler(OpHandler):
    copies = 4

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        layout = _first(node, ctx)
        if layout is None:
            return None
        if not layout.is_last_dim() or layout.factor != 1:
            ctx.refuse(node, "patch merging reads the channels on the last dim", fix="-")
        label = ctx.op_name(node)
        return layout.replace(segments=layout.segments * self.copies).with_path(label)


_register_torchvision()
