"""Reads of tensor sizes: which depend on a channel width, and which uses of them are understood.

fx records ``x.shape``, ``x.size(d)``, ``x.numel()`` as nodes. When the size read is a
channel-carrying dim, its value changes with a widening, and whatever it feeds (a reshape, a scale
``att * x.shape[-1] ** -0.5``) silently depends on the width. The walker stores a
:class:`SizeValue` as the "layout" of such nodes, so sizes are followed like channels:

* a read of a dim that carries no channels (the batch, a spatial dim) or of the rank is a plain
  Python number: ``SizeValue`` with no :attr:`~SizeValue.reads`; joins treat it as a scalar;
* a read of the channel dim (or of a dim that cannot be decided without ``example_inputs``) keeps
  its :class:`SizeRead`; arithmetic on reads keeps them too (``D // heads``);
* a node that takes a width-dependent size as an argument blocks the groups the size was read
  from, unless its handler *claims* the argument (:func:`claim_channel_size`). A reshape claims
  a direct read of the channel dim passed at the channel position of a tensor whose channels
  have the same width (the SE block's ``pool(x).view(b, c)``); the "same width" is checked when
  the groups are final (:meth:`FlowContext.require_same_width`).

Example, an SE block (with ``example_inputs``, so the reshape's channel position is known)::

    b, c, _, _ = x.size()   # size(): SizeValue("shape"); b: plain; c: a read of the channel dim
    y = pool(x).view(b, c)  # claimed: c sits at the channel position of pool(x)
    y = fc2(fc1(y)).view(b, c, 1, 1)  # claimed; fc2's group must grow as x's: x * y joins them
"""

from __future__ import annotations

import builtins
import math
import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import fx

from netsurgeon.graph.layout import Layout

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext

__all__ = [
    "SizeRead",
    "SizeValue",
    "block_unclaimed",
    "claim_channel_size",
    "claim_own_size",
    "propagate",
    "read_size",
    "size_arguments",
]

_ARITHMETIC = frozenset(
    {
        operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv,
        operator.mod, operator.pow, operator.neg, operator.pos, operator.abs, builtins.abs,
        builtins.int, builtins.float, builtins.round, builtins.min, builtins.max, math.sqrt,
        math.floor, math.ceil, math.prod,
    }
)  # fmt: skip


@dataclass(frozen=True)
class SizeRead:
    """One read of a tracked tensor's size that may depend on a width.

    Attributes:
        node: the fx node that read it (``x.size(1)``, ``getitem(x.shape, -1)``, ``x.numel()``).
        layout: the tensor's channel layout at the read.
        channel: ``True`` when the dim read carries the channels, ``None`` when it cannot be
            decided (rank unknown: pass ``example_inputs``).
    """

    node: fx.Node
    layout: Layout
    channel: bool | None


@dataclass(frozen=True)
class SizeValue:
    """A Python number or size tuple computed from tensor sizes (the walker's record for it).

    Attributes:
        kind: ``"shape"`` (a tensor's size tuple, maybe sliced), ``"dim"`` (one size as read),
            ``"derived"`` (arithmetic on sizes), ``"plain"`` (independent of every width).
        reads: the width-dependent reads it is computed from (empty: independent).
        layout: for ``"shape"``: the tensor's layout; ``dims`` are the dims the tuple holds
            (``None``: the whole tuple of a tensor of unknown rank).
    """

    kind: str
    reads: tuple[SizeRead, ...] = ()
    layout: Layout | None = None
    dims: tuple[int, ...] | None = None

    @property
    def depends(self) -> bool:
        return bool(self.reads)

    @property
    def direct_channel_read(self) -> SizeRead | None:
        """The read, when this is exactly the size of a channel dim (nothing computed on it)."""
        if self.kind == "dim" and len(self.reads) == 1 and self.reads[0].channel:
            return self.reads[0]
        return None


_PLAIN = SizeValue("plain")


def read_size(node: fx.Node, layout: Layout | None, what: str, dim: Any = None) -> SizeValue:
    """The value of a size query on a tensor of ``layout``: ``what`` is ``"shape"`` (the tuple),
    ``"dim"`` (the size of dim ``dim``), ``"numel"`` or ``"rank"``."""
    if layout is None or what == "rank":
        return _PLAIN
    if what == "numel":
        return SizeValue("derived", (SizeRead(node, layout, True),))
    if what == "shape":
        rank = layout.rank
        dims = None if rank is None else tuple(range(rank))
        return _shape(node, layout, dims)
    return _dim(node, layout, dim)


def _shape(node: fx.Node, layout: Layout, dims: tuple[int, ...] | None) -> SizeValue:
    channel = layout.normalized_dim()
    carried = () if layout.batch is None else (layout.batch.normalized_dim(),)
    if dims is not None and channel is not None and not {channel, *carried} & set(dims):
        return _PLAIN
    holds = True if dims is not None and channel is not None else None
    return SizeValue("shape", (SizeRead(node, layout, holds),), layout, dims)


def _dim(node: fx.Node, layout: Layout, dim: Any) -> SizeValue:
    if not isinstance(dim, int):
        return SizeValue("dim", (SizeRead(node, layout, None),))
    if dim == 0 and layout.dim < 0 and layout.rank is None:
        return _PLAIN  # channels counted from the end (a Linear's): dim 0 is the batch
    if layout.batch is not None and layout.batch.same_dim(dim):  # channels on a batch dim
        return SizeValue("dim", (SizeRead(node, layout.batch, True),))
    same = layout.same_dim(dim)
    if same is False:
        return _PLAIN
    return SizeValue("dim", (SizeRead(node, layout, same),))


def size_arguments(node: fx.Node, ctx: FlowContext) -> list[tuple[fx.Node, SizeValue]]:
    """The inputs of ``node`` that are sizes (width-dependent or not)."""
    found = []
    for arg in node.all_input_nodes:
        value = ctx.layouts.get(arg)
        if isinstance(value, SizeValue):
            found.append((arg, value))
    return found


def propagate(node: fx.Node, ctx: FlowContext, args: list[tuple[fx.Node, SizeValue]]) -> Any:
    """The value of a node whose only inputs that matter are sizes (no channels flow in)."""
    reads = tuple(dict.fromkeys(r for _, v in args for r in v.reads))
    if node.op == "call_function" and node.target is operator.getitem:
        source = ctx.layouts.get(node.args[0])  # type: ignore[arg-type]
        if isinstance(source, SizeValue) and source.kind == "shape":
            return _index_shape(node, source, node.args[1])
    if node.op == "call_function" and (
        node.target in _ARITHMETIC or node.target is operator.getitem
    ):
        return SizeValue("derived", reads) if reads else _PLAIN
    if reads:
        _block(node, ctx, args, f"'{ctx.op_name(node)}' takes it")
    return None


def _index_shape(node: fx.Node, shape: SizeValue, index: Any) -> SizeValue:
    layout = shape.layout
    if layout is None:
        return SizeValue("derived", shape.reads)
    if shape.dims is None:  # the whole tuple, rank unknown
        if isinstance(index, int):
            return _dim(node, layout, index)
        return SizeValue("shape", (SizeRead(node, layout, None),), layout, None)
    if isinstance(index, int) and -len(shape.dims) <= index < len(shape.dims):
        dim = shape.dims[index]
        if layout.batch is not None and dim == layout.batch.normalized_dim():
            return SizeValue("dim", (SizeRead(node, layout.batch, True),))
        if dim != layout.normalized_dim():
            return _PLAIN
        return SizeValue("dim", (SizeRead(node, layout, True),))
    if isinstance(index, slice):
        return _shape(node, layout, shape.dims[index])
    return SizeValue("derived", shape.reads)


def claim_channel_size(ctx: FlowContext, value: Any, target: Layout) -> bool:
    """Accept ``value`` as the size of ``target``'s channel dim, if it is a direct read of a
    channel dim. Whether the read tensor's channels and ``target``'s stay of one width is checked
    once the groups are final; a mismatch blocks both."""
    size = ctx.layouts.get(value) if isinstance(value, fx.Node) else None
    read = size.direct_channel_read if isinstance(size, SizeValue) else None
    if read is None:
        return False
    ctx.require_same_width(read.node, read.layout, target)
    ctx.size_claims.add(value)
    return True


def claim_own_size(ctx: FlowContext, value: Any) -> None:
    """Accept ``value``, a size read of some tensor ``x``, as sizing a new tensor that carries
    ``x``'s own channels at the position read (``x.new_zeros(x.shape)``): it stays right at every
    width, so there is nothing to check."""
    if isinstance(value, fx.Node) and isinstance(ctx.layouts.get(value), SizeValue):
        ctx.size_claims.add(value)


def block_unclaimed(node: fx.Node, ctx: FlowContext, args: list[tuple[fx.Node, SizeValue]]) -> None:
    """Block the groups of each width-dependent size ``node`` takes and its handler did not claim."""
    unclaimed = [(a, v) for a, v in args if v.depends and a not in ctx.size_claims]
    if unclaimed:
        _block(node, ctx, unclaimed, f"'{ctx.op_name(node)}' uses it")


def _block(
    node: fx.Node, ctx: FlowContext, args: list[tuple[fx.Node, SizeValue]], use: str
) -> None:
    for arg, value in args:
        for read in value.reads:
            undecided = read.channel is None
            reason = (
                f"the size read at node '{read.node.name}' ({_spell(read.node)}) "
                + (
                    "may be a channel dim (the rank is unknown), "
                    if undecided
                    else "is a channel-carrying dim, "
                )
                + f"and {use} at node '{node.name}' (through '{arg.name}'): the value would "
                "change with the width"
                + (
                    "; pass example_inputs to trace/widen so the dim can be decided"
                    if undecided
                    else "; compute it from a fixed number, or use -1 in a reshape"
                )
            )
            ctx.block(node, read.layout, reason)


def _spell(node: fx.Node) -> str:
    if node.op == "call_method":
        args = ", ".join(str(a) for a in node.args[1:])
        return f"{getattr(node.args[0], 'name', '?')}.{node.target}({args})"
    if node.target is operator.getitem:
        return f"{getattr(node.args[0], 'name', '?')}[{node.args[1]!r}]"
    if node.target is builtins.getattr:
        return f"{getattr(node.args[0], 'name', '?')}.{node.args[1]}"
    return node.format_node()
