"""The sweep's settings: :class:`BenchConfig`, the command line, and the checks."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from netsurgeon import GrowthConfig

from .arch import ARCHS, Widths, as_widths
from .data import DATASETS
from .presets import PRESETS
from .records import parse_ints, parse_overrides, parse_widths

__all__ = [
    "DATA_ENV",
    "LAUNCHERS",
    "WHERE_CHOICES",
    "BenchConfig",
    "as_widths",
    "default_data_dir",
    "resolve_config",
]

DATA_ENV = "NETSURGEON_DATA"  # environment variable naming the data folder
LAUNCHERS = ("local", "ray", "submitit")
WHERE_CHOICES = ("nagn", "uniform", "random")


@dataclass(frozen=True)
class BenchConfig:
    """Everything that defines a sweep; saved with every run so results can be traced back."""

    preset: str  # name of the preset the values started from
    configs: tuple[Widths, ...]  # initial widths per block, e.g. (((4,), (4,), (8,)),)
    seeds: tuple[int, ...]  # one grown run (per criterion) + its static baseline per seed
    epochs: int  # epochs per run (paper: 200)
    where: tuple[str, ...] = ("nagn",)  # growth criteria run side by side, matched budget
    arch: str = "vgg"  # model family (arch.py): "vgg", "resnet" (row per stage), "vit" (per block)
    blocks: int = 3  # resnet: basic blocks per stage for a row that gives one width (3: ResNet-20)
    dataset: str = "cifar10"  # one of data.DATASETS
    data_dir: str | None = None  # cifar10: holds cifar-10-batches-py/; imagefolder: train/, test/
    # (None: $NETSURGEON_DATA, else ./data; a machine path, so not part of a run's identity)
    device: str = "cpu"  # torch device of data and model
    amp: bool = False  # bf16 autocast (CUDA only)
    jobs: int = 1  # runs in parallel (processes; on a GPU they share the device)
    threads: int | None = None  # torch CPU threads per process (None: CPU cores // jobs)
    batch_size: int = 500  # images per training step (paper: 500)
    lr: float = 1e-3  # AdamW peak learning rate, cosine-annealed per step to 0
    weight_decay: float = 1e-2  # AdamW decoupled weight decay
    val_fraction: float = 0.2  # share of the training set held out for validation
    split_seed: int = 0  # seed of that hold-out and of the subsets below (same for all runs)
    train_subset: int | None = None  # train on this many images of the training part (None: all)
    val_subset: int | None = None  # validate on this many held-out images (None: all)
    test_subset: int | None = None  # test on this many test images (None: all)
    synthetic_size: tuple[int, int] = (2000, 500)  # (train, test) images of --dataset synthetic
    synthetic_image_size: int = 32  # pixels per side of --dataset synthetic
    hidden: tuple[int, ...] = ()  # hidden dense widths of the classifier (paper: none stated)
    eval_batch_size: int = 2000  # images per evaluation batch (inference_mode)
    growth: GrowthConfig = field(default_factory=GrowthConfig)  # paper's growth rules
    verbose: bool = False  # print NAGN profiles and growth events as they happen
    checkpoint_every: int = 1  # epochs between a run's checkpoints (0: none); never shapes results
    launcher: str = "local"  # who runs the tasks: local processes, a Ray cluster, SLURM (submitit)
    ray_address: str | None = None  # ray.init(address=...); None: a local Ray cluster
    gpus_per_run: float = 0.0  # ray / submitit: GPUs reserved per run (fractions share a device)
    slurm_partition: str | None = None  # submitit: SLURM partition (None: the cluster's default)
    slurm_minutes: int = 720  # submitit: time limit of each run's job, minutes
    time_limit_s: float | None = None  # stop every run cleanly (checkpointed) after this long


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    p.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    p.add_argument("--arch", choices=sorted(ARCHS), help="model family (default: the preset's)")
    p.add_argument("--blocks", type=int, help="resnet: blocks per stage (default 3)")
    p.add_argument("--configs", nargs="+", metavar="SPEC", help="e.g. 4/4/8 '[[8,3,8],[16]]'")
    p.add_argument("--seeds", metavar="LIST", help="e.g. 0,1,2 or 0-4")
    p.add_argument("--epochs", type=int)
    p.add_argument("--where", metavar="LIST", help="comma list of nagn,uniform,random")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    p.add_argument("--jobs", type=int, help="runs in parallel (processes)")
    p.add_argument("--threads", type=int, help="torch CPU threads per run (default cores // jobs)")
    p.add_argument("--out", type=Path, help="output folder (default runs/<preset>)")
    p.add_argument(
        "--data-dir", help=f"dataset folder (cifar10 / imagefolder; default ${DATA_ENV} or ./data)"
    )
    p.add_argument("--launcher", choices=LAUNCHERS, help="who runs the sweep's tasks")
    p.add_argument("--ray-address", help="Ray cluster address (default: a local cluster)")
    p.add_argument("--gpus-per-run", type=float, help="ray/submitit: GPUs per run (e.g. 0.25)")
    p.add_argument("--slurm-partition", help="submitit: SLURM partition")
    p.add_argument("--slurm-minutes", type=int, help="submitit: time limit per job (minutes)")
    limit = "checkpoint every run and stop cleanly after SECONDS; the next call resumes"
    p.add_argument("--time-limit", type=float, dest="time_limit_s", metavar="SECONDS", help=limit)
    p.add_argument("--dataset", choices=DATASETS)
    overrides = "override GrowthConfig fields, e.g. end_rule=adjacent score=damped (docs/nagn.md)"
    p.add_argument("--growth", nargs="+", action="extend", metavar="NAME=VALUE", help=overrides)
    every = "write each run's checkpoint every N epochs (default 1; 0: none)"
    p.add_argument("--checkpoint-every", type=int, metavar="N", help=every)
    return p


def resolve_config(argv: Sequence[str] | None = None) -> tuple[BenchConfig, Path]:
    """Parse the command line into a checked :class:`BenchConfig` and the output folder.

    Raises:
        SystemExit: (via argparse) unknown options; ``ValueError`` for inconsistent ones.
    """
    args = _parser().parse_args(argv)
    values: dict[str, Any] = dict(PRESETS[args.preset])
    if args.configs:
        values["configs"] = tuple(parse_widths(c) for c in args.configs)
    if args.seeds is not None:
        values["seeds"] = parse_ints(args.seeds, "--seeds")
    if args.where is not None:
        values["where"] = tuple(w.strip() for w in args.where.split(",") if w.strip())
    if args.dataset is not None and args.dataset != values.get("dataset", "cifar10"):
        values.pop("data_dir", None)  # the preset's folder belongs to the preset's dataset
    for name in (
        *("arch", "blocks", "epochs", "jobs", "threads", "dataset", "data_dir", "launcher"),
        *("checkpoint_every", "ray_address", "gpus_per_run", "slurm_partition", "slurm_minutes"),
        "time_limit_s",
    ):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    arch = ARCHS[values.get("arch", "vgg")]
    values["configs"] = tuple(
        arch.expand(as_widths(c), values.get("blocks", 3)) for c in values["configs"]
    )
    if args.growth:
        # ``where`` and ``seed`` are per run (--where, --seeds), set when each grower is made.
        fields = [
            f.name for f in dataclasses.fields(GrowthConfig) if f.name not in ("where", "seed")
        ]
        overrides = parse_overrides(args.growth, fields, "--growth")
        values["growth"] = replace(values.get("growth", GrowthConfig()), **overrides)
    values["amp"] = args.amp
    values["device"] = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = BenchConfig(preset=args.preset, **values)
    _check(cfg)
    return cfg, args.out or Path("runs") / args.preset


def _check(cfg: BenchConfig) -> None:
    """Reject inconsistent settings with what failed and how to fix it."""
    problems = []
    if not cfg.configs:
        problems.append("--configs: at least one width spec is needed")
    minimum = {"--blocks": (cfg.blocks, 1), "--jobs": (cfg.jobs, 1), "--threads": (cfg.threads, 1)}
    minimum |= {
        "--checkpoint-every": (cfg.checkpoint_every, 0),
        "--gpus-per-run": (cfg.gpus_per_run, 0),
    }
    for option, (value, low) in minimum.items():
        if value is not None and value < low:
            problems.append(f"{option} must be >= {low}, got {value}")
    if cfg.arch != "vgg" and cfg.hidden:
        problems.append(f"--arch {cfg.arch} has no hidden dense layers; drop hidden={cfg.hidden}")
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        problems.append(f"--seeds: need distinct seeds, got {list(cfg.seeds)}")
    if cfg.epochs < 1:
        problems.append(f"--epochs must be >= 1, got {cfg.epochs}")
    elif cfg.epochs <= 2 * cfg.growth.w_acc:
        problems.append(
            f"--epochs {cfg.epochs}: growth needs two windows of w_acc={cfg.growth.w_acc} epochs "
            f"before it can trigger; use --epochs > {2 * cfg.growth.w_acc}"
        )
    bad = [w for w in cfg.where if w not in WHERE_CHOICES]
    if bad or not cfg.where or len(set(cfg.where)) != len(cfg.where):
        problems.append(f"--where {','.join(cfg.where)}: use distinct names from {WHERE_CHOICES}")
    try:
        device = torch.device(cfg.device)
    except RuntimeError:
        problems.append(f"--device {cfg.device!r} is not a torch device (cpu, cuda, cuda:0)")
    else:
        if device.type == "cuda" and not torch.cuda.is_available():
            problems.append("--device cuda: no CUDA device is available; use --device cpu")
        if cfg.amp and device.type != "cuda":
            problems.append("--amp needs a CUDA device (bf16 autocast is slower on CPUs)")
    if cfg.time_limit_s is not None and cfg.time_limit_s <= 0:
        problems.append(f"--time-limit must be > 0 seconds, got {cfg.time_limit_s}")
    if cfg.dataset in ("digits", "synthetic") and cfg.data_dir:
        problems.append(f"--data-dir is unused by --dataset {cfg.dataset}; drop it")
    if problems:
        raise ValueError("invalid benchmark options:\n  - " + "\n  - ".join(problems))


def default_data_dir(cfg: BenchConfig) -> str | None:
    """The data folder: ``cfg.data_dir``, else ``$NETSURGEON_DATA``, else ``./data``."""
    if cfg.dataset in ("digits", "synthetic"):
        return None
    return cfg.data_dir or os.environ.get(DATA_ENV) or "data"
