"""Reading a tensor's metadata: ``x.size(d)``, ``x.shape``, ``x.numel()``, ``x.dim()``, ``x.T``.

No channel data flows on, but a read of a channel dim's size depends on the width:
:mod:`netsurgeon.graph.sizes` follows it to its uses. ``x.T``/``x.mT`` move the channel dim.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import fx

from netsurgeon.graph.layout import Layout
from netsurgeon.graph.nodes import first_layout, node_arg
from netsurgeon.graph.ops.heads import moved
from netsurgeon.graph.registry import OpHandler, register_function, register_method
from netsurgeon.graph.sizes import SizeValue, read_size

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext

__all__ = ["GetattrHandler", "QueryHandler"]


@register_method("size", "dim", "numel", "ndimension")
class QueryHandler(OpHandler):
    """``x.size(d)``, ``x.numel()``, ``x.dim()``: no channel data flows on, but a size read of a
    channel dim depends on the width (:mod:`netsurgeon.graph.sizes` follows it to its uses)."""

    knows_heads = True  # a read of a head's own dim is a fixed number
    knows_batch = True  # a read of channels on a batch dim is a read of those channels

    def flow(self, node: fx.Node, ctx: FlowContext) -> SizeValue:
        layout = first_layout(node, ctx)
        name = str(node.target)
        if name == "size":
            dim = node_arg(node, 1, "dim", None)
            return read_size(node, layout, "shape" if dim is None else "dim", dim)
        return read_size(node, layout, "numel" if name == "numel" else "rank")


@register_function(getattr)
class GetattrHandler(OpHandler):
    """``x.shape`` (a size read, see :class:`QueryHandler`), ``x.dtype``, ``x.T``."""

    knows_heads = True
    knows_batch = True  # size reads as above; ``.T`` moves both dims

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | SizeValue | None:
        if len(node.args) > 1 and node.args[1] in ("shape", "ndim"):
            what = "shape" if node.args[1] == "shape" else "rank"
            return read_size(node, first_layout(node, ctx), what)
        if len(node.args) > 1 and node.args[1] in ("dtype", "device", "is_cuda"):
            return None
        if len(node.args) > 1 and node.args[1] in ("T", "mT"):
            layout = first_layout(node, ctx)
            rank = layout.rank
            channel = layout.normalized_dim()
            if rank is None or channel is None:
                ctx.unknown(node, "transpose of a tensor of unknown rank")
            order = list(range(rank))
            if node.args[1] == "T":
                order.reverse()
            else:
                order[-1], order[-2] = order[-2], order[-1]
            if layout.heads is not None:
                where = {d: order.index(d) for d in range(rank)}
                return moved(layout, where, rank).with_path(str(node.args[1]))
            carried = layout.batch
            if carried is not None:
                carried = carried.replace(dim=order.index(carried.normalized_dim()))
            moved_layout = layout.replace(dim=order.index(channel), batch=carried)
            return moved_layout.with_path(str(node.args[1]))
        ctx.refuse(node, f"attribute access {node.args[1:]!r} on a tensor", fix="remove it")
