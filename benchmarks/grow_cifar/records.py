"""Run records of the sweep: the typed :class:`RunRecord`, JSON files, resume checks, CLI lists.

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "RunRecord",
    "SweepError",
    "check_config",
    "config_defaults",
    "config_dict",
    "data_record",
    "load_record",
    "parse_ints",
    "parse_widths",
    "run_record",
    "width_tag",
    "write_json",
]

Widths = tuple[tuple[int, ...], ...]
_SCHEDULING = (
    "data_dir",  # a machine path; the data digest identifies the data
    *("configs", "seeds", "where", "preset"),  # which runs the sweep lists, not how each trains
    *("jobs", "threads", "verbose", "checkpoint_every", "time_limit_s"),
    *("launcher", "ray_address", "gpus_per_run", "slurm_partition", "slurm_minutes"),
)


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


def width_tag(widths: Any) -> str:
    """``[[4, 4], [8]]`` -> ``"4.4-8"``: blocks joined by ``-``, convs in a block by ``.``."""
    return "-".join(".".join(map(str, block)) for block in widths)


def make_run_id(where: str | None, widths: Any, seed: int) -> str:
    """``("nagn", [[2, 2], [4]], 1)`` -> ``"grown-nagn_2.2-4_s1"``; ``where=None``: ``"static_..."``."""
    return f"{f'grown-{where}' if where else 'static'}_{width_tag(widths)}_s{seed}"


def parse_run_id(run_id: str) -> tuple[str | None, Widths, int]:
    """``"grown-nagn_2.2-4_s1"`` -> ``("nagn", ((2, 2), (4,)), 1)``; ``where`` is None for static.

    Example:
        >>> parse_run_id("static_4-4.5-8_s0")
        (None, ((4,), (4, 5), (8,)), 0)
    """
    try:
        kind, tag, seed = run_id.split("_")
        where = kind.removeprefix("grown-") if kind.startswith("grown-") else None
        if (where is None and kind != "static") or not seed.startswith("s"):
            raise ValueError
        widths = tuple(tuple(int(w) for w in block.split(".")) for block in tag.split("-"))
        return where, widths, int(seed[1:])
    except ValueError:
        raise ValueError(
            f"{run_id!r} is not a run id (grown-<where>_<widths>_s<seed> or static_<widths>_s<seed>)"
        ) from None


def parse_ints(text: str, option: str) -> tuple[int, ...]:
    """``"0,1,2"`` or ``"0-4"`` -> a tuple of ints."""
    try:
        if "-" in text.strip("-"):
            lo, hi = text.split("-")
            return tuple(range(int(lo), int(hi) + 1))
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{option}: cannot read {text!r}; write 0,1,2 or 0-4.") from None


def parse_overrides(items: Sequence[str], fields: Sequence[str], option: str) -> dict[str, Any]:
    """``["end_rule=adjacent", "max_growths=2"]`` -> ``{"end_rule": "adjacent", "max_growths": 2}``.

    Example:
        >>> parse_overrides(["score=damped", "delta_stop=0.03"], ["score", "delta_stop"], "--g")
        {'score': 'damped', 'delta_stop': 0.03}
    """
    words = {"true": True, "false": False, "none": None, "null": None}
    values: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name, text = name.strip(), text.strip()
        if not sep or not name or not text:
            raise ValueError(f"{option}: cannot read {item!r}; write NAME=VALUE, e.g. score=damped")
        if name not in fields:
            raise ValueError(
                f"{option}: unknown setting {name!r}; expected one of {sorted(fields)}"
            )
        if name in values:
            raise ValueError(f"{option}: {name!r} is given twice ({item!r}); give it once")
        try:
            values[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            values[name] = words.get(text.lower(), text)
    return values


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


def config_defaults(cls: type) -> dict[str, Any]:
    """Defaults of a config dataclass as JSON-ready data, nested configs expanded.

    Example:
        >>> @dataclasses.dataclass(frozen=True)
        ... class C:
        ...     epochs: int
        ...     lr: float = 1e-3
        >>> config_defaults(C)
        {'lr': 0.001}
    """
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            continue
        out[f.name] = config_dict(value) if dataclasses.is_dataclass(value) else _finite(value)
    return out


def _fill_missing(config: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``config`` with keys it lacks taken from ``defaults`` (recursively for nested dicts)."""
    out = dict(config)
    for key, default in defaults.items():
        if key not in out:
            out[key] = default
        elif isinstance(out[key], dict) and isinstance(default, dict):
            out[key] = _fill_missing(out[key], default)
    return out


def write_json(path: Path, record: dict) -> None:
    """Write atomically: the file appears only complete (parallel jobs, interrupted sweeps)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(_finite(record), indent=1, allow_nan=False))
    os.replace(tmp, path)


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    config = json.loads(json.dumps(_finite(config)))
    return {k: v for k, v in config.items() if k not in _SCHEDULING}


def _differences(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, a value, b value)`` for every leaf where two config dicts differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            d
            for k in sorted(a.keys() | b.keys())
            for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")
        ]
    return [] if a == b else [(prefix.rstrip("."), a, b)]


def load_record(path: Path, cfg: Any) -> dict | None:
    """The finished run at ``path``, or None; refuses a run made with other settings than the
    config dataclass ``cfg`` (:func:`check_config`)."""
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    check_config(path, RunRecord.from_dict(record, path).config, cfg)
    return record


def check_config(path: Path, saved: dict[str, Any], cfg: Any) -> None:
    """Refuse what ``path`` holds (a run record, a checkpoint) if made with other settings.

    Keys ``saved`` lacks (it predates a setting) are read as the defaults of ``cfg``'s class.

    Raises:
        SweepError: ``saved`` differs from the config dataclass ``cfg`` in a setting that
            shapes results; the message names each difference.
    """
    old = _comparable(_fill_missing(saved, config_defaults(type(cfg))))
    wanted = _comparable(config_dict(cfg))
    if old != wanted:
        shown = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, a, b in _differences(old, wanted))
        raise SweepError(
            f"{path} was made with different settings than this sweep ({shown}); resume only "
            "with the same options, or pass a fresh --out."
        )


# ------------------------------------------------------------------------------ the records


def data_record(data: Any) -> dict[str, Any]:
    """What every run of a sweep must share, saved in its record and checked by the report."""
    return {
        "name": data.name,
        "train": len(data.train),
        "val": len(data.val),
        "test": len(data.test),
        "mean": list(data.mean),
        "std": list(data.std),
        "augment": dataclasses.asdict(data.augment),
        "digest": {part: getattr(data, part).digest() for part in ("train", "val", "test")},
    }


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One finished run (or a progress snapshot) as stored in ``out/runs/<run_id>.json``."""

    run_id: str  # e.g. "grown-nagn_4-4-8_s0", "static_4-6-8_s0" (make_run_id)
    kind: str  # "grown" or "static"
    where: str | None  # growth criterion of a grown run; None for a static one
    seed: int  # parameter init, batch order and growth draws
    widths_initial: list[list[int]]  # widths per block at epoch 0
    widths_final: list[list[int]]  # widths per block after the last epoch
    params_final: int  # trainable parameters after the last epoch
    final: dict[str, float]  # test_acc, val_acc (fractions), train_time_s, train_cpu_s (s)
    images_per_s: float  # training images per second of training time
    stop_reason: str | None  # why growth stopped (grown runs), else None
    baseline_run_id: str | None  # the static run with this run's final widths (grown runs)
    segments: int  # processes that trained the run (1 + resumes)
    segment_starts: list[int]  # first epoch of each segment
    config: dict[str, Any]  # the resolved BenchConfig (config_dict)
    data: dict[str, Any]  # what the run trained on (data_record)
    environment: dict[str, Any]  # machine and versions of the latest segment
    epochs: list[dict[str, Any]]  # per epoch: loss, accuracies, times, lr, widths, params
    events: list[dict[str, Any]]  # growth events (GrowthEvent.to_dict)
    schema: int = 1  # layout version of the JSON
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # keys this class lacks

    @classmethod
    def from_dict(cls, record: dict[str, Any], source: object = "record") -> RunRecord:
        """Read a JSON record; a missing key raises SweepError naming it and ``source``."""
        names = [f.name for f in dataclasses.fields(cls) if f.name != "extra"]
        missing = [n for n in names if n not in record and n != "schema"]
        if missing:
            raise SweepError(
                f"{source} is not a run record: it lacks {missing}; it was not written by this "
                "benchmark, or was cut short (delete it and rerun the sweep)."
            )
        extra = {k: v for k, v in record.items() if k not in names}
        return cls(**{n: record[n] for n in names if n in record}, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The JSON layout, keys in the committed records' order, ``extra`` keys last."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        extra = out.pop("extra")
        order = ("schema", "run_id", "kind", "where", "seed")
        return {**{k: out.pop(k) for k in order}, **out, **extra}


def run_record(
    run_id: str,
    *,
    epochs: list[dict],
    events: list[dict],
    stop_reason: str | None,
    segment_starts: list[int],
    config: dict[str, Any],
    data: dict[str, Any],
    environment: dict[str, Any] | None,
) -> dict[str, Any]:
    """A run's JSON record after the epochs so far; widths and parameters are the last epoch's."""
    where, widths_initial, seed = parse_run_id(run_id)
    last = epochs[-1]
    record = RunRecord(
        run_id=run_id,
        kind="grown" if where else "static",
        where=where,
        seed=seed,
        widths_initial=[list(b) for b in widths_initial],
        widths_final=last["widths"],
        params_final=last["params"],
        final={k: last[k] for k in ("test_acc", "val_acc", "train_time_s", "train_cpu_s")},
        images_per_s=len(epochs) * data["train"] / max(last["train_time_s"], 1e-9),
        stop_reason=stop_reason,
        baseline_run_id=make_run_id(None, last["widths"], seed) if where else None,
        segments=len(segment_starts),
        segment_starts=list(segment_starts),
        config=config,
        data=data,
        environment=environment,
        epochs=epochs,
        events=events,
    )
    return record.to_dict()
