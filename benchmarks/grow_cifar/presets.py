"""Named presets of the sweep: values that override ``BenchConfig`` defaults."""

from __future__ import annotations

from typing import Any

from netsurgeon import GrowthConfig
from netsurgeon.models import FIG1_WIDTHS, PAPER_WIDTHS

__all__ = ["FIG2A_WIDTHS", "PRESETS"]

FIG2A_WIDTHS: tuple[tuple[int, ...], ...] = ((2, 2, 2), (4, 4, 4), (8, 8, 8))  # paper, Fig. 2a

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"configs": PAPER_WIDTHS, "seeds": (0, 1, 2, 3, 4), "epochs": 200},
    "fig1": {"configs": (FIG1_WIDTHS,), "seeds": (0, 1, 2, 3, 4), "epochs": 200},
    # CPU-sized (docs/benchmark.md): 10k of the 40k training images, 5k of the 10k held out for
    # validation, 5k of the 10k test images, 40 epochs instead of 200; growth rules unchanged.
    "quick": {
        "configs": (((4,), (4,), (4,)), ((4,), (4,), (8,)), ((8,), (8,), (8,))),
        "seeds": (0, 1),
        "epochs": 40,
        "where": ("nagn", "uniform"),
        "dataset": "imagefolder",
        "jobs": 2,
        "train_subset": 10_000,
        "val_subset": 5_000,
        "test_subset": 5_000,
    },
    # The three criteria on a CPU, 80 steps per epoch as in the paper; it does not predict the
    # full protocol (benchmarks/results/cpu-fig2a/README.md).
    "cpu": {
        "configs": (FIG2A_WIDTHS,),
        "seeds": (0, 1, 2),
        "epochs": 60,
        "where": ("nagn", "uniform", "random"),
        "dataset": "imagefolder",
        "jobs": 2,
        "batch_size": 125,
        "train_subset": 10_000,
        "test_subset": 5_000,
        "eval_batch_size": 500,  # CPU: 20-30 % faster evaluation than 2000 (docs/benchmark.md)
    },
    # Seconds: synthetic images, a growth trigger forced at epoch 2 (any gain is "too small").
    "smoke": {
        "configs": (((2,), (2,), (4,)),),
        "seeds": (0,),
        "epochs": 4,
        "where": ("nagn", "uniform"),
        "dataset": "synthetic",
        "synthetic_size": (400, 100),
        "synthetic_image_size": 16,
        "batch_size": 100,
        "growth": GrowthConfig(w_acc=1, delta_acc=1e6, every=1),
    },
    # The full 200-epoch protocol on a GPU, three ResNet-20 starts, five seeds.
    "resnet-gpu": {
        "arch": "resnet",
        "configs": (((4,), (8,), (16,)), ((8,), (16,), (32,)), ((16,), (32,), (64,))),
        "seeds": (0, 1, 2, 3, 4),
        "epochs": 200,
        "where": ("nagn", "uniform", "random"),
    },
    # Offline demo on scikit-learn's digits (8x8, shown at 16x16), about a minute on a CPU.
    "demo": {
        "configs": (((4,), (2,), (8,)),),
        "seeds": (0, 1),
        "epochs": 40,
        "dataset": "digits",
        "batch_size": 64,
        "jobs": 2,
        "growth": GrowthConfig(w_acc=2),
        "verbose": True,
    },
}
# A quarter-width ResNet-20 under the "cpu" protocol (results/resnet-cpu); evaluation in batches
# of 250: NCHW ResNets evaluate 2.5x slower in batches of 2000 on CPUs.
PRESETS["resnet-cpu"] = {
    **PRESETS["cpu"],
    "arch": "resnet",
    "configs": (((4,), (8,), (16,)),),
    "seeds": (0,),
    "eval_batch_size": 250,
}
# Seconds: a ResNet-8 on synthetic images, a trigger forced at epoch 2.
PRESETS["resnet-smoke"] = {**PRESETS["smoke"], "arch": "resnet", "blocks": 1}
# A 4-block ViT (stream 16, one head of 16, MLP 32) under the "cpu" protocol (results/vit-cpu).
PRESETS["vit-cpu"] = dict(PRESETS["cpu"], arch="vit", configs=(((16, 16, 32),),), blocks=4)
PRESETS["vit-cpu"].update(seeds=(0, 1), epochs=30, eval_batch_size=250)
PRESETS["vit-cpu"]["growth"] = GrowthConfig(delta_acc=0.04, budget_match="params")
