"""The planner's named readings of rules the paper leaves open: end rule, score, drag limit.

Hand-computed profiles as in ``test_planner.py``; every default reproduces the paper's text, so
``plan_growth(..., <default reading>)`` must equal the plan without the argument.
"""

from __future__ import annotations

import json

import pytest

from netsurgeon.errors import ConfigError
from netsurgeon.nagn import GrowthConfig, GrowthPlan, GrowthPlanner, plan_growth
from netsurgeon.nagn.planner import relative_contrast

# A [[4], [4], [4]]-like profile (three convs, then the output layer): NAGN rising steeply with
# depth. m = median(0.034, 0.056, 0.309) = 0.056; the extrapolation g~_1 = 0.0606 - 0.056 = 0.0046
# gives the first conv r_1 = 0.0264 / 0.0046 - 1 = +4.7, the largest contrast by far.
RISING = {"c1": 0.0264, "c2": 0.0606, "c3": 0.117, "out": 0.426}
FOUR = {"c1": 4, "c2": 4, "c3": 4, "out": 10}


def test_defaults_are_the_paper_reading() -> None:
    plain = plan_growth(RISING, FOUR)
    explicit = plan_growth(
        RISING, FOUR, end_rule="extrapolate", score="normalised", drag_limit="step"
    )
    assert plain == explicit
    assert plain.increments == {"c1": 4, "c2": 4, "c3": 4}  # the doubling runaway's first step
    assert (plain.end_rule, plain.score, plain.drag_limit) == ("extrapolate", "normalised", "step")
    config = GrowthConfig()
    assert (config.end_rule, config.score, config.drag_limit) == (
        plain.end_rule,
        plain.score,
        plain.drag_limit,
    )


def test_adjacent_end_rule_compares_an_end_layer_with_its_one_neighbour() -> None:
    neighbour, r, rule, extrapolated, _ = relative_contrast(
        [1.0, 2.0, 1.0, 3.0], end_rule="adjacent"
    )
    assert rule == ["adjacent", "interior", "interior", "adjacent"]
    assert neighbour[0] == 2.0 and neighbour[3] == 1.0
    assert r[0] == -0.5 and r[3] == 2.0
    assert extrapolated[0] == 1.0  # m = median(1, -1, 2) = 1: the raw guess 2 - 1 is kept
    plan = plan_growth(RISING, FOUR, end_rule="adjacent")
    assert plan.rows[0].contrast < 0  # 0.0264 / 0.0606 - 1
    # Interior contrasts are negative on a rising profile (c2: 0.0606 / 0.0717 - 1 = -0.15), so
    # nothing clears tau and the fallback adds max(1, 4 // 8) = 1 where NAGN rises: c2 and c3.
    assert plan.rule == "fallback:fraction"
    assert plan.increments == {"c2": 1, "c3": 1}


def test_end_rule_none_gives_the_end_layers_no_contrast() -> None:
    _, r, rule, _, _ = relative_contrast([1.0, 2.0, 1.0, 3.0], end_rule="none")
    assert (r[0], r[3]) == (0.0, 0.0)
    assert rule[0] == rule[3] == "end-none"
    assert r[1] == pytest.approx(1.0)  # interior layers unchanged


def test_damped_score_grows_a_weak_peak_by_its_excess_and_a_strong_one_fully() -> None:
    # r_2 = 1.2 / 1.0 - 1 = 0.2, p_2 = 0.15 -> normalised s = 1 (doubles), damped s = 0.15.
    weak = {"a": 1.0, "b": 1.2, "c": 1.0, "out": 1.0}
    widths = {"a": 32, "b": 32, "c": 32, "out": 10}
    assert plan_growth(weak, widths, monotone=False).increments == {"b": 32}
    damped = plan_growth(weak, widths, monotone=False, score="damped")
    assert damped.rows[1].score == pytest.approx(0.15)
    assert damped.increments == {"b": 4}  # floor(0.15 * 32)
    # r_2 = 3, p_2 = 2.95 > 1: damped normalises like the paper.
    strong = {"a": 1.0, "b": 4.0, "c": 1.0, "out": 1.0}
    assert plan_growth(strong, widths, monotone=False, score="damped").increments == {"b": 32}


def test_excess_score_is_never_normalised() -> None:
    # r = (2.0, 0.25) at b and d: p = (1.95, 0.2) -> excess s = (1, 0.2), normalised (1, 0.103)
    profile = {"a": 1.0, "b": 3.0, "c": 1.0, "d": 1.25, "e": 1.0, "out": 1.0}
    widths = dict.fromkeys(profile, 20)
    excess = plan_growth(profile, widths, monotone=False, score="excess")
    normalised = plan_growth(profile, widths, monotone=False)
    assert [round(row.score, 6) for row in excess.rows[:5]] == [0.0, 1.0, 0.0, 0.2, 0.0]
    assert excess.increments == {"b": 20, "d": 4}
    assert normalised.increments == {"b": 20, "d": 2}


@pytest.mark.parametrize(
    ("drag_limit", "expected"),
    [("step", {"l2": 2}), ("double", {"l2": 4}), ("none", {"l2": 12})],
)
def test_drag_limit_bounds_how_far_the_constraint_raises_a_layer(
    drag_limit: str, expected: dict[str, int]
) -> None:
    # [16, 4, 16]: l2 wants +12 to reach l1; per step at most max_step=2, or doubled (4), or all.
    profile = {"l1": 1.0, "l2": 1.0, "l3": 1.0, "out": 1.0}
    widths = {"l1": 16, "l2": 4, "l3": 16, "out": 10}
    plan = plan_growth(profile, widths, fallback="none", max_step=2, drag_limit=drag_limit)
    assert plan.increments == expected


def test_readings_are_recorded_printed_and_round_trip() -> None:
    plan = plan_growth(RISING, FOUR, end_rule="none", score="damped", drag_limit="none")
    assert "end_rule=none" in str(plan) and "score=damped" in str(plan)
    assert "end_rule" not in str(plan_growth(RISING, FOUR))  # defaults are not repeated
    assert GrowthPlan.from_dict(json.loads(plan.to_json())) == plan


def test_a_record_written_before_the_readings_existed_reads_back_with_the_defaults() -> None:
    plan = plan_growth(RISING, FOUR)
    old = json.loads(plan.to_json())
    for key in ("end_rule", "score", "drag_limit"):
        del old[key]
    assert GrowthPlan.from_dict(old) == plan


@pytest.mark.parametrize("kwargs", [{"end_rule": "mirror"}, {"score": "max"}, {"drag_limit": 3}])
def test_unknown_readings_are_refused_with_the_choices(kwargs: dict) -> None:
    with pytest.raises(ConfigError, match="expected one of"):
        plan_growth(RISING, FOUR, **kwargs)
    with pytest.raises(ConfigError, match="expected one of"):
        GrowthPlanner(**kwargs)


def test_growth_config_passes_the_readings_to_its_planner() -> None:
    import torch

    from netsurgeon import Grower
    from netsurgeon.models import vgg

    model = vgg([[2], [2], [4]], image_size=16)
    config = GrowthConfig(end_rule="adjacent", score="damped", drag_limit="double")
    grower = Grower(model, torch.optim.AdamW(model.parameters()), config)
    try:
        planner = grower.planner
        assert (planner.end_rule, planner.score, planner.drag_limit) == (
            "adjacent",
            "damped",
            "double",
        )
    finally:
        grower.close()


FIG2A = [f"b{b}.{c}" for b in range(3) for c in range(3)]


@pytest.mark.parametrize(
    ("reading", "after"),
    [
        ({}, [4, 4, 4, 4, 4, 4, 8, 8, 8]),  # Fig. 2a's final widths, in one step
        ({"score": "damped"}, [4, 4, 4, 4, 4, 4, 8, 8, 8]),  # max p > 1: damped = normalised
        ({"end_rule": "adjacent"}, [2, 3, 3, 5, 5, 5, 9, 9, 9]),  # fallback on rising layers
        ({"neighbourhood": "geometric"}, [2, 3, 3, 5, 5, 5, 9, 9, 9]),
    ],
)
def test_a_rising_profile_grows_the_fig2a_seed_as_the_reading_says(
    reading: dict[str, str], after: list[int]
) -> None:
    """NAGN x1.3 per conv, then the output layer: the end rule gives the first conv the peak.

    The nine differences grow along the profile; their median is the fifth,
    m = 0.01 * 1.3**4 * 0.3 = 0.0086, so g~_1 = 0.013 - 0.0086 = 0.0044 and r_1 = +1.26, while
    every interior contrast is 1.3 / ((1 + 1.69) / 2) - 1 = -0.033 (the last conv's, next to the
    output layer, -0.55). Under the paper's reading the first conv doubles (2 -> 4) and the
    constraint drags the rest of block 0 to 4; blocks 1 and 2 are already as wide. Readings
    that remove the end layer's contrast fall back to +1 unit on every layer whose NAGN rises.
    """
    profile = {name: 0.01 * 1.3**k for k, name in enumerate(FIG2A)} | {"out": 0.3}
    widths = dict(zip(FIG2A, [2, 2, 2, 4, 4, 4, 8, 8, 8], strict=True)) | {"out": 10}
    plan = plan_growth(profile, widths, monotone_groups=[FIG2A], **reading)
    assert [plan.widths_after[name] for name in FIG2A] == after
