"""Handlers for ops that make a new tensor from another's shape: ``zeros_like``, ``x.new_zeros``.

``torch.zeros_like(x)`` (``ones_like``, ``full_like``, ``empty_like``) has ``x``'s shape and one
constant everywhere. Its channel dim follows ``x``'s widths, so it carries ``x``'s layout: a join
partner (``x + torch.ones_like(x)``, ``torch.where(m, x, torch.zeros_like(x))``) couples the
same groups as ``x`` itself. Widening it is exact for ``add``, ``mul`` and every other
element-wise join, under every init: the new entries hold the same constant as the old ones, so
a new channel meets what its source channel met (a copied unit under ``"net2net"`` computes the
same value as its source), and under ``"paper"`` a new channel feeds only zero columns anyway.
``empty_like`` holds no defined values before or after the widening; it is passed for the same
shape reason.

``x.new_zeros(size)`` (``new_ones``, ``new_full``, ``new_empty``) takes ``x``'s dtype and device
only; its shape is ``size``:

* literal sizes: a tensor of fixed shape, untracked;
* ``x.shape`` or ``x.size()`` of a tracked tensor: the same as ``zeros_like(x)``;
* a tuple whose entries are read off tracked tensors (``x.size(1)``, ``x.shape[1]``): a size read
  of a channel dim puts those channels' width at that position, which is understood (the
  result carries that tensor's layout there); any other computed entry (``c // 2``) fixes a
  shape that depends on a width, and blocks the groups it was read from.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import torch
from torch import fx

from netsurgeon.graph.layout import Layout
from netsurgeon.graph.nodes import first_layout, node_arg
from netsurgeon.graph.registry import OpHandler, register_function, register_method
from netsurgeon.graph.sizes import SizeValue, claim_own_size

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext

__all__ = ["size_source"]


@register_function(torch.zeros_like, torch.ones_like, torch.full_like, torch.empty_like)
class LikeHandler(OpHandler):
    """``torch.zeros_like(x)``: ``x``'s layout, one constant (see the module docstring)."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        layout = first_layout(node, ctx)
        return None if layout is None else layout.with_path(ctx.op_name(node))


@register_method("new_zeros", "new_ones", "new_full", "new_empty")
class NewTensorHandler(OpHandler):
    """``x.new_zeros(size)``: a tensor of shape ``size`` (see the module docstring)."""

    knows_batch = True  # the whole shape carries both dims; other reads of them block

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        size = _size_argument(node)
        label = ctx.op_name(node)
        whole = _whole_shape_of(size)
        if whole is not None and ctx.layout(whole) is not None:
            claim_own_size(ctx, size)
            return ctx.layout(whole).with_path(label)  # type: ignore[union-attr]
        entries = tuple(size) if isinstance(size, (tuple, list)) else (size,)
        found: Layout | None = None
        for position, entry in enumerate(entries):
            source = size_source(entry)
            layout = None if source is None else ctx.layout(source[0])
            if source is None and not isinstance(entry, int):
                reads = _channel_reads(entry, ctx)
                if reads:
                    ctx.block(
                        node,
                        reads,
                        f"{label} with the computed size '{getattr(entry, 'name', entry)}' fixes a "
                        "shape that depends on these channels' width",
                    )
            elif layout is not None and layout.batch is not None:
                if layout.batch.same_dim(source[1]) or layout.same_dim(source[1]) is not False:
                    ctx.block(
                        node,
                        layout,
                        f"{label} puts a channel size read off a tensor with channels on a batch "
                        "dim into a new shape, which netsurgeon does not follow",
                    )
            elif layout is not None and layout.same_dim(source[1]) is not False:
                found = self._channel_at(node, found, layout, source[1], position, entries, ctx)
                claim_own_size(ctx, entry)
        return None if found is None else found.with_path(label)

    @staticmethod
    def _channel_at(node, found, layout, dim, position, entries, ctx) -> Layout | None:
        """The new tensor holds ``layout``'s channels at ``position`` (one such read allowed)."""
        if layout.same_dim(dim) is None or found is not None or layout.factor is None:
            ctx.block(
                node,
                [layout] if found is None else [layout, found],
                f"{ctx.op_name(node)} puts sizes read off these channels into a new shape in a "
                "way netsurgeon cannot follow (pass example_inputs, or use zeros_like)",
            )
            return found
        return layout.replace(dim=position, rank=len(entries))


def _size_argument(node: fx.Node) -> Any:
    """``new_zeros((b, c))``, ``new_zeros(b, c)`` or ``new_zeros(size=...)``."""
    args = list(node.args[1:])
    if node.target == "new_full":
        args = args[:1]  # new_full(size, fill_value)
    if "size" in node.kwargs:
        return node.kwargs["size"]
    if len(args) == 1:
        return args[0]
    return tuple(args)


def _whole_shape_of(size: Any) -> fx.Node | None:
    """The tensor behind ``x.shape`` or ``x.size()``, if ``size`` is one."""
    if not isinstance(size, fx.Node):
        return None
    if size.op == "call_method" and size.target == "size" and len(size.args) == 1:
        return size.args[0]  # type: ignore[return-value]
    if size.op == "call_function" and size.target is getattr and size.args[1:] == ("shape",):
        return size.args[0]  # type: ignore[return-value]
    return None


def size_source(value: Any) -> tuple[fx.Node, int] | None:
    """``(x, d)`` when ``value`` is ``x.size(d)``, ``x.shape[d]`` or ``x.size()[d]``, else None."""
    if not isinstance(value, fx.Node):
        return None
    if value.op == "call_method" and value.target == "size":
        dim = node_arg(value, 1, "dim", None)
        return (value.args[0], dim) if isinstance(dim, int) else None  # type: ignore[return-value]
    if value.op == "call_function" and value.target is operator.getitem:
        whole, index = _whole_shape_of(value.args[0]), value.args[1]
        if whole is not None and isinstance(index, int):
            return whole, index
    return None


def _channel_reads(value: Any, ctx: FlowContext) -> list[Layout]:
    """Layouts whose channel count ``value`` was computed from (size reads of a channel dim)."""
    found: list[Layout] = []
    seen: set[fx.Node] = set()
    stack = [value] if isinstance(value, fx.Node) else []
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        value = ctx.layouts.get(node)
        if isinstance(value, SizeValue) and not value.depends:
            continue  # a number no width changes (a batch size, a rank: ``x.ndim - 1``)
        source, whole = size_source(node), _whole_shape_of(node)
        if source is not None:
            layout = ctx.layout(source[0])
            if layout is not None and layout.same_dim(source[1]) is not False:
                found.append(layout)
        elif whole is not None:
            found += [ctx.layout(whole)] if ctx.layout(whole) is not None else []  # type: ignore[list-item]
        elif ctx.layout(node) is not None:
            found.append(ctx.layout(node))  # type: ignore[arg-type]
        else:
            stack.extend(node.all_input_nodes)
    return found
