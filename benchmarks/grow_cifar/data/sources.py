"""Dataset sources, each decoded once into uint8 tensors: CIFAR-10, ImageFolder, digits, synthetic."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from netsurgeon.errors import NetsurgeonError

from .augment import Augment
from .tensors import DatasetSplits, ImageTensors, train_val_split

__all__ = [
    "DATASETS",
    "DatasetNotFoundError",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_image_folder",
    "make_synthetic",
]


class DatasetNotFoundError(NetsurgeonError, FileNotFoundError):
    """A dataset is not where it was expected and could not be fetched."""


#: Names accepted by :func:`load_dataset`.
DATASETS: tuple[str, ...] = ("cifar10", "imagefolder", "digits", "synthetic")

_IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


# --------------------------------------------------------------------------- CIFAR-10


def load_cifar10(
    root: str | os.PathLike[str], *, download: bool = False
) -> tuple[ImageTensors, ImageTensors, tuple[str, ...]]:
    """The official CIFAR-10 (python version) through ``torchvision.datasets.CIFAR10``.

    Args:
        root: folder that contains (or will receive) ``cifar-10-batches-py/``.
        download: fetch the archive into ``root`` when missing (needs network).

    Returns:
        ``(train, test, classes)`` on the CPU; images ``(N, 3, 32, 32)`` uint8.

    Raises:
        DatasetNotFoundError: the batches are missing or corrupted and could not be downloaded;
            the message says how to point at a local copy or use an ImageFolder copy.
    """
    from torchvision.datasets import CIFAR10

    parts = []
    try:
        for train in (True, False):
            ds = CIFAR10(str(root), train=train, download=download)
            images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
            labels = torch.tensor(ds.targets, dtype=torch.int64)
            parts.append((ImageTensors(images, labels), tuple(ds.classes)))
    except (RuntimeError, OSError) as error:
        raise DatasetNotFoundError(
            f"CIFAR-10 could not be loaded from {Path(root).resolve()}/cifar-10-batches-py "
            f"(download={download}): {error}. Fix: point --data-dir at the folder that contains "
            "the extracted cifar-10-batches-py/ (from cifar-10-python.tar.gz), run with network "
            "access so torchvision can download it, or use an ImageFolder copy with "
            "--dataset imagefolder --data-dir DIR (DIR/train/<class>/*.jpg, DIR/test/<class>/*.jpg)."
        ) from error
    (train_set, classes), (test_set, _) = parts
    return train_set, test_set, classes


# --------------------------------------------------------------------------- ImageFolder


def _decode_files(files: list[tuple[str, int]], where: Path) -> ImageTensors:
    from torchvision.io import ImageReadMode, decode_image, read_file

    images = []
    for path, _ in files:
        try:
            images.append(decode_image(read_file(path), mode=ImageReadMode.RGB))
        except RuntimeError:  # a format torchvision.io cannot decode: fall back to PIL
            import numpy as np
            from PIL import Image

            with Image.open(path) as img:
                array = np.asarray(img.convert("RGB"))
            images.append(torch.from_numpy(array.copy()).permute(2, 0, 1))
    shapes = {tuple(img.shape) for img in images}
    if len(shapes) > 1:
        raise ValueError(
            f"ImageFolder {where}: images must all have the same size to be stacked; found "
            f"{sorted(shapes)[:4]}. Resize the tree first (CIFAR-10 copies are all 3x32x32)."
        )
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return ImageTensors(torch.stack(images), labels)


def _load_split(split_root: Path) -> tuple[ImageTensors, tuple[str, ...]]:
    """A split's images, labelled as ImageFolder does (class folders sorted), and class names."""
    from torchvision.datasets.folder import make_dataset

    if not split_root.is_dir():
        raise DatasetNotFoundError(
            f"ImageFolder: {split_root} is not a folder. Expected DIR/train/<class>/<image> and "
            "DIR/test/<class>/<image>; for the team's CIFAR-10 copy run "
            "`unzip -q ../shared/datasets/cifar10-jpeg.zip -d /tmp/cifar10-jpeg` and pass "
            "--data-dir /tmp/cifar10-jpeg."
        )
    classes = tuple(sorted(entry.name for entry in os.scandir(split_root) if entry.is_dir()))
    labels = {name: label for label, name in enumerate(classes)}
    files = make_dataset(split_root, labels, extensions=tuple(_IMAGE_SUFFIXES), allow_empty=True)
    if not files:
        raise DatasetNotFoundError(
            f"ImageFolder: no images ({', '.join(sorted(_IMAGE_SUFFIXES))}) in class folders "
            f"under {split_root}."
        )
    return _decode_files(files, split_root), classes


def load_image_folder(
    root: str | os.PathLike[str],
) -> tuple[ImageTensors, ImageTensors, tuple[str, ...]]:
    """An ImageFolder tree ``root/train/<class>/*`` and ``root/test/<class>/*``, decoded.

    Decoding is not cached: CIFAR-10's 60,000 JPEGs take about 10 s on one core, once per process.

    Returns:
        ``(train, test, classes)`` on the CPU.

    Example:
        >>> train, test, classes = load_image_folder("/tmp/cifar10-jpeg")  # doctest: +SKIP
    """
    root = Path(root)
    train, classes = _load_split(root / "train")
    test, test_classes = _load_split(root / "test")
    if test_classes != classes:
        raise ValueError(
            f"ImageFolder {root}: train/ and test/ must hold the same class folders; found "
            f"train={list(classes)} test={list(test_classes)}."
        )
    return train, test, classes


# --------------------------------------------------------------------------- digits


def load_digits(*, upsample: int = 1) -> tuple[ImageTensors, ImageTensors, tuple[str, ...]]:
    """scikit-learn's bundled 8x8 digits (offline): 1 channel, values 0..16 rescaled to 0..255.
    There is no official test set: a seeded 20 % is held out as test.

    Args:
        upsample: integer factor of nearest-neighbour upsampling (2 gives 16x16 images, so a
            three-block VGG still sees 2x2 maps after its last pool).
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    pixels = torch.from_numpy(bunch.images).to(torch.float64)  # (1797, 8, 8) in [0, 16]
    images = (pixels * (255.0 / 16.0)).round().to(torch.uint8).unsqueeze(1)
    if upsample > 1:
        images = images.repeat_interleave(upsample, 2).repeat_interleave(upsample, 3)
    labels = torch.from_numpy(bunch.target).to(torch.int64)
    every = ImageTensors(images, labels)
    train_idx, test_idx = train_val_split(len(every), 0.2, seed=0)
    return every.subset(train_idx), every.subset(test_idx), tuple(str(d) for d in range(10))


# --------------------------------------------------------------------------- synthetic


def make_synthetic(
    n_train: int = 2000,
    n_test: int = 500,
    *,
    num_classes: int = 10,
    channels: int = 3,
    image_size: int = 32,
    noise: float = 48.0,
    seed: int = 0,
) -> tuple[ImageTensors, ImageTensors, tuple[str, ...]]:
    """A seeded, learnable image task: each class is a smooth random template plus pixel noise."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(num_classes, channels, 4, 4, generator=generator)
    templates = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear")
    templates = 60.0 * templates / templates.std().clamp_min(1e-6)

    def draw(n: int) -> ImageTensors:
        labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=generator)]
        pixels = 128.0 + templates[labels]
        pixels += noise * torch.randn(pixels.shape, generator=generator)
        return ImageTensors(pixels.round().clamp(0, 255).to(torch.uint8), labels)

    return draw(n_train), draw(n_test), tuple(f"class{k}" for k in range(num_classes))


# --------------------------------------------------------------------------- entry point


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    synthetic_size: tuple[int, int] = (2000, 500),
    synthetic_image_size: int = 32,
) -> DatasetSplits:
    """Load a dataset by name into train / val / test tensors on the CPU.

    Args:
        name: one of :data:`DATASETS`.
        data_dir: folder of the data (cifar10: holds ``cifar-10-batches-py/``, or receives it
            from torchvision's download; imagefolder: holds ``train/`` and ``test/``); unused
            for digits and synthetic.
        val_fraction: share of the training images held out for validation (seeded).
        split_seed: seed of that hold-out.
        synthetic_size: ``(n_train, n_test)`` of the synthetic task.
        synthetic_image_size: height = width of the synthetic images.

    Example:
        >>> splits = load_dataset("synthetic", synthetic_size=(100, 20))
        >>> len(splits.train), len(splits.val), len(splits.test), splits.in_channels
        (80, 20, 20, 3)
    """
    augment = Augment(crop_padding=4, flip=True)
    if name == "cifar10":
        train, test, classes = load_cifar10(data_dir or "data", download=True)
    elif name == "imagefolder":
        if data_dir is None:
            raise ValueError(
                "load_dataset('imagefolder'): data_dir is required; pass the folder that holds "
                "train/ and test/ (e.g. --data-dir /tmp/cifar10-jpeg)."
            )
        train, test, classes = load_image_folder(data_dir)
    elif name == "digits":
        train, test, classes = load_digits(upsample=2)  # 16x16, see the module docstring
        augment = Augment(crop_padding=2, flip=False)  # a mirrored digit is another glyph
    elif name == "synthetic":
        train, test, classes = make_synthetic(*synthetic_size, image_size=synthetic_image_size)
    else:
        raise ValueError(f"load_dataset: unknown dataset {name!r}; expected one of {DATASETS}.")
    return DatasetSplits.from_train_test(
        name,
        train,
        test,
        classes,
        val_fraction=val_fraction,
        split_seed=split_seed,
        augment=augment,
    )
