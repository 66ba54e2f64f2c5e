"""Cost of collecting NAGN during training: plain step vs the same step with NAGNMonitor attached.

Claim: the monitor's overhead on a training step is negligible: <= 2% at the default settings
(``every=DEFAULT_EVERY``) and <= 6% when collecting on every step (``every=1``).

Set-up (the paper's Section 4 training step): VGG ``[[8,8,8],[16,16,16],[32,32,32]]``, batch 500 of
random 32x32x3 images, cross-entropy, backward, AdamW step; CPU, float32, the monitor on its
default layers (``netsurgeon.trace(model).layers``: 9 convs and the classifier).

Method. The machine may be shared, so the configurations are interleaved step by step on the same
model and optimizer: a repetition is ``DEFAULT_EVERY`` rounds, each round one training step per
configuration in a rotating order; a configuration's block is its ``DEFAULT_EVERY`` steps of the
repetition (exactly one collected step at the default setting). Reported per configuration:

* median block time per step, and the ratio of medians to plain;
* the paired ratio block / plain block of the same repetition: median and IQR (cancels drifts);
* the hook-time ratio ``block / (block - time spent inside the monitor's hooks)``, timed within
  the same steps, so it is insensitive to other processes; it misses indirect costs (autograd's
  extra hook dispatch, cache effects), which the paired ratio includes.

A target is met when the paired median ratio is within it.

``--ddp`` measures the same ratio for a ``DistributedDataParallel`` step: 2 processes on the gloo
backend on CPU (``--threads`` each, default 1), each with its own batch of ``--ddp-batch`` images,
the configurations interleaved in lockstep on every rank; rank 0's block times are reported
(every DDP step waits for the gradient all-reduce, so the ranks run at the same pace). It also
times the once-per-trigger all-reduce of the NAGN sums (``NAGNMonitor.profile(all_reduce=True)``).

``--sampling`` instead measures what ``every=k`` costs in accuracy: the paper's Fig. 1 VGG
``[[8,3,8],[16,4,16],[32,4,32]]`` is trained for two epochs on a synthetic 10-class set (8000
noisy class prototypes, batch 100, 80 steps per epoch like the paper's 40k/500), then monitors
with every = 1, 2, 4, 8, 16 watch the same third epoch; printed: largest relative NAGN difference
and largest contrast difference from every=1, and whether the growth plan is the same.

Run: ``python benchmarks/bench_nagn.py [--reps 20] [--threads N] [--out results.json]``
     ``python benchmarks/bench_nagn.py --sampling``
     ``python benchmarks/bench_nagn.py --ddp [--reps 10] [--ddp-batch 128]``
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import netsurgeon.models as models
from netsurgeon._version import __version__
from netsurgeon.graph import trace
from netsurgeon.nagn import DEFAULT_EVERY, NAGNMonitor, plan_growth

# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class Config:
    reps: int = 20  # repetitions, each `block` interleaved rounds of one step per configuration
    warmup: int = 1  # untimed repetitions first
    batch: int = 500  # samples per step (paper: 500)
    block: int = DEFAULT_EVERY  # rounds per repetition (steps per configuration)
    threads: int = 0  # torch threads; 0 keeps torch's default
    seed: int = 0  # data, model and label seed
    target_default: float = 1.02  # max ratio at every=DEFAULT_EVERY
    target_every_step: float = 1.06  # max ratio at every=1
    sampling: bool = False  # run the every=k agreement check instead of the timing
    ddp: bool = False  # time DDP steps on 2 gloo ranks (CPU) instead
    ddp_batch: int = 128  # samples per rank and step with --ddp


WIDTHS = [[8, 8, 8], [16, 16, 16], [32, 32, 32]]


def parse_args() -> tuple[Config, str | None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, default in asdict(Config()).items():
        flag = f"--{name.replace('_', '-')}"
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", default=default)
        else:
            parser.add_argument(flag, type=type(default), default=default)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    ns = vars(parser.parse_args())
    out = ns.pop("out")
    return Config(**ns), out


# ----------------------------------------------------------------------------- model and step


class TimedMonitor(NAGNMonitor):
    """NAGNMonitor that adds the wall time spent inside its own hooks to ``hook_s``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.hook_s = 0.0
        super().__init__(*args, **kwargs)

    def _timed(self, fn: Callable[..., Any], *args: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.hook_s += time.perf_counter() - start

    def _on_model_forward(self, *args: Any) -> None:
        self._timed(super()._on_model_forward, *args)

    def _on_model_return(self, *args: Any) -> None:
        self._timed(super()._on_model_return, *args)

    def _on_layer(self, *args: Any) -> None:
        self._timed(super()._on_layer, *args)

    def _on_grad(self, *args: Any) -> None:
        self._timed(super()._on_grad, *args)


def make_step(cfg: Config) -> tuple[nn.Module, Callable[[], None]]:
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = models.vgg(WIDTHS).train()
    x = torch.randn(cfg.batch, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (cfg.batch,), generator=gen)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return model, step


# ----------------------------------------------------------------------------- measurement


def measure(cfg: Config, step: Callable[[], None], configs: dict[str, TimedMonitor | None]) -> dict:
    """Per configuration, per repetition: block wall time, block CPU time, hook time."""
    names = list(configs)
    series: dict[str, dict[str, list[float]]] = {
        name: {"wall": [], "cpu": [], "hook": []} for name in names
    }
    for rep in range(-cfg.warmup, cfg.reps):
        sums = {name: [0.0, 0.0, 0.0] for name in names}
        for j in range(cfg.block):
            shift = (rep * cfg.block + j) % len(names)
            for name in names[shift:] + names[:shift]:
                monitor = configs[name]
                if monitor is not None:
                    monitor.attach()
                    monitor.hook_s = 0.0
                start, start_cpu = time.perf_counter(), time.process_time()
                step()
                sums[name][0] += time.perf_counter() - start
                sums[name][1] += time.process_time() - start_cpu
                if monitor is not None:
                    sums[name][2] += monitor.hook_s
                    monitor.detach()
        if rep >= 0:
            for name in names:
                for key, value in zip(("wall", "cpu", "hook"), sums[name], strict=True):
                    series[name][key].append(value)
    return series


# ----------------------------------------------------------------------------- report


def summarise(cfg: Config, series: dict) -> dict:
    plain = series["plain"]
    targets = {f"every={DEFAULT_EVERY} (default)": cfg.target_default}
    targets["every=1"] = cfg.target_every_step
    results = {}
    for name, s in series.items():
        paired = [a / b for a, b in zip(s["wall"], plain["wall"], strict=True)]
        q = statistics.quantiles(paired, n=4) if len(paired) > 1 else [paired[0]] * 3
        ratio = statistics.median(paired)
        target = targets.get(name)
        results[name] = {
            "median_step_s": statistics.median(s["wall"]) / cfg.block,
            "ratio_of_medians": statistics.median(s["wall"]) / statistics.median(plain["wall"]),
            "paired_ratio_median": ratio,
            "paired_ratio_iqr": [q[0], q[2]],
            "cpu_paired_ratio_median": statistics.median(
                a / b for a, b in zip(s["cpu"], plain["cpu"], strict=True)
            ),
            "hook_ratio_median": statistics.median(
                w / (w - h) for w, h in zip(s["wall"], s["hook"], strict=True)
            ),
            "hook_ms_per_step": 1e3 * statistics.median(s["hook"]) / cfg.block,
            "target": target,
            "met": None if target is None else ratio <= target,
        }
    return results


def report(
    cfg: Config,
    results: dict,
    layers: list[str],
    series: dict,
    batch: int | None = None,
    threads: int | None = None,
) -> None:
    print(
        f"NAGN monitor overhead: VGG{WIDTHS} batch {batch or cfg.batch}, {len(layers)} layers, "
        f"{threads or torch.get_num_threads()} threads, {cfg.reps} reps x {cfg.block} interleaved "
        f"rounds, torch {torch.__version__}"
    )
    head = ("config", "s/step", "ratio of", "paired", "paired IQR", "hook", "hook ms", "target")
    sub = ("", "(median)", "medians", "ratio", "", "ratio", "per step", "")
    fmt = "{:<20}{:>10}{:>10}{:>8}{:>17}{:>8}{:>10}{:>8}  {}"
    print(fmt.format(*head, "met"))
    print(fmt.format(*sub, ""))
    for name, r in results.items():
        iqr = f"[{r['paired_ratio_iqr'][0]:.3f}, {r['paired_ratio_iqr'][1]:.3f}]"
        print(
            fmt.format(
                name,
                f"{r['median_step_s']:.4f}",
                f"{r['ratio_of_medians']:.3f}",
                f"{r['paired_ratio_median']:.3f}",
                iqr,
                f"{r['hook_ratio_median']:.4f}",
                f"{r['hook_ms_per_step']:.2f}",
                "" if r["target"] is None else f"{r['target']:.2f}",
                "" if r["met"] is None else r["met"],
            )
        )
    wall = series["plain"]["wall"]
    q = statistics.quantiles(wall, n=4)
    print(
        f"machine noise: plain block time IQR/median = {(q[2] - q[0]) / statistics.median(wall):.2f}"
        " ('met' uses the paired ratio; the hook ratio is immune to other processes)"
    )


# ----------------------------------------------------------------------------- sampling check


def sampling_agreement(cfg: Config) -> dict:
    """Profiles and plans from every=k vs every=1 over the same epoch (see module docstring)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    n, batch = 8000, 100
    y = torch.randint(0, 10, (n,), generator=gen)
    prototypes = torch.randn(10, 3, 32, 32, generator=gen)
    x = torch.randn(n, 3, 32, 32, generator=gen) + 0.5 * prototypes[y]
    model = models.vgg(models.FIG1_WIDTHS)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    graph = trace(model)

    def epoch() -> None:
        for i in range(0, n, batch):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[i : i + batch]), y[i : i + batch]).backward()
            opt.step()

    epoch()
    epoch()
    monitors = {k: NAGNMonitor(model, every=k) for k in (1, 2, 4, 8, 16)}
    epoch()
    plans = {
        k: plan_growth(m.profile(), graph.widths(), output_layers=graph.output_layers)
        for k, m in monitors.items()
    }
    ref = plans[1]
    print(f"sampling check: VGG{models.FIG1_WIDTHS}, {n // batch} steps of {batch}; every=1 plan:")
    print(ref)
    results = {}
    for k, plan in plans.items():
        rel = max(abs(plan.profile[name] / ref.profile[name] - 1) for name in ref.layers)
        dr = max(abs(plan.contrasts[name] - ref.contrasts[name]) for name in ref.layers)
        same = plan.increments == ref.increments
        results[f"every={k}"] = {
            "max_rel_nagn_diff": rel,
            "max_abs_contrast_diff": dr,
            "same_plan": same,
            "increments": plan.increments,
        }
        print(
            f"every={k:<3} steps {monitors[k].collected_steps:>3}  max |NAGN/NAGN_1 - 1| {rel:.4f}"
            f"  max |r - r_1| {dr:.4f}  same plan: {same}"
        )
    return results


# ----------------------------------------------------------------------------- DDP


DDP_WORLD = 2


def _ddp_worker(rank: int, cfg: Config, store: str, queue: Any) -> None:
    """One rank: interleaved plain / monitored DDP steps, then the profile all-reduce."""
    torch.set_num_threads(cfg.threads or 1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=DDP_WORLD)
    try:
        gen = torch.Generator().manual_seed(cfg.seed + rank)
        torch.manual_seed(cfg.seed)  # the same model on every rank
        model = models.vgg(WIDTHS).train()
        ddp = nn.parallel.DistributedDataParallel(model)
        x = torch.randn(cfg.ddp_batch, 3, 32, 32, generator=gen)
        y = torch.randint(0, 10, (cfg.ddp_batch,), generator=gen)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(ddp(x), y).backward()
            opt.step()

        monitors = {
            f"every={DEFAULT_EVERY} (default)": TimedMonitor(model),
            "every=1": TimedMonitor(model, every=1),
        }
        for monitor in monitors.values():
            monitor.detach()
        series = measure(cfg, step, {"plain": None, **monitors})
        monitor = monitors["every=1"].attach()
        step()
        reduce_s = []
        for _ in range(20):
            start = time.perf_counter()
            monitor.profile(all_reduce=True)
            reduce_s.append(time.perf_counter() - start)
        monitor.detach()
        if rank == 0:
            queue.put({"series": series, "reduce_s": reduce_s, "layers": monitor.layers})
    finally:
        dist.destroy_process_group()


def ddp_overhead(cfg: Config) -> dict:
    """Spawn the ranks, collect rank 0's series, print the ratios (see module docstring)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        context = mp.get_context("spawn")
        queue = context.SimpleQueue()
        mp.start_processes(
            _ddp_worker,
            args=(cfg, f"{tmp}/store", queue),
            nprocs=DDP_WORLD,
            join=True,
            start_method="spawn",
        )
        data = queue.get()
    series = data["series"]
    results = summarise(cfg, series)
    print(
        f"DDP: {DDP_WORLD} gloo ranks on CPU, {cfg.threads or 1} thread(s) each, batch "
        f"{cfg.ddp_batch} per rank; times of rank 0"
    )
    report(cfg, results, data["layers"], series, batch=cfg.ddp_batch, threads=cfg.threads or 1)
    reduce_ms = 1e3 * statistics.median(data["reduce_s"])
    step_ms = 1e3 * results["plain"]["median_step_s"]
    print(
        f"profile(all_reduce=True): {reduce_ms:.2f} ms per call (median of 20; once per trigger), "
        f"{reduce_ms / step_ms:.4f} of one plain DDP step ({step_ms:.0f} ms)"
    )
    return {"results": results, "profile_all_reduce_ms": reduce_ms, "series_s": series}


def main() -> None:
    cfg, out = parse_args()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.sampling:
        results = sampling_agreement(cfg)
        if out:
            with open(out, "w") as fh:
                json.dump({"config": asdict(cfg), "sampling": results}, fh, indent=2)
        return
    if cfg.ddp:
        results = ddp_overhead(cfg)
        if out:
            with open(out, "w") as fh:
                json.dump({"config": asdict(cfg), "ddp": results}, fh, indent=2)
        return
    model, step = make_step(cfg)
    monitors = {  # default layers: netsurgeon.trace(model).layers
        f"every={DEFAULT_EVERY} (default)": TimedMonitor(model),
        "every=1": TimedMonitor(model, every=1),
    }
    for monitor in monitors.values():
        monitor.detach()
    layers = monitors["every=1"].layers
    series = measure(cfg, step, {"plain": None, **monitors})
    results = summarise(cfg, series)
    report(cfg, results, layers, series)
    if out:
        record = {
            "config": asdict(cfg),
            "netsurgeon": __version__,
            "torch": torch.__version__,
            "machine": platform.platform(),
            "threads": torch.get_num_threads(),
            "layers": layers,
            "results": results,
            "series_s": series,
        }
        with open(out, "w") as fh:
            json.dump(record, fh, indent=2)


if __name__ == "__main__":
    main()
