"""Pure tensor functions for growing weights, and the one in-place primitive that commits them.

Layout convention: every layer weight is ``(out, in, *kernel)`` (``Linear``: no kernel), every
per-channel tensor is ``(n,)``. Growth always appends: the old tensor stays in the leading corner
``[:out, :in, ...]`` of the new one. That holds through a flatten too, because ``flatten`` is
channel-major: feature ``c*m + s`` belongs to channel ``c``, so new channels' features come after
all old ones.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = [
    "embed",
    "like_format",
    "replace_tensor_",
]


def like_format(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Give ``new`` the memory format of ``old`` (channels_last / channels_last_3d / contiguous)."""
    if (
        old.dim() == 4
        and not old.is_contiguous()
        and old.is_contiguous(memory_format=torch.channels_last)
    ):
        return new.contiguous(memory_format=torch.channels_last)
    if (
        old.dim() == 5
        and not old.is_contiguous()
        and old.is_contiguous(memory_format=torch.channels_last_3d)
    ):
        return new.contiguous(memory_format=torch.channels_last_3d)
    return new


def embed(old: torch.Tensor, shape: tuple[int, ...], fill: float = 0.0) -> torch.Tensor:
    """A tensor of ``shape`` holding ``old`` in its leading corner and ``fill`` elsewhere.

    Args:
        old: ``(d0, d1, ...)``.
        shape: ``(D0, D1, ...)`` with ``Di >= di`` and the same rank.
        fill: value of the grown region.

    Example:
        >>> embed(torch.ones(1, 2), (2, 3)).tolist()
        [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    """
    if tuple(shape) == tuple(old.shape):
        return old.clone()
    new = torch.full(shape, fill, dtype=old.dtype, device=old.device)
    new[tuple(slice(0, n) for n in old.shape)] = old
    return like_format(new, old)


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
