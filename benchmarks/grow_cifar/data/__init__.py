"""Fast image-classification data: decoded once into device tensors, augmented in batches."""

from __future__ import annotations

from .augment import (
    Augment,
    channel_stats,
    crop_and_flip,
    draw_crop_offsets,
    draw_flips,
    gather_crops,
    normalize,
    pad_and_mirror,
    random_crop_flip,
)
from .loader import EvalResult, TensorLoader, evaluate
from .sources import (
    DATASETS,
    DatasetNotFoundError,
    load_cifar10,
    load_dataset,
    load_digits,
    load_image_folder,
    make_synthetic,
)
from .tensors import DatasetSplits, ImageTensors, train_val_split

__all__ = [
    "DATASETS",
    "Augment",
    "DatasetNotFoundError",
    "DatasetSplits",
    "EvalResult",
    "ImageTensors",
    "TensorLoader",
    "channel_stats",
    "crop_and_flip",
    "draw_crop_offsets",
    "draw_flips",
    "evaluate",
    "gather_crops",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_image_folder",
    "make_synthetic",
    "normalize",
    "pad_and_mirror",
    "random_crop_flip",
    "train_val_split",
]
