"""``GrowthConfig.budget_match``: what "matched budget" holds equal between the criteria.

On a ViT, a head is 48 rows of ``qkv`` (granularity 48) while a stream or MLP unit is one, so
spreading the NAGN plan's *units* and rounding each group up to its granularity adds far more
parameters than the plan. ``budget_match="params"`` adds at most the plan's parameters, spread
by the criterion. The twins see the same profile (same seed, data and steps), hence the same
NAGN plan, at the one forced trigger.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from netsurgeon.errors import ConfigError
from netsurgeon.models import vit
from netsurgeon.nagn import Grower, GrowthConfig


def _grown(where: str, budget_match: str):
    torch.manual_seed(0)
    model = vit([(32, 32, 64)] * 2, image_size=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 3, 16, 16), torch.randint(0, 10, (64,))
    config = GrowthConfig(
        w_acc=1, delta_acc=1e6, every=1, where=where, budget_match=budget_match, seed=3
    )
    grower = Grower(model, optimizer, config, example_inputs=(x[:2],))
    event = None
    for epoch in range(2):  # the trigger is forced at the end of the second epoch
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        event = grower.step(0.1 * (epoch + 1))
    assert event is not None
    return event


@pytest.mark.parametrize("where", ["uniform", "random"])
def test_matching_parameters_adds_at_most_the_nagn_plans_parameters(where: str) -> None:
    nagn = _grown("nagn", "units")
    by_units, by_params = _grown(where, "units"), _grown(where, "params")
    plan, units, params = (e.params_after - e.params_before for e in (nagn, by_units, by_params))
    assert units > plan  # heads rounded up to whole heads: over budget
    assert 0.5 * plan <= params <= plan
    groups = {"embed.proj", "blocks.0.attn.qkv", "blocks.0.mlp.fc1"}
    assert set(by_params.increments) & groups  # the criterion's spread, not the plan's
    for name, k in by_params.increments.items():
        assert k % (48 if name.endswith("qkv") else 1) == 0


def test_uniform_params_grows_every_group_it_can_by_a_similar_fraction() -> None:
    event = _grown("uniform", "params")
    fractions = [k / event.widths_before[name] for name, k in event.increments.items()]
    assert max(fractions) <= 2 * min(fractions) + 1 / 16  # rounding of one unit at width 32


def test_budget_match_is_checked() -> None:
    with pytest.raises(ConfigError, match="budget_match"):
        GrowthConfig(budget_match="flops")
