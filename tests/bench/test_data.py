"""benchmarks/grow_cifar/data: batched augmentation, normalisation, the seeded split, loaders and sources.

The crop+flip reference is per-image slicing of a zero-padded image, which is what
torchvision's ``RandomCrop(size, padding=p)`` + ``RandomHorizontalFlip`` compute; the batched
gather must agree with it exactly for every offset and flip.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from benchmarks.grow_cifar.data import (
    Augment,
    DatasetNotFoundError,
    DatasetSplits,
    ImageTensors,
    TensorLoader,
    evaluate,
    load_dataset,
    load_image_folder,
    make_synthetic,
)
from benchmarks.grow_cifar.data.augment import (
    channel_stats,
    draw_augment,
    gather_crops,
    normalize,
    pad_and_mirror,
)
from benchmarks.grow_cifar.data.sources import load_cifar10, load_digits
from benchmarks.grow_cifar.data.tensors import train_val_split

pytestmark = pytest.mark.bench


def _images(n: int, c: int = 3, h: int = 6, w: int = 5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)


def _reference_crop_flip(
    images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, padding: int
) -> torch.Tensor:
    padded = F.pad(images, (padding,) * 4)
    h, w = images.shape[2:]
    out = []
    for img, (dy, dx), flip in zip(padded, offsets.tolist(), flips.tolist(), strict=True):
        crop = img[:, dy : dy + h, dx : dx + w]
        out.append(crop.flip(-1) if flip else crop)
    return torch.stack(out)


def crop_and_flip(
    images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, padding: int
) -> torch.Tensor:
    """The loader's augmentation at given offsets and flips: one gather from the padded source."""
    n, _, h, w = images.shape
    source = pad_and_mirror(images, padding, mirror=True)
    return gather_crops(source, torch.arange(n), offsets, flips, (h, w))


def random_crop_flip(
    images: torch.Tensor, augment: Augment, generator: torch.Generator
) -> torch.Tensor:
    """The loader's augmentation with offsets and flips drawn from ``generator``."""
    offsets, flips = draw_augment(images.shape[0], augment, generator)
    return crop_and_flip(images, offsets, flips, augment.crop_padding)


# --------------------------------------------------------------------------- augmentation


@given(n=st.integers(1, 300), padding=st.integers(0, 6), seed=st.integers(0, 2**16))
def test_crop_offsets_lie_in_zero_to_twice_the_padding(n: int, padding: int, seed: int) -> None:
    augment = Augment(crop_padding=padding, flip=False)
    offsets, _ = draw_augment(n, augment, torch.Generator().manual_seed(seed))
    assert offsets.shape == (n, 2)
    assert offsets.dtype == torch.int64
    assert int(offsets.min()) >= 0
    assert int(offsets.max()) <= 2 * padding


def test_crop_offsets_reach_both_ends_of_the_range() -> None:
    offsets, _ = draw_augment(2000, Augment(crop_padding=4), torch.Generator().manual_seed(0))
    assert set(offsets.unique().tolist()) == set(range(9))


@given(
    n=st.integers(1, 6),
    c=st.integers(1, 4),
    h=st.integers(1, 7),
    w=st.integers(1, 7),
    padding=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_crop_and_flip_matches_per_image_slicing(
    n: int, c: int, h: int, w: int, padding: int, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=g)
    flips = torch.rand(n, generator=g) < 0.5
    out = crop_and_flip(images, offsets, flips, padding)
    torch.testing.assert_close(out, _reference_crop_flip(images, offsets, flips, padding))


def test_centre_offset_without_flip_is_the_identity() -> None:
    images = _images(4)
    offsets = torch.full((4, 2), 3)
    out = crop_and_flip(images, offsets, torch.zeros(4, dtype=torch.bool), padding=3)
    torch.testing.assert_close(out, images)


def test_corner_offset_shifts_in_zero_padding() -> None:
    images = torch.full((1, 1, 4, 4), 7, dtype=torch.uint8)
    out = crop_and_flip(images, torch.zeros(1, 2, dtype=torch.long), torch.tensor([False]), 2)
    assert out[0, 0, :2].eq(0).all()
    assert out[0, 0, :, :2].eq(0).all()
    assert out[0, 0, 2:, 2:].eq(7).all()


def test_flip_probability_is_one_half_within_six_sigma() -> None:
    n = 4000
    # Left half black, right half white: a flipped image has a white first column.
    images = torch.zeros(n, 1, 2, 2, dtype=torch.uint8)
    images[..., 1] = 255
    out = random_crop_flip(images, Augment(crop_padding=0), torch.Generator().manual_seed(0))
    flipped = (out[:, 0, 0, 0] == 255).double().mean().item()
    sigma = (0.25 / n) ** 0.5
    assert abs(flipped - 0.5) < 6 * sigma
    rare = Augment(crop_padding=0, flip_probability=0.2)
    _, flips = draw_augment(n, rare, torch.Generator().manual_seed(1))
    assert abs(flips.double().mean() - 0.2) < 0.04


def test_augmentation_keeps_shape_dtype_and_is_channels_last() -> None:
    images = _images(8, h=32, w=32)
    out = random_crop_flip(images, Augment(), torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    assert out.dtype == torch.uint8
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_augmentation_is_determined_by_the_generator_seed() -> None:
    images = _images(64, h=8, w=8)

    def run(seed: int) -> torch.Tensor:
        return random_crop_flip(images, Augment(), torch.Generator().manual_seed(seed))

    torch.testing.assert_close(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_disabled_augmentation_returns_the_images() -> None:
    images = _images(5)
    out = random_crop_flip(
        images, Augment(crop_padding=0, flip=False), torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(out, images)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"crop_padding": -1}, ValueError), ({"flip_probability": 1.5}, ValueError)],
)
def test_augment_rejects_invalid_settings(kwargs: dict[str, float], error: type) -> None:
    with pytest.raises(error):
        Augment(**kwargs)


# --------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize("channels_last", [False, True])
def test_normalize_computes_per_channel_standard_scores(channels_last: bool) -> None:
    images = _images(3, h=4, w=5)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    expected = (images.double() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(
        std
    ).view(1, 3, 1, 1)
    out = normalize(images, mean, std)
    assert out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)  # whatever the input's layout
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_normalize_rejects_a_channel_count_mismatch_and_float_input() -> None:
    with pytest.raises(ValueError, match="3 channels"):
        normalize(_images(1), (0.5,), (0.5,))
    with pytest.raises(TypeError, match="uint8"):
        normalize(_images(1).float(), (0.5,) * 3, (0.5,) * 3)


def test_channel_stats_match_a_float64_reference() -> None:
    images = _images(50, h=8, w=8)
    mean, std = channel_stats(images, chunk=7)
    x = images.double() / 255
    torch.testing.assert_close(
        torch.tensor(mean, dtype=torch.float64), x.mean((0, 2, 3)), rtol=1e-6, atol=1e-7
    )
    torch.testing.assert_close(
        torch.tensor(std, dtype=torch.float64), x.std((0, 2, 3), correction=0), rtol=1e-5, atol=1e-6
    )


# --------------------------------------------------------------------------- split


@given(n=st.integers(0, 500), fraction=st.floats(0.0, 0.9), seed=st.integers(0, 2**31))
def test_split_is_disjoint_covering_and_sized(n: int, fraction: float, seed: int) -> None:
    train, val = train_val_split(n, fraction, seed=seed)
    assert len(val) == round(n * fraction)
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(n))


def test_split_is_stable_for_a_seed_and_changes_with_it() -> None:
    a = train_val_split(1000, 0.2, seed=7)
    b = train_val_split(1000, 0.2, seed=7)
    c = train_val_split(1000, 0.2, seed=8)
    torch.testing.assert_close(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_split_rejects_a_fraction_outside_zero_one() -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(10, 1.0)


def test_splits_take_normalisation_stats_from_the_training_part_only() -> None:
    images = torch.zeros(10, 1, 2, 2, dtype=torch.uint8)
    _, val_idx = train_val_split(10, 0.2, seed=0)
    images[val_idx] = 255
    data = ImageTensors(images, torch.zeros(10, dtype=torch.long))
    splits = DatasetSplits.from_train_test("t", data, data, ("a",), split_seed=0)
    assert splits.mean == pytest.approx((0.0,))
    assert len(splits.train) == 8
    assert len(splits.val) == 2


# --------------------------------------------------------------------------- loader


def _data(n: int = 23, h: int = 6) -> ImageTensors:
    return ImageTensors(_images(n, h=h, w=h), torch.arange(n, dtype=torch.long))


def test_shuffled_loader_yields_every_image_once_per_epoch() -> None:
    data = _data()
    loader = TensorLoader(
        data,
        5,
        mean=(0.5,) * 3,
        std=(0.2,) * 3,
        augment=Augment(crop_padding=2),
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    batches = list(loader)
    assert len(batches) == len(loader) == 5
    seen = torch.cat([y for _, y in batches])
    assert sorted(seen.tolist()) == list(range(23))
    for x, y in batches:
        assert x.dtype == torch.float32
        assert x.shape == (len(y), 3, 6, 6)
        assert x.is_contiguous(memory_format=torch.channels_last)
    assert not torch.equal(seen, torch.cat([y for _, y in loader]))  # next epoch reshuffles


def test_shuffled_loader_matches_draws_from_the_same_seed() -> None:
    data = _data()
    augment = Augment(crop_padding=2)
    loader = TensorLoader(
        data,
        23,
        mean=(0.5,) * 3,
        std=(0.2,) * 3,
        augment=augment,
        shuffle=True,
        generator=torch.Generator().manual_seed(5),
    )
    ((x, y),) = list(loader)
    g = torch.Generator().manual_seed(5)
    order = torch.randperm(23, generator=g)
    offsets, flips = draw_augment(23, augment, g)
    expected = _reference_crop_flip(data.images[order], offsets, flips, 2)
    torch.testing.assert_close(y, order)
    torch.testing.assert_close(x, normalize(expected, (0.5,) * 3, (0.2,) * 3))


def test_evaluation_loader_returns_the_images_in_order() -> None:
    data = _data()
    loader = TensorLoader(data, 10, mean=(0.5,) * 3, std=(0.2,) * 3)
    x = torch.cat([x for x, _ in loader])
    torch.testing.assert_close(x, normalize(data.images, (0.5,) * 3, (0.2,) * 3))


def test_loader_requires_a_generator_to_shuffle() -> None:
    with pytest.raises(ValueError, match="generator"):
        TensorLoader(_data(), 4, mean=(0.5,) * 3, std=(0.2,) * 3, shuffle=True)


class _ConstantClass(nn.Module):
    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 4) + self.dummy
        logits[:, self.k] = 1.0
        return logits


def test_evaluate_counts_correct_predictions_and_restores_training_mode() -> None:
    labels = torch.tensor([0, 1, 1, 2, 1, 3, 1], dtype=torch.long)
    data = ImageTensors(_images(7), labels)
    model = _ConstantClass(1).train()
    result = evaluate(model, data, mean=(0.5,) * 3, std=(0.2,) * 3, batch_size=3)
    assert result.accuracy == pytest.approx(4 / 7)
    expected_loss = F.cross_entropy(model(torch.zeros(7, 3, 1, 1)), labels).item()
    assert result.loss == pytest.approx(expected_loss, rel=1e-6)
    assert model.training


# --------------------------------------------------------------------------- sources


def _write_image_folder(root: Path, classes: dict[str, int], size: int = 4) -> dict[str, list]:
    from PIL import Image

    written: dict[str, list] = {}
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        written[split] = []
        for label, (name, count) in enumerate(sorted(classes.items())):
            (root / split / name).mkdir(parents=True)
            for k in range(count):
                array = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(array).save(root / split / name / f"{k:03d}.png")
                written[split].append((array, label))
    return written


def test_image_folder_loads_exact_pixels_with_sorted_class_labels(tmp_path: Path) -> None:
    written = _write_image_folder(tmp_path / "data", {"dog": 2, "cat": 3})
    train, test, classes = load_image_folder(tmp_path / "data")
    assert classes == ("cat", "dog")
    assert train.images.shape == (5, 3, 4, 4)
    assert len(test) == 5
    for k, (array, label) in enumerate(written["train"]):
        torch.testing.assert_close(train.images[k], torch.from_numpy(array).permute(2, 0, 1))
        assert train.labels[k].item() == label


def test_image_folder_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="train"):
        load_image_folder(tmp_path / "missing")
    _write_image_folder(tmp_path / "data", {"a": 1})
    (tmp_path / "data" / "test" / "extra").mkdir()
    (tmp_path / "data" / "test" / "a" / "000.png").rename(
        tmp_path / "data" / "test" / "extra" / "x.png"
    )
    with pytest.raises(ValueError, match="same class folders"):
        load_image_folder(tmp_path / "data")


def _write_cifar(root: Path, per_batch: int = 2) -> tuple[np.ndarray, list[int]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    all_rows, all_labels = [], []
    names = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
    for name in names:
        rows = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rows, "labels": labels, "batch_label": name}, f)
        all_rows.append(rows)
        all_labels.extend(labels)
    classes = ["airplane", "automobile", "bird", "cat", "deer"]
    classes += ["dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": classes, "num_cases_per_batch": per_batch}, f)
    return np.concatenate(all_rows), all_labels


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_cifar10_loader_reads_the_official_python_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchvision.datasets import CIFAR10

    rows, labels = _write_cifar(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    # torchvision checks the official md5 sums; point them at our tiny files instead.
    monkeypatch.setattr(
        CIFAR10,
        "train_list",
        [[f"data_batch_{k}", _md5(folder / f"data_batch_{k}")] for k in range(1, 6)],
    )
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", _md5(folder / "test_batch")]])
    monkeypatch.setattr(
        CIFAR10,
        "meta",
        {"filename": "batches.meta", "key": "label_names", "md5": _md5(folder / "batches.meta")},
    )
    train, test, classes = load_cifar10(tmp_path, download=False)
    assert train.images.shape == (10, 3, 32, 32)
    assert test.images.shape == (2, 3, 32, 32)
    assert classes[0] == "airplane"
    # Official layout: each row is the R plane, then G, then B, each 32x32 row-major.
    expected = torch.from_numpy(rows[:10].reshape(10, 3, 32, 32))
    torch.testing.assert_close(train.images, expected)
    assert train.labels.tolist() == labels[:10]
    assert test.labels.tolist() == labels[10:]


def test_cifar10_missing_without_download_says_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="--dataset imagefolder"):
        load_cifar10(tmp_path, download=False)


def test_digits_are_single_channel_rescaled_to_uint8_and_upsample_by_repetition() -> None:
    pytest.importorskip("sklearn")
    train, test, classes = load_digits()
    assert len(train) + len(test) == 1797
    assert train.images.shape[1:] == (1, 8, 8)
    assert int(train.images.max()) == 255
    assert classes == tuple(str(d) for d in range(10))
    assert set(test.labels.tolist()) == set(range(10))
    big, _, _ = load_digits(upsample=2)
    assert big.images.shape[1:] == (1, 16, 16)
    torch.testing.assert_close(big.images[:, :, ::2, ::2], train.images)
    torch.testing.assert_close(big.images[:, :, 1::2, 1::2], train.images)


def test_synthetic_task_is_seeded_and_separable_by_class_means() -> None:
    train, test, _ = make_synthetic(400, 200, image_size=8, seed=3)
    again, _, _ = make_synthetic(400, 200, image_size=8, seed=3)
    torch.testing.assert_close(train.images, again.images)
    x_train, x_test = train.images.flatten(1).float(), test.images.flatten(1).float()
    means = torch.stack([x_train[train.labels == k].mean(0) for k in range(10)])
    predicted = torch.cdist(x_test, means).argmin(1)
    assert (predicted == test.labels).double().mean() > 0.8  # chance is 0.1
    assert torch.bincount(train.labels).tolist() == [40] * 10


def test_load_dataset_splits_and_rejects_unknown_names(tmp_path: Path) -> None:
    splits = load_dataset("synthetic", synthetic_size=(100, 30), split_seed=1)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (80, 20, 30)
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (10, 3, 32)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="data_dir is required"):
        load_dataset("imagefolder")


# --------------------------------------------------------------------------- what each dataset uses


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cifar10", Augment(crop_padding=4, flip=True, flip_probability=0.5)),
        ("imagefolder", Augment(crop_padding=4, flip=True, flip_probability=0.5)),
        ("synthetic", Augment(crop_padding=4, flip=True, flip_probability=0.5)),
        ("digits", Augment(crop_padding=2, flip=False)),
    ],
)
def test_each_dataset_uses_its_documented_augmentation(
    name: str, expected: Augment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CIFAR-style data: crop with 4 px padding and a fair coin flip; digits: no mirror."""
    import benchmarks.grow_cifar.data.sources as sources

    tiny = ImageTensors(_images(10, h=8, w=8), torch.arange(10) % 2)
    monkeypatch.setattr(sources, "load_cifar10", lambda *a, **k: (tiny, tiny, ("a", "b")))
    data_dir = None
    if name == "imagefolder":
        _write_image_folder(tmp_path / "data", {"a": 3, "b": 2})
        data_dir = tmp_path / "data"
    elif name == "cifar10":
        data_dir = tmp_path
    if name == "digits":
        pytest.importorskip("sklearn")
    splits = load_dataset(name, data_dir, synthetic_size=(20, 10))
    assert splits.augment == expected


def test_digest_identifies_content_and_order() -> None:
    data = ImageTensors(_images(6), torch.arange(6))
    again = ImageTensors(data.images.clone(), data.labels.clone())
    assert data.digest() == again.digest()
    assert len(data.digest()) == 16
    assert data.subset(torch.tensor([1, 0, 2, 3, 4, 5])).digest() != data.digest()
    relabelled = ImageTensors(data.images, data.labels.flip(0))
    assert relabelled.digest() != data.digest()
    pixel = data.images.clone()
    pixel[0, 0, 0, 0] ^= 1
    assert ImageTensors(pixel, data.labels).digest() != data.digest()
