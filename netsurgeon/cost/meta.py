"""Shape-only stand-ins of a model, an optimizer and inputs, on the ``meta`` device.

A preview has to run the real ``netsurgeon.widen`` and a real forward pass without touching the
user's objects and without paying for their memory. :func:`meta_model` builds a structural copy
of a module tree whose parameters and buffers are ``meta`` tensors of the same shapes (tied
tensors stay tied, shared modules stay shared); every other attribute is shared by reference, and
each copied module gets its own ``__dict__``, so anything ``widen`` sets on the copy (sizes,
tensors) stays on the copy. Parametrized modules (``torch.nn.utils.parametrize``) are copied
like any other: their parametrization lists are submodules, copied with the rest.

Hooks are not copied, with one exception: a forward or backward hook usually belongs to something
else (a monitor, a profiler), and running it on the copy would feed that object shapes of a
model that does not exist. torch's own hook-based reparametrisations (the legacy
``nn.utils.weight_norm`` and ``spectral_norm`` pre-hooks, ``nn.utils.prune``'s masks) are part of
how a module computes its weight: they are kept, so the copy widens and counts like the model.

:func:`meta_graph` reads a graph traced from the model on the copy, so the copy is never traced.
"""

from __future__ import annotations

import copy
from collections import OrderedDict, defaultdict
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

from netsurgeon.graph import LayerGraph

__all__ = [
    "map_tensors",
    "meta_graph",
    "meta_inputs",
    "meta_model",
    "meta_optimizer",
]

META = torch.device("meta")

#: Hooks that compute a module's own tensors (kept on the copy; every other hook is dropped).
REPARAMETRISATIONS = (WeightNorm, SpectralNorm, prune.BasePruningMethod)


def meta_model(model: nn.Module) -> tuple[nn.Module, dict[int, torch.Tensor]]:
    """A copy of ``model`` whose parameters and buffers live on the ``meta`` device.

    Args:
        model: the module to mirror; it is not modified.

    Returns:
        ``(copy, tensors)`` where ``tensors`` maps ``id(original tensor)`` to its meta twin (for
        :func:`meta_optimizer`).

    Example:
        >>> import torch.nn as nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> twin, _ = meta_model(net)
        >>> twin[0].weight.device.type, net[0].weight.device.type, twin[0] is net[0]
        ('meta', 'cpu', False)
    """
    tensors: dict[int, torch.Tensor] = {}
    modules: dict[int, nn.Module] = {}

    def twin_tensor(tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) not in tensors:
            twin = tensor.detach().to(META)
            if isinstance(tensor, nn.Parameter):
                twin = nn.Parameter(twin, requires_grad=tensor.requires_grad)
            tensors[id(tensor)] = twin
        return tensors[id(tensor)]

    def twin_module(module: nn.Module) -> nn.Module:
        if id(module) in modules:
            return modules[id(module)]
        # ``copy.copy`` would call ``__getstate__``, which parametrized modules refuse.
        twin = type(module).__new__(type(module))
        twin.__dict__.update(module.__dict__)  # a shallow copy of the attributes
        modules[id(module)] = twin
        attrs = twin.__dict__
        attrs["_parameters"] = OrderedDict(
            (k, None if p is None else twin_tensor(p)) for k, p in module._parameters.items()
        )
        attrs["_buffers"] = OrderedDict(
            (k, None if b is None else twin_tensor(b)) for k, b in module._buffers.items()
        )
        attrs["_modules"] = OrderedDict(
            (k, None if m is None else twin_module(m)) for k, m in module._modules.items()
        )
        _keep_reparametrisations(attrs)
        return twin

    return twin_module(model), tensors


def _keep_reparametrisations(attrs: dict[str, Any]) -> None:
    """Empty every hook dict of a module's ``__dict__`` but for :data:`REPARAMETRISATIONS`.

    Hook handles have unique ids across every dict (``RemovableHandle``), so a kept hook keeps
    its flags too (``_forward_pre_hooks_with_kwargs``, ``_forward_hooks_always_called``).
    """
    hooks = {k: v for k, v in attrs.items() if "hook" in k and isinstance(v, dict)}
    kept = {
        handle
        for table in hooks.values()
        for handle, hook in table.items()
        if isinstance(hook, REPARAMETRISATIONS)
    }
    for key, table in hooks.items():
        attrs[key] = type(table)((h, v) for h, v in table.items() if h in kept)


def meta_graph(graph: LayerGraph, twin: nn.Module) -> LayerGraph:
    """``graph``, traced from a model, read on ``twin``, a :func:`meta_model` copy of it.

    A graph names layers, followers and tensors by their paths, which the copy shares; only its
    ``model`` is an object. The result has the same groups and widths, and its modules are the
    twin's, so ``widen(twin, plan, graph=meta_graph(graph, twin))`` stages on the copy exactly
    what ``widen(model, plan, graph=graph)`` would stage on the model, without tracing the copy.
    """
    read = copy.copy(graph)
    read.model = twin
    return read


def meta_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[int, torch.Tensor]
) -> torch.optim.Optimizer:
    """A stand-in of ``optimizer`` (same class and hyper-parameters) over meta tensors.

    Its ``param_groups`` and ``state`` refer to the meta twins in ``tensors`` (parameters the
    model does not own get twins of their own); state tensors are moved to ``meta``. It is built
    without calling the class's ``__init__`` and is only good for ``widen`` to stage state on.

    Args:
        optimizer: the user's optimizer; not modified.
        tensors: ``id(original) -> twin`` from :func:`meta_model` (extended in place).
    """

    def twin(param: torch.Tensor) -> torch.Tensor:
        if id(param) not in tensors:
            tensors[id(param)] = nn.Parameter(param.detach().to(META))
        return tensors[id(param)]

    stand_in = object.__new__(type(optimizer))
    stand_in.__dict__.update(
        defaults=dict(optimizer.defaults),
        param_groups=[
            {**group, "params": [twin(p) for p in group["params"]]}
            for group in optimizer.param_groups
        ],
        state=defaultdict(
            dict,
            {
                twin(param): {
                    key: value.to(META) if isinstance(value, torch.Tensor) else value
                    for key, value in state.items()
                }
                for param, state in optimizer.state.items()
            },
        ),
    )
    return stand_in


def meta_inputs(inputs: Any) -> Any:
    """``inputs`` with every tensor (inside tuples, lists and dicts) moved to ``meta``."""
    return map_tensors(inputs, lambda t: t.to(META))


def map_tensors(inputs: Any, fn: Any) -> Any:
    """``inputs`` with ``fn`` applied to every tensor inside tuples, lists and dicts."""
    if isinstance(inputs, torch.Tensor):
        return fn(inputs)
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(map_tensors(x, fn) for x in inputs)
    if isinstance(inputs, dict):
        return {k: map_tensors(v, fn) for k, v in inputs.items()}
    return inputs
