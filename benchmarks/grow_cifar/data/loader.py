"""Batches straight from device-resident uint8 tensors: the hot loop of training and evaluation."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .augment import Augment, draw_augment, gather_crops, normalize, pad_and_mirror
from .tensors import ImageTensors

__all__ = ["EvalResult", "TensorLoader", "evaluate"]


class TensorLoader:
    """Iterate ``(x, y)`` batches of an :class:`ImageTensors`, optionally shuffled and augmented.

    ``x`` is float ``(B, C, H, W)``, normalised, channels_last, on the data's device; ``y`` is
    int64 ``(B,)``. With a ``generator``, each epoch draws a fresh permutation and fresh
    augmentations from it, so a seed fixes the whole stream of batches.

    Args:
        data: images and labels (already on the training device).
        batch_size: images per batch.
        mean: per-channel mean on the [0, 1] scale.
        std: per-channel std on the [0, 1] scale.
        augment: training augmentation, or None for none (evaluation).
        shuffle: whether to permute the images every epoch (needs ``generator``).
        generator: CPU ``torch.Generator`` for the permutation and the augmentation.
        memory_format: of ``x``; ``torch.channels_last`` (default, best on GPUs) or
            ``torch.contiguous_format`` (one extra copy; faster for tiny convs on some CPUs).

    Example:
        >>> data = ImageTensors(torch.zeros(10, 3, 8, 8, dtype=torch.uint8), torch.zeros(10, dtype=torch.long))
        >>> loader = TensorLoader(data, 4, mean=(0.5,) * 3, std=(0.25,) * 3)
        >>> [tuple(x.shape) for x, _ in loader]
        [(4, 3, 8, 8), (4, 3, 8, 8), (2, 3, 8, 8)]
    """

    def __init__(
        self,
        data: ImageTensors,
        batch_size: int,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        augment: Augment | None = None,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        memory_format: torch.memory_format = torch.channels_last,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                f"TensorLoader: batch_size must be a positive int; found {batch_size!r}."
            )
        if (shuffle or augment is not None) and generator is None:
            raise ValueError(
                "TensorLoader: shuffle or augment needs an explicit generator; pass "
                "generator=torch.Generator().manual_seed(seed)."
            )
        self.data = data
        self.batch_size = batch_size
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.augment = augment
        self.shuffle = shuffle
        self.generator = generator
        self.memory_format = memory_format
        self._padding = augment.crop_padding if augment is not None else 0
        self._flip = augment is not None and augment.flip and augment.flip_probability > 0
        self._source = pad_and_mirror(data.images, self._padding, mirror=self._flip)

    def __len__(self) -> int:
        return math.ceil(len(self.data) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.data)
        device = self.data.device
        size = (self.data.images.shape[2], self.data.images.shape[3])
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(device)
        else:
            order = torch.arange(n, device=device)
        for b in range(len(self)):
            index = order[b * self.batch_size : (b + 1) * self.batch_size]
            offsets, flips = draw_augment(index.shape[0], self.augment, self.generator)
            images = gather_crops(self._source, index, offsets, flips, size)
            x = normalize(images, self.mean, self.std)
            yield x.contiguous(memory_format=self.memory_format), self.data.labels[index]


@dataclass(frozen=True)
class EvalResult:
    """Accuracy in [0, 1], mean cross-entropy, and the number of images evaluated."""

    accuracy: float
    loss: float
    count: int


def evaluate(
    model: nn.Module,
    data: ImageTensors,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 2000,
    autocast_dtype: torch.dtype | None = None,
    memory_format: torch.memory_format = torch.channels_last,
) -> EvalResult:
    """Accuracy and loss of ``model`` on ``data``, in large batches under ``inference_mode``.

    Example:
        >>> from netsurgeon.models import vgg
        >>> data = ImageTensors(torch.zeros(6, 3, 8, 8, dtype=torch.uint8), torch.zeros(6, dtype=torch.long))
        >>> evaluate(vgg([[2]], image_size=8), data, mean=(0.5,) * 3, std=(0.25,) * 3).count
        6
    """
    loader = TensorLoader(data, batch_size, mean=mean, std=std, memory_format=memory_format)
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=data.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=data.device)
    try:
        with torch.inference_mode():
            for x, y in loader:
                with torch.autocast(
                    data.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None
                ):
                    logits = model(x)
                correct += (logits.argmax(dim=1) == y).sum()
                loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
    finally:
        model.train(was_training)
    n = len(data)
    return EvalResult(correct.item() / max(n, 1), loss_sum.item() / max(n, 1), n)
