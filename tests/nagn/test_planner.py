"""Tests of the growth planner (paper section 3) on hand-computed profiles.

Each expected number below is worked out by hand in the comment next to it; the planner's
arithmetic is exact on these profiles (dyadic values), so most checks are exact equalities.
Invariant used by the property tests: the contrast ``g_l / g~_l - 1`` is a ratio, so scaling the
whole profile by a power of two (exact in floating point) leaves every contrast and increment
unchanged.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from netsurgeon.errors import ConfigError, PlanError
from netsurgeon.nagn import (
    GrowthPlan,
    GrowthPlanner,
    NAGNMonitor,
    conv_backbone_groups,
    plan_growth,
    relative_contrast,
)


def _names(k: int) -> list[str]:
    return [f"l{i + 1}" for i in range(k - 1)] + ["out"]


def _plan(values, widths, **kwargs) -> GrowthPlan:
    names = _names(len(values))
    return plan_growth(
        dict(zip(names, values, strict=True)), dict(zip(names, widths, strict=True)), **kwargs
    )


# ----------------------------------------------------------------------------- contrast


def test_interior_contrast_is_the_ratio_to_the_neighbour_mean_minus_one() -> None:
    # slopes 2,-2,0,0 -> median 0; l2: 3/((1+1)/2)-1 = 2; l3: 1/((3+1)/2)-1 = -0.5; l4: 1/1-1 = 0
    neighbour, r, rule, _, m = relative_contrast([1.0, 3.0, 1.0, 1.0, 1.0])
    assert m == 0.0
    assert neighbour[1:4] == [1.0, 2.0, 1.0]
    assert r[1:4] == [2.0, -0.5, 0.0]
    assert rule[1:4] == ["interior"] * 3


def test_end_layers_use_the_median_slope_extrapolation() -> None:
    # slopes 1,2,3,4 -> median 2.5 (even count: mean of the middle two)
    # first: 2 - 2.5 = -0.5 <= 0 -> adjacent neighbour 2: r = 1/2 - 1 = -0.5
    # last: 7 + 2.5 = 9.5 -> r = 11/9.5 - 1
    neighbour, r, rule, extrapolated, m = relative_contrast([1.0, 2.0, 4.0, 7.0, 11.0])
    assert m == 2.5
    assert extrapolated[0] == -0.5 and extrapolated[-1] == 9.5
    assert rule[0] == "adjacent" and rule[-1] == "extrapolated"
    assert neighbour[0] == 2.0 and r[0] == -0.5
    assert r[-1] == pytest.approx(11.0 / 9.5 - 1.0, rel=1e-15)


def test_decreasing_profile_extrapolates_the_first_layer_and_falls_back_at_the_last() -> None:
    # slopes -2,-1,-0.5 -> m = -1; first: 2 + 1 = 3 -> r = 4/3 - 1; last: 1 - 1 = 0 -> adjacent 1
    neighbour, r, rule, _, m = relative_contrast([4.0, 2.0, 1.0, 0.5])
    assert m == -1.0
    assert (neighbour[0], rule[0]) == (3.0, "extrapolated")
    assert r[0] == pytest.approx(1.0 / 3.0, rel=1e-15)
    assert (neighbour[-1], rule[-1], r[-1]) == (1.0, "adjacent", -0.5)


def test_a_linear_profile_has_zero_contrast_everywhere() -> None:
    _, r, _, _, m = relative_contrast([1.0, 2.0, 3.0, 4.0, 5.0])
    assert m == 1.0
    assert r == [0.0] * 5


def test_two_layers_have_zero_contrast_and_one_layer_is_single() -> None:
    # L = 2: m = g2 - g1, so each end's extrapolation is the other layer's own value
    assert relative_contrast([1.0, 3.0])[1] == [0.0, 0.0]
    neighbour, r, rule, _, m = relative_contrast([2.0])
    assert (neighbour, r, rule) == ([2.0], [0.0], ["single"]) and math.isnan(m)


def test_a_zero_neighbourhood_gives_zero_contrast() -> None:
    _, r, rule, _, _ = relative_contrast([0.0, 0.0, 0.0])
    assert r == [0.0, 0.0, 0.0] and rule == ["zero"] * 3
    # a layer whose two neighbours are both zero: no evidence either
    _, r, rule, _, _ = relative_contrast([0.0, 1.0, 0.0, 0.0])
    assert (r[1], rule[1]) == (0.0, "zero")


def test_a_vanishing_neighbourhood_gives_a_large_finite_contrast() -> None:
    _, r, _, _, _ = relative_contrast([0.0, 2.0, 2.2250738585072014e-308])
    assert r[1] == sys.float_info.max
    plan = plan_growth(
        {"a": 0.0, "b": 2.0, "c": 1e-308, "out": 1e-308}, dict.fromkeys("abc", 4) | {"out": 2}
    )
    assert plan.increments == {"b": 4, "c": 4}


# ----------------------------------------------------------------------------- increments


def test_an_explicit_bottleneck_is_doubled() -> None:
    # slopes 1,-1,0 -> m = 0; l2: r = 2/1 - 1 = 1 > tau, the only p > 0, s = 1, dn = 4
    plan = _plan([1.0, 2.0, 1.0, 1.0], [8, 4, 8, 10])
    assert plan.rule == "contrast"
    assert plan.increments == {"l2": 4}
    assert plan.rows[1].score == 1.0 and plan.rows[1].excess == pytest.approx(0.95)
    assert plan.widths_after == {"l1": 8, "l2": 8, "l3": 8, "out": 10}


def test_increment_is_proportional_to_the_normalised_excess() -> None:
    # slopes 1,-1,.5,-.5,0 -> m = 0. r2 = 2/1-1 = 1, r4 = 1.5/1-1 = 0.5 (others < 0, out 0)
    # p2 = .95, p4 = .45 -> s4 = .45/.95; dn2 = 8, dn4 = floor(8 * .4737) = 3
    plan = _plan([1.0, 2.0, 1.0, 1.5, 1.0, 1.0], [8] * 5 + [10], monotone=False)
    assert plan.increments == {"l2": 8, "l4": 3}
    assert plan.rows[3].score == pytest.approx(0.45 / 0.95, rel=1e-12)


def test_max_step_caps_every_increment() -> None:
    plan = _plan([1.0, 2.0, 1.0, 1.5, 1.0, 1.0], [8] * 5 + [10], monotone=False, max_step=2)
    assert plan.increments == {"l2": 2, "l4": 2}


def test_max_step_none_leaves_only_the_doubling_cap() -> None:
    plan = _plan([1.0, 2.0, 1.0, 1.0], [8, 100, 8, 10], monotone=False, max_step=None)
    assert plan.increments == {"l2": 100}
    assert _plan([1.0, 2.0, 1.0, 1.0], [8, 100, 8, 10], monotone=False).increments == {"l2": 32}


def test_tied_maxima_both_get_full_score() -> None:
    # slopes 1,-1,1,-1,0 -> m = 0; r2 = r4 = 1 -> s = 1 for both
    plan = _plan([1.0, 2.0, 1.0, 2.0, 1.0, 1.0], [4] * 5 + [10], monotone=False)
    assert plan.increments == {"l2": 4, "l4": 4}
    assert [row.score for row in plan.rows[:5]] == [0.0, 1.0, 0.0, 1.0, 0.0]


def test_output_layers_get_a_contrast_but_neither_grow_nor_set_the_scale() -> None:
    # slopes .5,-.5,9 -> m = .5; out: neighbour 1 + .5 -> r = 10/1.5 - 1 = 5.67 (largest)
    # l2: r = 1.5/1 - 1 = .5 -> p = .45 is the max over growable layers -> s = 1, dn = 8
    plan = _plan([1.0, 1.5, 1.0, 10.0], [8, 8, 8, 10], monotone=False)
    out = plan.rows[-1]
    assert out.is_output and out.contrast == pytest.approx(10.0 / 1.5 - 1.0)
    assert (out.score, out.increment) == (0.0, 0)
    assert plan.max_excess == pytest.approx(0.45)
    assert plan.increments == {"l2": 8}


def test_output_layers_can_be_named_explicitly() -> None:
    names = ["a", "b", "c", "d"]
    profile = dict(zip(names, [1.0, 1.0, 2.0, 1.0], strict=True))
    widths = dict.fromkeys(names, 4)
    plan = plan_growth(profile, widths, output_layers=["c", "d"], monotone=False)
    assert plan.increments == {}  # the only local maximum, c, is an output layer
    assert plan_growth(profile, widths, output_layers=[], monotone=False).increments == {"c": 4}


def test_contrast_exactly_at_tau_does_not_clear_it() -> None:
    # slopes .25,-.25,0 -> m = 0; r2 = 1.25 - 1 = 0.25 == tau exactly -> p = 0 -> fallback
    plan = _plan([1.0, 1.25, 1.0, 1.0], [8, 8, 8, 10], tau=0.25, monotone=False)
    assert plan.rule == "fallback:fraction"
    assert plan.increments == {"l2": 1}  # g2 > g1: max(1, floor(8/8))


# ----------------------------------------------------------------------------- fallback


@pytest.mark.parametrize(
    ("fallback", "expected"),
    [
        ("fraction", {"l2": 2, "l3": 2, "l4": 2}),
        ("unit", {"l2": 1, "l3": 1, "l4": 1}),
        ("none", {}),
    ],
)
def test_fallback_grows_layers_above_their_predecessor(fallback: str, expected: dict) -> None:
    # linear profile: r = 0 everywhere, nobody clears tau; l2..l4 exceed their predecessor,
    # l1 has none, out never grows. fraction: max(1, floor(16 / 8)) = 2
    plan = _plan([1.0, 2.0, 3.0, 4.0, 5.0], [16] * 4 + [10], fallback=fallback)
    assert plan.rule == f"fallback:{fallback}"
    assert plan.increments == expected


def test_fallback_fraction_is_at_least_one_unit_and_at_most_max_step() -> None:
    small = _plan([1.0, 2.0, 3.0, 4.0], [2, 3, 4, 10], monotone=False)
    assert small.increments == {"l2": 1, "l3": 1}
    big = _plan([1.0, 2.0, 3.0, 4.0], [64, 64, 64, 10], fallback_fraction=0.5, max_step=5)
    assert big.increments == {"l2": 5, "l3": 5}


def test_a_flat_profile_grows_nothing() -> None:
    plan = _plan([0.5] * 5, [8] * 4 + [10])
    assert plan.rule == "fallback:fraction" and not plan.grows and plan.increments == {}


def test_a_zero_profile_grows_nothing() -> None:
    plan = _plan([0.0] * 4, [8] * 3 + [10])
    assert not plan.grows and {row.neighbour_rule for row in plan.rows} == {"zero"}


def test_two_layers_grow_only_through_the_fallback() -> None:
    profile, widths = {"a": 1.0, "out": 3.0}, {"a": 16, "out": 10}
    assert plan_growth(profile, widths).increments == {}  # a has no predecessor
    profile, widths = {"a": 1.0, "b": 3.0}, {"a": 16, "b": 16}
    assert plan_growth(profile, widths, output_layers=()).increments == {"b": 2}


def test_one_layer_grows_nothing() -> None:
    assert plan_growth({"a": 2.0}, {"a": 8}).rule == "no growable layers"
    plan = plan_growth({"a": 2.0}, {"a": 8}, output_layers=())
    assert plan.rows[0].neighbour_rule == "single" and plan.increments == {}


# ----------------------------------------------------------------------------- monotone


def test_monotone_constraint_pushes_growth_forward() -> None:
    # raw {l2: 8, l4: 3}: l2 -> 16, so l3 rises by 8 (its cap), l4 to 16 (+8), l5 to 16 (+8)
    plan = _plan([1.0, 2.0, 1.0, 1.5, 1.0, 1.0], [8] * 5 + [10])
    assert plan.increments == {"l2": 8, "l3": 8, "l4": 8, "l5": 8}
    assert [row.adjusted for row in plan.rows] == [False, False, True, True, True, False]
    assert [row.raw_increment for row in plan.rows] == [0, 8, 0, 3, 0, 0]


def test_monotone_constraint_repairs_an_existing_bottleneck_within_the_doubling_cap() -> None:
    plan = _plan([1.0] * 4, [8, 3, 8, 10], fallback="none")
    assert plan.increments == {"l2": 3}  # wants +5, at most doubled
    assert _plan([1.0] * 4, [8, 3, 8, 10], fallback="none", monotone=False).increments == {}


def test_monotone_constraint_respects_max_step() -> None:
    plan = _plan([1.0] * 4, [16, 4, 16, 10], fallback="none", max_step=2)
    assert plan.increments == {"l2": 2}  # wants +12, max_step 2


def test_monotone_groups_leave_other_layers_unconstrained() -> None:
    profile = {"c1": 1.0, "c2": 1.0, "d1": 1.0, "out": 1.0}
    widths = {"c1": 8, "c2": 8, "d1": 4, "out": 10}
    everything = plan_growth(profile, widths, fallback="none")
    assert everything.increments == {"d1": 4}
    backbone = plan_growth(profile, widths, fallback="none", monotone_groups=[["c1", "c2"]])
    assert backbone.increments == {} and backbone.monotone_groups == (("c1", "c2"),)


def test_conv_backbone_groups_lists_the_convolutions_in_order() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv1d(4, 4, 1), nn.Flatten(), nn.Linear(4, 2))
    assert conv_backbone_groups(net, ["0", "1", "3"]) == (("0", "1"),)
    assert conv_backbone_groups(net, ["3"]) == ()


# ----------------------------------------------------------------------------- record


def test_plan_prints_a_table_and_serialises_to_json() -> None:
    plan = _plan([1.0, 2.0, 1.0, 1.0], [8, 4, 8, 10])
    text = str(plan)
    assert "rule=contrast" in text and all(name in text for name in plan.layers)
    assert len(text.splitlines()) == 2 + len(plan.rows)
    data = json.loads(plan.to_json())
    assert data["increments"] == {"l2": 4}
    assert [row["contrast"] for row in data["rows"]] == [row.contrast for row in plan.rows]
    assert data["rows"][0]["neighbour_rule"] == "extrapolated"
    assert GrowthPlan.from_dict(data) == plan
    one = plan_growth({"a": 2.0}, {"a": 8})
    assert one.to_dict()["median_slope"] is None  # nan becomes null
    back = GrowthPlan.from_dict(json.loads(one.to_json()))
    assert math.isnan(back.median_slope) and back.rows == one.rows


def test_plan_is_frozen() -> None:
    plan = _plan([1.0, 2.0, 1.0, 1.0], [8, 4, 8, 10])
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.rule = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.rows[0].increment = 3  # type: ignore[misc]


def test_growth_planner_matches_plan_growth() -> None:
    planner = GrowthPlanner(tau=0.1, max_step=3, monotone=False, fallback="unit")
    values, widths = [1.0, 2.0, 1.0, 1.5, 1.0, 1.0], [8] * 5 + [10]
    names = _names(6)
    got = planner.plan(dict(zip(names, values, strict=True)), dict(zip(names, widths, strict=True)))
    assert got == _plan(values, widths, tau=0.1, max_step=3, monotone=False, fallback="unit")


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("profile", "widths", "match"),
    [
        ({"a": 1.0, "b": 1.0}, {"a": 4, "c": 4}, r"missing from widths \['b'\]"),
        ({"a": -1.0, "b": 1.0}, {"a": 4, "b": 4}, r"NAGN of layer 'a' must be a finite number"),
        ({"a": math.nan, "b": 1.0}, {"a": 4, "b": 4}, r"NAGN of layer 'a'.*no gradient"),
        ({"a": 1.0, "b": math.inf}, {"a": 4, "b": 4}, r"NAGN of layer 'b'"),
        ({"a": 1.0, "b": 1.0}, {"a": 0, "b": 4}, r"width of layer 'a' must be an int >= 1"),
        ({"a": 1.0, "b": 1.0}, {"a": 4, "b": 2.5}, r"width of layer 'b'"),
        ({}, {}, r"profile is empty"),
        ([1.0], {"a": 1}, r"must be mappings"),
    ],
)
def test_bad_profiles_and_widths_raise_plan_error(profile, widths, match: str) -> None:
    with pytest.raises(PlanError, match=match):
        plan_growth(profile, widths)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tau": -0.1}, r"PlannerSettings\.tau=-0\.1: expected a finite number >= 0"),
        ({"tau": math.nan}, r"PlannerSettings\.tau=nan: expected a finite number"),
        ({"max_step": 0}, r"max_step=0: expected an int >= 1 or None"),
        ({"fallback": "half"}, r"fallback='half': expected one of \['fraction', 'unit', 'none'\]"),
        ({"fallback_fraction": 0.0}, r"fallback_fraction=0\.0: expected a number in \(0, 1\]"),
        ({"taux": 0.1}, r"unknown settings \['taux'\]"),
    ],
)
def test_bad_settings_raise_config_error_naming_field_value_and_choices(
    kwargs: dict, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        plan_growth({"a": 1.0, "b": 1.0}, {"a": 4, "b": 4}, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"output_layers": ["zz"]}, r"output_layers \['zz'\] are not in the profile"),
        ({"monotone_groups": [["b", "a"]]}, r"not in profile \(depth\) order"),
        ({"monotone_groups": [["a"], ["a"]]}, r"more than one monotone group"),
        ({"monotone_groups": ["ab"]}, r"found the string 'ab' as a group"),
        ({"monotone_groups": [["q"]]}, r"names layer 'q', which is not in the profile"),
    ],
)
def test_bad_layer_names_raise_plan_error(kwargs: dict, match: str) -> None:
    with pytest.raises(PlanError, match=match):
        plan_growth({"a": 1.0, "b": 1.0}, {"a": 4, "b": 4}, **kwargs)


def test_growth_planner_checks_its_settings_at_construction() -> None:
    with pytest.raises(ConfigError, match=r"GrowthPlanner\.max_step=-1"):
        GrowthPlanner(max_step=-1)


# ----------------------------------------------------------------------------- properties

# NAGN values as they occur (0 or well inside the normal range), so that 2**k scaling is exact
_values = st.lists(
    st.one_of(st.just(0.0), st.floats(1e-6, 100.0)).map(float), min_size=1, max_size=8
)


@given(
    values=_values,
    data=st.data(),
    k=st.integers(-8, 8),
    max_step=st.one_of(st.none(), st.integers(1, 40)),
)
def test_plan_is_invariant_to_scaling_the_profile_by_a_power_of_two(
    values: list[float], data: st.DataObject, k: int, max_step: int | None
) -> None:
    widths = data.draw(st.lists(st.integers(1, 64), min_size=len(values), max_size=len(values)))
    base = _plan(values, widths, max_step=max_step)
    scaled = _plan([v * 2.0**k for v in values], widths, max_step=max_step)
    assert scaled.increments == base.increments
    assert scaled.contrasts == base.contrasts
    assert scaled.rule == base.rule


@given(
    values=_values,
    data=st.data(),
    max_step=st.one_of(st.none(), st.integers(1, 40)),
    monotone=st.booleans(),
)
def test_increments_stay_within_the_per_step_limits(
    values: list[float], data: st.DataObject, max_step: int | None, monotone: bool
) -> None:
    widths = data.draw(st.lists(st.integers(1, 64), min_size=len(values), max_size=len(values)))
    plan = _plan(values, widths, max_step=max_step, monotone=monotone)
    for row in plan.rows:
        cap = row.width if max_step is None else min(row.width, max_step)
        assert 0 <= row.raw_increment <= row.increment <= cap
        assert row.increment == 0 or not row.is_output
        assert 0.0 <= row.score <= 1.0
    if plan.rule == "contrast":  # the most contrasted growable layer grows by its full cap
        top = [row for row in plan.rows if row.score == 1.0]
        assert top and all(
            row.raw_increment == (row.width if max_step is None else min(row.width, max_step))
            for row in top
        )
    if monotone:  # non-decreasing, unless a layer is already at its cap
        growable = [row for row in plan.rows if not row.is_output]
        for prev, row in itertools.pairwise(growable):
            cap = row.width if max_step is None else min(row.width, max_step)
            assert row.width + row.increment >= prev.width + prev.increment or row.increment == cap


# ----------------------------------------------------------------------------- sanity check


def test_an_explicit_bottleneck_has_the_largest_relative_contrast() -> None:
    """Paper section 4 sanity check: n_{l-1} > n_l < n_{l+1} gives the largest contrast at l."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 16, generator=gen)
    teacher = torch.randn(16, 10, generator=gen)
    y = (torch.tanh(x @ teacher) + 0.5 * torch.sin(3 * x[:, :10])).argmax(1)
    torch.manual_seed(0)
    widths = [32, 32, 3, 32, 32]
    layers, dims = [], [16, *widths]
    for i, w in enumerate(widths):
        layers += [nn.Linear(dims[i], w), nn.ReLU()]
    net = nn.Sequential(*layers, nn.Linear(widths[-1], 10))
    names = [str(2 * i) for i in range(len(widths) + 1)]
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for epoch in range(30):
        monitor = NAGNMonitor(net, names, every=1) if epoch == 29 else None
        for batch in range(4):
            sl = slice(128 * batch, 128 * (batch + 1))
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[sl]), y[sl]).backward()
            opt.step()
    assert monitor is not None
    plan = plan_growth(monitor.profile(), dict(zip(names, [*widths, 10], strict=True)))
    growable = [row for row in plan.rows if not row.is_output]
    assert max(growable, key=lambda row: row.contrast).name == "4"  # the width-3 layer
    assert plan.increments.get("4", 0) == 3


def test_a_conv_bottleneck_has_the_largest_relative_contrast() -> None:
    """The same sanity check on a VGG block [8, 2, 8] (the paper's Fig. 1 kind of seed)."""
    from netsurgeon.models import vgg

    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (256,), generator=gen)
    prototypes = torch.randn(10, 3, 16, 16, generator=gen)
    x = torch.randn(256, 3, 16, 16, generator=gen) + prototypes[y]
    torch.manual_seed(0)
    net = vgg([[8, 2, 8], [16, 16]], image_size=16)
    widths = {
        name: module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
        for name, module in net.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    }
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    monitor = NAGNMonitor(net, list(widths), every=1)
    for _epoch in range(5):
        monitor.reset()  # keep the last epoch only
        for batch in range(4):
            sl = slice(64 * batch, 64 * (batch + 1))
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[sl]), y[sl]).backward()
            opt.step()
    plan = plan_growth(monitor.profile(), widths)
    growable = [row for row in plan.rows if not row.is_output]
    assert max(growable, key=lambda row: row.contrast).name == "blocks.0.1.conv"
