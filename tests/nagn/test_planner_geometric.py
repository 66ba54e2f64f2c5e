"""The geometric neighbourhood: the paper's contrast rules applied in log space."""

from __future__ import annotations

import math

import pytest

from netsurgeon.errors import ConfigError
from netsurgeon.nagn.planner import plan_growth, relative_contrast


def test_a_geometric_profile_has_zero_geometric_contrast_everywhere():
    profile = [0.01 * 2.0**i for i in range(5)]
    _, r, rule, _, m = relative_contrast(profile, "geometric")
    assert max(abs(x) for x in r) < 1e-12
    assert m == pytest.approx(math.log(2.0))
    assert rule == ["extrapolated", "interior", "interior", "interior", "extrapolated"]


def test_the_arithmetic_end_rule_sees_a_false_peak_where_the_geometric_one_does_not():
    # A profile measured on a [[4], [4], [4]] VGG (three convs, then the output layer) after two
    # epochs on synthetic data: NAGN roughly doubles per layer, with a jump at the output.
    profile = [0.02641, 0.06064, 0.1169, 0.4258]
    _, r_arith, _, _, _ = relative_contrast(profile, "arithmetic")
    _, r_geo, _, _, _ = relative_contrast(profile, "geometric")
    assert r_arith[0] > 4.0  # the median difference nearly cancels NAGN_2: neighbour ~ 0.004
    assert abs(r_geo[0]) < 0.05  # the median ratio extrapolates the trend instead


def test_geometric_contrast_is_the_ratio_to_the_neighbours_geometric_mean():
    neighbour, r, _, _, _ = relative_contrast([1.0, 4.0, 4.0], "geometric")
    assert neighbour[1] == pytest.approx(2.0)
    assert r[1] == pytest.approx(1.0)


def test_geometric_falls_back_to_arithmetic_with_a_zero_in_the_profile():
    assert relative_contrast([0.0, 1.0, 0.5], "geometric") == relative_contrast([0.0, 1.0, 0.5])


def test_geometric_plan_still_finds_an_explicit_bottleneck_and_records_the_choice():
    plan = plan_growth(
        {"a": 1.0, "b": 3.0, "c": 1.0, "d": 1.0, "out": 1.0},
        {"a": 8, "b": 4, "c": 8, "d": 8, "out": 10},
        neighbourhood="geometric",
    )
    assert plan.increments == {"b": 4}
    assert plan.neighbourhood == "geometric"
    assert plan.to_dict()["neighbourhood"] == "geometric"


def test_unknown_neighbourhood_is_refused():
    with pytest.raises(ConfigError, match="neighbourhood='harmonic'"):
        plan_growth({"a": 1.0, "b": 1.0}, {"a": 2, "b": 2}, neighbourhood="harmonic")
