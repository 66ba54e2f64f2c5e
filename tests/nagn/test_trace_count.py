"""One growth, one trace: what a ``Grower`` growth and a preview trace, copy and run.

Invariants tested, by counting calls through the tracer (``SurgeonTracer.trace``, which every
``netsurgeon.trace`` goes through), the meta copier (``meta_model``), the FLOP-counting forward
passes (``FlopCounterMode``), ``group_neighbours`` and the granularity rounding:

* a growth traces the model exactly once, for every where-criterion, with or without a budget
  that binds (``max_params``, ``max_flops``): the plan, every cost and ``widen`` share the graph;
  the meta copies are never traced; FLOPs are counted twice (before, and for what is applied),
  plus once per bisection candidate under ``max_flops``;
* a preview or a budget fit given ``graph=`` traces nothing, and without it traces the model
  once (never its meta copy);
* the group neighbours are computed once per plan, and each plan is rounded to the
  granularities once (the NAGN plan by the planner; a spread plan by its criterion).
"""

from __future__ import annotations

import contextlib
import sys
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import netsurgeon
import netsurgeon.cost.meta
import netsurgeon.nagn.groups
from netsurgeon.cost import Budget, fit_to_budget, preview
from netsurgeon.graph.tracer import SurgeonTracer
from netsurgeon.models import resnet
from netsurgeon.nagn import Grower, GrowthConfig

FORCED = {"w_acc": 1, "delta_acc": 1.0, "delta_stop": -1.0, "every": 1}  # any gain < 1 triggers


def _model() -> nn.Module:
    torch.manual_seed(0)
    return resnet((8, 16, 16), blocks=1, num_classes=3)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)


def _train(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    x, y = _batch()
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()


def _patch_everywhere(monkeypatch, owner, name: str, wrap: Callable) -> None:
    """Replace ``owner.<name>`` and every ``netsurgeon`` module's binding of the same object."""
    original = getattr(owner, name)
    wrapped = wrap(original)
    monkeypatch.setattr(owner, name, wrapped)
    for module in list(sys.modules.values()):
        ours = getattr(module, "__name__", "").startswith("netsurgeon") and module is not owner
        if ours and getattr(module, name, None) is original:
            monkeypatch.setattr(module, name, wrapped)


@contextlib.contextmanager
def _counting(monkeypatch) -> Iterator[tuple[Counter, list]]:
    counts: Counter = Counter()
    roots: list = []

    def counted(key: str) -> Callable:
        def wrap(fn: Callable) -> Callable:
            def call(*args, **kwargs):
                counts[key] += 1
                return fn(*args, **kwargs)

            return call

        return wrap

    trace = SurgeonTracer.trace

    def traced(self, root, *args, **kwargs):
        counts["traces"] += 1
        roots.append(root)
        return trace(self, root, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(SurgeonTracer, "trace", traced)
        patch.setattr(FlopCounterMode, "__enter__", counted("forwards")(FlopCounterMode.__enter__))
        _patch_everywhere(patch, netsurgeon.cost.meta, "meta_model", counted("copies"))
        _patch_everywhere(patch, netsurgeon.nagn.groups, "_neighbours", counted("neighbours"))
        _patch_everywhere(patch, netsurgeon.nagn.groups, "round_to_granularity", counted("rounds"))
        yield counts, roots


def _grow(monkeypatch, where: str, **caps) -> tuple[Counter, list, nn.Module, object]:
    """Build a grower, train, and count what its growing step does."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, _ = _batch()
    grower = Grower(model, opt, GrowthConfig(**FORCED, where=where, **caps), example_inputs=x)
    _train(model, opt)
    assert grower.step(0.5) is None  # the first epoch fills the window
    _train(model, opt)
    with _counting(monkeypatch) as (counts, roots):
        event = grower.step(0.5)
    return counts, roots, model, event


def _binding(monkeypatch, where: str, cap: str) -> dict[str, int]:
    """A ``cap`` halfway between the model before and after its unbounded growth."""
    _, _, _, event = _grow(monkeypatch, where)
    before = getattr(event.cost, f"{cap.split('_')[1]}_before")
    after = getattr(event.cost, f"{cap.split('_')[1]}_after")
    assert after > before
    return {cap: (before + after) // 2}


@pytest.mark.parametrize("cap", [None, "max_params", "max_flops"])
@pytest.mark.parametrize("where", ["nagn", "uniform", "random"])
def test_a_growth_traces_the_model_once_whatever_the_criterion_and_the_budget(
    monkeypatch, where, cap
):
    caps = {} if cap is None else _binding(monkeypatch, where, cap)
    counts, roots, model, event = _grow(monkeypatch, where, **caps)
    assert event is not None and event.increments
    if cap is not None:
        assert cap in event.limited_by  # the budget did bind: the plan was scaled down
    assert counts["traces"] == 1 and roots == [model]  # the real model, never a meta copy
    assert counts["neighbours"] == 1  # one plan, its neighbours computed once
    assert counts["rounds"] == (1 if where == "nagn" else 2)  # the NAGN plan; the spread one
    # FLOPs are counted on meta copies: "before" and the answer, and each candidate of the
    # bisection only when max_flops reads it (at most one forward pass per copy).
    if cap == "max_flops":
        assert 2 < counts["forwards"] <= counts["copies"] + 1
    else:
        assert counts["forwards"] == 2


def test_the_widths_after_a_growth_are_those_a_new_trace_finds(monkeypatch):
    _, _, model, event = _grow(monkeypatch, "uniform")
    assert event.widths_after == netsurgeon.trace(model).widths()
    assert event.cost.widths_after == event.widths_after


def test_a_preview_given_the_graph_traces_nothing_and_agrees_with_one_that_traces(monkeypatch):
    model, (x, _) = _model(), _batch()
    graph = netsurgeon.trace(model, x)
    plan = {"conv": 2, "stages.1.0.conv1": 3}
    with _counting(monkeypatch) as (counts, roots):
        given = preview(model, plan, x, graph=graph)
    assert counts["traces"] == 0 and counts["copies"] == 1 and counts["forwards"] == 2
    with _counting(monkeypatch) as (counts, roots):
        traced = preview(model, plan, x)
    assert counts["traces"] == 1 and roots == [model]
    assert given == traced


def test_a_binding_budget_fit_given_the_graph_traces_nothing(monkeypatch):
    model, (x, _) = _model(), _batch()
    graph = netsurgeon.trace(model, x)
    plan = {"conv": 4, "stages.1.0.conv1": 8, "stages.2.0.conv2": 8}
    full = preview(model, plan, x, graph=graph)
    budget = Budget(max_flops=(full.flops_before + full.flops_after) // 2)
    with _counting(monkeypatch) as (counts, _):
        fitted = fit_to_budget(model, plan, budget, x, graph=graph)
    assert fitted.limited_by == ("max_flops",) and 0 < fitted.scale < 1
    assert counts["traces"] == 0
    assert fitted == fit_to_budget(model, plan, budget, x)  # the same answer when it traces
