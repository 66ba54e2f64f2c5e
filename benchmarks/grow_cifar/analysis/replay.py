#!/usr/bin/env python
"""Replay recorded growth decisions of ``cifar_vgg.py`` under other readings of the paper's rules.

Example:
    python -m benchmarks.grow_cifar.analysis.replay runs/paper-fig2a --out replay.md
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from netsurgeon import LayerGraph, trace, widen
from netsurgeon.nagn import plan_group_growth, plan_growth
from netsurgeon.nagn.trigger import TriggerPolicy, TriggerState

from ..arch import ARCHS, as_widths, build_recorded
from ..records import width_tag
from .report import load_progress, load_runs
from .tables import markdown_table

__all__ = [
    "GROUP_READINGS",
    "READINGS",
    "STOP_READINGS",
    "StopReplay",
    "is_group_plan",
    "model_at",
    "replan",
    "replay_report",
    "replay_stops",
]

#: Planner readings compared at each trigger: name -> keyword arguments of ``plan_growth``.
READINGS: dict[str, dict[str, str]] = {
    "paper": {},
    "end=adjacent": {"end_rule": "adjacent"},
    "end=none": {"end_rule": "none"},
    "geometric": {"neighbourhood": "geometric"},
    "score=damped": {"score": "damped"},
    "score=excess": {"score": "excess"},
    "drag=double": {"drag_limit": "double"},
    "drag=none": {"drag_limit": "none"},
    "end=adjacent, damped": {"end_rule": "adjacent", "score": "damped"},
}

#: Readings only a plan on channel groups has (``plan_group_growth``), compared on such runs too.
GROUP_READINGS: dict[str, dict[str, str]] = {
    "combine=max": {"combine": "max"},
    "combine=mean": {"combine": "mean"},
    "order=depth": {"neighbourhood_order": "depth"},
}

#: Trigger/stop readings: name -> (restart_windows, stop_mode).
STOP_READINGS: dict[str, tuple[bool, str]] = {
    "restart, absolute (default)": (True, "absolute"),
    "restart, relative": (True, "relative"),
    "no restart, absolute": (False, "absolute"),
    "no restart, relative": (False, "relative"),
}


# ------------------------------------------------------------------------------ planner replay


def is_group_plan(event: dict) -> bool:
    """Whether the recorded trigger was planned on channel groups (its plan names a statistic)."""
    return event["plan"].get("combine") is not None


def model_at(run: dict, event: dict) -> torch.nn.Module:
    """The run's model family built at the widths it had at ``event`` (random weights).

    Raises:
        ValueError: the rebuilt model differs from the record (a record of another model
            family, or one the driver's width spec cannot express); names what differs.
    """
    arch = ARCHS[run["config"].get("arch", "vgg")]
    before = event["widths_before"]
    outputs = [row["name"] for row in event["plan"]["rows"] if row["is_output"]]
    num_classes = before[outputs[-1]] if outputs else 10
    epoch = event["epoch"]  # the widths going into its growth were recorded after epoch - 1
    spec = as_widths(run["epochs"][epoch - 2]["widths"] if epoch >= 2 else run["widths_initial"])
    model = build_recorded(run, spec, num_classes)
    widths = trace(model).widths()
    wrong = {n: (w, widths.get(n)) for n, w in before.items() if widths.get(n) != w}
    params = sum(p.numel() for p in model.parameters())
    if wrong or params != event.get("params_before", params):
        found = ", ".join(f"{n}: recorded {w}, rebuilt {f}" for n, (w, f) in wrong.items())
        found = found or f"{params} parameters, recorded {event['params_before']}"
        raise ValueError(
            f"{run['run_id']} epoch {event['epoch']}: the {arch.name} rebuilt at {spec} is not "
            f"the recorded model ({found}); replay needs the run's own model family."
        )
    return model


def replan(
    run: dict, event: dict, reading: Mapping[str, str], graph: LayerGraph | None = None
) -> dict[str, int]:
    """The increments the planner gives the recorded trigger ``event`` under ``reading``."""
    plan = event["plan"]
    groups = [list(g) for g in plan.get("monotone_groups", [])] or None
    monotone = groups if plan["monotone"] else None
    growth = run["config"]["growth"]
    settings = {k: growth[k] for k in ("tau", "max_step", "monotone", "fallback")} | dict(reading)
    if is_group_plan(event):
        settings = {
            "combine": plan["combine"],
            "neighbourhood_order": plan["neighbourhood_order"],
            "fallback_fraction": plan["fallback_fraction"],
            **settings,
        }
        graph = graph if graph is not None else trace(model_at(run, event))
        return plan_group_growth(
            event["profile"], graph, monotone_groups=monotone, **settings
        ).increments
    outputs = [row["name"] for row in plan["rows"] if row["is_output"]]
    replanned = plan_growth(
        event["profile"],
        event["widths_before"],
        output_layers=outputs,
        monotone_groups=monotone,
        **settings,
    )
    return replanned.increments


def _conv_widths(widths: Mapping[str, int], increments: Mapping[str, int]) -> str:
    """``"4/4/4/8"``: widths after growth of every layer but the output (last)."""
    names = list(widths)[:-1]
    return "/".join(str(widths[n] + increments.get(n, 0)) for n in names)


def _tag_after(run: dict, model: torch.nn.Module, increments: Mapping[str, int]) -> str:
    """The width tag (``4.6.4.4-8.8.8.8-...``) of ``model`` widened by ``increments``."""
    arch = ARCHS[run["config"].get("arch", "vgg")]
    grown = copy.deepcopy(model)
    if any(increments.values()):
        widen(grown, dict(increments))
    return width_tag(arch.widths_of(grown))


# ------------------------------------------------------------------------------ stop replay


@dataclass(frozen=True)
class StopReplay:
    """The grower's trigger/stop logic re-run on a record's validation accuracies."""

    reading: str  # a name in STOP_READINGS
    growth_epochs: tuple[int, ...]  # where this reading grows, as far as the replay is exact
    stop_epoch: int | None  # where it disables growth for good (None: not within the run)
    diverges_at: int | None  # first epoch it would grow where the record did not, or None
    final_widths: str | None  # what it ends with when exact; None when it diverges


def replay_stops(run: dict, reading: str) -> StopReplay:
    """Re-run the trigger/stop rules of :class:`netsurgeon.Grower` over ``run``'s accuracies."""
    growth = run["config"]["growth"]
    own = (growth.get("restart_windows", True), growth.get("stop_mode", "absolute"))
    empty = _simulate(run, *own, empty=None)[1]
    return _simulate(run, *STOP_READINGS[reading], empty=empty, name=reading)[0]


def _simulate(
    run: dict, restart: bool, stop_mode: str, empty: set[int] | None, name: str = "own"
) -> tuple[StopReplay, set[int]]:
    """The replay, and the epochs of triggers that grew nothing without stopping."""
    growth = run["config"]["growth"]
    policy = replace(TriggerPolicy.of(growth), restart_windows=restart, stop_mode=stop_mode)
    recorded = {e["epoch"] for e in run["events"]}
    state = TriggerState()
    grown: list[int] = []
    empties: set[int] = set()

    def result(stop: int | None = None, diverges: int | None = None) -> StopReplay:
        if diverges is not None:
            return StopReplay(name, tuple(grown), stop, diverges, None)
        if stop is None:
            return StopReplay(name, tuple(grown), None, None, width_tag(run["widths_final"]))
        before = run["epochs"][stop - 2]["widths"]  # the widths going into the step at ``stop``
        return StopReplay(name, tuple(grown), stop, None, width_tag(before))

    for epoch, record in enumerate(run["epochs"], start=1):
        decision = policy.observe(state, record["val_acc"])
        state = decision.state
        if decision.stopped_now:
            return result(stop=epoch), empties
        if not decision.trigger:
            if epoch in recorded:  # the record grew here, this reading did not trigger
                return result(diverges=epoch), empties
            continue
        if epoch in recorded:
            grown.append(epoch)
            state = policy.after_growth(state, len(grown))
            if state.stopped:
                return result(stop=epoch + 1), empties
        elif empty is None or epoch in empty:
            empties.add(epoch)  # same state, same profile: the same empty plan
        else:
            return result(diverges=epoch), empties  # would grow; no profile recorded here
    return result(), empties


# ------------------------------------------------------------------------------ report


def _grown_runs(folders: Sequence[Path]) -> list[dict]:
    """Finished grown runs, then grown runs still training (:func:`report.load_progress`:
    their progress snapshots, or their checkpoints on a machine where they have not trained)."""
    runs = []
    for folder in folders:
        runs += [run for run in load_runs(Path(folder)) if run["kind"] == "grown"]
        for run in load_progress(Path(folder)):
            if run["kind"] == "grown":
                run["run_id"] += f" (running, epoch {len(run['epochs'])})"
                runs.append(run)
    return runs


def _planner_table(
    triggers: Sequence[tuple[dict, int, dict]],
    readings: Mapping[str, Mapping[str, str]],
    data: dict[str, Any],
) -> list[str]:
    """Markdown rows of the planner replay of ``(run, index, event)`` triggers under ``readings``."""
    rows = []
    for run, k, event in triggers:
        cells = [run["run_id"], f"{event['epoch']}" + (" (exact)" if k == 0 else "")]
        row = {"run_id": run["run_id"], "epoch": event["epoch"], "first": k == 0}
        model = model_at(run, event) if is_group_plan(event) else None
        graph = trace(model) if model is not None else None
        for name, reading in readings.items():
            increments = replan(run, event, reading, graph)
            row[name] = increments
            added = sum(increments.values())
            if model is None:
                after = _conv_widths(event["widths_before"], increments)
            else:
                after = _tag_after(run, model, increments)
            cells.append(f"+{added} → {after}")
        if run["where"] == "nagn":
            row["recorded"] = event["increments"]
        data["planner"].append(row)
        rows.append(cells)
    return markdown_table(["run", "trigger", *readings], rows)


def replay_report(folders: Sequence[Path]) -> tuple[str, dict[str, Any]]:
    """Markdown tables and JSON-ready data of both replays over every grown run in ``folders``."""
    runs = _grown_runs(folders)
    data: dict[str, Any] = {"planner": [], "stops": []}
    triggers = [(run, k, event) for run in runs for k, event in enumerate(run["events"])]
    on_groups = [t for t in triggers if is_group_plan(t[2])]
    on_layers = [t for t in triggers if not is_group_plan(t[2])]
    lines = ["## Planner readings at each recorded trigger", ""]
    if on_layers or not on_groups:
        lines += _planner_table(on_layers, READINGS, data)
    if on_groups:
        if on_layers:
            lines += ["", "Triggers planned on channel groups (width tags after growth):", ""]
        lines += _planner_table(on_groups, {**READINGS, **GROUP_READINGS}, data)
    lines += ["", "## Trigger and stop readings over the recorded accuracies", ""]
    rows = []
    for run in runs:  # every criterion: the trigger and stop rules do not depend on it
        cells = [run["run_id"], ", ".join(str(e["epoch"]) for e in run["events"]) or "none"]
        for name in STOP_READINGS:
            result = replay_stops(run, name)
            data["stops"].append({"run_id": run["run_id"], **asdict(result)})
            grown = ",".join(map(str, result.growth_epochs)) or "none"
            if result.diverges_at is not None:
                cells.append(f"grows {grown}; diverges at {result.diverges_at}")
            elif result.stop_epoch is not None:
                cells.append(f"grows {grown}; stops at {result.stop_epoch} → {result.final_widths}")
            else:
                cells.append(f"grows {grown} → {result.final_widths}")
        rows.append(cells)
    lines += markdown_table(["run", "recorded growths", *STOP_READINGS], rows)
    return "\n".join(lines) + "\n", data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parts = ("runs", "progress", "checkpoints")
    parser.add_argument("folders", nargs="+", type=Path, help=f"sweep folders (with {parts})")
    parser.add_argument("--out", type=Path, help="write the markdown here (and .json beside it)")
    args = parser.parse_args(argv)
    missing = [str(f) for f in args.folders if not any((f / p).is_dir() for p in parts)]
    if missing:
        print(f"replay: error: none of {parts} in {missing}", file=sys.stderr)
        return 2
    text, data = replay_report(args.folders)
    print(text)
    if args.out:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
