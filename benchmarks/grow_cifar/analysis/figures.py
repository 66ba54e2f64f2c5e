"""Figures of ``benchmarks/cifar_vgg.py``, drawn from the run JSONs alone."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..records import width_tag

__all__ = ["write_figures"]

_GROWTH = {"color": "red", "ls": "--", "lw": 0.8, "alpha": 0.5}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, folder: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(folder / name, dpi=120)
    _plt().close(fig)
    return name


def _profile_figure(config: str, mine: Sequence[dict], folder: Path) -> str | None:
    import numpy as np

    profiles = [r["events"][0]["profile"] for r in mine if r["where"] == "nagn" and r["events"]]
    if not profiles:
        return None
    names = list(profiles[0])
    values = np.array([[p.get(n, np.nan) for n in names] for p in profiles], dtype=float)
    fig, ax = _plt().subplots(figsize=(max(4, 0.6 * len(names) + 2), 3.2))
    x = np.arange(len(names))
    ax.errorbar(x, np.nanmean(values, 0), yerr=np.nanstd(values, 0), marker="o", capsize=3)
    ax.set_xticks(x, [n.replace(".conv", "") for n in names], rotation=45, ha="right")
    ax.set_ylabel("NAGN")
    ax.set_title(f"NAGN at the first trigger — {config} ({len(profiles)} seeds)")
    return _save(fig, folder, f"fig1a_nagn_profile_{config}.png")


def _band(ax: Any, series: Sequence[Sequence[float]], label: str, style: str) -> None:
    import numpy as np

    # Runs still training have fewer epochs: each epoch's mean is over the runs that reached it.
    length = max(len(s) for s in series)
    values = np.full((len(series), length), np.nan)
    for row, s in zip(values, series, strict=True):
        row[: len(s)] = s
    epochs = np.arange(1, length + 1)
    mean, std = np.nanmean(values, 0), np.nanstd(values, 0)
    (line,) = ax.plot(epochs, mean, style, label=f"{label} (n={len(series)})")
    ax.fill_between(epochs, mean - std, mean + std, alpha=0.2, color=line.get_color())


def _cpu_minutes(run: dict) -> list[float]:
    """Cumulative training process CPU time per epoch, in minutes."""
    return [e["train_cpu_s"] / 60 for e in run["epochs"]]


def _accuracy_figure(
    config: str, mine: Sequence[dict], by_id: dict[str, dict], folder: Path
) -> str:
    """Fig. 2a: grown vs static test accuracy over epochs (mean ± std) and over training time."""
    wheres = sorted({r["where"] for r in mine}, key=lambda w: (w != "nagn", w))
    fig, (left, right) = _plt().subplots(1, 2, figsize=(11, 3.8))
    statics = {}
    for where in wheres:
        grown = [r for r in mine if r["where"] == where]
        _band(left, [[e["test_acc"] for e in r["epochs"]] for r in grown], f"grown ({where})", "-")
        if where != wheres[0]:
            continue
        for r in grown:  # the baselines of the first criterion (their widths differ per criterion)
            base = by_id.get(r.get("baseline_run_id"))
            if base is not None:
                statics[r["seed"]] = base
            for event in r["events"]:
                left.axvline(event["epoch"], **_GROWTH)
    if statics:
        curves = [[e["test_acc"] for e in s["epochs"]] for s in statics.values()]
        _band(left, curves, f"static baselines of {wheres[0]}", "k-")
    left.set_xlabel("epoch")
    left.set_ylabel("test accuracy")
    left.set_title(f"{config}: mean ± std over seeds; red: growth ({wheres[0]})", fontsize=9)
    left.legend(fontsize=8, loc="lower right")
    for r in sorted(mine, key=lambda r: (r["where"], r["seed"])):
        if r["where"] != wheres[0]:
            continue
        (line,) = right.plot(_cpu_minutes(r), [e["test_acc"] for e in r["epochs"]], lw=1)
        base = by_id.get(r.get("baseline_run_id"))
        if base is not None:
            accs = [e["test_acc"] for e in base["epochs"]]
            right.plot(_cpu_minutes(base), accs, ":", color=line.get_color())
        line.set_label(f"seed {r['seed']}: grown (—) vs static (⋯)" + _running(r, base))
    right.set_xlabel("training CPU time (min)")
    right.set_ylabel("test accuracy")
    right.set_title(f"per seed, grown ({wheres[0]}) vs its static baseline", fontsize=9)
    right.legend(fontsize=7, loc="lower right")
    return _save(fig, folder, f"fig2a_accuracy_{config}.png")


def _running(*runs: dict | None) -> str:
    """`` (running)`` when any of ``runs`` is still training, else empty."""
    return " (running)" if any(r is not None and r.get("partial") for r in runs) else ""


def _log_axis(ax: Any, values: set[int], base: int = 10) -> None:
    """Log scale labelled with plain numbers: the given values when few, else the defaults."""
    from matplotlib.ticker import ScalarFormatter

    ax.set_yscale("log", base=base)
    ax.minorticks_off()
    if len(values) <= 8:
        ax.set_yticks(sorted(values), labels=[f"{v:,}" for v in sorted(values)])
    else:
        formatter = ScalarFormatter()
        formatter.set_scientific(False)
        ax.yaxis.set_major_formatter(formatter)


def _widths_figure(
    config: str, where: str, grown: Sequence[dict], by_id: dict[str, dict], folder: Path
) -> str:
    """The growth trajectory: every layer's width and the parameter count over epochs, per seed."""
    grown = sorted(grown, key=lambda r: r["seed"])
    plt = _plt()
    fig, axes = plt.subplots(
        2, len(grown), figsize=(3.6 * len(grown) + 0.8, 5.2), squeeze=False, sharex=True
    )
    for column, run in enumerate(grown):
        top, bottom = axes[0][column], axes[1][column]
        epochs = [e["epoch"] for e in run["epochs"]]
        flat = [[w for block in e["widths"] for w in block] for e in run["epochs"]]
        names = [
            f"b{b}.{c}"
            for b, block in enumerate(run["epochs"][0]["widths"])
            for c in range(len(block))
        ]
        for k, name in enumerate(names):
            line_width = 3.2 - 2.4 * k / max(1, len(names) - 1)  # later layers thinner, on top
            widths = [row[k] for row in flat]
            top.plot(epochs, widths, drawstyle="steps-post", lw=line_width, label=name)
        bottom.plot(epochs, [e["params"] for e in run["epochs"]], drawstyle="steps-post", lw=1.5)
        base = by_id.get(run.get("baseline_run_id"))
        if base is not None:
            bottom.axhline(base["params_final"], color="k", ls=":", lw=1, label="static baseline")
        for event in run["events"]:
            for ax in (top, bottom):
                ax.axvline(event["epoch"], **_GROWTH)
        top.set_title(
            f"seed {run['seed']}: → {width_tag(run['widths_final'])}{_running(run)}\n"
            f"{len(run['events'])} growths"
            + (f", at {[e['epoch'] for e in run['events']]}" if run["events"] else ""),
            fontsize=8,
        )
        _log_axis(top, {w for row in flat for w in row}, base=2)
        params = [e["params"] for e in run["epochs"]]
        _log_axis(bottom, {params[0], params[-1]} | ({base["params_final"]} if base else set()))
        bottom.set_xlabel("epoch")
        if column == 0:
            top.set_ylabel("width (channels)")
            bottom.set_ylabel("parameters")
            top.legend(fontsize=6, ncol=2 if len(names) > 4 else 1, loc="upper left")
            if bottom.get_legend_handles_labels()[0]:  # a baseline line to name
                bottom.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"growth trajectory of {config} ({where})", fontsize=10)
    return _save(fig, folder, f"fig2a_widths_{config}_{where}.png")


def _errorbar(ax: Any, xs: Sequence[tuple], ys: Sequence[tuple], **style: Any) -> None:
    """Points at the means of ``(mean, std)`` pairs, their stds as error bars."""
    means, stds = [x[0] for x in xs], [x[1] for x in xs]
    ax.errorbar(means, [y[0] for y in ys], xerr=stds, yerr=[y[1] for y in ys], **style)


def _ratio_figure(rows: Sequence[Any], totals: dict, paper: tuple, folder: Path) -> str:
    (paper_acc, paper_time) = paper
    fig, ax = _plt().subplots(figsize=(5, 4))
    for where in sorted({r.where for r in rows}):
        mine = [r for r in rows if r.where == where]
        times, accs = [r.time_ratio for r in mine], [r.acc_ratio for r in mine]
        _errorbar(ax, times, accs, fmt="o", capsize=2, label=f"{where} (per config)")
        t = totals[where]
        configs = ([t["time_ratio_configs"]], [t["acc_ratio_configs"]])
        _errorbar(ax, *configs, fmt="s", ms=9, capsize=4, label=f"{where} (mean)")
    _errorbar(ax, [paper_time], [paper_acc], fmt="*", color="grey", ms=12, label="paper")
    ax.axhline(1.0, color="k", lw=0.6)
    ax.axvline(1.0, color="k", lw=0.6)
    ax.set_xlabel("training time ratio (grown / static)")
    ax.set_ylabel("test accuracy ratio (grown / static)")
    ax.legend(fontsize=7)
    return _save(fig, folder, "fig2b_ratios.png")


def write_figures(
    out: Path,
    runs: Sequence[dict],
    rows: Sequence[Any],
    totals: dict,
    paper: tuple[tuple[float, float], tuple[float, float]],
    *,
    running: Sequence[dict] = (),
) -> list[str]:
    """Draw every figure into ``out/figures``; return the file names written.

    Args:
        out: the sweep folder.
        runs: every run record (grown and static).
        rows: the per-(config, criterion) summary rows (``report.Row``).
        totals: ``report.overall`` of those rows.
        paper: ``((acc ratio mean, std), (time ratio mean, std))`` of the paper.
        running: records of runs still training (``"partial": True``); they join the accuracy,
            trajectory and profile figures (marked "running"), not the ratios.
    """
    folder = Path(out) / "figures"
    folder.mkdir(exist_ok=True)
    written: list[str | None] = []
    everything = [*runs, *running]
    by_id = {r["run_id"]: r for r in everything}
    grown = [r for r in everything if r["kind"] == "grown"]
    configs: dict[str, list[dict]] = defaultdict(list)
    for run in grown:
        configs[width_tag(run["widths_initial"])].append(run)
    for config, mine in sorted(configs.items()):
        written.append(_profile_figure(config, mine, folder))
        written.append(_accuracy_figure(config, mine, by_id, folder))
        for where in sorted({r["where"] for r in mine}):
            grown_here = [r for r in mine if r["where"] == where]
            written.append(_widths_figure(config, where, grown_here, by_id, folder))
    if rows:
        written.append(_ratio_figure(rows, totals, paper, folder))
    return [name for name in written if name is not None]
