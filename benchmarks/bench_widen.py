"""Cost of ``trace`` and ``widen`` against ``copy.deepcopy`` of the same model, side by side.

Claim: widening every widenable channel group of torchvision's vgg16_bn and resnet50 by 25% costs
at most 2x one ``copy.deepcopy(model)`` (it must allocate ~1.5x the parameters), and ``trace``
(tracing plus the channel-group analysis) costs at most 1x. On resnet50 the groups include the
residual streams (several producers each) and the bottleneck interiors. Timings are interleaved repetitions in one process and the
report is the ratio of medians, because absolute times on a shared machine are not stable.

    python benchmarks/bench_widen.py [--reps 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn

import netsurgeon
from netsurgeon.models import vgg

# ---- config ------------------------------------------------------------------------------------
TARGET_WIDEN = 2.0  # widen 25% / deepcopy
TARGET_TRACE = 1.0  # trace / deepcopy


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _plan(model: nn.Module, fraction: float) -> dict[str, int]:
    """``fraction`` of every widenable group's width, rounded to its granularity."""
    return {
        g.name: g.granularity * max(1, round(g.width * fraction / g.granularity))
        for g in netsurgeon.trace(model).groups
        if g.widenable
    }


def measure(name: str, make: Callable[[], nn.Module], reps: int) -> dict[str, float]:
    """Median seconds of deepcopy, trace and widen-by-25% on fresh copies, interleaved."""
    base = make().eval()
    plan = _plan(base, 0.25)
    times: dict[str, list[float]] = {"deepcopy": [], "trace": [], "widen": []}
    for _ in range(reps):
        times["deepcopy"].append(_time(lambda: copy.deepcopy(base)))
        times["trace"].append(_time(lambda: netsurgeon.trace(base)))
        victim = copy.deepcopy(base)
        times["widen"].append(_time(lambda m=victim: netsurgeon.widen(m, plan)))
        del victim
    params = sum(p.numel() for p in base.parameters())
    grown = netsurgeon.widen(copy.deepcopy(base), plan)
    ratio_params = sum(p.numel() for p in grown.parameters()) / params
    medians = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"{name:<28} params {params / 1e6:7.2f}M -> x{ratio_params:.2f}   "
        f"deepcopy {medians['deepcopy'] * 1e3:8.1f} ms   "
        f"trace {medians['trace'] / medians['deepcopy']:5.2f}x   "
        f"widen 25% {medians['widen'] / medians['deepcopy']:5.2f}x"
    )
    return {k: v / medians["deepcopy"] for k, v in medians.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"# bench_widen  torch {torch.__version__}  {platform.processor() or platform.machine()}  "
        f"threads {torch.get_num_threads()}  reps {args.reps} (ratios of medians, same run)"
    )
    measure("vgg [[64,64],[128,128],[256]]", lambda: vgg([[64, 64], [128, 128], [256]]), args.reps)
    for name in ("vgg16_bn", "resnet50"):
        ratios = measure(f"torchvision {name}", getattr(torchvision.models, name), args.reps)
        ok_widen = ratios["widen"] <= TARGET_WIDEN
        ok_trace = ratios["trace"] <= TARGET_TRACE
        print(
            f"{name}: widen 25% / deepcopy = {ratios['widen']:.2f} (target <= {TARGET_WIDEN}: "
            f"{'met' if ok_widen else 'MISSED'});  trace / deepcopy = {ratios['trace']:.3f} "
            f"(target <= {TARGET_TRACE}: {'met' if ok_trace else 'MISSED'})"
        )


if __name__ == "__main__":
    main()
