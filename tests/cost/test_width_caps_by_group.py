"""Width caps name layers; they cap channel groups.

Invariants tested:

* a ``max_width`` cap on any producer of a channel group (a residual stream's second producer,
  not the group's first) caps the whole group, in ``fit_to_budget`` and in the ``Grower``: the
  plan never exceeds it and ``limited_by`` says so;
* two different caps for one group are refused when the grower is built (and by
  ``fit_to_budget``), naming both keys; the same cap given twice is one cap;
* a cap naming no layer (a typo, a follower) is refused, the follower's message naming its group.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netsurgeon
from netsurgeon import ConfigError
from netsurgeon.cost import Budget, fit_to_budget, width_caps
from netsurgeon.models import resnet
from netsurgeon.nagn import Grower, GrowthConfig

FORCED = {"w_acc": 1, "delta_acc": 1.0, "delta_stop": -1.0, "every": 1}  # any gain < 1 triggers
SECOND = "stages.0.0.conv2"  # the second producer of the stem's stream, group "conv"


def _model() -> nn.Module:
    torch.manual_seed(0)
    return resnet((4, 8, 8), blocks=1, num_classes=3)


def _widths(model: nn.Module) -> dict[str, int]:
    return netsurgeon.trace(model).widths()


def test_the_capped_producer_is_not_its_groups_first():
    graph = netsurgeon.trace(_model())
    group = graph.resolve(SECOND)
    assert group.name == "conv" and group.producers.index(SECOND) > 0 and group.width == 4
    assert width_caps({SECOND: 5}, graph) == {"conv": 5}


@pytest.mark.parametrize("key", ["conv", SECOND])
def test_fit_to_budget_caps_a_group_through_any_of_its_producers(key):
    model = _model()
    fitted = fit_to_budget(model, {"conv": 4, "stages.1.0.conv1": 2}, Budget(max_width={key: 5}))
    assert fitted.increments == {"conv": 1, "stages.1.0.conv1": 2}
    assert fitted.limited_by == ("max_width",)
    assert fitted.cost.widths_after["conv"] == fitted.cost.widths_after[SECOND] == 5


def test_a_grower_never_grows_a_group_past_a_cap_on_its_second_producer():
    torch.manual_seed(0)
    model = resnet((16, 8, 8), blocks=1, num_classes=3)  # uniform growth asks for the stem's stream
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.arange(8) % 3
    grower = Grower(model, opt, GrowthConfig(**FORCED, where="uniform", max_width={SECOND: 20}))
    events = []
    for _ in range(4):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        events.append(grower.step(0.5))
    grown = [e for e in events if e is not None]
    assert len(grown) == 2 and all(
        e.requested["conv"] + e.widths_before[SECOND] > 20 for e in grown
    )
    assert grown[0].increments["conv"] == 4 and "conv" not in grown[1].increments
    assert all("max_width" in e.limited_by for e in grown)
    assert all(e.widths_after["conv"] == e.widths_after[SECOND] == 20 for e in grown)
    assert _widths(model)["conv"] == _widths(model)[SECOND] == 20


@pytest.mark.parametrize(
    "build",
    [
        lambda caps: Grower(_model(), None, GrowthConfig(max_width=caps)),
        lambda caps: fit_to_budget(_model(), {"conv": 1}, Budget(max_width=caps)),
    ],
    ids=["grower", "fit_to_budget"],
)
def test_two_caps_for_one_group_are_refused_naming_both_keys(build):
    with pytest.raises(ConfigError, match=r"'conv' at 6 and 'stages\.0\.0\.conv2' at 5") as e:
        build({"conv": 6, SECOND: 5})
    assert "channel group 'conv'" in str(e.value) and "{'conv': 5}" in str(e.value)


def test_the_same_cap_named_twice_for_one_group_is_one_cap():
    fitted = fit_to_budget(_model(), {"conv": 4}, Budget(max_width={"conv": 6, SECOND: 6}))
    assert fitted.increments == {"conv": 2} and fitted.limited_by == ("max_width",)


@pytest.mark.parametrize(
    ("key", "match"),
    [("stages.0.0.conv9", "not layers"), ("bn", "follows group 'conv'")],
)
def test_a_cap_naming_no_layer_is_refused(key, match):
    with pytest.raises(ConfigError, match=match):
        fit_to_budget(_model(), {"conv": 1}, Budget(max_width={key: 8}))
    with pytest.raises(ConfigError, match=match):
        Grower(_model(), None, GrowthConfig(max_width={key: 8}))
