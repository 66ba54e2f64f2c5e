"""Run records of ``benchmarks/cifar_vgg.py``: JSON files, resume checks, and CLI list parsing.

A run's JSON is written atomically once the run finished, so its presence means "done". A saved
run is reused only when the settings that shape its result (everything but scheduling: jobs,
threads, which configs/seeds/criteria the sweep lists, preset name, verbosity) are equal.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = [
    "SweepError",
    "config_dict",
    "load_record",
    "parse_ints",
    "parse_widths",
    "write_json",
]

Widths = tuple[tuple[int, ...], ...]
_SCHEDULING = ("jobs", "threads", "configs", "seeds", "where", "preset", "verbose")


class SweepError(ValueError):
    """The sweep cannot proceed as asked (e.g. resuming into an --out made with other settings)."""


def parse_widths(text: str) -> Widths:
    """``"[[4],[4],[8]]"`` or the compact ``"4/4/8"``, ``"8,3,8/16,4,16/32,4,32"`` -> tuples."""
    try:
        if text.strip().startswith("["):
            value = ast.literal_eval(text)
        else:
            value = [[int(w) for w in block.split(",")] for block in text.split("/")]
        widths = tuple(tuple(int(w) for w in block) for block in value)
        if not widths or any(not block or min(block) < 1 for block in widths):
            raise ValueError
    except (ValueError, SyntaxError, TypeError):
        raise ValueError(
            f"--configs: cannot read {text!r}; write one config as [[4],[4],[8]] or 4/4/8 "
            "(blocks separated by '/', convs in a block by ',', all widths positive ints)."
        ) from None
    return widths


def parse_ints(text: str, option: str) -> tuple[int, ...]:
    """``"0,1,2"`` or ``"0-4"`` -> a tuple of ints."""
    try:
        if "-" in text.strip("-"):
            lo, hi = text.split("-")
            return tuple(range(int(lo), int(hi) + 1))
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{option}: cannot read {text!r}; write 0,1,2 or 0-4.") from None


def _finite(value: Any) -> Any:
    """Non-finite floats -> None, tuples -> lists (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def config_dict(cfg: Any) -> dict[str, Any]:
    """A frozen config dataclass as plain JSON-ready data."""
    return _finite(dataclasses.asdict(cfg))


def write_json(path: Path, record: dict) -> None:
    """Write atomically: the file appears only complete (parallel jobs, interrupted sweeps)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(_finite(record), indent=1, allow_nan=False))
    os.replace(tmp, path)


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    config = json.loads(json.dumps(_finite(config)))
    return {k: v for k, v in config.items() if k not in _SCHEDULING}


def load_record(path: Path, config: dict[str, Any]) -> dict | None:
    """The finished run at ``path``, or None; refuses a run made with other settings."""
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if _comparable(record["config"]) != _comparable(config):
        raise SweepError(
            f"{path} was made with different settings than this sweep (epochs, data, growth, "
            "...); resume only with the same options, or pass a fresh --out."
        )
    return record
