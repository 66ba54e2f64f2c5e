"""``benchmarks/bench_widen.py`` measures what it claims: a 25% plan over every widenable group,
and a model whose AdamW state exists (so the "with AdamW" timing grows state, not nothing)."""

from __future__ import annotations

import copy
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_widen

import netsurgeon


def test_the_plan_grows_every_widenable_group_by_a_quarter_in_whole_granules() -> None:
    model = bench_widen.MODELS["vgg_small"]()
    plan = bench_widen._plan(model, 0.25)
    groups = {g.name: g for g in netsurgeon.trace(model).groups if g.widenable}
    assert plan.keys() == groups.keys()
    for name, k in plan.items():
        assert k % groups[name].granularity == 0
        assert abs(k - groups[name].width / 4) <= groups[name].granularity


def test_the_adamw_copy_holds_state_of_every_parameter_and_no_gradients() -> None:
    model = bench_widen.MODELS["vgg_small"]()
    twin, opt = bench_widen._with_adamw(model)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert p is not q and p.grad is None and q.grad is None
        state = opt.state[q]
        assert state["exp_avg"].shape == q.shape
        assert bool((state["exp_avg_sq"] > 0).all())
        torch.testing.assert_close(q, p, rtol=1e-2, atol=1e-2)  # one small step away


def test_the_floor_writes_each_entry_of_each_grown_tensor_once() -> None:
    """Old entries in place, new ones zero (every page of the grown tensor touched, as a
    widening touches them), in memory that held NaN before."""
    model = bench_widen.MODELS["vgg_small"]().eval()
    grown = netsurgeon.widen(copy.deepcopy(model), bench_widen._plan(model, 0.25))
    tensors = bench_widen._grown_shapes(model, grown)
    before = dict(model.named_parameters())
    changed = {n for n, p in grown.named_parameters() if p.shape != before[n].shape}
    found = {id(old) for old, _ in tensors}
    assert changed and {id(before[n]) for n in changed} <= found
    torch.empty(1 << 22).fill_(float("nan"))  # freed memory the floor may get back: poisoned
    for (old, shape), new in zip(tensors, bench_widen._floor(tensors), strict=True):
        assert new.shape == shape != old.shape
        kept = tuple(slice(0, n) for n in old.shape)
        assert torch.equal(new[kept], old)
        rest = torch.ones(shape, dtype=torch.bool)
        rest[kept] = False
        assert rest.any() and bool((new[rest] == 0).all())


def test_the_recorded_draws_are_the_new_rows_over_the_old_columns() -> None:
    """``draws`` times what the paper init draws: each grown layer's new rows over its old
    inputs (new columns are zero, not drawn), counted here from the shapes alone."""
    model = bench_widen.MODELS["vgg_small"]().eval()
    grown, sizes = bench_widen._reference(model, bench_widen._plan(model, 0.25))
    old = dict(model.named_modules())
    expected = []
    for name, module in grown.named_modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            before = old[name].weight
            new_rows = module.weight.shape[0] - before.shape[0]
            if new_rows:
                expected.append(new_rows * before[0].numel())
    assert sorted(sizes) == sorted(expected) and sum(sizes) > 0
    assert bench_widen.init.normal_.__name__ == "normal_"  # the recording was taken out again


_PROBE = """
import copy, statistics, sys, torch
sys.path.insert(0, {bench!r})
import allocator
assert allocator.pin({state!r})
model = torch.nn.Sequential(*[torch.nn.Linear(512, 512) for _ in range(16)])  # 16 MiB
found = []
for _ in range(10):  # a deepcopy made and freed again and again, as the benchmark does
    before = allocator.faults()
    twin = copy.deepcopy(model)
    found.append(allocator.faults() - before)
    del twin
print(statistics.median(found[2:]))
"""


def _faults_per_copy(state: str) -> float:
    """Median page faults of a deepcopy of a 16 MiB model, repeated in a process pinned to
    ``state`` (the first two copies left out: they bring the pages)."""
    bench = str(Path(bench_widen.__file__).parent)
    probe = _PROBE.format(bench=bench, state=state)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_the_pinned_allocator_states_fault_as_they_claim() -> None:
    """Cold: every copy faults all of its memory (one fault per 4 KiB page); warm: the copies
    reuse what the earlier ones freed. Each state in its own process: a pinning is process-wide."""
    pages = (16 << 20) // 4096
    assert _faults_per_copy("cold") >= 0.9 * pages
    assert _faults_per_copy("warm") < 0.1 * pages


def test_allocator_states_are_taken_in_the_only_order_a_process_can_take_them() -> None:
    assert bench_widen._states(["cold", "warm"]) == ["cold", "warm"]
    assert bench_widen._states(["as-is", "warm"]) == ["as-is", "warm"]
    for wrong in (["warm", "cold"], ["cold", "as-is"], ["warm", "warm"]):
        with pytest.raises(SystemExit, match="in the order"):
            bench_widen._states(wrong)
