"""Decoded datasets as tensors: uint8 images + int64 labels, and the seeded train/val split."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import torch

from .augment import Augment, channel_stats

__all__ = ["DatasetSplits", "ImageTensors", "train_val_split"]


@dataclass(frozen=True, eq=False)
class ImageTensors:
    """A decoded image set."""

    images: torch.Tensor  # (N, C, H, W) uint8 in [0, 255]
    labels: torch.Tensor  # (N,) int64 class indices, on the device of ``images``

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"ImageTensors.images must be a uint8 (N, C, H, W) tensor; found "
                f"{self.images.dtype} of shape {tuple(self.images.shape)}."
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"ImageTensors.labels must be int64 of shape ({self.images.shape[0]},); found "
                f"{self.labels.dtype} of shape {tuple(self.labels.shape)}."
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device | str | None) -> ImageTensors:
        """A copy on ``device`` (self when already there or ``device`` is None)."""
        if device is None or torch.device(device) == self.device:
            return self
        return ImageTensors(self.images.to(device), self.labels.to(device))

    def subset(self, index: torch.Tensor) -> ImageTensors:
        """The images at ``index`` (int64 ``(K,)``), in that order."""
        index = index.to(self.device)
        return ImageTensors(self.images[index], self.labels[index])

    def digest(self) -> str:
        """A short SHA-256 of the shape, labels and pixels, in order.

        Example:
            >>> a = ImageTensors(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1]))
            >>> a.digest() == a.subset(torch.tensor([0, 1])).digest() != a.subset(torch.tensor([1, 0])).digest()
            True
        """
        h = hashlib.sha256(repr(tuple(self.images.shape)).encode())
        h.update(self.labels.cpu().contiguous().numpy().tobytes())
        h.update(self.images.cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def train_val_split(
    n: int, val_fraction: float = 0.2, *, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random split of ``range(n)`` into train and validation indices.

    The two parts are disjoint, cover ``range(n)``, are sorted, and depend only on
    ``(n, val_fraction, seed)``. The validation part has ``round(n * val_fraction)`` entries.

    Returns:
        ``(train_idx, val_idx)``, int64 tensors on the CPU.

    Example:
        >>> train, val = train_val_split(10, 0.2, seed=0)
        >>> len(train), len(val)
        (8, 2)
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"train_val_split: n must be a non-negative int; found {n!r}.")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(
            f"train_val_split: val_fraction must lie in [0, 1); found {val_fraction!r}."
        )
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=generator)
    n_val = round(n * val_fraction)
    return perm[n_val:].sort().values, perm[:n_val].sort().values


@dataclass(frozen=True, eq=False)
class DatasetSplits:
    """Train / validation / test parts of one dataset, with what the pipeline needs to use them."""

    name: str  # for reports: "cifar10", "digits", ...
    train: ImageTensors  # the part trained on (after holding out ``val``)
    val: ImageTensors  # held out of the training set; growth decisions read its accuracy
    test: ImageTensors  # the official test set: reported, never used for decisions
    classes: tuple[str, ...]  # class names in label order
    mean: tuple[float, ...]  # per channel, of ``train``, on the [0, 1] scale
    std: tuple[float, ...]  # per channel, of ``train``, on the [0, 1] scale
    augment: Augment = field(default_factory=Augment)  # training augmentation for this data

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.images.shape[2]

    def to(self, device: torch.device | str | None) -> DatasetSplits:
        """A copy with every part on ``device``."""
        return replace(
            self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device)
        )

    @classmethod
    def from_train_test(
        cls,
        name: str,
        train: ImageTensors,
        test: ImageTensors,
        classes: tuple[str, ...],
        *,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        augment: Augment | None = None,
    ) -> DatasetSplits:
        """Hold out ``val_fraction`` of ``train`` (seeded) and compute the normalisation stats."""
        train_idx, val_idx = train_val_split(len(train), val_fraction, seed=split_seed)
        train_part = train.subset(train_idx)
        mean, std = channel_stats(train_part.images)
        return cls(
            name=name,
            train=train_part,
            val=train.subset(val_idx),
            test=test,
            classes=tuple(classes),
            mean=mean,
            std=std,
            augment=augment if augment is not None else Augment(),
        )
