"""Epoch checkpoints of ``benchmarks/cifar_vgg.py`` runs: capture, atomic files, resume checks."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from netsurgeon import Grower

from .data import TensorLoader
from .records import SweepError, check_config, run_record

__all__ = [
    "FORMAT",
    "Training",
    "capture",
    "checkpoint_record",
    "load_checkpoint",
    "progress_record",
    "restore_training",
    "save_checkpoint",
]

FORMAT = 1  # bump when the layout below changes; older files are then refused


@dataclass
class Training:
    """What trains one run and goes into its checkpoint together."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    loader: TensorLoader
    grower: Grower | None  # None for a static run


def capture(training: Training, run: dict[str, Any]) -> dict[str, Any]:
    """The training state at an epoch boundary; ``run`` holds the driver's own bookkeeping
    (``run_id``, ``config``, ``data``, ``epochs``, ``events``, ``segment_starts``)."""
    grower = training.grower
    return {
        "format": FORMAT,
        **run,
        "model": training.model.state_dict(),
        "optimizer": training.optimizer.state_dict(),
        "schedule": training.schedule.state_dict(),
        "grower": grower.state_dict() if grower is not None else None,
        "loader_rng": training.loader.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
    }


def restore_training(state: dict[str, Any], training: Training) -> None:
    """Load the optimizer, schedule, Grower and RNG states of ``state`` (the model is loaded
    before ``training.grower`` is made, which hooks its layers)."""
    training.optimizer.load_state_dict(state["optimizer"])
    training.schedule.load_state_dict(state["schedule"])
    if (training.grower is None) != (state["grower"] is None):
        raise SweepError("a checkpoint of a grown run was offered to a static one (or back)")
    if training.grower is not None:
        training.grower.load_state_dict(state["grower"])
    training.loader.generator.set_state(state["loader_rng"])
    torch.set_rng_state(state["torch_rng"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: the file appears only complete, so a kill mid-write keeps the last one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, cfg: Any, data: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or None when there is none.

    Args:
        path: ``OUT/checkpoints/<run_id>.pt``.
        cfg: the sweep's config dataclass (``BenchConfig``).
        data: ``records.data_record`` of the data this process loaded.

    Raises:
        SweepError: the checkpoint has another format, was made with other settings (each
            difference named) or on other data.
    """
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != FORMAT:
        raise SweepError(
            f"{path} has checkpoint format {state.get('format')!r}, this driver writes {FORMAT}; "
            "delete the file to restart that run from epoch 1, or use the driver that wrote it."
        )
    check_config(path, state["config"], cfg)
    if state["data"] != data:
        differ = sorted(
            k for k in data.keys() | state["data"].keys() if state["data"].get(k) != data.get(k)
        )
        raise SweepError(
            f"{path} was trained on other data than this sweep loaded (differs in {differ}); "
            "resume with the same dataset copy and split, or pass a fresh --out."
        )
    return state


def checkpoint_record(path: Path) -> dict[str, Any]:
    """The record of a run still training, read from its checkpoint: a progress snapshot."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved = {k: state[k] for k in ("epochs", "events", "segment_starts", "config", "data")}
    stop_reason = (state.get("grower") or {}).get("stop_reason")
    record = run_record(state["run_id"], **saved, stop_reason=stop_reason, environment=None)
    return {**record, "partial": True}


def progress_record(out: Path, run_id: str) -> dict[str, Any] | None:
    """A run still training under ``out``: its progress snapshot, else its checkpoint's record."""
    snapshot, checkpoint = out / "progress" / f"{run_id}.json", out / "checkpoints" / f"{run_id}.pt"
    if snapshot.is_file():
        return json.loads(snapshot.read_text())
    return checkpoint_record(checkpoint) if checkpoint.is_file() else None
