"""The summary of a sweep folder, rebuilt from its records (docs/benchmark.md, "Reports")."""

from __future__ import annotations

import csv
import dataclasses
import json
import statistics
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..checkpoints import progress_record
from ..records import width_tag
from .figures import write_figures
from .flops import flop_ratio
from .tables import growth_targets, markdown_table, pairs, pairs_so_far, trajectories

__all__ = [
    "DATA_KEYS",
    "Row",
    "data_identity",
    "load_progress",
    "load_runs",
    "segments",
    "summarize",
    "write_report",
]

PAPER_ACC_RATIO, PAPER_TIME_RATIO = (1.016, 0.020), (0.953, 0.075)
TIMING = (
    "training wall time: the training batches (data pipeline included) plus growth steps; "
    "evaluation and one-time data preparation excluded; device synchronised before each clock "
    "read. The CPU-time ratio uses the process CPU time of the same intervals: on a CPU shared "
    "with other work it is the steadier measure of compute (meaningless for GPU runs). The FLOP "
    "ratio counts the training FLOPs (forward and backward of convs and matmuls) at the widths "
    "each epoch trained with: no machine load enters it, but at small widths an epoch's time is "
    "far from proportional to its FLOPs, so it is a lower bound on the time ratio "
    "(benchmarks/_flops.py)"
)


# ----------------------------------------------------------------------------- summary


def load_runs(out: Path) -> list[dict]:
    """Every finished run's JSON under ``out/runs``, sorted by run id."""
    return [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]


def load_progress(out: Path) -> list[dict]:
    """Runs still training (``"partial": True``): their progress snapshot, else checkpoint."""
    done = {p.stem for p in (out / "runs").glob("*.json")}
    found = [*(out / "checkpoints").glob("*.pt"), *(out / "progress").glob("*.json")]
    return [progress_record(out, run_id) for run_id in sorted({p.stem for p in found} - done)]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


@dataclasses.dataclass(frozen=True)
class Row:
    """One config x criterion: grown runs over seeds, each paired with its static baseline."""

    config: str  # initial widths tag, e.g. "4-4-8" or "8.3.8-16.4.16-32.4.32"
    where: str  # growth criterion
    seeds: tuple[int, ...]  # seeds with both runs finished
    grown_acc: tuple[float, float]  # final test accuracy, mean and std over seeds
    static_acc: tuple[float, float]
    acc_ratio: tuple[float, float]  # grown / static test accuracy, per seed
    time_ratio: tuple[float, float]  # grown / static training time, per seed
    cpu_ratio: tuple[float, float]  # grown / static process CPU time of the same intervals
    flop_ratio: tuple[float, float]  # grown / static training FLOPs (flops.py: load-independent)
    final_widths: str  # most common final widths (and how many seeds reached them)
    params_initial: int
    params_final: float  # mean over seeds (static baseline has the same count)
    growths: float  # mean number of growth events


def _ratios(matched: Sequence[tuple[dict, dict]]) -> dict[str, tuple[float, float]]:
    """Grown / static accuracy, wall time, CPU time and FLOPs: mean and std over ``matched``."""
    final = [(g["final"], s["final"]) for g, s in matched]
    return {
        "acc_ratio": _mean_std([g["test_acc"] / s["test_acc"] for g, s in final]),
        "time_ratio": _mean_std([g["train_time_s"] / s["train_time_s"] for g, s in final]),
        "cpu_ratio": _mean_std([g["train_cpu_s"] / s["train_cpu_s"] for g, s in final]),
        "flop_ratio": _mean_std([flop_ratio(g, s) for g, s in matched]),
    }


def summarize(runs: Sequence[dict]) -> list[Row]:
    """Pair grown runs with their baselines and aggregate per (config, criterion)."""
    groups: dict[tuple[str, str], list[tuple[dict, dict]]] = defaultdict(list)
    for grown, static in pairs(runs):
        groups[width_tag(grown["widths_initial"]), grown["where"]].append((grown, static))
    rows = []
    for (config, where), mine in sorted(groups.items()):
        mine.sort(key=lambda pair: pair[0]["seed"])
        first = mine[0][0]
        widths = Counter(width_tag(g["widths_final"]) for g, _ in mine).most_common(1)[0]
        rows.append(
            Row(
                config=config,
                where=where,
                seeds=tuple(g["seed"] for g, _ in mine),
                grown_acc=_mean_std([g["final"]["test_acc"] for g, _ in mine]),
                static_acc=_mean_std([s["final"]["test_acc"] for _, s in mine]),
                **_ratios(mine),
                final_widths=f"{widths[0]} ({widths[1]}/{len(mine)})",
                params_initial=first["epochs"][0]["params"]
                if not first["events"] or first["events"][0]["epoch"] > 1
                else first["events"][0]["params_before"],
                params_final=statistics.fmean(g["params_final"] for g, _ in mine),
                growths=statistics.fmean(len(g["events"]) for g, _ in mine),
            )
        )
    return rows


def overall(rows: Sequence[Row], runs: Sequence[dict]) -> dict[str, dict[str, Any]]:
    """Per criterion: ratios' mean +- std over all pairs and over the per-config means."""
    out: dict[str, dict[str, Any]] = {}
    for where in sorted({row.where for row in rows}):
        found = [(g, s) for g, s in pairs(runs) if g["where"] == where]
        mine = [row for row in rows if row.where == where]
        out[where] = {
            **{f"{name}_runs": value for name, value in _ratios(found).items()},
            "acc_ratio_configs": _mean_std([row.acc_ratio[0] for row in mine]),
            "time_ratio_configs": _mean_std([row.time_ratio[0] for row in mine]),
            "pairs": len(found),
        }
    return out


#: The parts of a run's ``data`` record that every run of a sweep must share.
DATA_KEYS = ("name", "train", "val", "test", "mean", "std", "augment", "digest")


def data_identity(runs: Sequence[dict]) -> tuple[bool, list[str]]:
    """Whether every run recorded the same data, and the report lines that say so.

    Returns:
        ``(identical, lines)``.
    """
    lines, identical = [], True
    for key in DATA_KEYS:
        values: dict[str, list[str]] = defaultdict(list)
        for run in runs:
            values[json.dumps(run["data"][key], sort_keys=True)].append(run["run_id"])
        if len(values) > 1:
            identical = False
            for value, ids in sorted(values.items(), key=lambda kv: -len(kv[1])):
                lines.append(
                    f"  - **{key} differs**: {value} in {len(ids)} runs ({', '.join(ids)})"
                )
    head = (
        f"- data identity: all {len(runs)} runs recorded the same sizes, split digests, "
        "normalisation statistics and augmentation"
        if identical
        else f"- **data identity FAILED**: the {len(runs)} runs did not all see the same data"
    )
    return identical, [head, *lines]


# ----------------------------------------------------------------------------- writing


def _pm(value: tuple[float, float], digits: int = 3) -> str:
    return f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"


def _table(rows: Sequence[Row]) -> list[str]:
    head = (
        *("config", "where", "seeds", "grown acc", "static acc", "acc ratio", "time ratio"),
        *("CPU-time ratio", "FLOP ratio", "final widths", "params init→final", "growths"),
    )
    cells = []
    for r in rows:
        means = (r.grown_acc, r.static_acc, r.acc_ratio, r.time_ratio, r.cpu_ratio, r.flop_ratio)
        first = [r.config, r.where, str(len(r.seeds))]
        last = [r.final_widths, f"{r.params_initial}→{r.params_final:.0f}", f"{r.growths:.1f}"]
        cells.append([*first, *map(_pm, means), *last])
    return markdown_table(head, cells)


def segments(runs: Sequence[dict]) -> list[str]:
    """A line on runs trained in several processes (resumed from checkpoints), if any."""
    resumed = [r for r in runs if r.get("segments", 1) > 1]
    if not resumed:
        return [f"- segments: all {len(runs)} runs trained in one process each"]
    listed = ", ".join(
        f"{r['run_id']} ({r['segments']}, from epochs {', '.join(map(str, r['segment_starts']))})"
        for r in resumed
    )
    return [
        f"- **segments**: {len(resumed)} of {len(runs)} runs were resumed from checkpoints and "
        f"trained in several processes: {listed}. Their times are sums over segments measured "
        "under different machine load (or on other machines): read their time ratios with "
        "care; the CPU-time ratio is the steadier one"
    ]


def _criteria(runs: Sequence[dict]) -> list[str]:
    """Grown runs of different criteria, paired by config and seed (same budget per event)."""
    grown = [r for r in runs if r["kind"] == "grown"]
    wheres = sorted({r["where"] for r in grown})
    if len(wheres) < 2:
        return []
    index = {(width_tag(r["widths_initial"]), r["seed"], r["where"]): r for r in grown}
    ref = "nagn" if "nagn" in wheres else wheres[0]
    head = ["config", *[f"{w} acc" for w in wheres]]
    head += [f"{ref} − {w} (paired)" for w in wheres if w != ref]
    head += [f"{w} params" for w in wheres]
    rows = []
    for config in sorted({width_tag(r["widths_initial"]) for r in grown}):
        seeds = sorted(
            s
            for (c, s, w) in index
            if c == config and w == ref
            if all((config, s, other) in index for other in wheres)
        )
        if not seeds:
            continue
        acc = {w: [index[config, s, w]["final"]["test_acc"] for s in seeds] for w in wheres}
        params = {w: [index[config, s, w]["params_final"] for s in seeds] for w in wheres}
        cells = [config, *[_pm(_mean_std(acc[w])) for w in wheres]]
        cells += [
            _pm(_mean_std([a - b for a, b in zip(acc[ref], acc[w], strict=True)]))
            for w in wheres
            if w != ref
        ]
        rows.append([*cells, *[f"{statistics.fmean(params[w]):.0f}" for w in wheres]])
    intro = "Growth criteria side by side (final test accuracy, same seeds):"
    return [intro, "", *markdown_table(head, rows), ""]


def _throughput(out: Path, runs: Sequence[dict]) -> list[str]:
    rates = [r["images_per_s"] for r in runs]
    lines = [
        f"- per run: {statistics.fmean(rates):,.0f} training images/s on average "
        f"(min {min(rates):,.0f}, max {max(rates):,.0f}) over {len(runs)} runs"
    ]
    sweep_file = out / "sweep.json"
    if sweep_file.is_file():
        sweep = json.loads(sweep_file.read_text())
        ran = [r for r in runs if r["run_id"] in set(sweep.get("ran", []))]
        if ran and sweep.get("wall_s"):
            images = sum(r["images_per_s"] * r["final"]["train_time_s"] for r in ran)
            lines.append(
                f"- aggregate of the last invocation: {images / sweep['wall_s']:,.0f} training "
                f"images/s with --jobs {sweep['jobs']} ({len(ran)} runs in {sweep['wall_s']:.0f} s "
                "wall, evaluation included in the wall time)"
            )
    return lines


def _csv_cells(row: Row) -> dict[str, Any]:
    """A row's CSV cells: a ``(mean, std)`` field gives two, ``<name>_mean`` and ``<name>_std``."""
    cells: dict[str, Any] = {}
    for name, value in dataclasses.asdict(row).items():
        if name == "seeds":
            cells[name] = " ".join(map(str, value))
        elif isinstance(value, tuple):
            cells[f"{name}_mean"], cells[f"{name}_std"] = value
        else:
            cells[name] = value
    return cells


def _write_csv(path: Path, rows: Sequence[Row]) -> None:
    """One line per row of the summary."""
    cells = [_csv_cells(row) for row in rows]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(cells[0]) if cells else [])
        writer.writeheader()
        writer.writerows(cells)


def _header(runs: Sequence[dict], running: Sequence[dict]) -> list[str]:
    """The title and the lines on machine, data and protocol; ``runs`` may be empty."""
    first = (runs or running)[0]
    cfg, env, data = first["config"], first["environment"], first["data"]
    title = f"# cifar_vgg.py — preset `{cfg['preset']}`"
    lines = [title + ("" if runs else " (in progress: no run finished yet)"), ""]
    if runs:
        lines += [
            f"- hardware: {env['cpu']} ({env['cpu_count']} CPUs)"
            + (f", GPU {env['gpu']}" if env.get("gpu") else "")
            + f"; device `{env['device']}`, torch threads {env['torch_threads']}",
            f"- software: torch {env['torch']}, python {env['python']}, "
            f"netsurgeon {env['netsurgeon']}",
            f"- code: git {env['git_commit']}" + (" (dirty tree)" if env.get("git_dirty") else ""),
        ]
    note = (
        ". JPEG copy of CIFAR-10 (lossy): accuracies run a little below the official archive; "
        "use for relative comparisons."
    )
    lines += [
        f"- data: {data['name']} — train {data['train']}, val {data['val']}, test {data['test']}"
        + (note if data["name"] == "imagefolder" else ""),
        *data_identity([*runs, *running])[1],
        f"- protocol: {cfg['epochs']} epochs, batch {cfg['batch_size']}, AdamW lr {cfg['lr']} "
        f"wd {cfg['weight_decay']}, cosine per step; growth {cfg['growth']}",
    ]
    if not runs:
        return [*lines, f"- runs still training: {', '.join(r['run_id'] for r in running)}"]
    return [*lines, f"- timing: {TIMING}", *segments(runs)]


def _overall_lines(totals: dict[str, dict[str, Any]]) -> list[str]:
    """Per criterion, the ratios over all pairs and over per-config means; then the paper's."""
    lines = [
        f"- **{where}** over {t['pairs']} grown/static pairs: accuracy ratio "
        f"{_pm(t['acc_ratio_runs'])}, time ratio {_pm(t['time_ratio_runs'])} (CPU-time ratio "
        f"{_pm(t['cpu_ratio_runs'])}, FLOP ratio {_pm(t['flop_ratio_runs'])}); over per-config "
        f"means: {_pm(t['acc_ratio_configs'])} and {_pm(t['time_ratio_configs'])}"
        for where, t in totals.items()
    ]
    paper = (
        f"- paper (CIFAR-10, 12 configs x 5 seeds, 200 epochs): accuracy ratio "
        f"{_pm(PAPER_ACC_RATIO)}, time ratio {_pm(PAPER_TIME_RATIO)}"
    )
    return [*lines, paper]


def write_report(out: Path) -> str:
    """Write ``summary.csv``, ``summary.md`` and ``figures/*.png``; return the terminal text.

    A sweep with no finished run yet gets a progress report (its runs still training).
    """
    out = Path(out)
    runs, running = load_runs(out), load_progress(out)
    if not runs and not running:
        return f"(no finished runs under {out}/runs, and none training)"
    rows = summarize(runs)
    totals = overall(rows, runs)
    paper = (PAPER_ACC_RATIO, PAPER_TIME_RATIO)
    figures = write_figures(out, runs, rows, totals, paper, running=running)
    body = [
        *trajectories(runs, running),
        *pairs_so_far(runs, running),
        *growth_targets(runs, running),
    ]
    md, text = [*_header(runs, running), ""], body
    if runs:
        _write_csv(out / "summary.csv", rows)
        table = [*_table(rows), "", *_criteria(runs)]
        results = _overall_lines(totals)
        md += [*table, *body, "Overall (mean ± std):", "", *results, "", "Throughput:", ""]
        md += [*_throughput(out, runs), ""]
        text = [*table, *results, *segments(runs)]
    else:
        md += body
    md += [*[f"![{name}](figures/{name})" for name in figures], ""]
    (out / "summary.md").write_text("\n".join(md))
    return "\n".join(text)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m benchmarks.grow_cifar.analysis.report OUT_DIR")
    print(write_report(Path(sys.argv[1])))
