"""Is the tensor data pipeline fast enough to disappear behind training? (CPU benchmark.)

Claim (issue 6, "Fast"): the benchmark pipeline's ``TensorLoader`` (uint8 tensors, batched crop+flip
as one row gather, one normalisation pass, channels_last) delivers >= 10x the images/s of a
torchvision ``DataLoader`` with the usual per-image transforms (RandomCrop(32, 4),
RandomHorizontalFlip, ToTensor, Normalize) over the same images, and costs <= 5% of one
training step of ``vgg([[4], [4], [4]])`` at batch 500.

Both sides are measured in this one run, interleaved, on the same images: the CIFAR-10
ImageFolder copy when ``--data-dir`` holds one (default /tmp/cifar10-jpeg), else synthetic
images. Prints images/s of each, their ratio, and the pipeline's share of a training step.

Run: ``python benchmarks/bench_pipeline.py [--data-dir DIR] [--images 10000] [--workers 2]
[--threads 1]`` (about a minute on 2 CPU cores). On a loaded machine prefer ``--threads 1``:
multi-threaded small kernels slow down by an order of magnitude when another process holds a
core, which says nothing about either pipeline.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from grow_cifar.data import Augment, ImageTensors, TensorLoader, load_image_folder, make_synthetic
from torch.utils.data import DataLoader, Dataset

from netsurgeon.models import vgg

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class _PILDataset(Dataset):
    """In-memory PIL images with per-image torchvision transforms: the usual baseline."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: object) -> None:
        from PIL import Image

        arrays = images.permute(0, 2, 3, 1).numpy()
        self.images = [Image.fromarray(a) for a in arrays]
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[i]), self.labels[i]


def _images(data_dir: Path, n: int) -> tuple[ImageTensors, str]:
    if (data_dir / "train").is_dir():
        train, _, _ = load_image_folder(data_dir)
        return ImageTensors(train.images[:n].clone(), train.labels[:n].clone()), str(data_dir)
    train, _, _ = make_synthetic(n, 1, seed=0)
    return train, "synthetic (no ImageFolder at --data-dir)"


def _time_dataloader(loader: DataLoader) -> float:
    start = time.perf_counter()
    count = sum(x.shape[0] for x, _ in loader)
    return count / (time.perf_counter() - start)


def _time_pipeline(loader: TensorLoader, epochs: int) -> float:
    start = time.perf_counter()
    count = 0
    for _ in range(epochs):
        for x, _ in loader:
            count += x.shape[0]
    return count / (time.perf_counter() - start)


def _step_and_batch_times(data: ImageTensors, memory_format: torch.memory_format, steps: int):
    """Median seconds of one pipeline batch and one training step (interleaved), batch 500."""
    generator = torch.Generator().manual_seed(0)
    loader = TensorLoader(
        data, 500, mean=MEAN, std=STD, augment=Augment(), shuffle=True, generator=generator
    )
    model = vgg([[4], [4], [4]]).to(memory_format=memory_format)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    batch_times, step_times = [], []
    batches = iter(loader)
    for k in range(steps + 2):
        t0 = time.perf_counter()
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        t1 = time.perf_counter()
        x = x.contiguous(memory_format=memory_format)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        t2 = time.perf_counter()
        if k >= 2:  # warm-up
            batch_times.append(t1 - t0)
            step_times.append(t2 - t1)
    return statistics.median(batch_times), statistics.median(step_times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/cifar10-jpeg"))
    parser.add_argument("--images", type=int, default=10_000, help="images per DataLoader epoch")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--steps", type=int, default=12, help="training steps timed")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from torchvision import transforms

    data, source = _images(args.data_dir, args.images)
    print(
        f"# bench_pipeline: torch {torch.__version__}, {platform.processor() or platform.machine()}"
    )
    print(f"# {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads; images: {source}")
    print(f"# {len(data)} images of {tuple(data.images.shape[1:])}")

    transform = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    dataset = _PILDataset(data.images, data.labels, transform)
    torch_loader = DataLoader(
        dataset,
        batch_size=500,
        shuffle=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        generator=torch.Generator().manual_seed(0),
    )
    start = time.perf_counter()
    loader = TensorLoader(
        data,
        500,
        mean=MEAN,
        std=STD,
        augment=Augment(),
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    prep = time.perf_counter() - start

    _time_dataloader(torch_loader)  # warm-up: worker start
    _time_pipeline(loader, 1)
    torch_rates, ours_rates = [], []
    for _ in range(2):  # interleaved, so load on the machine hits both alike
        torch_rates.append(_time_dataloader(torch_loader))
        ours_rates.append(_time_pipeline(loader, 5))
    torch_rate, ours_rate = max(torch_rates), max(ours_rates)
    print(
        f"\nDataLoader (per-image PIL transforms, {args.workers} workers): {torch_rate:12,.0f} img/s"
    )
    print(f"TensorLoader (batched tensor ops, 1 process):          {ours_rate:12,.0f} img/s")
    print(f"  one-time preparation (pad + mirror copy):            {prep * 1e3:12.1f} ms")
    print(f"speed-up: {ours_rate / torch_rate:.1f}x   (target >= 10x)")

    print(
        f"\nshare of one training step of vgg([[4],[4],[4]]) at batch 500 (median of {args.steps}):"
    )
    for name, fmt in (
        ("channels_last", torch.channels_last),
        ("contiguous", torch.contiguous_format),
    ):
        batch, step = _step_and_batch_times(data, fmt, args.steps)
        share = batch / (batch + step)
        print(
            f"  model {name:13s}: batch {batch * 1e3:6.2f} ms, step {step * 1e3:7.1f} ms, "
            f"pipeline share {share:6.2%}  (target <= 5%)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
