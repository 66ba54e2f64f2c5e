#!/usr/bin/env python
"""Reproduce "Where to grow" (section 4): NAGN-grown VGGs vs static baselines on CIFAR-10.

Claim under test (paper, Fig. 2b): over twelve VGG configurations x 5 seeds, the grown network's
test accuracy over that of a static network with the grown run's final widths (trained from
scratch, same seed, same protocol) is 1.016 +- 0.020, and the training-time ratio 0.953 +- 0.075.

Protocol per run: AdamW (lr 1e-3, weight decay 1e-2), cosine annealing of the learning rate over
the whole run, stepped per batch; batch 500; random crop (padding 4) + horizontal flip; 20% of
the training set held out for validation (seeded split); each epoch: train, evaluate val and
test, ``grower.step(val_acc)``. Training time = wall time of the training batches (data pipeline
included) plus the growth steps; evaluation and one-time data preparation excluded; the device
is synchronised before every clock read.

Presets (``--preset``): paper (default), fig1, cpu (a candidate CPU stand-in for paper; it does
not track the full protocol's trajectories), quick (fast end-to-end check on real data), smoke
(tests), demo (offline digits, what ``make demo`` runs); resnet-cpu, resnet-gpu and
resnet-smoke grow CIFAR ResNets (``--arch resnet``, benchmarks/_arch.py) under the same protocol.
See docs/benchmark.md.

Example:
    python benchmarks/cifar_vgg.py --preset quick --data-dir /tmp/cifar10-jpeg
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _checkpoints
import _report
from _arch import ARCHS
from _checkpoints import load_checkpoint, save_checkpoint
from _environment import environment
from _presets import PRESETS
from _records import (
    SweepError,
    config_defaults,
    config_dict,
    data_record,
    load_record,
    make_run_id,
    parse_ints,
    parse_overrides,
    parse_widths,
    run_record,
    write_json,
)

from netsurgeon import Grower, GrowthConfig
from netsurgeon.data import (
    DATASETS,
    DatasetNotFoundError,
    DatasetSplits,
    TensorLoader,
    evaluate,
    load_dataset,
)
from netsurgeon.models import vgg

Widths = tuple[tuple[int, ...], ...]
WHERE_CHOICES = ("nagn", "uniform", "random")


# ================================================================================================
# Config
# ================================================================================================


@dataclass(frozen=True)
class BenchConfig:
    """Everything that defines a sweep; saved with every run so results can be traced back."""

    preset: str  # name of the preset the values started from
    configs: tuple[Widths, ...]  # initial widths per block, e.g. (((4,), (4,), (8,)),)
    seeds: tuple[int, ...]  # one grown run (per criterion) + its static baseline per seed
    epochs: int  # epochs per run (paper: 200)
    where: tuple[str, ...] = ("nagn",)  # growth criteria run side by side, matched budget
    arch: str = "vgg"  # model family (benchmarks/_arch.py): "vgg", or "resnet" (rows per stage)
    blocks: int = 3  # resnet: basic blocks per stage for a row that gives one width (3: ResNet-20)
    dataset: str = "cifar10"  # one of netsurgeon.data.DATASETS
    data_dir: str | None = None  # cifar10: holds cifar-10-batches-py/; imagefolder: train/, test/
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    p.add_argument("--data-dir", help="dataset folder (cifar10 / imagefolder)")
    p.add_argument("--dataset", choices=DATASETS)
    p.add_argument(
        "--growth",
        nargs="+",
        action="extend",
        metavar="NAME=VALUE",
        help="override GrowthConfig fields, e.g. end_rule=adjacent score=damped (docs/nagn.md)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        metavar="N",
        help="write each run's checkpoint every N epochs (default 1; 0: none)",
    )
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
    for name in ("arch", "blocks"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    arch = ARCHS[values.get("arch", "vgg")]
    values["configs"] = tuple(
        arch.expand(_as_widths(c), values.get("blocks", 3)) for c in values["configs"]
    )
    for name in ("epochs", "jobs", "threads", "dataset", "data_dir", "checkpoint_every"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
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
    if cfg.blocks < 1:
        problems.append(f"--blocks must be >= 1, got {cfg.blocks}")
    if cfg.arch == "resnet" and cfg.hidden:
        problems.append(f"--arch resnet has no hidden dense layers; drop hidden={cfg.hidden}")
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
    if cfg.jobs < 1:
        problems.append(f"--jobs must be >= 1, got {cfg.jobs}")
    if cfg.checkpoint_every < 0:
        problems.append(f"--checkpoint-every must be >= 0, got {cfg.checkpoint_every}")
    if cfg.threads is not None and cfg.threads < 1:
        problems.append(f"--threads must be >= 1, got {cfg.threads}")
    try:
        device = torch.device(cfg.device)
    except RuntimeError:
        problems.append(f"--device {cfg.device!r} is not a torch device (cpu, cuda, cuda:0)")
    else:
        if device.type == "cuda" and not torch.cuda.is_available():
            problems.append("--device cuda: no CUDA device is available; use --device cpu")
        if cfg.amp and device.type != "cuda":
            problems.append("--amp needs a CUDA device (bf16 autocast is slower on CPUs)")
    if cfg.dataset == "imagefolder" and not cfg.data_dir:
        problems.append("--dataset imagefolder needs --data-dir DIR (DIR/train, DIR/test)")
    if cfg.dataset in ("digits", "synthetic") and cfg.data_dir:
        problems.append(f"--data-dir is unused by --dataset {cfg.dataset}; drop it")
    if problems:
        raise ValueError("invalid benchmark options:\n  - " + "\n  - ".join(problems))


# ================================================================================================
# Data
# ================================================================================================


@functools.lru_cache(maxsize=1)  # one dataset per process (worker processes each load once)
def load_data(cfg: BenchConfig) -> DatasetSplits:
    """The dataset of ``cfg`` on its device, with the seeded hold-out and optional subsets."""
    splits = load_dataset(
        cfg.dataset,
        cfg.data_dir or ("data" if cfg.dataset == "cifar10" else None),
        val_fraction=cfg.val_fraction,
        split_seed=cfg.split_seed,
        synthetic_size=cfg.synthetic_size,
        synthetic_image_size=cfg.synthetic_image_size,
    )
    generator = torch.Generator().manual_seed(cfg.split_seed)

    def take(part, count):
        if count is None or count >= len(part):
            return part
        return part.subset(torch.randperm(len(part), generator=generator)[:count])

    splits = replace(
        splits,
        train=take(splits.train, cfg.train_subset),
        val=take(splits.val, cfg.val_subset),
        test=take(splits.test, cfg.test_subset),
    )
    return splits.to(cfg.device)


def train_loader(data: DatasetSplits, cfg: BenchConfig, seed: int) -> TensorLoader:
    """The training batches of one run: the dataset's own augmentation, seeded by the run.

    channels_last also on CPUs: faster than NCHW for these nets (bench_pipeline); the arch
    decides (ResNets stay contiguous on CPUs, benchmarks/_arch.py).
    """
    return TensorLoader(
        data.train,
        cfg.batch_size,
        mean=data.mean,
        std=data.std,
        augment=data.augment,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        memory_format=ARCHS[cfg.arch].memory_format(torch.device(cfg.device)),
    )


# ================================================================================================
# Model and training
# ================================================================================================


@dataclass(frozen=True)
class RunSpec:
    """One training run: a grown run (``where`` set) or a static baseline (``where`` None)."""

    widths: Widths  # initial widths (grown) or the fixed widths (static)
    seed: int
    where: str | None = None

    @property
    def run_id(self) -> str:
        return make_run_id(self.where, self.widths, self.seed)


def _as_widths(widths: Sequence[Sequence[int]]) -> Widths:
    return tuple(tuple(int(w) for w in block) for block in widths)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_run(spec: RunSpec, cfg: BenchConfig, out: Path, *, progress: bool = True) -> dict:
    """Train one run under the protocol, write ``out/runs/<run_id>.json``, return its record.

    Continues from ``out/checkpoints/<run_id>.pt`` when there is one (``_checkpoints``), and
    writes that file every ``cfg.checkpoint_every`` epochs until the run is done.
    """
    from tqdm.auto import tqdm

    data = load_data(cfg)
    device = torch.device(cfg.device)
    fmt = ARCHS[cfg.arch].memory_format(device)  # channels_last unless the arch says otherwise
    shared = {
        "config": config_dict(cfg),
        "data": data_record(data),
        "environment": environment(device),
        "train_images": len(data.train),
    }
    checkpoint = out / "checkpoints" / f"{spec.run_id}.pt"
    state = load_checkpoint(
        checkpoint, shared["config"], config_defaults(BenchConfig), shared["data"]
    )
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(spec.seed)  # parameter init only; the global RNG is restored after
        model = ARCHS[cfg.arch].build(
            spec.widths, data.num_classes, data.in_channels, data.image_size, cfg.hidden, device
        )
    if state is not None:  # the initial model, widened to the checkpoint's widths
        _checkpoints.restore(state, model)
    model = model.to(memory_format=fmt)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loader = train_loader(data, cfg, spec.seed)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.epochs * len(loader))
    evals = {
        name: TensorLoader(
            part, cfg.eval_batch_size, mean=data.mean, std=data.std, memory_format=fmt
        )
        for name, part in (("val", data.val), ("test", data.test))
    }
    grower = None
    if spec.where is not None:  # after the restore: its monitor hooks the grown layers
        grower = Grower(model, optimizer, replace(cfg.growth, where=spec.where, seed=spec.seed))
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp)

    epochs, events, train_time, train_cpu, starts = [], [], 0.0, 0.0, [1]
    if state is not None:
        _checkpoints.restore_training(
            state, optimizer=optimizer, schedule=schedule, loader=loader, grower=grower
        )
        epochs, events = state["epochs"], state["events"]
        train_time, train_cpu = state["train_time_s"], state["train_cpu_s"]
        starts = [*state["segment_starts"], len(epochs) + 1]
    bar = tqdm(
        range(len(epochs) + 1, cfg.epochs + 1),
        desc=spec.run_id,
        leave=False,
        disable=not progress,
    )
    for epoch in bar:
        model.train()
        loss_sum = torch.zeros((), device=device)
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        for x, y in loader:
            with amp:
                loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.detach() * y.shape[0]
        _sync(device)
        t1, c1 = time.perf_counter(), time.process_time()
        acc = {
            name: evaluate(
                model,
                ev.data,
                mean=data.mean,
                std=data.std,
                loader=ev,
                autocast_dtype=torch.bfloat16 if cfg.amp else None,
            ).accuracy
            for name, ev in evals.items()
        }
        _sync(device)
        t2, c2 = time.perf_counter(), time.process_time()
        event = grower.step(acc["val"]) if grower is not None else None
        if event is not None:
            model.to(memory_format=fmt)  # new weights arrive contiguous
        _sync(device)
        train_time += (t1 - t0) + (time.perf_counter() - t2)
        train_cpu += (c1 - c0) + (time.process_time() - c2)  # robust to other load; CPU runs
        widths = [list(row) for row in ARCHS[cfg.arch].widths_of(model)]
        epochs.append(
            {
                "epoch": epoch,
                "train_loss": loss_sum.item() / len(data.train),
                "val_acc": acc["val"],
                "test_acc": acc["test"],
                "train_time_s": train_time,
                "train_cpu_s": train_cpu,
                "lr": schedule.get_last_lr()[0],
                "widths": widths,
                "params": sum(p.numel() for p in model.parameters()),
            }
        )
        bar.set_postfix(
            loss=f"{epochs[-1]['train_loss']:.3f}",
            val=f"{acc['val']:.3f}",
            test=f"{acc['test']:.3f}",
        )
        if event is not None:
            events.append(event.to_dict())
            _log_event(spec, event, widths, verbose=cfg.verbose)
        if epoch == cfg.epochs:
            break
        # What a running sweep has so far (report, replay_planner.py), then the checkpoint.
        partial = _snapshot(spec, model, grower, epochs, events, shared, starts)
        write_json(out / "progress" / f"{spec.run_id}.json", {**partial, "partial": True})
        if cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0:
            run = {
                "run_id": spec.run_id,
                "config": shared["config"],
                "data": shared["data"],
                "epochs": epochs,
                "events": events,
                "train_time_s": train_time,
                "train_cpu_s": train_cpu,
                "segment_starts": starts,
            }
            save_checkpoint(
                checkpoint,
                _checkpoints.capture(
                    model=model,
                    optimizer=optimizer,
                    schedule=schedule,
                    loader=loader,
                    grower=grower,
                    run=run,
                ),
            )
    if grower is not None:
        grower.close()
    record = _snapshot(spec, model, grower, epochs, events, shared, starts)
    write_json(out / "runs" / f"{spec.run_id}.json", record)
    (out / "progress" / f"{spec.run_id}.json").unlink(missing_ok=True)
    checkpoint.unlink(missing_ok=True)
    return record


def _snapshot(
    spec: RunSpec,
    model: torch.nn.Module,
    grower: Grower | None,
    epochs: list[dict],
    events: list[dict],
    shared: dict[str, Any],
    segment_starts: list[int],
) -> dict:
    """The run's record after the epochs so far (:func:`_records.run_record`)."""
    arch = ARCHS[shared["config"].get("arch", "vgg")]
    widths = [list(row) for row in arch.widths_of(model)]
    return run_record(
        run_id=spec.run_id,
        where=spec.where,
        seed=spec.seed,
        widths_initial=spec.widths,
        widths_final=widths,
        params=sum(p.numel() for p in model.parameters()),
        stop_reason=grower.stop_reason if grower is not None else None,
        baseline_run_id=RunSpec(_as_widths(widths), spec.seed).run_id if spec.where else None,
        epochs=epochs,
        events=events,
        shared=shared,
        segment_starts=segment_starts,
    )


def _log_event(spec: RunSpec, event: Any, widths: list[list[int]], *, verbose: bool) -> None:
    from tqdm.auto import tqdm

    added = ", ".join(f"{k}+{v}" for k, v in event.increments.items())
    tqdm.write(
        f"[{spec.run_id}] epoch {event.epoch}: grew ({event.where}) {added} -> {widths} "
        f"({event.params_before} -> {event.params_after} params)"
    )
    if verbose:
        peak = max(event.profile.values())
        for name, value in event.profile.items():
            bar = "#" * max(1, round(30 * value / peak)) if peak > 0 else ""
            tqdm.write(f"    NAGN {name:22s} {value:10.3e} {bar}")


# ================================================================================================
# Sweep: scheduling, resume (benchmarks/_records.py) and the command line entry point
# ================================================================================================


def _load_done(spec: RunSpec, cfg: BenchConfig, out: Path) -> dict | None:
    return load_record(
        out / "runs" / f"{spec.run_id}.json", config_dict(cfg), config_defaults(BenchConfig)
    )


def stopped_widths(spec: RunSpec, out: Path) -> Widths | None:
    """The final widths of a grown run still training whose growth has stopped, else None.

    Read from the run's progress snapshot, or (on a fresh machine, where ``progress/`` is not
    committed) from its checkpoint. A grower never grows again once stopped, so these are the
    widths of the run's static baseline, which can start before the grown run finishes.
    """
    progress = out / "progress" / f"{spec.run_id}.json"
    if progress.is_file():
        snapshot = json.loads(progress.read_text())
        return _as_widths(snapshot["widths_final"]) if snapshot.get("stop_reason") else None
    checkpoint = out / "checkpoints" / f"{spec.run_id}.pt"
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if (state.get("grower") or {}).get("stopped"):
            return _as_widths(state["epochs"][-1]["widths"])
    return None


def _worker_init(cfg: BenchConfig) -> None:
    """Per process: share the CPU cores, load the data, and pay one-time costs off the clock."""
    device = torch.device(cfg.device)
    if device.type == "cpu":  # share the cores instead of oversubscribing them
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // cfg.jobs))
    data = load_data(cfg)
    model = vgg([[2]], data.num_classes, data.in_channels, data.image_size, device=device)
    optimizer = torch.optim.AdamW(model.parameters())  # first AdamW imports torch._dynamo (~5 s)
    x, y = next(iter(TensorLoader(data.val, 8, mean=data.mean, std=data.std)))
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    _sync(device)


def _run_in_worker(spec: RunSpec, cfg: BenchConfig, out: Path) -> dict:
    return train_run(spec, cfg, out, progress=False)


def run_sweep(cfg: BenchConfig, out: Path) -> list[dict]:
    """Every grown run, then its static baseline; finished runs are read back, not repeated."""
    from tqdm.auto import tqdm

    out.mkdir(parents=True, exist_ok=True)
    grown = [RunSpec(w, s, where) for w in cfg.configs for s in cfg.seeds for where in cfg.where]
    records: dict[str, dict] = {}
    pending: list[RunSpec] = []
    for spec in grown:
        done = _load_done(spec, cfg, out)
        if done is not None:
            records[spec.run_id] = done
        else:
            pending.append(spec)

    def baseline(record: dict) -> RunSpec:
        return RunSpec(_as_widths(record["widths_final"]), record["seed"])

    early: dict[str, str] = {}  # grown run id -> its baseline, scheduled before it finished

    def early_baselines(specs: Sequence[RunSpec], known: set[str]) -> list[RunSpec]:
        """Static baselines of grown runs in ``specs`` that stopped growing, not yet ``known``."""
        found = []
        for spec in specs:
            widths = stopped_widths(spec, out) if spec.where and spec.run_id not in early else None
            static = RunSpec(widths, spec.seed) if widths is not None else None
            if static is not None and static.run_id not in known | set(records):
                early[spec.run_id] = static.run_id
                done = _load_done(static, cfg, out)
                if done is not None:
                    records[static.run_id] = done
                else:
                    found.append(static)
                    known.add(static.run_id)
        return found

    for record in list(records.values()):
        spec = baseline(record)
        if spec.run_id not in records and spec not in pending:
            done = _load_done(spec, cfg, out)
            if done is not None:
                records[spec.run_id] = done
            else:
                pending.append(spec)
    pending += early_baselines(list(pending), {s.run_id for s in pending})

    total = len(records) + len(pending) + sum(1 for s in pending if s.where) - len(early)
    bar = tqdm(total=total, desc="sweep", unit="run", initial=len(records))
    start = time.perf_counter()
    scheduled = {s.run_id for s in pending}

    def finished(record: dict) -> list[RunSpec]:
        records[record["run_id"]] = record
        bar.update(1)
        bar.set_postfix_str(f"{record['run_id']} test={record['final']['test_acc']:.3f}")
        if record["kind"] != "grown":
            return []
        spec = baseline(record)
        if early.get(record["run_id"]) == spec.run_id:
            return []  # its baseline started when it stopped growing
        if spec.run_id in records or spec.run_id in scheduled:
            bar.total -= 1  # the same static baseline serves several grown runs
            bar.refresh()
            return []
        done = _load_done(spec, cfg, out)
        if done is not None:
            records[spec.run_id] = done
            bar.update(1)
            return []
        scheduled.add(spec.run_id)
        return [spec]

    # A static baseline starts as soon as a slot frees after its grown run: both then run under
    # similar machine load, which keeps the time ratio honest on a shared machine. A slot that
    # would idle takes the baseline of a running grown run that has stopped growing (its final
    # widths are known), polled once a minute from the run's progress snapshot.
    queue = sorted(pending, key=lambda s: s.where is not None)  # statics of resumed runs first
    if cfg.jobs == 1:
        while queue:
            queue[:0] = finished(train_run(queue.pop(0), cfg, out, progress=True))
    else:
        ctx = get_context("spawn")  # CUDA and forked threads do not mix
        with ProcessPoolExecutor(
            cfg.jobs, mp_context=ctx, initializer=_worker_init, initargs=(cfg,)
        ) as pool:
            running: dict[Future, RunSpec] = {}
            while queue or running:
                if not queue and len(running) < cfg.jobs:
                    queue += early_baselines(list(running.values()), scheduled)
                while queue and len(running) < cfg.jobs:
                    spec = queue.pop(0)
                    running[pool.submit(_run_in_worker, spec, cfg, out)] = spec
                idle = len(running) < cfg.jobs and any(s.where for s in running.values())
                done, _ = wait(running, timeout=60 if idle else None, return_when=FIRST_COMPLETED)
                for future in done:
                    del running[future]
                    queue[:0] = finished(future.result())
    bar.close()
    wall = time.perf_counter() - start
    if not scheduled:  # everything was read back: keep the record of the invocation that ran
        return list(records.values())
    write_json(
        out / "sweep.json",
        {
            "config": config_dict(cfg),
            "wall_s": wall,
            "jobs": cfg.jobs,
            "ran": sorted(scheduled),
            "environment": environment(torch.device(cfg.device)),
        },
    )
    return list(records.values())


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg, out = resolve_config(argv)
    except ValueError as error:
        print(f"cifar_vgg.py: error: {error}", file=sys.stderr)
        return 2
    print(
        f"# cifar_vgg.py --preset {cfg.preset}: {len(cfg.configs)} configs x {len(cfg.seeds)} "
        f"seeds x where={','.join(cfg.where)}, {cfg.epochs} epochs, {cfg.dataset} on "
        f"{cfg.device}, jobs={cfg.jobs} -> {out}"
    )
    try:
        if cfg.jobs == 1:
            _worker_init(cfg)
        records = run_sweep(cfg, out)
    except (SweepError, DatasetNotFoundError) as error:  # also raised in worker processes
        print(f"cifar_vgg.py: error: {error}", file=sys.stderr)
        return 2
    if cfg.verbose:
        for record in sorted(records, key=lambda r: r["run_id"]):
            print(
                f"{record['run_id']:32s} widths {record['widths_initial']} -> "
                f"{record['widths_final']}, test accuracy {record['final']['test_acc']:.4f}"
            )
    summary = _report.write_report(out)
    print(summary)
    print(f"# report: {out / 'summary.md'}, figures in {out / 'figures'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
