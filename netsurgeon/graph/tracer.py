"""Symbolic tracing with torch.fx, with netsurgeon's leaf rules and readable failures."""

from __future__ import annotations

import collections
import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import fx, nn
from torch.fx.proxy import Scope

from netsurgeon.errors import TraceError
from netsurgeon.graph.registry import REGISTRY, Registry
from netsurgeon.graph.width_attrs import marked_widths, record_width_literals

try:  # generates the forward's code on its first call, not when built (the analysis never calls it)
    from torch.fx._lazy_graph_module import _LazyGraphModule as _GraphModule
except ImportError:  # pragma: no cover - older torch
    _GraphModule = fx.GraphModule

__all__ = ["SurgeonTracer", "symbolic_trace"]

#: Exact argument types that ``fx.Tracer.create_arg`` hands to ``TracerBase.create_arg`` as they
#: are (containers' items still pass through ``create_arg`` one by one).
_PLAIN_ARGS = frozenset(
    (fx.Proxy, int, float, bool, str, type(None), tuple, list, dict, torch.dtype, torch.device)
)


class _ModuleStack(collections.OrderedDict):
    """fx's ``module_stack``, copied with ``copy.copy`` for every node's
    ``meta["nn_module_stack"]``: ``__copy__`` builds the plain ``OrderedDict`` that fx's copy
    gives, without ``__reduce_ex__``."""

    def __copy__(self) -> collections.OrderedDict:
        return collections.OrderedDict(self)


class _Scope(Scope):
    """fx's current ``scope``, copied at every module call (``ScopeContextManager``):
    ``__copy__`` builds the plain ``Scope`` that fx's copy gives, without ``__reduce_ex__``."""

    def __copy__(self) -> Scope:
        return Scope(self.module_path, self.module_type)


class SurgeonTracer(fx.Tracer):
    """An ``fx.Tracer`` that keeps every registered layer/follower type a leaf.

    A module whose handler gives a ``traced_forward`` is traced through that function instead
    (``nn.TransformerEncoderLayer``: the slow path its fused kernel computes). Width attributes
    that handlers own are found by identity (:mod:`netsurgeon.graph.width_attrs`).

    A user's ``class MyConv(nn.Conv2d)`` defined outside ``torch.nn`` would otherwise be traced
    through, and its weight would show up as anonymous ``get_attr`` nodes. Buffers read in
    ``forward`` are recorded as ``get_attr`` nodes too (``proxy_buffer_attributes``), so the
    analysis sees which buffer a per-channel operand is and can grow it (instead of a nameless
    constant copied at trace time).

    Args:
        leaf_modules: extra module types to keep as leaves (their ``forward`` is not traced).
        autowrap_functions: free functions to record as single nodes instead of tracing into.
        registry: where handler types are looked up.
    """

    def __init__(
        self,
        leaf_modules: Iterable[type[nn.Module]] = (),
        autowrap_functions: Iterable[Callable[..., Any]] = (),
        registry: Registry = REGISTRY,
    ) -> None:
        super().__init__(autowrap_functions=tuple(autowrap_functions))
        self.proxy_buffer_attributes = True
        self.scope, self.module_stack = _Scope("", None), _ModuleStack()  # cheap copy.copy
        self._leaf_types = tuple(leaf_modules)
        self._tensor_names: dict[int, tuple[bool, str]] | None = None
        self._registry = registry
        if registry is REGISTRY:
            from netsurgeon.graph.ops.timm import register_timm_layers

            register_timm_layers(registry)  # timm's layers with their own forward, if timm is used

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, self._leaf_types):
            return True
        handler = self._registry.for_module(m)
        if handler is not None and handler.role_of(m) in ("layer", "follower"):
            return True
        if hasattr(handler, "traced_forward"):  # traced through its function, or a leaf
            return self._traced_forward(m) is None
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(
        self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict
    ) -> Any:
        """fx's ``call_module``, tracing the function a handler gives for ``m``'s ``forward``
        (``nn.TransformerEncoderLayer``'s slow path, :mod:`netsurgeon.graph.ops.transformer`)."""
        traced = None if isinstance(m, self._leaf_types) else self._traced_forward(m)
        if traced is not None:
            forward = functools.partial(traced, m)
        return super().call_module(m, forward, args, kwargs)

    def _traced_forward(self, m: nn.Module) -> Callable[..., Any] | None:
        handler = self._registry.for_module(m)
        find = getattr(handler, "traced_forward", None)
        return None if find is None else find(m, self._registry.registered_type(m))

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        self._tensor_names = None  # the model may have changed since the last trace
        with marked_widths(root, self._registry) as marked:  # width attributes by identity
            graph = super().trace(root, concrete_args)
        if marked:  # no attribute marked: no literal can be in the graph
            record_width_literals(graph)
        return graph

    def create_arg(self, a: Any) -> Any:
        """``fx.Tracer.create_arg``; an argument of one of the exact types in :data:`_PLAIN_ARGS`
        goes straight to ``fx.proxy.TracerBase.create_arg``: ``fx.Tracer``'s own cases (a
        parameter, a tensor, a module, a named tuple, a constant) never match it, and their checks
        (``isinstance(a, nn.Parameter)`` runs a Python ``__instancecheck__``) cost more than the
        rest of the call."""
        if type(a) in _PLAIN_ARGS:
            return fx.proxy.TracerBase.create_arg(self, a)
        return super().create_arg(a)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        """``fx.Tracer.getattr`` with the tensor found by identity in a table built once per
        trace (fx searches ``root.named_parameters()``/``named_buffers()`` at every read, which
        costs a walk of the whole module tree per parameter read in a traced-through forward)."""
        if not isinstance(attr_val, torch.Tensor):
            return attr_val
        if self._tensor_names is None:
            self._tensor_names = self._names_by_id()
        found = self._tensor_names.get(id(attr_val))
        if found is None or (not found[0] and not self.proxy_buffer_attributes):
            return attr_val
        name = found[1]
        if name not in parameter_proxy_cache:
            parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {})
        return parameter_proxy_cache[name]

    def _names_by_id(self) -> dict[int, tuple[bool, str]]:
        """``{id(tensor): (is a parameter, first qualified name)}``; a parameter's name wins, as
        fx searches the parameters first."""
        buffers: dict[int, tuple[bool, str]] = {}
        parameters: dict[int, tuple[bool, str]] = {}
        for path, module in self.root.named_modules():  # one walk for both, first name kept
            prefix = f"{path}." if path else ""
            for table, found, is_parameter in (
                (module._buffers, buffers, False),
                (module._parameters, parameters, True),
            ):
                for name, tensor in table.items():
                    if tensor is not None and id(tensor) not in found:
                        found[id(tensor)] = (is_parameter, prefix + name)
        return buffers | parameters


def symbolic_trace(
    model: nn.Module,
    *,
    tracer: SurgeonTracer | None = None,
    concrete_args: dict[str, Any] | None = None,
) -> fx.GraphModule:
    """Trace ``model`` into a ``GraphModule`` that shares the model's submodules.

    Raises:
        TraceError: tracing failed; the message names the model class and how to work around it.
    """
    tracer = tracer or SurgeonTracer()
    try:
        graph = tracer.trace(model, concrete_args=concrete_args)
    except Exception as e:  # fx raises many types (TraceError, TypeError, RuntimeError, ...)
        # fx pushes each submodule it enters on ``module_stack`` and leaves it there on failure.
        stack = list(getattr(tracer, "module_stack", {}).values())
        inner = [(path, kind) for path, kind in stack if path]
        kind = getattr(inner[-1][1], "__qualname__", inner[-1][1]) if inner else None
        where = f" in submodule '{inner[-1][0]}' ({kind})" if inner else ""
        raise TraceError(
            f"torch.fx could not trace {type(model).__qualname__}{where}: {type(e).__name__}: {e}\n"
            "Common causes: Python control flow on tensor values, len() or bool() of a traced "
            "tensor, or calls into code fx cannot follow. Fix: make the offending submodule a leaf "
            "(trace(model, leaf_modules=[MySubmodule])), wrap the helper function "
            "(autowrap_functions=[my_fn]), or fix arguments with concrete_args={...}."
        ) from e
    name = type(model).__qualname__
    return _GraphModule(tracer.root, graph, name)


def as_tensors(example_inputs: Any) -> tuple[Any, ...]:
    """Normalise ``example_inputs`` (a tensor or a tuple of arguments) to a tuple."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    raise TypeError(
        f"example_inputs must be a tensor or a tuple of forward arguments, got "
        f"{type(example_inputs).__name__}"
    )


@contextlib.contextmanager
def left_as_it_was(model: nn.Module) -> Iterator[None]:
    """Run a capture of ``model`` (shape propagation, ``torch.export``), then restore every
    module's training flag and torch's CPU random state, whatever the capture did or raised."""
    modes = {m: m.training for m in model.modules()}
    rng = torch.random.get_rng_state()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training
        torch.random.set_rng_state(rng)
