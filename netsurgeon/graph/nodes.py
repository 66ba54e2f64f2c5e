"""What op handlers read off an fx node: arguments, the input's layout, dims, multi-output layouts.

Shared by the function/method handlers of :mod:`netsurgeon.graph.ops`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch import fx

from netsurgeon.graph.layout import Layout

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext

__all__ = ["Pieces", "first_layout", "node_arg", "normalize_dim"]


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


def node_arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    """Argument ``index`` of ``node``, passed by position or as ``name``, else ``default``."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def first_layout(node: fx.Node, ctx: FlowContext) -> Layout | None:
    """The layout of ``node``'s first input, when it is a single tensor's."""
    layout = ctx.input(node)
    return layout if isinstance(layout, Layout) else None


def normalize_dim(dim: int, rank: int | None) -> int | None:
    """``dim`` counted from the front (``None``: negative and the rank is unknown)."""
    if dim >= 0:
        return dim
    return None if rank is None else dim + rank
