"""The soundness rule for modules: a handler speaks for a module only if nothing changes its maths.

A handler is found by class inheritance (:meth:`Registry.registered_type`), but a subclass, a hook,
a parametrization or an extra tensor can make the module compute something the handler does not
model. The widening would then succeed and break the model. :func:`module_reason` says why a
module is not understood, or returns ``None``. It checks, in order:

1. methods in ``handler.relies_on`` overridden below the registered type (or on the instance);
2. registered forward, forward-pre, backward and backward-pre hooks that the handler does not
   model (:meth:`OpHandler.models_hook`) and that are not marked as observers;
3. parametrizations (``torch.nn.utils.parametrize``) the handler does not widen
   (:meth:`OpHandler.models_parametrization`);
4. ``torch.nn.utils.prune``'s reparametrisation (``weight_orig`` / ``weight_mask``);
5. own parameters and buffers that are not in ``handler.tensor_names(module)``.

Hooks that only observe (they return ``None`` and change no tensor) do not block once marked with
:func:`mark_observer`; netsurgeon's own ``NAGNMonitor`` marks its hooks so. Only modules that stay
fx leaves (``call_module`` nodes) need this: fx traces a module it enters through
``Module.__call__``, so that module's hooks are recorded in the graph like its ``forward``.

Example:
    >>> import torch.nn as nn
    >>> from netsurgeon.graph.registry import REGISTRY
    >>> from netsurgeon.graph import ops  # registers the handlers
    >>> class Doubled(nn.Conv2d):
    ...     def forward(self, x):
    ...         return 2 * super().forward(x)
    >>> conv = Doubled(3, 8, 3)
    >>> print(module_reason(conv, REGISTRY.for_module(conv), nn.Conv2d))  # doctest: +ELLIPSIS
    its class Doubled overrides 'forward' of Conv2d (in ...)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
from torch import nn

from netsurgeon.graph.module_attrs import parametrizations_of

__all__ = [
    "OBSERVER_ATTR",
    "is_observer",
    "mark_observer",
    "module_reason",
]

#: The attribute that marks a hook function as a pure observer.
OBSERVER_ATTR = "__netsurgeon_observer__"

F = TypeVar("F", bound=Callable[..., Any])

_HOOK_KINDS = (
    ("_forward_pre_hooks", "forward pre-hook"),
    ("_forward_hooks", "forward hook"),
    ("_backward_pre_hooks", "backward pre-hook"),
    ("_backward_hooks", "backward hook"),
)
# (module attribute, global dict in torch.nn.modules.module, kind) per hook kind
_HOOK_TABLES = tuple((a, f"_global{a}", kind) for a, kind in _HOOK_KINDS)


def mark_observer(hook: F) -> F:
    """Mark ``hook`` as a pure observer, so it does not stop the analysis; returns it.

    Use it only for hooks that change no tensor and return ``None`` (logging, statistics):
    netsurgeon then trusts that the model computes the same with and without them.

    Example:
        >>> import torch.nn as nn
        >>> layer = nn.Linear(4, 4)
        >>> seen = []
        >>> handle = layer.register_forward_hook(mark_observer(lambda m, i, o: seen.append(o.shape)))
    """
    target = getattr(hook, "__func__", hook)  # a bound method: mark its function
    setattr(target, OBSERVER_ATTR, True)
    return hook


def is_observer(hook: object) -> bool:
    """Whether ``hook`` was marked with :func:`mark_observer`."""
    return bool(getattr(hook, OBSERVER_ATTR, False))


def module_reason(module: nn.Module, handler: Any, registered_type: type[nn.Module]) -> str | None:
    """Why ``handler`` (found for ``registered_type``) does not describe ``module``, or ``None``.

    The reason names the class, the overriding method, hook, parametrization or tensor, and the
    fix; the caller adds the module path.
    """
    for check in (_override, _hooks, _parametrizations, _pruning, _tensors):
        reason = check(module, handler, registered_type)
        if reason is not None:
            return reason
    return None


# ---------------------------------------------------------------------------- the checks


def _override(module: nn.Module, handler: Any, registered_type: type) -> str | None:
    for method in handler.relies_on:
        if method in vars(module):
            return (
                f"the instance's own '{method}' replaces {registered_type.__name__}.{method}, "
                "which netsurgeon's handler assumes (fix: delete the instance attribute, or "
                "register a handler for this module)"
            )
        mro = type(module).__mro__
        owner = next((c for c in mro if method in vars(c)), None)
        if owner is not None and mro.index(owner) < mro.index(registered_type):
            return (
                f"its class {type(module).__qualname__} overrides '{method}' of "
                f"{registered_type.__name__} (in {owner.__module__}.{owner.__qualname__}), so "
                f"netsurgeon's {registered_type.__name__} handler does not describe it (fix: "
                "register a handler for the subclass, or REGISTRY.add_module(subclass, handler) "
                "if it computes exactly what its parent does)"
            )
    return None


def _hooks(module: nn.Module, handler: Any, registered_type: type) -> str | None:
    for kind, hook in _active_hooks(module):
        if handler.models_hook(module, hook):
            continue
        known = _known_hook(hook)
        if known is not None:
            return known
        return (
            f"it has a {kind} '{_name(hook)}' that may change what the layer computes (fix: "
            "remove the hook while widening (handle.remove()), or mark a hook that only "
            "observes with netsurgeon.graph.soundness.mark_observer)"
        )
    return None


def _parametrizations(module: nn.Module, handler: Any, registered_type: type) -> str | None:
    parametrizations = parametrizations_of(module)
    if parametrizations is None:
        return None
    for tensor, plist in parametrizations.items():
        if handler.models_parametrization(module, tensor, plist):
            continue
        kinds = ", ".join(type(p).__qualname__ for p in plist)
        return (
            f"its '{tensor}' is parametrized ({kinds}); netsurgeon cannot widen this "
            "parametrization exactly (fix: torch.nn.utils.parametrize.remove_parametrizations("
            f"module, '{tensor}') before widening, and parametrize again after)"
        )
    return None


def _pruning(module: nn.Module, handler: Any, registered_type: type) -> str | None:
    for name, param in module._parameters.items():  # named_parameters(recurse=False), cheaper
        if (
            param is not None
            and name.endswith("_orig")
            and hasattr(module, name[: -len("_orig")] + "_mask")
        ):
            tensor = name[: -len("_orig")]
            return (
                f"its '{tensor}' is pruned ('{name}' and '{tensor}_mask' from "
                "torch.nn.utils.prune); netsurgeon does not grow the mask (fix: "
                f"torch.nn.utils.prune.remove(module, '{tensor}') before widening)"
            )
    return None


def _tensors(module: nn.Module, handler: Any, registered_type: type) -> str | None:
    known = handler.tensor_names(module)
    for name, tensor in _own_tensors(module):
        if name not in known and tensor is not None and tensor.dim() > 0:
            kind = "parameter" if isinstance(tensor, nn.Parameter) else "buffer"
            return (
                f"it has a {kind} '{name}' of shape {tuple(tensor.shape)} that netsurgeon's "
                f"{registered_type.__name__} handler does not grow (fix: register a handler for "
                f"{type(module).__qualname__} that accounts for it)"
            )
    return None


# ---------------------------------------------------------------------------- helpers


def _active_hooks(module: nn.Module) -> Iterator[tuple[str, Any]]:
    """``(kind, hook)`` of every hook that runs on ``module`` and is not a marked observer,
    the global ones (``torch.nn.modules.module.register_module_forward_hook``) included."""
    from torch.nn.modules import module as torch_module

    for attribute, global_attribute, kind in _HOOK_TABLES:
        own = getattr(module, attribute, None)
        for hook in own.values() if own else ():
            if not is_observer(hook):
                yield kind, hook
        found = getattr(torch_module, global_attribute, None)
        for hook in found.values() if found else ():
            if not is_observer(hook):
                yield f"global {kind}", hook


def _own_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor | None]]:
    yield from module._parameters.items()
    yield from module._buffers.items()
    parametrizations = parametrizations_of(module)
    if parametrizations is not None:
        for tensor, plist in parametrizations.items():
            for name, value in plist.named_parameters(recurse=False):
                yield f"parametrizations.{tensor}.{name}", value
            for name, value in plist.named_buffers():
                yield f"parametrizations.{tensor}.{name}", value


def _known_hook(hook: object) -> str | None:
    """A specific reason for the hooks torch's own reparametrisations install."""
    from torch.nn.utils import prune

    if isinstance(hook, prune.BasePruningMethod):
        tensor = getattr(hook, "_tensor_name", "weight")
        return (
            f"its '{tensor}' is pruned by torch.nn.utils.prune ({type(hook).__qualname__} "
            f"pre-hook over '{tensor}_orig' and '{tensor}_mask'); netsurgeon does not grow the "
            f"mask (fix: torch.nn.utils.prune.remove(module, '{tensor}') before widening)"
        )
    name = type(hook).__qualname__
    if name in ("WeightNorm", "SpectralNorm"):
        tensor = getattr(hook, "name", "weight")
        remove = "remove_weight_norm" if name == "WeightNorm" else "remove_spectral_norm"
        return (
            f"its '{tensor}' is reparametrised by the legacy torch.nn.utils.{name} pre-hook, "
            f"which netsurgeon does not widen (fix: torch.nn.utils.{remove}(module) before "
            "widening, or use torch.nn.utils.parametrizations)"
        )
    return None


def _name(hook: object) -> str:
    function = getattr(hook, "func", hook)  # functools.partial
    return str(getattr(function, "__qualname__", type(function).__qualname__))
