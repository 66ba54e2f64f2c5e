"""Checks on what the user passed in, shared by the public entry points."""

from __future__ import annotations

from torch import nn

from netsurgeon.errors import NetsurgeonTypeError, WidenError

__all__ = ["check_plain_module"]

_WRAPPERS = {
    "DistributedDataParallel": "model.module",
    "DataParallel": "model.module",
    "FullyShardedDataParallel": "the unwrapped module, before wrapping it in FSDP",
    "OptimizedModule": "model._orig_mod (the module you passed to torch.compile)",
}


def check_plain_module(
    model: object, entry_point: str, instead: dict[str, str] | None = None
) -> None:
    """Refuse wrappers (DDP, FSDP, ``torch.compile``) and non-modules with the fix.

    ``instead`` overrides what to pass for a wrapper class name (an entry point with its own
    route, e.g. the Grower's ``distributed=True`` for DDP).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        WidenError: ``model`` is a wrapper; the message says what to pass instead.
    """
    if not isinstance(model, nn.Module):
        raise NetsurgeonTypeError(
            f"{entry_point}() expects an nn.Module, got {type(model).__name__}"
        )
    fixes = _WRAPPERS | (instead or {})
    for cls in type(model).__mro__:
        if cls.__name__ in fixes:
            raise WidenError(
                f"{entry_point}() got a {cls.__name__} wrapper; surgery must see the plain module. "
                f"Pass {fixes[cls.__name__]} instead, and wrap again afterwards."
            )
