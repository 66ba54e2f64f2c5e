"""Cost of ``trace`` and ``widen`` against ``copy.deepcopy`` of the same model, side by side.

Claim: widening every widenable channel group by 25% costs at most 2x one ``copy.deepcopy(model)``
on torchvision's vgg16_bn, resnet50 and resnext50_32x4d (it must allocate ~1.5x the parameters),
at most 3x when it also grows AdamW's state (``exp_avg``, ``exp_avg_sq``: three tensors per
parameter instead of one), and no model takes more than 3x without state (timm's fastvit_t8, with
its many small grouped and depthwise convolutions, included). ``trace`` (tracing plus the
channel-group analysis) is reported too, and so is ``floor``: allocating every grown tensor at its
new shape and copying its old entries in (new entries left unwritten), the part of a widening no
implementation avoids (about 1.5x the bytes of a deepcopy for a 25% widening). Hardware: whatever
runs it; the targets were set on a 2-core CPU machine, float32.

Method: every timing is repeated ``--reps`` times, interleaved (deepcopy, trace, widen, widen with
AdamW) in one process, and each ratio is the median over the median of ``deepcopy(model)`` in the
same run, because absolute times on a shared machine are not stable. ``widen`` is the public call,
tracing included. "with AdamW" widens a copy on which one AdamW step was taken (so ``exp_avg`` and
``exp_avg_sq`` exist; ``.grad`` then set to ``None`` as ``zero_grad()`` does), passing
``optimizer=``; its denominator is still ``deepcopy(model)`` (the widening then writes about 4.6x
the bytes a deepcopy writes), and the ratio over ``deepcopy((model, optimizer))`` is printed
beside it. ``--clock cpu`` times with the process's CPU time instead of the wall clock: on a
machine shared with other jobs, wall times mostly measure waiting for a core (and a second
thread's wake-ups), while CPU time still counts the work, page faults included. Use it with one
thread (``OMP_NUM_THREADS=1``): a second OpenMP thread's spin-waiting counts as CPU time too.

The checkout's ``netsurgeon`` is measured (its root goes first on ``sys.path``), not whichever one
the environment has installed.

With ``--frontends``, the two front ends' trace times instead (``docs/frontends.md``): symbolic
tracing with shape propagation and ``frontend="export"`` on the same example inputs, each over
``deepcopy(model)`` in the same run, for resnet50 and a tiny Hugging Face BERT (2 layers, hidden
128; transformers needed; symbolic tracing cannot read it).

    python benchmarks/bench_widen.py [--reps 5] [--threads 2] [--clock wall] [--models resnet50]
    python benchmarks/bench_widen.py --frontends [--reps 5]
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's netsurgeon

import netsurgeon
from netsurgeon.models import vgg

# ---- config ------------------------------------------------------------------------------------
TARGET_WIDEN = 2.0  # widen 25% / deepcopy, without optimizer state (targeted models)
TARGET_WIDEN_ADAMW = 3.0  # widen 25% with AdamW state / deepcopy (targeted models)
TARGET_ANY = 3.0  # widen 25% / deepcopy, without state, every model
TARGET_TRACE = 1.0  # trace / deepcopy
TARGETED = ("vgg16_bn", "resnet50", "resnext50_32x4d")
FRACTION = 0.25  # of each widenable group's width


def _fastvit_t8() -> nn.Module:
    import timm  # optional: only this model needs it

    return timm.create_model("fastvit_t8", pretrained=False)


MODELS: dict[str, Callable[[], nn.Module]] = {
    "vgg_small": lambda: vgg([[64, 64], [128, 128], [256]]),
    "vgg16_bn": torchvision.models.vgg16_bn,
    "resnet50": torchvision.models.resnet50,
    "resnext50_32x4d": torchvision.models.resnext50_32x4d,
    "fastvit_t8": _fastvit_t8,
}


def _bert_tiny() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    import transformers  # optional: only this model needs it

    cfg = transformers.BertConfig(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512
    )
    return transformers.BertModel(cfg), (torch.randint(0, cfg.vocab_size, (2, 16)),)


FRONTEND_MODELS: dict[str, Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]]] = {
    "resnet50": lambda: (torchvision.models.resnet50(), (torch.randn(1, 3, 224, 224),)),
    "bert_tiny": _bert_tiny,
}


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


# ---- measurement -------------------------------------------------------------------------------
def _time(fn: Callable[[], object], clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds ``fn`` takes, the garbage of earlier timings (fx graphs) collected first."""
    gc.collect()
    start = clock()
    fn()
    return clock() - start


def _grown_shapes(base: nn.Module, grown: nn.Module) -> list[tuple[torch.Tensor, torch.Size]]:
    """Each tensor of ``base`` that the widening grows, with its shape in ``grown``."""
    new = dict(grown.named_parameters()) | dict(grown.named_buffers())
    old = dict(base.named_parameters()) | dict(base.named_buffers())
    return [(t, new[n].shape) for n, t in old.items() if new[n].shape != t.shape]


def _floor(tensors: list[tuple[torch.Tensor, torch.Size]]) -> list[torch.Tensor]:
    """Allocate every grown tensor and copy its old entries in (kept alive, as a widening keeps
    them until its commit); the new entries are left unwritten."""
    out = []
    for old, shape in tensors:
        new = torch.empty(shape, dtype=old.dtype, device=old.device)
        new[tuple(slice(0, n) for n in old.shape)].copy_(old)
        out.append(new)
    return out


def _plan(model: nn.Module, fraction: float) -> dict[str, int]:
    """``fraction`` of every widenable group's width, rounded to its granularity."""
    return {
        g.name: g.granularity * max(1, round(g.width * fraction / g.granularity))
        for g in netsurgeon.trace(model).groups
        if g.widenable
    }


def _with_adamw(model: nn.Module) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A copy of ``model`` and an AdamW that took one step on it (state exists, no grads)."""
    twin = copy.deepcopy(model)
    opt = torch.optim.AdamW(twin.parameters(), lr=1e-3)
    for p in twin.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return twin, opt


def measure(
    name: str, make: Callable[[], nn.Module], reps: int, clock: Callable[[], float]
) -> dict[str, float]:
    """Median seconds of deepcopy, trace and widen-by-25% (without / with AdamW), interleaved,
    as ratios over deepcopy's median."""
    base = make().eval()
    plan = _plan(base, FRACTION)
    stateful, stateful_opt = _with_adamw(base)
    grown = netsurgeon.widen(copy.deepcopy(base), plan)
    tensors = _grown_shapes(base, grown)
    keys = ("deepcopy", "deepcopy_adamw", "trace", "floor", "widen", "widen_adamw")
    times: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(reps):
        times["deepcopy"].append(_time(lambda: copy.deepcopy(base), clock))
        times["deepcopy_adamw"].append(
            _time(lambda: copy.deepcopy((stateful, stateful_opt)), clock)
        )
        times["trace"].append(_time(lambda: netsurgeon.trace(base), clock))
        times["floor"].append(_time(lambda: _floor(tensors), clock))
        victim = copy.deepcopy(base)
        times["widen"].append(_time(lambda m=victim: netsurgeon.widen(m, plan), clock))
        victim, opt = _with_adamw(stateful)
        times["widen_adamw"].append(
            _time(lambda m=victim, o=opt: netsurgeon.widen(m, plan, optimizer=o), clock)
        )
        del victim, opt
    params = sum(p.numel() for p in base.parameters())
    ratio_params = sum(p.numel() for p in grown.parameters()) / params
    medians = {k: statistics.median(v) for k, v in times.items()}
    ratios = {k: v / medians["deepcopy"] for k, v in medians.items()}
    print(
        f"{name:<16} params {params / 1e6:6.2f}M -> x{ratio_params:.2f}  groups {len(plan):4d}  "
        f"deepcopy {medians['deepcopy'] * 1e3:7.1f} ms  trace {ratios['trace']:5.2f}x  "
        f"floor {ratios['floor']:5.2f}x  widen {ratios['widen']:5.2f}x  "
        f"widen+AdamW {ratios['widen_adamw']:5.2f}x "
        f"({medians['widen_adamw'] / medians['deepcopy_adamw']:4.2f}x deepcopy of model+AdamW)",
        flush=True,
    )
    return ratios


def measure_frontends(name: str, reps: int) -> None:
    """Median seconds of symbolic and export tracing (both with inputs), over deepcopy's."""
    base, inputs = FRONTEND_MODELS[name]()
    base.eval()
    times: dict[str, list[float]] = {"deepcopy": [], "symbolic": [], "export": []}
    symbolic_error = None
    for _ in range(reps):
        times["deepcopy"].append(_time(lambda: copy.deepcopy(base)))
        try:
            times["symbolic"].append(_time(lambda: netsurgeon.trace(base, inputs, strict=False)))
        except netsurgeon.TraceError as e:
            symbolic_error = str(e).splitlines()[0][:80]
        times["export"].append(
            _time(lambda: netsurgeon.trace(base, inputs, strict=False, frontend="export"))
        )
    medians = {k: statistics.median(v) for k, v in times.items() if v}
    copy_ms = medians["deepcopy"] * 1e3
    symbolic = (
        f"{medians['symbolic'] * 1e3:7.1f} ms ({medians['symbolic'] / medians['deepcopy']:5.2f}x)"
        if "symbolic" in medians
        else f"fails: {symbolic_error}"
    )
    export_ms = medians["export"] * 1e3
    print(
        f"{name:<10} deepcopy {copy_ms:7.1f} ms  symbolic {symbolic}  "
        f"export {export_ms:7.1f} ms ({medians['export'] / medians['deepcopy']:5.2f}x)",
        flush=True,
    )


# ---- report ------------------------------------------------------------------------------------
def _verdict(name: str, ratios: dict[str, float]) -> list[str]:
    """The targets that apply to ``name`` and whether each was met."""
    checks = [("widen", TARGET_ANY), ("trace", TARGET_TRACE)]
    if name in TARGETED:
        checks = [
            ("widen", TARGET_WIDEN),
            ("widen_adamw", TARGET_WIDEN_ADAMW),
            ("trace", TARGET_TRACE),
        ]
    return [
        f"{key} {ratios[key]:.2f} <= {limit}: {'met' if ratios[key] <= limit else 'MISSED'}"
        for key, limit in checks
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument(
        "--models", nargs="+", choices=sorted(MODELS), default=list(MODELS), help="which models"
    )
    parser.add_argument(
        "--frontends", action="store_true", help="trace time of both front ends instead"
    )
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall clock, or the process's CPU time (shared machines; with one thread)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"# bench_widen  torch {torch.__version__}  {platform.processor() or platform.machine()}  "
        f"threads {torch.get_num_threads()}  reps {args.reps}  load {load:.2f}  float32  "
        f"clock {args.clock}  "
        "(ratios of medians over deepcopy, same run)",
        flush=True,
    )
    if args.frontends:
        for name in FRONTEND_MODELS:
            measure_frontends(name, args.reps)
        return
    clock = CLOCKS[args.clock]
    results = {name: measure(name, MODELS[name], args.reps, clock) for name in args.models}
    for name, ratios in results.items():
        print(f"{name}: " + ";  ".join(_verdict(name, ratios)))


if __name__ == "__main__":
    main()
