"""Integer attributes that store a channel group's width, read in a traced ``forward``.

torchvision's ``VisionTransformer._process_input`` reshapes the patch embedding with
``x.reshape(n, self.hidden_dim, n_h * n_w)``. Symbolic tracing records ``self.hidden_dim`` as
the number 768, and a literal channel size blocks the stream: after a widening the forward would
ask for the old width. Such a literal is accepted only when it is *proved* to be the attribute:

* a handler that owns width attributes (:class:`WidthOwnerHandler`, registered per class) names
  them in ``width_attrs``;
* while the tracer runs, each such attribute holds a :class:`WidthLiteral`, an ``int`` that
  remembers its owner (:func:`marked_widths`). fx keeps ``int`` arguments as they are, so an
  argument that *is* the attribute reaches the graph as that object; anything computed from it
  (``self.hidden_dim // 2``, ``int(self.hidden_dim)``) is a plain ``int`` again and is not
  vouched for;
* after the trace, :func:`record_width_literals` puts plain ``int`` values back and writes the
  positions on the node: ``node.meta["netsurgeon.width_literals"] = {path: (owner, attr)}``,
  ``path`` the indices into ``node.args`` (``(2,)`` for ``x.reshape(n, 768, m)``, ``(1, 1)`` for
  ``x.reshape((n, 768, m))``, ``("kwargs", name)`` for a keyword).

A handler that meets a literal channel size asks :func:`vouch`: it accepts when the owner's handler
still describes the module (no override of its ``relies_on`` methods, no hook: the soundness
rule), the attribute equals the width of the group it sizes, and that group is read whole. The
owner then follows the group: a widening by ``k`` sets the attribute to ``width + k`` with the rest
of the surgery (a second use of one attribute joins the two groups: one number sizes both). A
use nothing vouched for (another size, a factory's shape) blocks the group it grows with
(:func:`check_width_literals`, after the walk). Identity cannot see what Python does with the
number before it reaches the graph (``if self.hidden_dim > 512:``, or ``min(self.hidden_dim,
512)``, which returns the object itself): that is why ``relies_on`` pins the methods that read the
attributes to the registered class's own, whose uses are known.

Example (torchvision's ViT; its handler is in :mod:`netsurgeon.graph.ops.torchvision`):

    >>> import torch, torchvision, netsurgeon
    >>> vit = torchvision.models.VisionTransformer(32, 8, 2, 2, 16, 32)  # hidden_dim 16
    >>> _ = netsurgeon.widen(vit, {"conv_proj": 8}, example_inputs=torch.randn(1, 3, 32, 32))
    >>> vit.hidden_dim, vit.conv_proj.out_channels, vit.encoder.layers[0].self_attention.num_heads
    (24, 24, 3)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from torch import fx, nn

from netsurgeon.graph.layout import Layout
from netsurgeon.graph.registry import OpHandler, Registry
from netsurgeon.graph.soundness import module_reason

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext

__all__ = [
    "META_KEY",
    "VOUCHED_KEY",
    "OwnerHandler",
    "WidthLiteral",
    "WidthOwnerHandler",
    "check_width_literals",
    "follow_head_count",
    "marked_widths",
    "record_width_literals",
    "vouch",
    "width_literal",
]

META_KEY = "netsurgeon.width_literals"
VOUCHED_KEY = "netsurgeon.width_vouched"  # the places of META_KEY a handler vouched for


class WidthLiteral(int):
    """``module.<attr>`` while the tracer runs: the same number, with where it came from."""

    owner: str
    attr: str

    def __new__(cls, value: int, owner: str, attr: str) -> WidthLiteral:
        literal = super().__new__(cls, value)
        literal.owner, literal.attr = owner, attr
        return literal

    def __repr__(self) -> str:  # the generated code prints the number
        return int.__repr__(self)


class OwnerHandler(OpHandler):
    """A module traced through (never a leaf) that vouches for sizes its own forward computes;
    its ``width_attrs`` (stored copies of one group's width) grow as a follower without tensors.
    Subclasses: :class:`WidthOwnerHandler` here (symbolic tracing: the attributes themselves are
    marked), and :mod:`netsurgeon.graph.ops.owners`' head and tensor-width owners (found on a
    node's module stack)."""

    role = "op"  # traced through, never a leaf
    width_attrs: tuple[str, ...] = ()

    def entries(self, module: nn.Module) -> tuple[()]:
        return ()

    def follower_attrs(self, module: nn.Module, added: int) -> dict[str, int]:
        return {a: int(getattr(module, a)) + added for a in self.width_attrs}

    def flow(self, node: fx.Node, ctx: FlowContext) -> None:
        ctx.refuse(
            node,
            f"'{node.target}' is a leaf here, so netsurgeon cannot see how its forward uses "
            "its sizes",
            fix="trace through it (drop it from leaf_modules)",
        )


class WidthOwnerHandler(OwnerHandler):
    """A module traced through whose ``forward`` sizes a channel dim with its own attributes.

    ``width_attrs``: the ``int`` attributes that store one channel group's width. The module is a
    follower of that group without tensors: :meth:`follower_attrs` adds the new channels.
    ``relies_on``: the methods that read them (a subclass overriding one is not vouched for).
    ``head_counts``: ``(attribute, child)`` pairs, an attribute recording the head count of a
    child ``nn.MultiheadAttention`` (torchvision's ``EncoderBlock.num_heads``): it follows the
    child's group (:mod:`netsurgeon.graph.ops.multihead`) and grows by its heads.
    """

    head_counts: tuple[tuple[str, str], ...] = ()

    def follower_attrs(self, module: nn.Module, added: int) -> dict[str, int]:
        found = super().follower_attrs(module, added)
        for attr, child in self.head_counts:
            found[attr] = int(getattr(module, attr)) + added // getattr(module, child).head_dim
        return found


@contextlib.contextmanager
def marked_widths(root: Any, registry: Registry) -> Iterator[bool]:
    """While tracing ``root``: every owner's width attributes hold :class:`WidthLiteral` s
    (restored, the very objects, whatever the trace does). Yields whether any was marked."""
    saved: list[tuple[nn.Module, str, Any]] = []
    try:
        for path, module in root.named_modules() if isinstance(root, nn.Module) else ():
            handler = registry.for_module(module)
            for attr in handler.width_attrs if isinstance(handler, WidthOwnerHandler) else ():
                value = module.__dict__.get(attr)
                if type(value) is int:
                    saved.append((module, attr, value))
                    module.__dict__[attr] = WidthLiteral(value, path, attr)
        yield bool(saved)
    finally:
        for module, attr, value in saved:
            module.__dict__[attr] = value


def record_width_literals(graph: fx.Graph) -> None:
    """Plain ``int`` s for the :class:`WidthLiteral` s in ``graph``'s arguments, their places
    written on the nodes (``node.meta[META_KEY]``). A node without one is left as it is (setting
    ``node.args`` re-links its inputs)."""
    for node in graph.nodes:
        found: dict[tuple[int | str, ...], tuple[str, str]] = {}
        args = _plain(node.args, (), found)
        kwargs = {k: _plain(v, ("kwargs", k), found) for k, v in node.kwargs.items()}
        if found:
            node.args, node.kwargs = args, kwargs
            node.meta[META_KEY] = found


def _plain(value: Any, path: tuple[int | str, ...], found: dict) -> Any:
    if isinstance(value, WidthLiteral):
        found[path] = (value.owner, value.attr)
        return int(value)
    if isinstance(value, (tuple, list)):
        items = [_plain(v, (*path, i), found) for i, v in enumerate(value)]
        return type(value)(items) if isinstance(value, list) else tuple(items)
    return value


def follow_head_count(node: fx.Node, layout: Layout, ctx: FlowContext) -> None:
    """``node`` calls an ``nn.MultiheadAttention`` whose parent records its head count
    (``head_counts``): the parent follows the attention's group."""
    parent, _, child = str(node.target).rpartition(".")
    module = ctx.traced_module(parent)
    handler = ctx.registry.for_module(module) if module is not None else None
    if not isinstance(handler, WidthOwnerHandler):
        return
    if any(c == child and getattr(module, a, None) is not None for a, c in handler.head_counts):
        ctx.follow(node, parent, layout, layout.units())


def width_literal(node: fx.Node, path: tuple[int | str, ...]) -> tuple[str, str] | None:
    """``(owner path, attribute)`` when ``node.args`` at ``path`` was a width attribute."""
    return node.meta.get(META_KEY, {}).get(path)


def vouch(node: fx.Node, path: tuple[int | str, ...], layout: Layout, ctx: FlowContext) -> bool:
    """Whether ``node.args`` at ``path`` is a width attribute sizing ``layout``'s channels; if so
    its owner follows their group (see the module docstring)."""
    owner, attr = width_literal(node, path) or (None, None)
    module = ctx.traced_module(owner) if owner is not None else None
    handler = ctx.registry.for_module(module) if module is not None else None
    if not isinstance(handler, WidthOwnerHandler) or attr not in handler.width_attrs:
        return False
    if module_reason(module, handler, ctx.registry.registered_type(module)) is not None:
        return False
    seg = layout.segments[0] if len(layout.segments) == 1 else None
    whole = seg is not None and seg.group is not None and seg.start == 0 and seg.multiplicity == 1
    width = getattr(module, attr)
    if not whole or seg.stop != ctx.width(seg.group) or width != seg.stop or layout.factor != 1:
        return False
    for earlier in ctx.followers:  # one number sizes both uses: their groups grow as one
        if earlier.name == owner and earlier.kind == "module" and earlier.layout.segments:
            ctx.union(earlier.layout.segments[0].group, seg.group)
    ctx.follow(node, owner, layout, width)
    node.meta.setdefault(VOUCHED_KEY, set()).add(path)
    return True


def check_width_literals(ctx: FlowContext) -> None:
    """Block each group an owner's attribute grows with when the attribute is also used where
    nothing vouched for it (another size in the graph would keep or take the new width)."""
    grown = {(f.name, f.layout.segments[0].group) for f in ctx.followers if f.layout.segments}
    for node in ctx.gm.graph.nodes:
        vouched = node.meta.get(VOUCHED_KEY, set())
        for path, (owner, attr) in node.meta.get(META_KEY, {}).items():
            if path in vouched:
                continue
            what = f"'{owner}.{attr}'" if owner else f"the model's '{attr}'"
            for gid in {g for name, g in grown if name == owner and g is not None}:
                ctx.blocked[gid].append(
                    f"{what} (the width of these channels, which grows with them) is "
                    f"also used at node '{node.name}' ({ctx.op_name(node)}, argument {path}), "
                    "where netsurgeon cannot tell that it sizes these channels"
                )
