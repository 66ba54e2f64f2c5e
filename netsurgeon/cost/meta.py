"""Shape-only stand-ins of a model, an optimizer and inputs, on the ``meta`` device.

A preview has to run the real ``netsurgeon.widen`` and a real forward pass without touching the
user's objects and without paying for their memory. :func:`meta_model` builds a structural copy
of a module tree whose parameters and buffers are ``meta`` tensors of the same shapes (tied
tensors stay tied, shared modules stay shared); every other attribute is shared by reference, and
each copied module gets its own ``__dict__``, so anything ``widen`` sets on the copy (sizes,
tensors) stays on the copy. Hooks are not copied: a forward or backward hook usually belongs to
something else (a monitor, a profiler), and running it on the copy would feed that object shapes
of a model that does not exist.
"""

from __future__ import annotations

import copy
from collections import OrderedDict, defaultdict
from typing import Any

import torch
from torch import nn

__all__ = ["meta_inputs", "meta_model", "meta_optimizer"]

META = torch.device("meta")


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
        twin = copy.copy(module)  # a new object with a shallow copy of ``__dict__``
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
        for key, value in list(attrs.items()):
            if "hook" in key and isinstance(value, dict):
                attrs[key] = type(value)()
        return twin

    return twin_module(model), tensors


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
    if isinstance(inputs, torch.Tensor):
        return inputs.to(META)
    if isinstance(inputs, tuple):
        return tuple(meta_inputs(x) for x in inputs)
    if isinstance(inputs, list):
        return [meta_inputs(x) for x in inputs]
    if isinstance(inputs, dict):
        return {k: meta_inputs(v) for k, v in inputs.items()}
    return inputs
