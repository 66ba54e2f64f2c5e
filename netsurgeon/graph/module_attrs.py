"""Attribute reads on modules that skip ``nn.Module.__getattr__`` where Python would reach it.

``getattr(module, "bias", None)`` finds a parameter through ``nn.Module.__getattr__`` (Python
code, after the instance and class lookups failed), and ``getattr(module, "parametrizations",
None)`` on a module without any raises and formats an ``AttributeError`` in it first: about 2 us
each, paid by every soundness check and handler of every layer of a trace. :func:`module_attr`
answers what ``getattr(module, name, default)`` answers, reading the module's own tables
(``_parameters``, ``_buffers``, ``_modules``, in ``__getattr__``'s order) when the lookup would
end there: the name is neither in the instance's ``__dict__`` nor on its class, and the class
keeps ``nn.Module``'s ``__getattr__`` and ``__getattribute__``. Anything else takes the plain
``getattr``.

Example:
    >>> import torch.nn as nn
    >>> conv = nn.Conv2d(3, 8, 3)
    >>> module_attr(conv, "bias") is conv.bias, module_attr(conv, "parametrizations")
    (True, None)
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["module_attr", "parametrizations_of"]

_MODULE_GETATTR = nn.Module.__getattr__
_MODULE_GETATTRIBUTE = nn.Module.__getattribute__


def module_attr(module: nn.Module, name: str, default: Any = None) -> Any:
    """``getattr(module, name, default)`` (see the module docstring)."""
    cls = type(module)
    if (
        cls.__getattr__ is not _MODULE_GETATTR
        or cls.__getattribute__ is not _MODULE_GETATTRIBUTE
        or name in module.__dict__
        or hasattr(cls, name)
    ):
        return getattr(module, name, default)
    for table in (module._parameters, module._buffers, module._modules):
        if name in table:
            return table[name]
    return default


def parametrizations_of(module: nn.Module) -> nn.ModuleDict | None:
    """``module.parametrizations`` when it is a ``ModuleDict`` (where
    ``torch.nn.utils.parametrize`` keeps a module's parametrization lists), else ``None``."""
    found = module_attr(module, "parametrizations")
    return found if isinstance(found, nn.ModuleDict) else None
