"""The group rules of the planner, checked by hand on a small DAG and against the per-layer rule.

The model ``Res``: a stem ``s`` and a block ``a -> b`` whose output is added to the stem's, then
pooled into a Linear head ``h``. Its groups are the stream ``s`` (producers ``s`` and ``b``), the
block interior ``a``, and the output ``h``. With NAGN ``s=1, b=7, a=2, h=3``:

* the stream's statistic: rms ``sqrt((1 + 49) / 2) = 5``, max ``7``, mean ``4``;
* neighbours (graph order): ``s`` reads ``a`` (``b`` consumes it) and is read by ``a`` and ``h``;
  ``a`` reads and is read by ``s``; ``h`` reads ``s``. Neighbouring pairs in depth order
  ``(s, a), (s, h)`` give slopes ``-3, -2``: ``m = -2.5``. Then
  ``s``: ``(2 + (2 + 3) / 2) / 2 = 2.25``, ``r = 5 / 2.25 - 1``;
  ``a``: ``(5 + 5) / 2 = 5``, ``r = -0.6``;  ``h`` (an end): ``5 + m = 2.5``, ``r = 0.2``;
* depth order (the chain ``s, a, h`` = ``5, 2, 3``): slopes ``-3, 1``, ``m = -1``;
  ``s``: ``2 + 1 = 3``, ``r = 2/3``; ``a``: ``4``, ``r = -0.5``; ``h``: ``2 - 1 = 1``, ``r = 2``.

On a chain of single-producer groups (a VGG) the group planner must equal the per-layer planner
with the conv backbone as its monotone group, row for row and bit for bit, under both orders.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import netsurgeon
from netsurgeon.errors import ConfigError, PlanError
from netsurgeon.models import resnet, vgg
from netsurgeon.nagn import (
    GrowthPlan,
    NAGNMonitor,
    backbone_chain,
    combine_nagn,
    conv_backbone_groups,
    group_neighbours,
    group_profile,
    plan_group_growth,
    plan_growth,
)
from netsurgeon.nagn.groups import round_to_granularity

TOL = 1e-12


class Res(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.s = nn.Conv2d(3, 4, 3, padding=1)
        self.a = nn.Conv2d(4, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 4, 3, padding=1)
        self.h = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.s(x)
        y = s + self.b(F.relu(self.a(s)))
        return self.h(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


PROFILE = {"s": 1.0, "a": 2.0, "b": 7.0, "h": 3.0}


def test_group_statistic_combines_producers_as_documented() -> None:
    graph = netsurgeon.trace(Res())
    for combine, expected in (("rms", 5.0), ("max", 7.0), ("mean", 4.0)):
        records = {r.name: r for r in group_profile(PROFILE, graph, combine)}
        assert list(records) == ["s", "a", "h"]
        assert math.isclose(records["s"].nagn, expected, rel_tol=TOL)
        assert records["s"].producers == (("s", 1.0), ("b", 7.0))  # kept for the user
        assert records["a"].nagn == 2.0 and records["h"].nagn == 3.0  # one producer: itself
        assert not records["h"].widenable


def test_group_neighbours_are_the_groups_read_and_reading() -> None:
    graph = netsurgeon.trace(Res())
    assert group_neighbours(graph) == {
        "s": (("a",), ("a", "h")),
        "a": (("s",), ("s",)),
        "h": (("s",), ()),
    }


@pytest.mark.parametrize(
    ("order", "contrasts", "rules"),
    [
        ("graph", {"s": 5 / 2.25 - 1, "a": -0.6, "h": 0.2}, ["interior"] * 2 + ["extrapolated"]),
        (
            "depth",
            {"s": 5 / 3 - 1, "a": -0.5, "h": 2.0},
            ["extrapolated", "interior", "extrapolated"],
        ),
    ],
)
def test_group_contrast_matches_the_hand_computed_profile(
    order: str, contrasts: dict[str, float], rules: list[str]
) -> None:
    plan = plan_group_growth(PROFILE, netsurgeon.trace(Res()), neighbourhood_order=order)
    assert plan.layers == ["s", "a", "h"]
    for name, r in contrasts.items():
        assert math.isclose(plan.contrasts[name], r, rel_tol=1e-12, abs_tol=1e-12), name
    assert [row.neighbour_rule for row in plan.rows] == rules
    assert math.isclose(plan.median_slope, -2.5 if order == "graph" else -1.0, rel_tol=TOL)
    # the stream has the largest excess, so it doubles; the output never grows
    assert plan.increments == {"s": 4}
    assert plan.combine == "rms" and plan.neighbourhood_order == order


def test_a_group_plan_widens_the_model_without_changing_its_output() -> None:
    model = Res().double()
    graph = netsurgeon.trace(model)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    before = model(x)
    plan = plan_growth(PROFILE, graph)  # a graph instead of widths: the group planner
    netsurgeon.widen(model, plan.increments, graph=graph)
    assert model.s.out_channels == model.b.out_channels == 8
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-12)


def test_unwidenable_groups_are_never_planned() -> None:
    class Normed(nn.Module):  # the stream is LayerNorm'd over channels: unwidenable
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 6)
            self.out = nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.layer_norm(self.a(x), (6,))
            return self.out(F.relu(self.c(F.relu(self.b(y)))))

    graph = netsurgeon.trace(Normed(), strict=False)
    assert not graph.resolve("a").widenable
    profile = {"a": 50.0, "b": 1.0, "c": 1.0, "out": 1.0}  # a towers over everything
    plan = plan_group_growth(profile, graph)
    assert "a" not in plan.increments and "out" not in plan.increments
    assert plan.rows[0].is_output  # kept for its contrast, marked as never growing


def test_increments_round_up_to_the_granularity_and_never_past_doubling() -> None:
    assert round_to_granularity(
        {"a": 3, "b": 5, "c": 1}, {"a": 8, "b": 6, "c": 2}, {"a": 2, "b": 4, "c": 4}
    ) == {"a": 4, "b": 4}

    class Grouped(nn.Module):  # a grouped conv reads the first conv: granularity 2
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.g = nn.Conv2d(4, 4, 3, padding=1, groups=2)
            self.h = nn.Conv2d(4, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.h(F.relu(self.g(F.relu(self.a(x)))))

    model = Grouped()
    graph = netsurgeon.trace(model)
    granularity = {g.name: g.granularity for g in graph.groups}
    plan = plan_group_growth({"a": 1.0, "g": 1.2, "h": 1.0}, graph, max_step=1, monotone=False)
    for name, k in plan.increments.items():
        assert k % granularity[name] == 0, (name, k, granularity[name])
    assert granularity["g"] == 2
    assert plan.rows[1].raw_increment == 1  # max_step=1 ...
    assert plan.increments == {"g": 2}  # ... rounded up to one whole granularity
    netsurgeon.widen(model, plan.increments, graph=graph)


def test_backbone_chain_is_the_conv_chain_of_a_vgg_and_the_streams_of_a_resnet() -> None:
    model = vgg([[4, 4], [8], [8]], hidden=(16,), image_size=8)
    graph = netsurgeon.trace(model)
    assert backbone_chain(graph) == conv_backbone_groups(model, graph.layers)[0]
    rn = netsurgeon.trace(resnet((4, 8, 16), blocks=2))
    assert backbone_chain(rn) == ("conv", "stages.1.0.conv2", "stages.2.0.conv2")


def test_plan_records_round_trip_with_their_groups() -> None:
    plan = plan_group_growth(PROFILE, netsurgeon.trace(Res()))
    again = GrowthPlan.from_dict(plan.to_dict())
    assert again == plan
    assert "combine=rms" in str(plan)


def test_bad_group_readings_are_refused_with_the_allowed_values() -> None:
    graph = netsurgeon.trace(Res())
    with pytest.raises(ConfigError, match=r"combine='median'.*'rms', 'max', 'mean'"):
        plan_group_growth(PROFILE, graph, combine="median")
    with pytest.raises(ConfigError, match="neighbourhood_order='bfs'"):
        plan_group_growth(PROFILE, graph, neighbourhood_order="bfs")
    with pytest.raises(PlanError, match="not layers of the traced graph"):
        plan_group_growth({**PROFILE, "nope": 1.0}, graph)
    with pytest.raises(PlanError, match="output_layers must be None"):
        plan_growth(PROFILE, graph, output_layers=["h"])
    assert combine_nagn([2.0], "max") == 2.0


# ------------------------------------------------------------------ a chain reduces to the paper


def _vgg_profile(widths: list[list[int]], hidden: tuple[int, ...], seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    model = vgg(widths, num_classes=4, image_size=8, hidden=hidden)
    with NAGNMonitor(model, every=1) as monitor:
        for _ in range(2):
            x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))
            F.cross_entropy(model(x), y).backward()
        return monitor.profile()


@pytest.mark.parametrize("order", ["graph", "depth"])
@pytest.mark.parametrize(
    ("widths", "hidden"),
    [([[8, 3, 8], [16, 4, 16], [32, 4, 32]], ()), ([[4], [8, 2], [4]], (6,)), ([[2]], ())],
)
def test_group_plan_on_a_vgg_equals_the_per_layer_plan_on_measured_profiles(
    widths: list[list[int]], hidden: tuple[int, ...], order: str
) -> None:
    model = vgg(widths, num_classes=4, image_size=8, hidden=hidden)
    graph = netsurgeon.trace(model)
    profile = _vgg_profile(widths, hidden, seed=len(widths))
    _check_same_plan(profile, graph, conv_backbone_groups(model, graph.layers), order)


@settings(max_examples=30)
@given(
    values=st.lists(st.floats(0.0, 10.0), min_size=7, max_size=7),
    order=st.sampled_from(["graph", "depth"]),
    reading=st.sampled_from(
        [
            {},
            {"neighbourhood": "geometric"},
            {"end_rule": "adjacent"},
            {"end_rule": "none"},
            {"score": "damped", "drag_limit": "none"},
            {"fallback": "unit", "tau": 5.0},
        ]
    ),
)
def test_group_plan_on_a_vgg_equals_the_per_layer_plan_on_any_profile(
    values: list[float], order: str, reading: dict
) -> None:
    model = vgg([[8, 3, 8], [16, 4]], num_classes=4, image_size=8, hidden=(6,))
    graph = netsurgeon.trace(model)
    profile = dict(zip(graph.layers, values, strict=True))
    _check_same_plan(profile, graph, conv_backbone_groups(model, graph.layers), order, **reading)


def _check_same_plan(profile, graph, monotone_groups, order, **reading) -> None:
    per_layer = plan_growth(
        profile,
        graph.widths(),
        output_layers=graph.output_layers,
        monotone_groups=monotone_groups,
        **reading,
    )
    per_group = plan_group_growth(profile, graph, neighbourhood_order=order, **reading)
    assert per_group.rows == per_layer.rows  # every intermediate, bit for bit
    assert per_group.increments == per_layer.increments
    assert per_group.monotone_groups == per_layer.monotone_groups
    assert per_group.rule == per_layer.rule
    assert per_group.median_slope == per_layer.median_slope or (
        math.isnan(per_group.median_slope) and math.isnan(per_layer.median_slope)
    )


def test_budget_scaling_keeps_increments_multiples_of_the_granularity() -> None:
    class Grouped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.g = nn.Conv2d(8, 8, 3, padding=1, groups=4)
            self.h = nn.Conv2d(8, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.h(F.relu(self.g(F.relu(self.a(x)))))

    model = Grouped()
    params = sum(p.numel() for p in model.parameters())
    budget = netsurgeon.Budget(max_params=params + 200)  # 4 channels cost 184, 8 cost 368
    fitted = netsurgeon.fit_to_budget(model, {"a": 8}, budget, granularity={"a": 4})
    assert fitted.limited_by == ("max_params",)
    assert fitted.increments == {"a": 4}  # the largest multiple of 4 within the cap
    assert fitted.cost.params_after == params + 184
    netsurgeon.widen(model, fitted.increments)  # widen accepts it
