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

Lookups for modules walk the type's MRO, so a user's ``class MyConv(nn.Conv2d)`` finds the
``Conv2d`` handler unless something more specific is registered. Inheriting a handler is not
inheriting its maths: the analysis accepts such a subclass only when it overrides nothing in the
handler's :attr:`OpHandler.relies_on`, carries no hook, parametrization or tensor the handler does
not model (:mod:`netsurgeon.graph.soundness`). A subclass that computes the same function its own
way is accepted once it is registered itself: ``REGISTRY.add_module(MyConv, handler)``.
"""

from __future__ import annotations

import contextlib
import typing
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import fx, nn

from netsurgeon.graph.module_attrs import module_attr

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
    :mod:`netsurgeon.graph.ops.base`.
    """

    #: "layer" (owns a width: producer and consumer), "follower" (channel-wise parameters),
    #: or "op" (everything else). Decided per instance by :meth:`role_of`.
    role: str = "op"

    def role_of(self, module: nn.Module) -> str:
        """The role of this module instance (a conv with ``groups == in == out`` is a follower)."""
        return self.role

    #: Methods of the registered class that this handler's maths assumes. A module whose class
    #: overrides any of them below the registered type is not understood: the analysis refuses
    #: it (strict) or blocks its groups, naming the overriding class and method.
    relies_on: tuple[str, ...] = ("forward",)

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | tuple[Layout | None, ...] | None:
        """The layout of ``node``'s output, given its inputs' layouts in ``ctx``."""
        raise NotImplementedError

    #: What the op does to the values of the channels, for the constructions
    #: (:mod:`netsurgeon.graph.constructions`): ``"same"`` (each output entry is an input entry:
    #: dropout, identity, a permute, a reshape) or ``"opaque"`` (anything else).
    stream_effect: str = "opaque"

    def stream_effect_of(self, node: fx.Node, ctx: FlowContext) -> str:
        """:attr:`stream_effect` for this node (a handler of several ops may decide per op)."""
        return self.stream_effect

    def tensor_names(self, module: nn.Module) -> frozenset[str]:
        """Names of the module's own parameters and buffers that this handler accounts for.

        Names are as in ``named_parameters(recurse=False)``/``named_buffers(recurse=False)``; for
        a parametrized tensor the originals (``'parametrizations.weight.original0'``). Any other
        own tensor of a layer or follower makes the module not understood. Default: for a layer
        the ``weight`` and ``bias`` it has and the originals of the parametrizations it models
        (:meth:`models_parametrization`); for a follower the keys of ``self.tensors(module)``;
        for an op (which grows nothing, so its flow accounts for every tensor it reads) all of
        them. Scalar (0-dim) tensors never need to grow and are not checked.
        """
        role = self.role_of(module)
        if role == "layer":
            own = {n for n in ("weight", "bias") if isinstance(_own(module, n), torch.Tensor)}
            return frozenset(own | self._modelled_originals(module))
        tensors = getattr(self, "tensors", None)
        if role == "follower" and callable(tensors):
            return frozenset(tensors(module))
        if role == "follower":
            return frozenset()
        return frozenset((*module._parameters, *module._buffers))

    def _modelled_originals(self, module: nn.Module) -> set[str]:
        """The originals of the parametrizations this handler widens (``models_parametrization``)."""
        found: set[str] = set()
        parametrizations = module_attr(module, "parametrizations")
        for tensor, plist in getattr(parametrizations, "items", dict)():
            if self.models_parametrization(module, tensor, plist):
                names = (n for n, _ in plist.named_parameters(recurse=False))
                found.update(f"parametrizations.{tensor}.{n}" for n in names)
        return found

    def models_hook(self, module: nn.Module, hook: object) -> bool:
        """Whether this handler's maths accounts for ``hook``, a (pre-)hook on ``module``."""
        return False

    def models_parametrization(self, module: nn.Module, tensor: str, parametrizations: Any) -> bool:
        """Whether this handler widens ``module.<tensor>``'s parametrization list exactly."""
        return False


def _own(module: nn.Module, name: str) -> Any:
    """``module.<name>`` if it is the module's own parameter or buffer (not a derived property)."""
    return module._parameters.get(name, module._buffers.get(name))


H = TypeVar("H", bound=type[OpHandler])


class Registry:
    """Maps module types, functions and method names to handler instances."""

    def __init__(self) -> None:
        self._modules: dict[type[nn.Module], OpHandler] = {}
        self._functions: dict[Callable[..., Any], OpHandler] = {}
        self._methods: dict[str, OpHandler] = {}
        self._named: dict[str, OpHandler] = {}  # "package.module.Class" of optional dependencies
        self._named_functions: dict[str, OpHandler] = {}  # "package.module.function"
        self._matched: dict[type, type[nn.Module] | None] | None = None  # in one_trace()

    @contextlib.contextmanager
    def one_trace(self) -> Iterator[None]:
        """Within: :meth:`registered_type` answers each class once (one trace asks it for every
        module, several times). Nothing is kept after: the next trace asks again."""
        outermost = self._matched is None
        if outermost:
            self._matched = {}
        try:
            yield
        finally:
            if outermost:
                self._matched = None

    def add_module(self, module_type: type[nn.Module] | str, handler: OpHandler) -> None:
        """Register a type, or its ``"package.module.Class"`` name (nothing is imported)."""
        if isinstance(module_type, str):
            self._named[module_type] = handler
        else:
            self._modules[module_type] = handler
        if self._matched is not None:
            self._matched.clear()

    def has_module(self, module_type: type[nn.Module]) -> bool:
        """Whether ``module_type`` itself is registered (not through a base class)."""
        return module_type in self._modules or _qualified_name(module_type) in self._named

    def add_function(self, function: Callable[..., Any] | str, handler: OpHandler) -> None:
        """Register a function, or its ``"package.module.function"`` name (nothing is imported)."""
        if isinstance(function, str):
            self._named_functions[function] = handler
        else:
            self._functions[function] = handler

    def add_method(self, name: str, handler: OpHandler) -> None:
        self._methods[name] = handler

    def for_module(self, module: nn.Module) -> OpHandler | None:
        """The handler of the most specific registered base class of ``type(module)``."""
        cls = self.registered_type(module)
        if cls is None:
            return None
        handler = self._modules.get(cls)
        return handler if handler is not None else self._named[_qualified_name(cls)]

    def registered_type(self, module: nn.Module) -> type[nn.Module] | None:
        """The most specific registered class in ``type(module)``'s MRO (the one matched)."""
        matched = self._matched
        if matched is None:
            return self._match(type(module))
        kind = type(module)
        if kind not in matched:
            matched[kind] = self._match(kind)
        return matched[kind]

    def _match(self, kind: type) -> type[nn.Module] | None:
        for cls in kind.__mro__:
            if cls in self._modules:
                return cls
            if self._named and _qualified_name(cls) in self._named:
                return cls
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
            return self._for_function(target)
        if node.op == "call_method":
            return self._methods.get(str(node.target))
        return None

    def _for_function(self, target: Any) -> OpHandler | None:
        try:
            handler = self._functions.get(target)
        except TypeError:  # unhashable target
            return None
        if handler is None and self._named_functions:
            module = getattr(target, "__module__", None)
            name = getattr(target, "__qualname__", None)
            if isinstance(module, str) and isinstance(name, str):
                handler = self._named_functions.get(f"{module}.{name}")
        return handler


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


#: The process-wide default registry. Handlers register themselves on import of
#: :mod:`netsurgeon.graph.ops`; pass a private :class:`Registry` to ``trace`` to isolate.
REGISTRY = Registry()


def register_module(
    *module_types: type[nn.Module] | str, registry: Registry = REGISTRY
) -> Callable[[H], H]:
    """Class decorator: handle calls of modules of these types with an instance of the class.

    A type may be given by its qualified name (``"torchvision.ops.misc.FrozenBatchNorm2d"``), so
    an optional dependency is never imported.
    """

    def decorate(cls: H) -> H:
        handler = cls()
        for module_type in module_types:
            registry.add_module(module_type, handler)
        return cls

    return decorate


def register_function(
    *functions: Callable[..., Any] | str, registry: Registry = REGISTRY
) -> Callable[[H], H]:
    """Class decorator: handle ``call_function`` nodes whose target is one of these callables.

    A function may be given by its qualified name (``"torchvision.ops.stochastic_depth.
    stochastic_depth"``: ``__module__`` and ``__qualname__``), so its package is never imported.
    """

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
