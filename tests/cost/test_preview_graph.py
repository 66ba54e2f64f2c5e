"""``preview(..., graph=)`` and ``Baseline``: a graph that travels, checked like ``widen``'s.

Invariants tested:

* a graph of another model, or one traced before the model changed width, is refused by the
  preview exactly as ``widen(..., graph=)`` refuses it;
* one baseline prices any number of plans, each as a preview of its own would, and touches
  neither the model nor the graph.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netsurgeon
from netsurgeon.cost import Baseline, preview

X = torch.randn(2, 6, generator=torch.Generator().manual_seed(1))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 2))


def _stale(model: nn.Module) -> netsurgeon.LayerGraph:
    graph = netsurgeon.trace(model)
    netsurgeon.widen(model, {"0": 1})
    return graph


@pytest.mark.parametrize(
    "graph_of", [lambda model: netsurgeon.trace(_net()), _stale], ids=["another model", "stale"]
)
def test_a_graph_widen_would_refuse_is_refused_by_the_preview(graph_of):
    model = _net()
    graph = graph_of(model)
    with pytest.raises(netsurgeon.WidenError) as refused:
        netsurgeon.widen(model, {"2": 1}, graph=graph)
    with pytest.raises(netsurgeon.WidenError) as previewed:
        preview(model, {"2": 1}, X, graph=graph)
    assert str(previewed.value) == str(refused.value)


def test_one_baseline_prices_every_plan_as_its_own_preview_would():
    model = _net()
    graph = netsurgeon.trace(model)
    widths = graph.widths()
    basis = Baseline(model, X, graph=graph)
    plans = [{"0": 3}, {"2": 1}, {}, {"0": 1, "2": 4}, {"0": 3}]
    for plan in plans:
        assert basis.cost(plan) == preview(model, plan, X)
        assert basis.cost(plan, flops=False).params_after == preview(model, plan).params_after
    assert graph.widths() == widths == {"0": 8, "2": 5, "4": 2}
    assert [model[i].out_features for i in (0, 2, 4)] == [8, 5, 2]
