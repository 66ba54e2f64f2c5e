"""Markdown tables of a sweep's grown runs: growth trajectories, pairs still training, where
growth went; and the table helper every analysis module writes with."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from ..records import width_tag

__all__ = ["growth_targets", "markdown_table", "pairs", "pairs_so_far", "trajectories"]


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table's lines: the header, the rule, one line per row."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in rows]


def pairs(runs: Sequence[dict]) -> list[tuple[dict, dict]]:
    """``(grown run, its static baseline)`` for every grown run whose baseline is in ``runs``."""
    by_id = {r["run_id"]: r for r in runs}
    return [
        (r, by_id[r["baseline_run_id"]])
        for r in runs
        if r["kind"] == "grown" and r.get("baseline_run_id") in by_id
    ]


def trajectories(runs: Sequence[dict], running: Sequence[dict] = ()) -> list[str]:
    """One row per grown run: each growth (epoch, LR share of its peak, units added, widths)."""
    grown = sorted(
        (r for r in [*runs, *running] if r["kind"] == "grown"),
        key=lambda r: (width_tag(r["widths_initial"]), r["where"], r["seed"]),
    )
    if not grown:
        return []
    by_id = {r["run_id"]: r for r in runs}
    head = ("run", "growths: epoch (LR % of peak) +units → widths", "final", "test acc", "static")
    rows = []
    for run in grown:
        peak = run["config"]["lr"]
        steps = []
        for event in run["events"]:
            record = run["epochs"][event["epoch"] - 1]  # after the epoch's growth
            steps.append(
                f"{event['epoch']} ({100 * record['lr'] / peak:.0f} %) "
                f"+{sum(event['increments'].values())} → {width_tag(record['widths'])}"
            )
        name, static = run["run_id"], "pending"
        if run.get("partial"):  # still training: widths and accuracy so far, no baseline yet
            name += f" (running, epoch {len(run['epochs'])}/{run['config']['epochs']})"
            static = "-"
        elif run.get("baseline_run_id") in by_id:
            static = f"{by_id[run['baseline_run_id']]['final']['test_acc']:.4f}"
        final = f"{run['final']['test_acc']:.4f}"
        rows.append(
            (name, "; ".join(steps) or "none", width_tag(run["widths_final"]), final, static)
        )
    stops = [f"- {r['run_id']}: {r['stop_reason']}" for r in grown if r.get("stop_reason")]
    intro = "Growth trajectories (per grown run):"
    return [intro, "", *markdown_table(head, rows), "", *stops, ""]


def pairs_so_far(runs: Sequence[dict], running: Sequence[dict], window: int = 5) -> list[str]:
    """Grown vs static test accuracy over the epochs both have trained, where either still trains."""
    everything = sorted([*runs, *running], key=lambda r: r["run_id"])
    training = [(g, s) for g, s in pairs(everything) if g.get("partial") or s.get("partial")]
    if not training:
        return []
    head = ("grown run", "static run", "epochs compared", "grown test acc", "static", "difference")
    rows = []
    for grown, static in training:
        both = min(len(grown["epochs"]), len(static["epochs"]))
        first = max(1, both - window + 1)
        mean = {
            name: statistics.fmean(e["test_acc"] for e in run["epochs"][first - 1 : both])
            for name, run in (("grown", grown), ("static", static))
        }
        compared = f"{first}-{both} of {grown['config']['epochs']}"
        accuracies = [f"{mean['grown']:.4f}", f"{mean['static']:.4f}"]
        difference = f"{100 * (mean['grown'] - mean['static']):+.2f} points"
        rows.append((grown["run_id"], static["run_id"], compared, *accuracies, difference))
    intro = (
        f"Pairs still training: mean test accuracy over the last {window} epochs both runs have "
        "trained (not a final ratio):"
    )
    return [intro, "", *markdown_table(head, rows), ""]


KINDS = ("stream", "interior", "whole-unit interior")


def _kind(group: dict) -> str:  # whole units: granularity > 1 (a ViT's heads, conv groups)
    return KINDS[0] if len(group["producers"]) > 1 else KINDS[1 + (group.get("granularity", 1) > 1)]


def growth_targets(runs: Sequence[dict], running: Sequence[dict] = ()) -> list[str]:
    """Where growth went in models with joined channel groups (a ResNet's, a ViT's)."""
    rows = []
    for run in sorted([*runs, *running], key=lambda r: r["run_id"]):
        for event in run["events"] if run["kind"] == "grown" else ():
            plan = event["plan"]
            outputs = {row["name"] for row in plan["rows"] if row["is_output"]}
            groups = [g for g in plan.get("groups", ()) if g["name"] not in outputs]
            kinds = {g["name"]: _kind(g) for g in groups}
            if len(set(kinds.values())) < 2:
                continue
            nagn = [[g["nagn"] for g in groups if kinds[g["name"]] == kind] for kind in KINDS]
            units = {kind: 0 for kind in KINDS}
            for name, k in event["increments"].items():
                units[kinds[name]] += k
            top = max((r for r in plan["rows"] if r["name"] in kinds), key=lambda r: r["contrast"])
            name = run["run_id"] + (" (running)" if run.get("partial") else "")
            means = [f"{statistics.fmean(v):.4f}" if v else "-" for v in nagn]
            largest = f"{top['name']} ({kinds[top['name']]}, r = {top['contrast']:.2f})"
            added = [str(units[kind]) if nagn[i] else "-" for i, kind in enumerate(KINDS)]
            rows.append((name, str(event["epoch"]), *means, largest, *added))
    if not rows:
        return []
    head = (
        *("run", "trigger", *(f"mean NAGN, {kind}s" for kind in KINDS), "largest contrast"),
        *(f"units to {kind}s" for kind in KINDS),
    )
    intro = "Where growth went (channel groups; a stream has several producers, an interior one, "
    intro += "grown by whole units where granularity > 1; the output group is left out):"
    return [intro, "", *markdown_table(head, rows), ""]
