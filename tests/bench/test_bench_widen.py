"""``benchmarks/bench_widen.py`` measures what it claims: a 25% plan over every widenable group,
and a model whose AdamW state exists (so the "with AdamW" timing grows state, not nothing)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

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


def test_the_floor_allocates_each_grown_tensor_with_its_old_entries_in_place() -> None:
    model = bench_widen.MODELS["vgg_small"]().eval()
    grown = netsurgeon.widen(copy.deepcopy(model), bench_widen._plan(model, 0.25))
    tensors = bench_widen._grown_shapes(model, grown)
    before = dict(model.named_parameters())
    changed = {n for n, p in grown.named_parameters() if p.shape != before[n].shape}
    found = {id(old) for old, _ in tensors}
    assert changed and {id(before[n]) for n in changed} <= found
    for (old, shape), new in zip(tensors, bench_widen._floor(tensors), strict=True):
        assert new.shape == shape != old.shape
        assert torch.equal(new[tuple(slice(0, n) for n in old.shape)], old)
