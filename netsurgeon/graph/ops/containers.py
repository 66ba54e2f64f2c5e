"""Containers built in the forward: a ``NamedTuple`` of outputs (torchvision's
``GoogLeNetOutputs(logits, aux_logits2, aux_logits1)``, ``InceptionOutputs``).

fx records the constructor call as a ``call_function`` node whose target is the class. It packs
its arguments like a tuple: each field keeps the layout of the tensor it holds, and an
``operator.getitem`` on it (or the model output) reads them one by one. The registry maps every
``NamedTuple`` class to this one handler (:meth:`~netsurgeon.graph.registry.Registry.for_node`).
"""

from __future__ import annotations

import typing
from typing import TYPE_CHECKING

from torch import fx

from netsurgeon.graph.layout import Layout
from netsurgeon.graph.registry import OpHandler, register_function

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext

__all__ = ["NamedTupleHandler", "is_namedtuple_class"]


def is_namedtuple_class(target: object) -> bool:
    """Whether ``target`` is a ``NamedTuple`` / ``collections.namedtuple`` class."""
    return isinstance(target, type) and issubclass(target, tuple) and hasattr(target, "_fields")


@register_function(typing.NamedTuple)
class NamedTupleHandler(OpHandler):
    """``Outputs(a, b, c=...)``: a tuple of the fields' layouts, in field order."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> tuple[Layout | None, ...]:
        fields = getattr(node.target, "_fields", ())
        values = list(node.args) + [
            node.kwargs[f] for f in fields[len(node.args) :] if f in node.kwargs
        ]
        return tuple(ctx.layout(v) for v in values)
