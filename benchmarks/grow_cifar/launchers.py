"""Who runs a sweep's tasks: local processes, a Ray cluster, or SLURM through submitit."""

from __future__ import annotations

import math
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from .config import BenchConfig
from .train import RunSpec, run_task

__all__ = ["LocalPool", "RayPool", "SubmititPool", "make_pool"]

ROOT = Path(__file__).resolve().parents[2]  # holds benchmarks/: what task processes import


def _python_path() -> str:
    """PYTHONPATH for task processes started elsewhere, so they import this package."""
    return os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)


class _Pool:
    """Common bookkeeping: ``pending`` counts submitted tasks whose record has not come back."""

    def __init__(self, cfg: BenchConfig, out: Path, deadline: float | None) -> None:
        self.cfg, self.out, self.deadline = cfg, out, deadline
        self.pending = 0

    def close(self) -> None:
        """Release what the pool started."""


class LocalPool(_Pool):
    """``--launcher local``: ``cfg.jobs`` processes on this machine (in-process for one job)."""

    def __init__(self, cfg: BenchConfig, out: Path, deadline: float | None) -> None:
        super().__init__(cfg, out, deadline)
        self.queue: list[RunSpec] = []
        self.running: dict[Future, RunSpec] = {}
        self.executor = None
        if cfg.jobs > 1:  # spawn: CUDA and forked threads do not mix
            self.executor = ProcessPoolExecutor(cfg.jobs, mp_context=get_context("spawn"))

    def submit(self, specs: list[RunSpec]) -> None:
        statics = [s for s in specs if s.where is None]
        self.queue = statics + self.queue + [s for s in specs if s.where is not None]
        self.pending += len(specs)

    def wait(self) -> list[dict | None]:
        if self.executor is None:
            self.pending -= 1
            return [run_task(self.queue.pop(0), self.cfg, self.out, self.deadline)]
        while self.queue and len(self.running) < self.cfg.jobs:
            spec = self.queue.pop(0)
            args = (spec, self.cfg, self.out, self.deadline)
            self.running[self.executor.submit(run_task, *args)] = spec
        done, _ = wait(self.running, return_when=FIRST_COMPLETED)
        for future in done:
            del self.running[future]
        self.pending -= len(done)
        return [future.result() for future in done]

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(cancel_futures=True)


class RayPool(_Pool):
    """``--launcher ray``: one Ray task per run, ``threads`` CPUs and ``gpus_per_run`` GPUs each."""

    def __init__(self, cfg: BenchConfig, out: Path, deadline: float | None) -> None:
        super().__init__(cfg, out, deadline)
        import ray

        self.ray = ray
        self.owned = not ray.is_initialized()
        runtime_env = {"env_vars": {"PYTHONPATH": _python_path()}}
        if self.owned:
            ray.init(address=cfg.ray_address, runtime_env=runtime_env)
        options = {"num_cpus": cfg.threads or 1, "num_gpus": cfg.gpus_per_run, "max_retries": 0}
        self.task = ray.remote(run_task).options(**options, runtime_env=runtime_env)
        self.refs: list[Any] = []

    def submit(self, specs: list[RunSpec]) -> None:
        out = str(self.out.resolve())
        self.refs += [self.task.remote(s, self.cfg, Path(out), self.deadline) for s in specs]
        self.pending += len(specs)

    def wait(self) -> list[dict | None]:
        done, self.refs = self.ray.wait(self.refs, num_returns=1)
        self.pending -= len(done)
        return self.ray.get(done)

    def close(self) -> None:
        for ref in self.refs:
            self.ray.cancel(ref, force=True)
        if self.owned:
            self.ray.shutdown()


class SubmititPool(_Pool):
    """``--launcher submitit``: each :meth:`submit` is one job array (SLURM, else local processes)."""

    def __init__(self, cfg: BenchConfig, out: Path, deadline: float | None) -> None:
        super().__init__(cfg, out, deadline)
        import submitit

        self.executor = submitit.AutoExecutor(folder=out / "submitit")
        setup = [f"export PYTHONPATH={_python_path()}"]
        self.executor.update_parameters(
            timeout_min=cfg.slurm_minutes,
            cpus_per_task=cfg.threads or 1,
            gpus_per_node=math.ceil(cfg.gpus_per_run),
            slurm_array_parallelism=cfg.jobs,
            slurm_setup=setup,
            local_setup=setup,
            **({"slurm_partition": cfg.slurm_partition} if cfg.slurm_partition else {}),
        )
        self.jobs: list[Any] = []

    def submit(self, specs: list[RunSpec]) -> None:
        if not specs:
            return
        n = len(specs)
        out = self.out.resolve()
        self.jobs += self.executor.map_array(
            run_task, specs, [self.cfg] * n, [out] * n, [self.deadline] * n
        )
        self.pending += n

    def wait(self) -> list[dict | None]:
        """The whole outstanding array: its baselines then go out as the next array."""
        jobs, self.jobs = self.jobs, []
        self.pending -= len(jobs)
        return [job.result() for job in jobs]

    def close(self) -> None:
        for job in self.jobs:
            job.cancel(check=False)


def make_pool(cfg: BenchConfig, out: Path, deadline: float | None) -> _Pool:
    """The pool of ``cfg.launcher``."""
    pools = {"local": LocalPool, "ray": RayPool, "submitit": SubmititPool}
    return pools[cfg.launcher](cfg, out, deadline)
