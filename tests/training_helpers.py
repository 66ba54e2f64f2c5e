"""A seeded toy classification task and one plain training epoch, shared by the growth tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["toy_images", "train_epoch"]


def toy_images(
    n: int = 128,
    *,
    channels: int = 3,
    size: int = 8,
    classes: int = 4,
    seed: int = 1,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random images ``(n, channels, size, size)`` and labels ``(n,)`` in ``[0, classes)``.

    The label is learnable: the signs of the first two channels' means, ``s0 + 2 * s1``, taken
    modulo ``classes`` (a single channel uses its sign only). The same arguments give the same
    tensors in every process.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, size, size, generator=g, dtype=dtype)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    if channels > 1:
        y = y + 2 * (x[:, 1].mean((1, 2)) > 0).long()
    return x, y % classes


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch: int = 64,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> None:
    """One pass of cross-entropy SGD over ``x, y`` in order, ``batch`` samples a step.

    The model is put in train mode; ``scheduler`` (if given) steps after every optimizer step.
    """
    model.train()
    for i in range(0, len(x), batch):
        optimizer.zero_grad()
        F.cross_entropy(model(x[i : i + batch]), y[i : i + batch]).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
