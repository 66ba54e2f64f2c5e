"""A sweep as a task graph: every grown run, and each static baseline after its grown run."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

import torch

from .analysis import report as _report
from .config import BenchConfig, as_widths, resolve_config
from .data import DatasetNotFoundError
from .environment import environment
from .launchers import make_pool
from .records import SweepError, config_dict, write_json
from .train import RunSpec, load_done, stopped_widths

__all__ = ["SweepPlan", "main", "run_sweep"]


class SweepPlan:
    """The task graph of a sweep and what is done: grown runs first, baselines as widths appear."""

    def __init__(self, cfg: BenchConfig, out: Path) -> None:
        self.cfg, self.out = cfg, out
        self.records: dict[str, dict] = {}
        self.started: set[str] = set()
        self._ready: list[RunSpec] = []
        for spec in (
            RunSpec(w, s, where) for w in cfg.configs for s in cfg.seeds for where in cfg.where
        ):
            self._add(spec)
            if spec.run_id not in self.records:
                widths = stopped_widths(spec, out)  # stopped growing: its baseline can start
                if widths is not None:
                    self._add(RunSpec(widths, spec.seed))

    def _add(self, spec: RunSpec) -> None:
        if spec.run_id in self.records or spec.run_id in self.started:
            return
        done = load_done(spec, self.cfg, self.out)
        if done is not None:
            self.finished(done)
        else:
            self.started.add(spec.run_id)
            self._ready.append(spec)

    def ready(self) -> list[RunSpec]:
        """Tasks that can start now (each returned once), static baselines first."""
        found, self._ready = self._ready, []
        return sorted(found, key=lambda s: s.where is not None)

    def finished(self, record: dict) -> None:
        """Take a finished run; queue the static baseline of a grown one."""
        self.records[record["run_id"]] = record
        if record["kind"] == "grown":
            self._add(RunSpec(as_widths(record["widths_final"]), record["seed"]))


def run_sweep(cfg: BenchConfig, out: Path) -> list[dict]:
    """Run the sweep's task graph on ``cfg.launcher``; return every finished run's record."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    deadline = None if cfg.time_limit_s is None else time.time() + cfg.time_limit_s
    plan = SweepPlan(cfg, out)
    ran: list[str] = []
    todo = plan.ready()
    if todo:
        with closing(make_pool(cfg, out, deadline)) as pool:
            while todo or pool.pending:
                pool.submit(todo)
                ran += [s.run_id for s in todo]
                for record in pool.wait():
                    if record is not None:
                        acc = record["final"]["test_acc"]
                        line = f"[{len(plan.records) + 1}] {record['run_id']}: test {acc:.4f}"
                        print(line, flush=True)
                        plan.finished(record)
                todo = plan.ready()
    if ran:  # keep the record of the invocation that ran something
        invocation = {
            "config": config_dict(cfg),
            "wall_s": time.perf_counter() - start,
            "jobs": cfg.jobs,
            "launcher": cfg.launcher,
            "ran": sorted(ran),
            "environment": environment(torch.device(cfg.device)),
        }
        write_json(out / "sweep.json", invocation)
    return list(plan.records.values())


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: ``python -m benchmarks.grow_cifar --preset smoke --out runs/smoke``."""
    try:
        cfg, out = resolve_config(argv)
    except ValueError as error:
        print(f"grow_cifar: error: {error}", file=sys.stderr)
        return 2
    print(
        f"# grow_cifar --preset {cfg.preset}: {len(cfg.configs)} configs x {len(cfg.seeds)} "
        f"seeds x where={','.join(cfg.where)}, {cfg.epochs} epochs, {cfg.dataset} on "
        f"{cfg.device}, launcher={cfg.launcher}, jobs={cfg.jobs} -> {out}"
    )
    try:
        records = run_sweep(cfg, out)
    except (SweepError, DatasetNotFoundError) as error:  # also raised in worker processes
        print(f"grow_cifar: error: {error}", file=sys.stderr)
        return 2
    expected = len(SweepPlan(cfg, out).ready()) if cfg.time_limit_s is not None else 0
    if cfg.verbose:
        for record in sorted(records, key=lambda r: r["run_id"]):
            print(
                f"{record['run_id']:32s} widths {record['widths_initial']} -> "
                f"{record['widths_final']}, test accuracy {record['final']['test_acc']:.4f}"
            )
    summary = _report.write_report(out)
    print(summary)
    print(f"# report: {out / 'summary.md'}, figures in {out / 'figures'}")
    if expected:
        print(f"# time limit reached: {expected} runs left; run the same command again to resume")
    return 0
