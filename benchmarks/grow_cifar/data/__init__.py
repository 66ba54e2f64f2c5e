"""Fast image-classification data: decoded once into device tensors, augmented in batches.

Typical use::

    splits = load_dataset("imagefolder", "/tmp/cifar10-jpeg", device="cuda", split_seed=0)
    loader = TensorLoader(splits.train, 500, mean=splits.mean, std=splits.std,
                          augment=splits.augment, shuffle=True,
                          generator=torch.Generator().manual_seed(0))
    for x, y in loader: ...                    # x: float (500, 3, 32, 32) channels_last
    evaluate(model, splits.val, mean=splits.mean, std=splits.std).accuracy
"""

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
