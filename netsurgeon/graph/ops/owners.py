"""Modules traced through that vouch for the sizes their forward computes: head and width owners.

A forward that computes a size from an attribute or a shape (``reshape(B, N, 3, self.num_heads,
self.head_dim)``, ``x.view(-1, n, x.size(-1))``) is recorded with that size as a literal by the
export front end (and, for attributes, by symbolic tracing too). A literal size on the channels
would be stale after a widening, so the analysis blocks it, unless the module whose own forward
computed it is registered with an owner handler that says where the size comes from:

* :class:`HeadOwnerHandler`: attention whose head count, head size, fused-split size and merged
  width are the module's attributes (or derived from its own projections); a literal equal to
  them is vouched for, and a widening by whole heads updates the attributes (a follower with no
  tensors). timm's ``Attention`` (:mod:`.timm`), Hugging Face's BERT, ViT, GPT-2 and Llama
  attention (:mod:`.hf`).
* :class:`TensorWidthOwnerHandler`: a module whose own forward sizes the channel dim of its
  ``view``/``reshape`` calls from the tensor itself (``hidden_states.size(-1)``); export records a
  literal equal to the traced width, which stays right at any width. ``width_attrs`` (a stored
  copy of the width, such as GPT-2's ``embed_dim``) grow with the channels.

The owner is the **innermost** module on the node's ``nn_module_stack`` with a handler of the
kind asked, and only when its class's own ``forward`` is the registered one (a subclass with its
own forward may compute the sizes otherwise: not vouched for).

Example: timm's ``Attention(dim=64, num_heads=4)`` cuts ``reshape(B, N, 3, 4, 16)``; grown by one
head, its ``num_heads`` becomes 5 and ``attn_dim`` 80, so its forward cuts ``(B, N, 3, 5, 16)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import fx, nn

from netsurgeon.graph.layout import Layout, Segment
from netsurgeon.graph.width_attrs import OwnerHandler

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext

__all__ = [
    "HeadOwnerHandler",
    "TensorWidthOwnerHandler",
    "enclosing",
    "follow_owner",
    "owned_split",
    "owned_width",
    "owner_of",
]


class _Owner(OwnerHandler):
    """An owner found on a node's module stack, whose configuration it may refuse."""

    relies_on = ()

    def refusal(self, module: nn.Module) -> str | None:
        """Why this handler does not model ``module``'s configuration (``None``: it does)."""
        return None


class HeadOwnerHandler(_Owner):
    """Attention traced through whose forward reads its head count and size from attributes.

    ``owns`` says whether the traced heads (count, size, merged width) are the module's; a
    widening by whole heads updates ``count_attr`` (``None``: derived, nothing to update) and
    ``width_attrs`` by one split's new channels (the ``q`` part of a fused ``qkv``).
    ``split_attr``: a fixed-size ``split`` of the fused projection reads this attribute.
    """

    count_attr: str | None = "num_heads"
    size_attr = "head_dim"
    split_attr: str | None = None

    def count_of(self, module: nn.Module) -> int | None:
        """The module's (query) head count."""
        count = getattr(module, self.count_attr, None) if self.count_attr else None
        return count if isinstance(count, int) else None

    def owns(self, module: nn.Module, count: int | None, size: int, width: int | None) -> bool:
        """Whether ``module`` holds ``count`` heads of ``size`` (``width`` = count * size)."""
        heads, head_size = self.count_of(module), getattr(module, self.size_attr, None)
        found = heads * head_size if heads is not None and isinstance(head_size, int) else None
        widths = [found, *(getattr(module, a, None) for a in self.width_attrs)]
        return (
            head_size == size
            and self.refusal(module) is None
            and (count is None or heads == count)
            and (width is None or width in widths)
        )

    def follower_attrs(self, module: nn.Module, added: int) -> dict[str, int]:
        """``added`` new channels of one split (the ``q`` part): ``added / head_size`` heads."""
        found = super().follower_attrs(module, added)
        if self.count_attr is not None:
            heads = added // int(getattr(module, self.size_attr))
            found[self.count_attr] = int(getattr(module, self.count_attr)) + heads
        return found


class TensorWidthOwnerHandler(_Owner):
    """A module whose own forward sizes the channel dim of its reshapes from the tensor."""


def enclosing(node: fx.Node, ctx: FlowContext, kind: type) -> tuple[str, Any, nn.Module] | None:
    """``(path, handler, module)`` of the innermost module on ``node``'s stack with a ``kind``
    handler whose registered class's ``forward`` is the module's own, else ``None``."""
    stack = node.meta.get("nn_module_stack") or {}
    for value in reversed(list(stack.values())):
        path = value[0] if isinstance(value, tuple) else str(value)
        module = ctx.traced_module(path)
        handler = ctx.registry.for_module(module) if module is not None else None
        if isinstance(handler, kind):
            own = type(module).forward is ctx.registry.registered_type(module).forward
            return (path, handler, module) if own else None
    return None


def innermost(node: fx.Node) -> str | None:
    """The path of the innermost module on ``node``'s stack (``None``: no stack recorded)."""
    stack = list((node.meta.get("nn_module_stack") or {}).values())
    if not stack:
        return None
    value = stack[-1]
    return value[0] if isinstance(value, tuple) else str(value)


def owner_of(node: fx.Node, ctx: FlowContext, count, size, width) -> tuple[str, Any] | None:
    """The innermost enclosing :class:`HeadOwnerHandler` module holding these heads."""
    found = enclosing(node, ctx, HeadOwnerHandler)
    if found is None or not found[1].owns(found[2], count, size, width):
        return None
    return found[0], found[1]


def follow_owner(node, owner, layout: Layout, splits: int, ctx: FlowContext) -> None:
    """The owner's size attributes grow with one split's channels (``q``'s of a fused qkv)."""
    if len(layout.segments) != 1 or layout.segments[0].group is None:
        ctx.block(node, layout, f"'{owner[0]}' cuts heads from several groups")
        return
    seg = layout.segments[0]
    part = seg.channels // splits
    one = layout.replace(segments=(Segment(seg.group, seg.start, seg.start + part),), heads=None)
    ctx.follow(node, owner[0], one, part)


def owned_split(node: fx.Node, ctx: FlowContext, size: Any, width: int | None) -> int | None:
    """The number of equal parts of a ``split(size)`` of ``width`` channels whose ``size`` is the
    enclosing head owner's ``split_attr`` (GPT-2's ``split_size``, grown with the heads), else
    ``None``."""
    found = enclosing(node, ctx, HeadOwnerHandler)
    if found is None or found[1].split_attr is None or not isinstance(size, int) or not width:
        return None
    _, handler, module = found
    if handler.refusal(module) is not None or getattr(module, handler.split_attr, None) != size:
        return None
    return width // size if size > 0 and width % size == 0 else None


def owned_width(node: fx.Node, ctx: FlowContext, arg: Any, width: int, layout: Layout) -> bool:
    """Whether ``arg``, a literal channel size of a reshape in a :class:`TensorWidthOwnerHandler`'s own
    forward, is the width it reads off the tensor (then its ``width_attrs`` follow the
    channels)."""
    found = enclosing(node, ctx, TensorWidthOwnerHandler)
    if found is None or arg != width or found[0] != innermost(node) or isinstance(arg, bool):
        return False
    if found[0]:  # the root model's attributes are not a module path the surgery can name
        ctx.follow(node, found[0], layout, width)
    return True
