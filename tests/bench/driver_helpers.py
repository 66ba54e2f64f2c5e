"""The benchmark package's modules under the names the driver tests use, and its smoke sweeps."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType, SimpleNamespace

import torch

from benchmarks.grow_cifar import checkpoints, config, records, sweep, train
from benchmarks.grow_cifar.analysis import compare, flops, replay, report

ROOT = Path(__file__).resolve().parents[2]
_MODULES = {
    "_records": records,
    "_flops": flops,
    "compare_sweeps": compare,
    "replay_planner": replay,
    "_report": report,
}


def load_driver() -> SimpleNamespace:
    """The sweep's public names in one namespace (patch ``train`` itself, not this namespace)."""
    names: dict[str, object] = {"_report": report, "GrowthConfig": config.GrowthConfig}
    for module in (records, checkpoints, config, train, sweep):
        names.update({k: v for k, v in vars(module).items() if not k.startswith("__")})
    names["_as_widths"] = config.as_widths
    return SimpleNamespace(**names)


def load_benchmark(name: str) -> ModuleType | SimpleNamespace:
    """A module of the benchmark by its former script name (``cifar_vgg``: the driver)."""
    return load_driver() if name == "cifar_vgg" else _MODULES[name]


def run_preset(preset: str, out: Path, *extra: str) -> Path:
    """Run ``--preset preset --out out`` through the sweep's ``main``; restore torch's threads."""
    threads = torch.get_num_threads()
    try:
        status = sweep.main(["--preset", preset, "--out", str(out), *extra])
    finally:
        torch.set_num_threads(threads)  # the driver sizes torch's thread pool for its runs
    if status != 0:
        raise RuntimeError(f"the driver exited with {status} on --preset {preset}")
    return out


def run_records(out: Path) -> dict[str, dict]:
    """The finished run records of a sweep, by run id."""
    return {p.stem: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}
