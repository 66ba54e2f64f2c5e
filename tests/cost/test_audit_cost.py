"""``fit_to_budget`` against plans and parameter counts worked out by hand.

The model is ``Linear(4, 8) -> ReLU -> Linear(8, 6) -> ReLU -> Linear(6, 2)``: 40 + 54 + 14 = 108
parameters. Widening layer ``0`` by ``a`` and layer ``2`` by ``b`` adds ``a`` rows of 4 weights
and a bias (5a), ``a`` columns of layer 2 (6a), ``b`` rows of 8 weights and a bias (9b), ``b``
columns of layer 4 (2b) and the ``a * b`` corner of layer 2's weight:

    params(a, b) = 108 + 11 a + 11 b + a b

The plan ``{"0": 8, "2": 4}`` scales as ``k(t) = (floor(8 t / 8), floor(4 t / 8))`` for
``t = 0..8``:

    t       0    1    2    3    4    5    6    7    8
    (a, b)  0,0  1,0  2,1  3,1  4,2  5,2  6,3  7,3  8,4
    params  108  119  143  155  182  195  225  239  272

so the largest ``t`` under a cap is read off the table.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netsurgeon.cost import Budget, fit_to_budget

PLAN = {"0": 8, "2": 4}


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))


def _params(a: int, b: int) -> int:
    return 108 + 11 * a + 11 * b + a * b


@pytest.mark.parametrize(
    ("cap", "increments", "t"),
    [
        (272, {"0": 8, "2": 4}, 8),  # fits as asked
        (271, {"0": 7, "2": 3}, 7),
        (200, {"0": 5, "2": 2}, 5),
        (160, {"0": 3, "2": 1}, 3),  # rounding half up would give (3, 2): 169 > 160
        (142, {"0": 1}, 1),  # layer 2's floor(4 / 8) = 0 is dropped from the plan
        (108, {}, 0),
        (107, {}, 0),  # already over budget: nothing fits
    ],
)
def test_fit_to_budget_picks_the_largest_floor_scaled_plan_under_the_cap(cap, increments, t):
    """Mutations killed: ``k * t // steps`` rounded instead of floored, an off-by-one in the
    bisection's range, the scale reported as anything but ``t / 8``."""
    fitted = fit_to_budget(_mlp(), PLAN, Budget(max_params=cap))
    assert fitted.requested == PLAN
    assert fitted.increments == increments
    a, b = increments.get("0", 0), increments.get("2", 0)
    assert fitted.cost.params_before == 108
    assert fitted.cost.params_after == _params(a, b) <= max(cap, 108)
    assert fitted.scale == t / 8
    assert fitted.limited_by == (() if cap >= 272 else ("max_params",))


def test_fit_to_budget_rounds_each_scaled_increment_down_to_its_granularity():
    """With ``granularity={"0": 2}`` the table's ``a`` is rounded down to even: at ``t = 5``
    ``(4, 2)`` costs 182 <= 200 and at ``t = 6`` ``(6, 3)`` costs 225 > 200."""
    fitted = fit_to_budget(_mlp(), PLAN, Budget(max_params=200), granularity={"0": 2})
    assert fitted.increments == {"0": 4, "2": 2}
    assert fitted.cost.params_after == _params(4, 2) == 182
    assert fitted.scale == 5 / 8


def test_fit_to_budget_applies_width_caps_before_the_parameter_cap():
    """``max_width={"0": 10}`` caps ``a`` at 2 first; then ``(2, 4)`` costs 182, under 190."""
    budget = Budget(max_params=190, max_width={"0": 10})
    fitted = fit_to_budget(_mlp(), PLAN, budget)
    assert fitted.increments == {"0": 2, "2": 4}
    assert fitted.cost.params_after == _params(2, 4) == 182
    assert fitted.limited_by == ("max_width",) and fitted.scale == 1.0
    # With a tighter parameter cap the width-capped plan (2, 4) is scaled: T = 4,
    # k(t) = (floor(2 t / 4), t): t = 2 gives (1, 2), 108 + 11 + 22 + 2 = 143 <= 150;
    # t = 3 gives (1, 3), 108 + 11 + 33 + 3 = 155 > 150.
    fitted = fit_to_budget(_mlp(), PLAN, Budget(max_params=150, max_width={"0": 10}))
    assert fitted.increments == {"0": 1, "2": 2}
    assert fitted.cost.params_after == 143
    assert fitted.limited_by == ("max_width", "max_params") and fitted.scale == 2 / 4
