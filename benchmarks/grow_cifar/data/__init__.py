"""Fast image-classification data: decoded once into device tensors, augmented in batches."""

from __future__ import annotations

from .augment import Augment
from .loader import TensorLoader, evaluate
from .sources import DATASETS, DatasetNotFoundError, load_dataset, load_image_folder, make_synthetic
from .tensors import DatasetSplits, ImageTensors

__all__ = [
    "DATASETS",
    "Augment",
    "DatasetNotFoundError",
    "DatasetSplits",
    "ImageTensors",
    "TensorLoader",
    "evaluate",
    "load_dataset",
    "load_image_folder",
    "make_synthetic",
]
