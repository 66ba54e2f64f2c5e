"""One run of the sweep, under the paper's protocol: one task for any launcher."""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import netsurgeon
from netsurgeon import Grower
from netsurgeon.models import vgg

from . import checkpoints as _checkpoints
from .arch import ARCHS
from .checkpoints import Training, load_checkpoint, save_checkpoint
from .config import BenchConfig, Widths, as_widths, default_data_dir
from .data import DatasetSplits, TensorLoader, evaluate, load_dataset
from .environment import environment
from .records import config_dict, data_record, load_record, make_run_id, run_record, write_json

__all__ = [
    "RunSpec",
    "RunStopped",
    "load_data",
    "load_done",
    "prepare",
    "run_task",
    "stopped_widths",
    "train_run",
]


class RunStopped(Exception):
    """A run checkpointed and stopped at its time limit; the next invocation resumes it."""


@functools.lru_cache(maxsize=1)  # one dataset per process (worker processes each load once)
def load_data(cfg: BenchConfig) -> DatasetSplits:
    """The dataset of ``cfg`` on its device, with the seeded hold-out and optional subsets."""
    splits = load_dataset(
        cfg.dataset,
        default_data_dir(cfg),
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
    """The training batches of one run: the dataset's own augmentation, seeded by the run."""
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


def _clock(device: torch.device) -> tuple[float, float]:
    """Wall and process CPU time, read after the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter(), time.process_time()


def _build(spec: RunSpec, cfg: BenchConfig, data: DatasetSplits, state: dict | None) -> Training:
    """The run's model, optimizer, schedule, batches and Grower; restored from ``state`` if any."""
    device = torch.device(cfg.device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(spec.seed)  # parameter init only; the global RNG is restored after
        shape = (data.num_classes, data.in_channels, data.image_size)
        model = ARCHS[cfg.arch].build(spec.widths, *shape, hidden=cfg.hidden, device=device)
    example = torch.zeros(2, data.in_channels, data.image_size, data.image_size, device=device)
    if state is not None:  # the initial model, widened to the checkpoint's widths
        netsurgeon.load_state_dict(model, state["model"], example_inputs=example)
    model = model.to(memory_format=ARCHS[cfg.arch].memory_format(device))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loader = train_loader(data, cfg, spec.seed)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.epochs * len(loader))
    grower = None
    if spec.where is not None:  # after the restore: its monitor hooks the grown layers
        growth = replace(cfg.growth, where=spec.where, seed=spec.seed)
        grower = Grower(model, optimizer, growth, example_inputs=example)
    parts = Training(model, optimizer, schedule, loader, grower)
    if state is not None:
        _checkpoints.restore_training(state, parts)
    return parts


def _train_epoch(parts: Training, cfg: BenchConfig) -> torch.Tensor:
    """One pass over the training batches; the summed loss, on the device."""
    parts.model.train()
    loss_sum = torch.zeros((), device=cfg.device)
    for x, y in parts.loader:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=cfg.amp):
            loss = F.cross_entropy(parts.model(x), y)
        parts.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        parts.optimizer.step()
        parts.schedule.step()
        loss_sum += loss.detach() * y.shape[0]
    return loss_sum


def _accuracies(model: torch.nn.Module, data: DatasetSplits, cfg: BenchConfig) -> dict[str, float]:
    """Validation and test accuracy, in [0, 1]."""
    options = {
        "batch_size": cfg.eval_batch_size,
        "autocast_dtype": torch.bfloat16 if cfg.amp else None,
        "memory_format": ARCHS[cfg.arch].memory_format(torch.device(cfg.device)),
    }
    return {
        name: evaluate(model, part, mean=data.mean, std=data.std, **options).accuracy
        for name, part in (("val", data.val), ("test", data.test))
    }


def _epoch(
    parts: Training, cfg: BenchConfig, data: DatasetSplits, epoch: int, before: dict
) -> tuple[dict, Any, float]:
    """Train, evaluate, maybe grow: the epoch's record, its growth event or None, its seconds.

    The training time counts the training batches and the growth step, added to ``before``'s.
    """
    device = torch.device(cfg.device)
    t0 = _clock(device)
    loss_sum = _train_epoch(parts, cfg)
    t1 = _clock(device)
    acc = _accuracies(parts.model, data, cfg)
    t2 = _clock(device)
    event = parts.grower.step(acc["val"]) if parts.grower is not None else None
    if event is not None:  # new weights arrive contiguous
        parts.model.to(memory_format=ARCHS[cfg.arch].memory_format(device))
    t3 = _clock(device)
    record = {
        "epoch": epoch,
        "train_loss": loss_sum.item() / len(data.train),
        "val_acc": acc["val"],
        "test_acc": acc["test"],
        # the CPU time is robust to other load on a shared CPU
        "train_time_s": before["train_time_s"] + (t1[0] - t0[0]) + (t3[0] - t2[0]),
        "train_cpu_s": before["train_cpu_s"] + (t1[1] - t0[1]) + (t3[1] - t2[1]),
        "lr": parts.schedule.get_last_lr()[0],
        "widths": [list(row) for row in ARCHS[cfg.arch].widths_of(parts.model)],
        "params": sum(p.numel() for p in parts.model.parameters()),
    }
    return record, event, time.perf_counter() - t0[0]


def train_run(spec: RunSpec, cfg: BenchConfig, out: Path, *, deadline: float | None = None) -> dict:
    """Train one run under the protocol, write ``out/runs/<run_id>.json``, return its record.

    Args:
        deadline: ``time.time()`` by which the run must have stopped: when the next epoch would
            end past it, the run checkpoints and raises :class:`RunStopped`.

    Raises:
        RunStopped: the deadline came first; the checkpoint holds every epoch trained.
    """
    if deadline is not None and time.time() >= deadline:
        raise RunStopped(spec.run_id)
    data = load_data(cfg)
    device = torch.device(cfg.device)
    shared = {
        "config": config_dict(cfg),
        "data": data_record(data),
        "environment": environment(device),
    }
    checkpoint = out / "checkpoints" / f"{spec.run_id}.pt"
    state = load_checkpoint(checkpoint, cfg, shared["data"])
    parts = _build(spec, cfg, data, state)
    grower = parts.grower
    epochs, events, starts = [], [], [1]
    if state is not None:
        epochs, events = state["epochs"], state["events"]
        starts = [*state["segment_starts"], len(epochs) + 1]
    try:
        for epoch in range(len(epochs) + 1, cfg.epochs + 1):
            before = epochs[-1] if epochs else {"train_time_s": 0.0, "train_cpu_s": 0.0}
            record, event, seconds = _epoch(parts, cfg, data, epoch, before)
            epochs.append(record)
            if event is not None:
                events.append(event.to_dict())
                _log_event(spec, event, record["widths"], verbose=cfg.verbose)
            if epoch == cfg.epochs:
                break
            # Stop before the deadline: the next epoch would take about as long as this one.
            stop = deadline is not None and time.time() + seconds > deadline
            partial = run_record(spec.run_id, **_so_far(grower, epochs, events, starts), **shared)
            save = stop or (cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0)
            _write_progress(out, parts, partial, checkpoint=bool(save))
            if stop:
                raise RunStopped(spec.run_id)
    finally:
        if grower is not None:
            grower.close()
    record = run_record(spec.run_id, **_so_far(grower, epochs, events, starts), **shared)
    write_json(out / "runs" / f"{spec.run_id}.json", record)
    (out / "progress" / f"{spec.run_id}.json").unlink(missing_ok=True)
    checkpoint.unlink(missing_ok=True)
    return record


def _write_progress(out: Path, parts: Training, partial: dict, *, checkpoint: bool) -> None:
    """What a running sweep has so far (report, replay) and, if ``checkpoint``, the checkpoint."""
    run_id = partial["run_id"]
    write_json(out / "progress" / f"{run_id}.json", {**partial, "partial": True})
    if checkpoint:
        keys = ("run_id", "config", "data", "epochs", "events", "segment_starts")
        run = {k: partial[k] for k in keys}
        save_checkpoint(out / "checkpoints" / f"{run_id}.pt", _checkpoints.capture(parts, run))


def _so_far(grower: Grower | None, epochs: list, events: list, starts: list) -> dict[str, Any]:
    """What :func:`records.run_record` needs besides the config, data and environment."""
    stop = grower.stop_reason if grower is not None else None
    return {"epochs": epochs, "events": events, "stop_reason": stop, "segment_starts": starts}


def _log_event(spec: RunSpec, event: Any, widths: list[list[int]], *, verbose: bool) -> None:
    added = ", ".join(f"{k}+{v}" for k, v in event.increments.items())
    print(
        f"[{spec.run_id}] epoch {event.epoch}: grew ({event.where}) {added} -> {widths} "
        f"({event.params_before} -> {event.params_after} params)",
        flush=True,
    )
    if verbose:
        peak = max(event.profile.values())
        for name, value in event.profile.items():
            bar = "#" * max(1, round(30 * value / peak)) if peak > 0 else ""
            print(f"    NAGN {name:22s} {value:10.3e} {bar}", flush=True)


# ================================================================================================
# Sweep: scheduling, resume (records.py) and the command line entry point
# ================================================================================================


def load_done(spec: RunSpec, cfg: BenchConfig, out: Path) -> dict | None:
    return load_record(out / "runs" / f"{spec.run_id}.json", cfg)


def stopped_widths(spec: RunSpec, out: Path) -> Widths | None:
    """The final widths of a grown run still training whose growth has stopped, else None."""
    snapshot = _checkpoints.progress_record(out, spec.run_id)
    if snapshot is None or not snapshot["stop_reason"]:
        return None
    return as_widths(snapshot["widths_final"])


def prepare(cfg: BenchConfig) -> None:
    """Per task: share the CPU cores; once per process: load the data, pay one-time costs."""
    if torch.device(cfg.device).type == "cpu":  # share the cores instead of oversubscribing
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // cfg.jobs))
    _warm_up(cfg)


@functools.lru_cache(maxsize=1)
def _warm_up(cfg: BenchConfig) -> None:
    device = torch.device(cfg.device)
    data = load_data(cfg)
    model = vgg([[2]], data.num_classes, data.in_channels, data.image_size, device=device)
    optimizer = torch.optim.AdamW(model.parameters())  # first AdamW imports torch._dynamo (~5 s)
    x, y = next(iter(TensorLoader(data.val, 8, mean=data.mean, std=data.std)))
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    _clock(device)


def run_task(spec: RunSpec, cfg: BenchConfig, out: Path, deadline: float | None) -> dict | None:
    """One task of a sweep: ``spec``'s record, or None when it stopped at ``deadline``."""
    prepare(cfg)
    try:
        return train_run(spec, cfg, out, deadline=deadline)
    except RunStopped:
        return None
