"""The handler registry: per-op knowledge, looked up by module type, function or method name.

The dependency walker (:mod:`netsurgeon.graph.analysis`) knows no layer types. For every fx node
that channels reach it asks the registry for a handler, and the handler returns the layout of the
node's output (a :class:`~netsurgeon.graph.layout.Layout`), recording consumers, followers, joins
and blocks through the :class:`~netsurgeon.graph.context.FlowContext`. Supporting a new op is one
small class and one registration::

    @register_module(nn.LocalResponseNorm)        # hypothetical
    class LocalResponseNormHandler(OpHandler):
        def flow(self, node, ctx):
            ...

Lookups for modules walk the type's MRO, so a user's ``class MyConv(nn.Conv2d)`` is handled as a
``Conv2d`` unless something more specific is registered.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from torch import fx, nn

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext
    from netsurgeon.graph.layout import Layout

__all__ = [
    "REGISTRY",
    "OpHandler",
    "Registry",
    "register_function",
    "register_method",
    "register_module",
]


class OpHandler:
    """Knows how channels flow through one kind of fx node.

    Subclasses override :meth:`flow` (the analysis: how channels pass, join or split). Module
    handlers that own a width (layers) or grow with one (followers) also describe their layout
    for the surgery: which ``(tensor, dim)`` pairs and size attributes change; see
    :mod:`netsurgeon.graph.handlers`.
    """

    #: "layer" (owns a width: producer and consumer), "follower" (channel-wise parameters),
    #: or "op" (everything else). Decided per instance by :meth:`role_of`.
    role: str = "op"

    def role_of(self, module: nn.Module) -> str:
        """The role of this module instance (a conv with ``groups == in == out`` is a follower)."""
        return self.role

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | tuple[Layout | None, ...] | None:
        """The layout of ``node``'s output, given its inputs' layouts in ``ctx``."""
        raise NotImplementedError


H = TypeVar("H", bound=type[OpHandler])


class Registry:
    """Maps module types, functions and method names to handler instances."""

    def __init__(self) -> None:
        self._modules: dict[type[nn.Module], OpHandler] = {}
        self._functions: dict[Callable[..., Any], OpHandler] = {}
        self._methods: dict[str, OpHandler] = {}

    def add_module(self, module_type: type[nn.Module], handler: OpHandler) -> None:
        self._modules[module_type] = handler

    def add_function(self, function: Callable[..., Any], handler: OpHandler) -> None:
        self._functions[function] = handler

    def add_method(self, name: str, handler: OpHandler) -> None:
        self._methods[name] = handler

    def for_module(self, module: nn.Module) -> OpHandler | None:
        """The handler of the most specific registered base class of ``type(module)``."""
        for cls in type(module).__mro__:
            handler = self._modules.get(cls)
            if handler is not None:
                return handler
        return None

    def for_node(self, node: fx.Node, modules: dict[str, nn.Module]) -> OpHandler | None:
        """The handler for an fx node, or ``None`` when the op is unknown."""
        if node.op == "call_module":
            return self.for_module(modules[str(node.target)])
        if node.op == "call_function":
            target = node.target
            if (
                isinstance(target, type)
                and issubclass(target, tuple)
                and hasattr(target, "_fields")
            ):
                target = typing.NamedTuple  # one handler packs every NamedTuple (containers.py)
            try:
                return self._functions.get(target)
            except TypeError:  # unhashable target
                return None
        if node.op == "call_method":
            return self._methods.get(str(node.target))
        return None


#: The process-wide default registry. Handlers register themselves on import of
#: :mod:`netsurgeon.graph.handlers`; pass a private :class:`Registry` to ``trace`` to isolate.
REGISTRY = Registry()


def register_module(
    *module_types: type[nn.Module], registry: Registry = REGISTRY
) -> Callable[[H], H]:
    """Class decorator: handle calls of modules of these types with an instance of the class."""

    def decorate(cls: H) -> H:
        handler = cls()
        for module_type in module_types:
            registry.add_module(module_type, handler)
        return cls

    return decorate


def register_function(
    *functions: Callable[..., Any], registry: Registry = REGISTRY
) -> Callable[[H], H]:
    """Class decorator: handle ``call_function`` nodes whose target is one of these callables."""

    def decorate(cls: H) -> H:
        handler = cls()
        for function in functions:
            registry.add_function(function, handler)
        return cls

    return decorate


def register_method(*names: str, registry: Registry = REGISTRY) -> Callable[[H], H]:
    """Class decorator: handle ``call_method`` nodes (``x.relu()``) with these method names."""

    def decorate(cls: H) -> H:
        handler = cls()
        for name in names:
            registry.add_method(name, handler)
        return cls

    return decorate
