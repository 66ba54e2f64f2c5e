"""``NAGNMonitor`` and ``plan_growth(profile, graph)`` on torchvision classifiers ``trace`` accepts.

For each model: the monitor's default layers are every width-owning layer (unwidenable ones
included), one training step gives a finite profile for each, the group plan names only
widenable groups with increments that are multiples of their granularity, and ``widen`` with
that plan and the same graph leaves the output unchanged. The whole zoo that ``trace`` accepts is
covered (the heavier models are marked slow).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import netsurgeon
from netsurgeon.nagn import NAGNMonitor, plan_growth

torchvision = pytest.importorskip("torchvision")

# name: (constructor, input size, dtype). Three fast ones in every run; the rest of the zoo that
# ``trace`` accepts (tests/zoo/test_torchvision_models.py) is marked slow. float32 for the two whose
# float64 copy would be about a gigabyte.
FAST = {
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=5), 32, torch.float64),
    "mobilenet_v3_small": (
        lambda: torchvision.models.mobilenet_v3_small(num_classes=5),
        32,
        torch.float64,
    ),
    "densenet121": (lambda: torchvision.models.densenet121(num_classes=5), 32, torch.float64),
}
ZOO = {
    "resnet50": ({}, 32, torch.float64),
    "mobilenet_v2": ({}, 32, torch.float64),
    "efficientnet_b0": ({}, 32, torch.float64),
    "mnasnet0_5": ({}, 32, torch.float64),
    "regnet_y_400mf": ({}, 32, torch.float64),
    "squeezenet1_0": ({}, 64, torch.float64),
    "googlenet": ({"aux_logits": False, "init_weights": False}, 32, torch.float64),
    "shufflenet_v2_x0_5": ({}, 32, torch.float64),
    "convnext_tiny": ({}, 32, torch.float64),
    "vit_b_16": ({"image_size": 32}, 32, torch.float64),
    "swin_t": ({}, 64, torch.float64),
    "alexnet": ({}, 64, torch.float32),
    "vgg11": ({}, 32, torch.float32),
}
MODELS = {
    **FAST,
    **{
        name: (
            lambda name=name, kw=kw: getattr(torchvision.models, name)(num_classes=5, **kw),
            n,
            dt,
        )
        for name, (kw, n, dt) in ZOO.items()
    },
}
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-9}
# Models whose widenable groups are all quiet at initialisation, so the plan is rightly empty:
# ViT's zero-initialised head passes no gradient back to any of them. Its widening is
# checked with one granule per group. (ConvNeXt's LayerNorm streams tile, Swin's streams tile or
# mean-pad with their window attention, and the planner grows them.)
QUIET_AT_INIT = {"vit_b_16"}


@pytest.mark.parametrize(
    "name", [*FAST, *(pytest.param(name, marks=pytest.mark.slow) for name in ZOO)]
)
def test_monitor_and_group_plan_work_on_a_torchvision_classifier(name: str) -> None:
    build, size, dtype = MODELS[name]
    torch.manual_seed(0)
    model = build().to(dtype)
    graph = netsurgeon.trace(model, strict=False)
    x, y = torch.randn(2, 3, size, size, dtype=dtype), torch.tensor([0, 3])
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
    increments = plan.increments
    if name in QUIET_AT_INIT:  # an empty plan, for the rule's reason: nothing clears tau
        assert not plan.grows and plan.rule.startswith("fallback")
        assert all(row.excess == 0 for row in plan.rows if groups[row.name].widenable)
        increments = {g.name: g.granularity for g in graph.groups if g.widenable}
        with torch.no_grad():  # wake the quiet parts, or the output check could not fail
            for param in model.parameters():
                if param.abs().max() < 1e-5:  # ViT's zero head, ConvNeXt's layer scales
                    param.normal_(0.0, 0.5)
    else:
        assert plan.grows, "a random network's profile planned no growth at all"
    model.eval()
    with torch.no_grad():
        before = model(x)
    netsurgeon.widen(model, increments, graph=graph)
    with torch.no_grad():
        after = model(x)
    tol = TOLERANCE[dtype] * (1 + before.abs().max().item())
    torch.testing.assert_close(after, before, rtol=0, atol=tol)
