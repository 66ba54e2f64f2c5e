"""Cost of ``trace`` and ``widen`` against ``copy.deepcopy`` of the same model, side by side.

Targets (each run prints which it met): widening every widenable channel group by 25% costs at
most 2x one ``copy.deepcopy(model)`` on torchvision's vgg16_bn, resnet50 and resnext50_32x4d (it
must allocate ~1.5x the parameters), at most 3x one ``copy.deepcopy((model, optimizer))`` when it
also grows AdamW's state, and no model takes more than 3x without state (timm's fastvit_t8, with
its many small grouped and depthwise convolutions, included). Hardware: whatever runs it; the
targets were set on a 2-core CPU machine, float32. On that machine they are met in cold memory
with one torch thread on vgg16_bn and resnet50, and in warm memory on none of the three:
``floor`` and ``draws`` alone take about 1.7x there (``docs/widen.md``, "Cost").

What a widening is made of is timed beside it, each alone:

* ``trace``: tracing plus the channel-group analysis (the public ``widen`` traces);
* ``floor``: allocating every grown tensor at its new shape and writing each entry once (old
  entries copied in, new ones zeroed), which no implementation avoids (about 1.5x the bytes of a
  deepcopy);
* ``draws``: the paper init's normal draws for the new rows, the sizes recorded from the widening;
* ``rest``: ``widen - trace - floor - draws``, everything else (fills, bookkeeping, the commit).

"given its graph" is the widening passed the graph it needs (``graph=``, traced before the
timing), which is what a :class:`~netsurgeon.Grower` pays on top of the one trace of its growth.

Method: every timing is repeated ``--reps`` times, interleaved, in one process, after two untimed
rounds, and each ratio is the median over the median of ``deepcopy(model)`` in the same run,
because absolute times on a shared machine are not stable. "with AdamW" widens a copy on which
one AdamW step was taken (so ``exp_avg`` and ``exp_avg_sq`` exist; ``.grad`` then set to ``None``
as ``zero_grad()`` does), passing ``optimizer=``; its ratio is over ``deepcopy((model,
optimizer))``, which copies the same three tensors per parameter (over ``deepcopy(model)`` the
widening writes about 4.6x the bytes, so 3x would be below what memory allows); the ratio over
``deepcopy(model)`` is printed beside it.

**The allocator is pinned** (``benchmarks/allocator.py``, ``--malloc``): under glibc's defaults a
deepcopy timed in a loop reuses the pages its predecessor freed while a widening, which allocates
while the old model is alive, mostly faults fresh ones, and the ratio then compares allocator
states (this VM takes about 2 us per 4 KiB page fault: resnet50's 150 MB of grown tensors cost
more in faults than in copying). ``warm``: nothing is returned to the kernel, nobody faults;
``cold``: every block of 64 KiB or more is mapped fresh, everybody faults all new memory. Each
line prints the median page faults of the deepcopy and of the widening, which shows the state
each met. Both states run by default, cold first (a process cannot go back to cold).

``--clock cpu`` times with the process's CPU time instead of the wall clock: on a machine shared
with other jobs, wall times mostly measure waiting for a core (and a second thread's wake-ups),
while CPU time still counts the work, page faults included. Use it with one thread
(``OMP_NUM_THREADS=1``): a second OpenMP thread's spin-waiting counts as CPU time too.

The checkout's ``netsurgeon`` is measured (its root goes first on ``sys.path``), not whichever one
the environment has installed.

With ``--frontends``, the two front ends' trace times instead (``docs/frontends.md``): symbolic
tracing with shape propagation and ``frontend="export"`` on the same example inputs, each over
``deepcopy(model)`` in the same run, for resnet50 and a tiny Hugging Face BERT (2 layers, hidden
128; transformers needed; symbolic tracing cannot read it).

    python benchmarks/bench_widen.py [--reps 5] [--threads 2] [--clock wall] [--malloc warm cold]
                                     [--models resnet50]
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
sys.path.insert(1, str(Path(__file__).resolve().parent))

import allocator

import netsurgeon
from netsurgeon.models import vgg
from netsurgeon.surgery import init

# ---- config ------------------------------------------------------------------------------------
TARGET_WIDEN = 2.0  # widen 25% / deepcopy, without optimizer state (targeted models)
TARGET_WIDEN_ADAMW = 3.0  # widen 25% with AdamW state / deepcopy of model and AdamW (targeted)
TARGET_ANY = 3.0  # widen 25% / deepcopy, without state, every model
TARGET_TRACE = 1.0  # trace / deepcopy
TARGETED = ("vgg16_bn", "resnet50", "resnext50_32x4d")
FRACTION = 0.25  # of each widenable group's width
WARMUP = 2  # untimed rounds first: glibc's heap settles in about two


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
Timing = tuple[float, int]  # seconds, minor page faults


def _time(fn: Callable[[], object], clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Seconds ``fn`` takes and the page faults it causes, the garbage of earlier timings (fx
    graphs) collected first."""
    gc.collect()
    faults, start = allocator.faults(), clock()
    fn()
    return clock() - start, allocator.faults() - faults


def _grown_shapes(base: nn.Module, grown: nn.Module) -> list[tuple[torch.Tensor, torch.Size]]:
    """Each tensor of ``base`` that the widening grows, with its shape in ``grown``."""
    new = dict(grown.named_parameters()) | dict(grown.named_buffers())
    old = dict(base.named_parameters()) | dict(base.named_buffers())
    return [(t, new[n].shape) for n, t in old.items() if new[n].shape != t.shape]


def _floor(tensors: list[tuple[torch.Tensor, torch.Size]]) -> list[torch.Tensor]:
    """Allocate every grown tensor and write each of its entries once: the old ones copied in,
    the new ones zeroed (kept alive, as a widening keeps them until its commit)."""
    out = []
    for old, shape in tensors:
        new = torch.empty(shape, dtype=old.dtype, device=old.device)
        new[tuple(slice(0, n) for n in old.shape)].copy_(old)
        for d, (size, grown) in enumerate(zip(old.shape, shape, strict=True)):
            if grown > size:  # the entries whose first new index is along d
                new[(*(slice(0, n) for n in old.shape[:d]), slice(size, grown))].zero_()
        out.append(new)
    return out


def _reference(base: nn.Module, plan: dict[str, int]) -> tuple[nn.Module, list[int]]:
    """``base`` widened by ``plan`` (a copy), and the size of each normal draw the widening's
    init made, in order (the init's own ``normal_``, recorded)."""
    sizes: list[int] = []
    draw = init.normal_

    def recording(out: torch.Tensor, std: float, generator: torch.Generator | None) -> None:
        sizes.append(out.numel())
        draw(out, std, generator)

    init.normal_ = recording
    try:
        return netsurgeon.widen(copy.deepcopy(base), plan), sizes
    finally:
        init.normal_ = draw


def _draws(sizes: list[int]) -> None:
    """The init's normal draws alone: one new buffer of each recorded size, filled as the init
    fills it."""
    for n in sizes:
        init.normal_(torch.empty(n), 1.0, None)


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


KEYS = (
    "deepcopy",
    "deepcopy_adamw",
    "trace",
    "floor",
    "draws",
    "widen",
    "widen_graph",
    "widen_adamw",
)


def _timings(
    base: nn.Module, plan: dict[str, int], reps: int, clock: Callable[[], float]
) -> dict[str, list[Timing]]:
    """Every timing of ``KEYS``, interleaved, ``reps`` times after ``WARMUP`` untimed rounds (in
    the warm state, the rounds that bring the pages the later ones reuse)."""
    stateful, stateful_opt = _with_adamw(base)
    grown, sizes = _reference(base, plan)
    tensors = _grown_shapes(base, grown)
    del grown
    times: dict[str, list[Timing]] = {k: [] for k in KEYS}
    for rep in range(WARMUP + reps):
        found = {
            "deepcopy": _time(lambda: copy.deepcopy(base), clock),
            "deepcopy_adamw": _time(lambda: copy.deepcopy((stateful, stateful_opt)), clock),
            "trace": _time(lambda: netsurgeon.trace(base), clock),
            "floor": _time(lambda: _floor(tensors), clock),
            "draws": _time(lambda: _draws(sizes), clock),
        }
        victim = copy.deepcopy(base)
        found["widen"] = _time(lambda m=victim: netsurgeon.widen(m, plan), clock)
        victim = copy.deepcopy(base)
        graph = netsurgeon.trace(victim)  # as the Grower holds it: traced once per growth
        found["widen_graph"] = _time(
            lambda m=victim, g=graph: netsurgeon.widen(m, plan, graph=g), clock
        )
        del graph
        victim, opt = _with_adamw(stateful)
        found["widen_adamw"] = _time(
            lambda m=victim, o=opt: netsurgeon.widen(m, plan, optimizer=o), clock
        )
        del victim, opt
        for key, timing in found.items():
            if rep >= WARMUP:
                times[key].append(timing)
    return times


def measure(
    name: str, make: Callable[[], nn.Module], reps: int, clock: Callable[[], float], state: str
) -> dict[str, float]:
    """Median seconds of deepcopy, trace, floor, draws and widen-by-25% (without / with AdamW),
    interleaved, as ratios over deepcopy's median (the AdamW widening's over the median of
    ``deepcopy((model, optimizer))``)."""
    base = make().eval()
    plan = _plan(base, FRACTION)
    times = _timings(base, plan, reps, clock)
    medians = {k: statistics.median(t for t, _ in v) for k, v in times.items()}
    faults = {k: statistics.median(f for _, f in v) for k, v in times.items()}
    ratios = {k: v / medians["deepcopy"] for k, v in medians.items()}
    ratios["widen_adamw"] = medians["widen_adamw"] / medians["deepcopy_adamw"]
    ratios["rest"] = ratios["widen"] - ratios["trace"] - ratios["floor"] - ratios["draws"]
    params = sum(p.numel() for p in base.parameters())
    print(
        f"{name:<16} {state:<5} params {params / 1e6:6.2f}M  groups {len(plan):3d}  "
        f"deepcopy {medians['deepcopy'] * 1e3:6.1f} ms ({faults['deepcopy']:5.0f} faults)  "
        f"trace {ratios['trace']:4.2f}x  floor {ratios['floor']:4.2f}x  "
        f"draws {ratios['draws']:4.2f}x  rest {ratios['rest']:5.2f}x  "
        f"widen {ratios['widen']:4.2f}x ({faults['widen']:5.0f} faults; "
        f"{ratios['widen_graph']:4.2f}x given its graph)  "
        f"widen+AdamW {ratios['widen_adamw']:4.2f}x "
        f"({medians['widen_adamw'] / medians['deepcopy']:4.2f}x deepcopy of the model alone)",
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
        times["deepcopy"].append(_time(lambda: copy.deepcopy(base))[0])
        try:
            times["symbolic"].append(_time(lambda: netsurgeon.trace(base, inputs, strict=False))[0])
        except netsurgeon.TraceError as e:
            symbolic_error = str(e).splitlines()[0][:80]
        times["export"].append(
            _time(lambda: netsurgeon.trace(base, inputs, strict=False, frontend="export"))[0]
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


def _states(requested: list[str]) -> list[str]:
    """The allocator states to run, in the only order one process can take them: glibc's
    defaults cannot be restored once pinned, and memory the warm state keeps stays reusable, so
    a cold state after it would not be cold (module ``allocator``)."""
    order = [s for s in allocator.STATES_IN_ORDER if s in requested]
    if requested != order:  # a repeated or misplaced state
        raise SystemExit(
            f"--malloc {' '.join(requested)}: give each state once, in the order "
            f"{' '.join(allocator.STATES_IN_ORDER)} (one process cannot go back)"
        )
    return requested


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
    parser.add_argument(
        "--malloc",
        nargs="+",
        choices=allocator.STATES,
        default=["cold", "warm"],
        help="allocator states to measure in, in order (module allocator)",
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
    verdicts = []
    for state in _states(args.malloc):
        if not allocator.pin(state):
            print(f"# the allocator cannot be pinned here (not glibc): {state!r} not measured")
            continue
        for name in args.models:
            ratios = measure(name, MODELS[name], args.reps, clock, state)
            verdicts.append(f"{name} ({state}): " + ";  ".join(_verdict(name, ratios)))
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
