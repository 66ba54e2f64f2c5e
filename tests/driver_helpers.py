"""The benchmark driver loaded as a module, and its smoke sweeps, shared by the driver tests."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import torch

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported once per process (as ``name``)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_driver() -> ModuleType:
    """``benchmarks/cifar_vgg.py`` imported once per process (as ``cifar_vgg``)."""
    return load_benchmark("cifar_vgg")


def run_preset(preset: str, out: Path) -> Path:
    """Run ``--preset preset --out out`` through the driver's ``main``; restore torch's threads."""
    threads = torch.get_num_threads()
    try:
        status = load_driver().main(["--preset", preset, "--out", str(out)])
    finally:
        torch.set_num_threads(threads)  # the driver sizes torch's thread pool for its runs
    if status != 0:
        raise RuntimeError(f"the driver exited with {status} on --preset {preset}")
    return out


def run_records(out: Path) -> dict[str, dict]:
    """The finished run records of a sweep, by run id."""
    return {p.stem: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}
