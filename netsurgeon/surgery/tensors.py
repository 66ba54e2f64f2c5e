"""The memory format of grown tensors, and the one in-place primitive that commits them.

Which dims of a tensor hold units is its module handler's knowledge (:mod:`netsurgeon.graph.axes`);
where the new entries go is decided once per tensor dim by the group's index map
(:mod:`netsurgeon.surgery.index`); this module only swaps values in.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = [
    "like_format",
    "memory_format_of",
    "replace_tensor_",
]


def like_format(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Give ``new`` the memory format of ``old`` (channels_last / channels_last_3d / contiguous);
    ``new`` itself when it already has it (tensors from :func:`~netsurgeon.surgery.index.grow`
    do)."""
    fmt = memory_format_of(old)
    if fmt is torch.contiguous_format or new.is_contiguous(memory_format=fmt):
        return new
    return new.contiguous(memory_format=fmt)


def replace_tensor_(
    tensor: torch.Tensor, new: torch.Tensor, grow_grad: Callable[[torch.Tensor], torch.Tensor]
) -> None:
    """Make ``tensor`` (a Parameter or buffer) hold ``new``'s data, keeping the same object.

    ``Tensor.set_`` under ``no_grad`` swaps storage, sizes and strides in place, so references
    held by optimizers, schedulers and hooks stay valid, and a previous step's autograd graph that
    is still alive does not poison the next backward (``param.data = new`` does: the cached
    gradient accumulator keeps the old shape). The gradient is grown by ``grow_grad`` (zeros at
    the new entries, old entries kept where the parameter keeps them).
    """
    grad = tensor.grad if isinstance(tensor, torch.nn.Parameter) else None
    with torch.no_grad():
        tensor.set_(new)
    if grad is not None:
        tensor.grad = grow_grad(grad) if grad.shape != new.shape else grad


def memory_format_of(tensor: torch.Tensor) -> torch.memory_format:
    """``channels_last`` (4-d) or ``channels_last_3d`` (5-d) if ``tensor`` is stored so and not
    also contiguous, else ``contiguous_format``."""
    formats = {4: torch.channels_last, 5: torch.channels_last_3d}
    fmt = formats.get(tensor.dim())
    if fmt is not None and not tensor.is_contiguous() and tensor.is_contiguous(memory_format=fmt):
        return fmt
    return torch.contiguous_format
