"""Growth under ``torch.distributed`` data parallelism (DDP).

Surgery happens on the plain module on every rank, identically; the ``DistributedDataParallel``
wrapper is then rebuilt, because DDP sizes its gradient buckets when it is constructed:

    ddp = netsurgeon.distributed.wrap(model, device_ids=[rank])   # = DDP(...), kwargs recorded
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    grower = netsurgeon.Grower(model, opt, cfg, distributed=True)
    for epoch in range(epochs):
        train_one_epoch(ddp, opt)                    # NAGN collected on every rank
        if grower.step(evaluate(model)) is not None: # accuracy and NAGN all-reduced inside
            ddp = netsurgeon.distributed.rewrap(ddp) # same module, same optimizer, new buckets

Why every rank makes the same growth: ``Grower(distributed=True)`` averages the validation
accuracy over the ranks before the trigger rule sees it, and sums the NAGN accumulators over the
ranks (``NAGNMonitor.profile(all_reduce=True)``) before planning, so every rank plans from the
same numbers; new weights are drawn from the grower's generator, seeded alike on every rank.
:func:`rewrap` then builds a new DDP, whose constructor broadcasts rank 0's parameters and
buffers, so the replicas are bit-identical whatever the device's random stream does. The
optimizer needs nothing: it holds the same parameter objects, and the state of the new units
starts at the same values everywhere.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import nn

from netsurgeon.errors import NetsurgeonError, NetsurgeonTypeError

__all__ = ["agree_on_accuracy", "check_same_on_all_ranks", "is_distributed", "rewrap", "wrap"]

_KWARGS_ATTR = "_netsurgeon_ddp_kwargs"

#: Constructor arguments :func:`rewrap` reads back from a DDP built without :func:`wrap`.
_READ_BACK = (
    "device_ids",
    "output_device",
    "dim",
    "process_group",
    "find_unused_parameters",
    "gradient_as_bucket_view",
    "static_graph",
)


def is_distributed(group: Any = None) -> bool:
    """Whether ``torch.distributed`` is initialised (and ``group`` has more than one rank)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def _require_initialised(what: str) -> None:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise NetsurgeonError(
            f"{what} needs torch.distributed: call torch.distributed.init_process_group(...) on "
            "every rank first (torchrun sets the environment), or drop distributed=True."
        )


def wrap(module: nn.Module, **ddp_kwargs: Any) -> nn.parallel.DistributedDataParallel:
    """``DistributedDataParallel(module, **ddp_kwargs)``, remembering the arguments for :func:`rewrap`.

    Example:
        >>> ddp = wrap(model, device_ids=[rank], bucket_cap_mb=50)  # doctest: +SKIP
    """
    ddp = nn.parallel.DistributedDataParallel(module, **ddp_kwargs)
    object.__setattr__(ddp, _KWARGS_ATTR, dict(ddp_kwargs))
    return ddp


def rewrap(
    ddp: nn.parallel.DistributedDataParallel, **ddp_kwargs: Any
) -> nn.parallel.DistributedDataParallel:
    """A new DDP around ``ddp.module`` after it was widened; use it instead of ``ddp`` from now on.

    The new wrapper gets ``ddp_kwargs`` if given, else the arguments :func:`wrap` recorded, else
    the constructor arguments DDP keeps as attributes (``device_ids``, ``output_device``,
    ``dim``, ``process_group``, ``find_unused_parameters``, ``gradient_as_bucket_view``,
    ``static_graph``); pass any other argument you built it with (``bucket_cap_mb``, ...)
    explicitly. Communication hooks registered on ``ddp`` are registered again. Its
    construction broadcasts rank 0's parameters and buffers (a collective: every rank calls
    ``rewrap`` together). The optimizer needs no change.

    Args:
        ddp: the wrapper built before the growth. Do not run it again afterwards: its gradient
            buckets have the old sizes.
        ddp_kwargs: constructor arguments for the new wrapper.

    Returns:
        The new ``DistributedDataParallel``.

    Example:
        >>> if grower.step(accuracy) is not None:                  # doctest: +SKIP
        ...     ddp = netsurgeon.distributed.rewrap(ddp)
    """
    if not isinstance(ddp, nn.parallel.DistributedDataParallel):
        raise NetsurgeonTypeError(
            f"rewrap() expects the DistributedDataParallel wrapper the model was trained with, got "
            f"{type(ddp).__name__}; for a plain module call netsurgeon.distributed.wrap(module)."
        )
    if not ddp_kwargs:
        recorded = ddp.__dict__.get(_KWARGS_ATTR)
        ddp_kwargs = (
            dict(recorded)
            if recorded is not None
            else {name: getattr(ddp, name) for name in _READ_BACK if hasattr(ddp, name)}
        )
    new = nn.parallel.DistributedDataParallel(ddp.module, **ddp_kwargs)
    object.__setattr__(new, _KWARGS_ATTR, dict(ddp_kwargs))
    for hook, state in getattr(ddp, "_comm_hooks", ()):
        new.register_comm_hook(state, hook)
    return new


def agree_on_accuracy(value: float, group: Any = None) -> float:
    """The mean of ``value`` over the ranks of ``group``; every rank gets the same float.

    A rank that passes a value that is not a finite number in [0, 1] makes every rank raise
    (the check rides on the same collective, so no rank is left waiting).

    Raises:
        ValueError: on every rank, when any rank's value is invalid.
    """
    import torch.distributed as dist

    _require_initialised("agreeing on the validation accuracy")
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    valid = (
        isinstance(value, numbers.Real)  # np.float32 too, which is no float subclass
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0.0 <= value <= 1.0
    )
    pair = torch.tensor(
        [float(value) if valid else 0.0, 0.0 if valid else 1.0], dtype=torch.float64
    )
    if "nccl" in str(dist.get_backend(group)):
        pair = pair.cuda()
    dist.all_reduce(pair, op=dist.ReduceOp.SUM, group=group)
    total, invalid = pair.tolist()
    if invalid:
        raise ValueError(
            f"{int(invalid)} rank(s) passed a validation accuracy that is not a finite number in "
            f"[0, 1] (this rank passed {value!r}); pass a fraction of correct samples, the same "
            "on every rank or each rank's accuracy on an equal share of the validation set."
        )
    return total / dist.get_world_size(group)


def check_same_on_all_ranks(value: Any, what: str, group: Any = None) -> None:
    """Raise on every rank unless ``value`` (picklable) is equal on all ranks of ``group``."""
    import torch.distributed as dist

    _require_initialised(f"checking {what} across ranks")
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, value, group=group)
    differing = [rank for rank, other in enumerate(gathered) if other != gathered[0]]
    if differing:
        raise NetsurgeonError(
            f"{what} differs between ranks: rank 0 has {gathered[0]!r}, rank(s) {differing} have "
            f"{[gathered[r] for r in differing]!r}. Build the same model and config on every rank "
            "(same seed), before wrapping it in DistributedDataParallel."
        )
