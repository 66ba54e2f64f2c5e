"""``NAGNMonitor`` and ``plan_growth(profile, graph)`` on torchvision classifiers ``trace`` accepts.

For each model: the monitor's default layers are every width-owning layer (unwidenable ones
included), one training step gives a finite profile for each, the group plan names only
widenable groups with increments that are multiples of their granularity, and ``widen`` with
that plan and the same graph leaves the output unchanged.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import netsurgeon
from netsurgeon.nagn import NAGNMonitor, plan_growth

torchvision = pytest.importorskip("torchvision")

MODELS = {
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=5), 32),
    "mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(num_classes=5), 32),
    "densenet121": (lambda: torchvision.models.densenet121(num_classes=5), 32),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_monitor_and_group_plan_work_on_a_torchvision_classifier(name: str) -> None:
    build, size = MODELS[name]
    model = build().double()
    graph = netsurgeon.trace(model, strict=False)
    x, y = torch.randn(2, 3, size, size, dtype=torch.float64), torch.tensor([0, 3])
    with NAGNMonitor(model, every=1) as monitor:
        assert monitor.layers == graph.layers  # all of them, widenable or not
        F.cross_entropy(model(x), y).backward()
        profile = monitor.profile()
    assert all(math.isfinite(v) and v >= 0 for v in profile.values())
    plan = plan_growth(profile, graph, max_step=2)
    groups = {g.name: g for g in graph.groups}
    assert plan.layers == [g.name for g in graph.groups if any(p in profile for p in g.producers)]
    for key, k in plan.increments.items():
        assert groups[key].widenable, key
        assert k % groups[key].granularity == 0, (key, k)
    assert plan.grows, "a random network's profile planned no growth at all"
    model.eval()
    with torch.no_grad():
        before = model(x)
    netsurgeon.widen(model, plan.increments, graph=graph)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=0, atol=1e-9)
