#!/usr/bin/env python
"""Put two sweeps of ``cifar_vgg.py`` side by side, per config, criterion and seed.

Example:
    python -m benchmarks.grow_cifar.analysis.compare runs/cpu-fig2a runs/paper-fig2a
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from ..records import width_tag
from .flops import flop_ratio
from .report import load_progress, load_runs
from .tables import markdown_table

__all__ = ["compare", "run_summary"]


def _load(folder: Path) -> dict[str, dict]:
    """Finished runs and runs still training (``"partial": True``) of a sweep, by run id."""
    runs = [*load_runs(Path(folder)), *load_progress(Path(folder))]
    return {run["run_id"]: run for run in runs}


def run_summary(run: dict, runs: dict[str, dict]) -> dict:
    """First trigger, growths, final widths and ratios of one grown run (None when unknown)."""
    first = run["events"][0] if run["events"] else None
    peak = run["config"]["lr"]
    base = runs.get(run.get("baseline_run_id"))
    steps = -(-run["data"]["train"] // run["config"]["batch_size"])  # the last batch is kept
    out = {
        "first_epoch": first["epoch"] if first else None,
        "first_step": first["epoch"] * steps if first else None,
        "first_lr": run["epochs"][first["epoch"] - 1]["lr"] / peak if first else None,
        "growths": len(run["events"]),
        "final": width_tag(run["widths_final"]),
        "state": _state(run),
        "acc_ratio": None,
        "cpu_ratio": None,
        "flop_ratio": None,
    }
    if base is not None and not run.get("partial") and not base.get("partial"):
        out["acc_ratio"] = run["final"]["test_acc"] / base["final"]["test_acc"]
        out["cpu_ratio"] = run["final"]["train_cpu_s"] / base["final"]["train_cpu_s"]
        out["flop_ratio"] = flop_ratio(run, base)
    return out


def _state(run: dict) -> str:
    """How final a running run's widths are: growth stopped (final), or still possible."""
    if not run.get("partial"):
        return ""
    stopped = run.get("stop_reason")
    return " (growth stopped)" if stopped else f" (epoch {len(run['epochs'])}, may grow)"


def _fmt(value: float | int | str | None, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def compare(a: Path, b: Path) -> str:
    """Markdown: one row per (config, criterion, seed) grown in both sweeps, then the means."""
    runs_a, runs_b = _load(a), _load(b)
    index = {
        name: {
            (width_tag(r["widths_initial"]), r["where"], r["seed"]): r
            for r in runs.values()
            if r["kind"] == "grown"
        }
        for name, runs in (("a", runs_a), ("b", runs_b))
    }
    keys = sorted(index["a"].keys() & index["b"].keys())
    cells = (
        *("first trigger: epoch / step / LR", "growths", "final widths"),
        *("acc ratio", "CPU ratio", "FLOP ratio"),
    )
    head = ["config", "where", "seed", *[f"{c} ({n})" for c in cells for n in ("A", "B")]]
    rows = []
    ratios: dict[str, dict[str, list[float]]] = {"a": {}, "b": {}}
    same_widths = 0
    for key in keys:
        sa = run_summary(index["a"][key], runs_a)
        sb = run_summary(index["b"][key], runs_b)
        same_widths += sa["final"] == sb["final"]
        row = [key[0], key[1], str(key[2])]
        for s in (sa, sb):
            row.append(
                f"{_fmt(s['first_epoch'])} / {_fmt(s['first_step'])} / {_fmt(s['first_lr'], '.0%')}"
            )
        row += [str(sa["growths"]), str(sb["growths"])]
        row += [sa["final"] + sa["state"], sb["final"] + sb["state"]]
        for field in ("acc_ratio", "cpu_ratio", "flop_ratio"):
            row += [_fmt(sa[field], ".3f"), _fmt(sb[field], ".3f")]
            for name, s in (("a", sa), ("b", sb)):
                if s[field] is not None:
                    ratios[name].setdefault(field, []).append(s[field])
        rows.append(row)
    lines = [f"A = {a}, B = {b}", "", *markdown_table(head, rows)]
    if not keys:
        return "\n".join([*lines, "", "(no grown run is present in both sweeps)", ""])
    lines += ["", f"- final widths equal in {same_widths} of {len(keys)} runs"]
    for name, folder in (("a", a), ("b", b)):
        for field, values in sorted(ratios[name].items()):
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            lines.append(
                f"- {folder}: {field.replace('_', ' ')} {statistics.fmean(values):.3f} ± {sd:.3f} "
                f"over {len(values)} pairs"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("a", type=Path, help="sweep folder (e.g. the short preset)")
    parser.add_argument("b", type=Path, help="sweep folder (e.g. the full protocol)")
    args = parser.parse_args(argv)
    missing = [str(f) for f in (args.a, args.b) if not _load(f)]
    if missing:
        print(f"compare: error: no run records in {missing}", file=sys.stderr)
        return 2
    print(compare(args.a, args.b))
    return 0


if __name__ == "__main__":
    sys.exit(main())
