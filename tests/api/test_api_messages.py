"""What the API says when a user looks: a fitted plan's ``str``, a follower used as a plan key,
and a Grower that has nothing to grow.

* ``str(FittedPlan)`` shows the plan, what was asked, the caps that bound it and the cost;
* ``widen(m, {"bn1": 4})`` names the group ``bn1`` follows and the key to use instead;
* a Grower on a model with no widenable group warns at construction, and logs at each trigger,
  why: the blocked reason of each group (summarised) and the groups that reach the output.
"""

from __future__ import annotations

import logging
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netsurgeon
from netsurgeon import NetsurgeonWarning, WidenError
from netsurgeon.cost import Budget, fit_to_budget
from netsurgeon.nagn import Grower, GrowthConfig


def test_a_fitted_plan_prints_the_plan_what_bound_it_and_the_costs():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    fitted = fit_to_budget(net, {"0": 8}, Budget(max_params=80))
    text = str(fitted)
    head, costs = text.splitlines()[:2]
    # 4*8+8 + 8*2+2 = 58 parameters; each new unit of "0" adds 4+1+2 = 7: 3 units fit in 80
    assert head == "FittedPlan {'0': 3} (asked {'0': 8}; bound by max_params, scale 0.375)"
    assert costs == "  params 58 -> 79, FLOPs not counted (no example inputs)"
    assert str(fitted.cost) in text


def test_a_fitted_plan_that_fits_as_asked_says_so_with_its_flops():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    fitted = fit_to_budget(net, {"0": 8}, Budget(max_params=10_000), torch.randn(1, 4))
    head, costs = str(fitted).splitlines()[:2]
    assert head == "FittedPlan {'0': 8} (as asked, no cap bound)"
    # FLOPs of one sample: 2 * (4*8 + 8*2) = 96 before, 2 * (4*16 + 16*2) = 192 after
    assert costs == "  params 58 -> 114, FLOPs 96 -> 192"


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))


def test_a_follower_used_as_a_plan_key_names_its_group_and_the_key_to_use():
    model = _Block()
    with pytest.raises(WidenError) as info:
        netsurgeon.widen(model, {"bn1": 4})
    assert str(info.value) == (
        "'bn1' is not a layer: it follows group 'conv1' (producers conv1) and grows when that "
        "group grows. Use the plan key 'conv1'."
    )
    assert model.conv1.out_channels == 8
    with pytest.raises(
        WidenError,
        match=r"'bn2' is not a layer: it follows group 'conv2' .*"
        r"cannot be widened: its output reaches the model output",
    ):
        netsurgeon.widen(model, {"bn2": 4})
    with pytest.raises(WidenError, match="'bn3' is not a layer of _Block"):  # still: unknown
        netsurgeon.widen(model, {"bn3": 4})


class _Recurrent(nn.Module):
    """Every group blocked or an output: the LSTM is refused, the head reaches the output."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 16)
        self.rnn = nn.LSTM(16, 8, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        out, _ = self.rnn(self.embed(x))
        return self.fc(out[:, -1])


def test_the_summary_of_a_model_with_nothing_to_grow_names_each_reason():
    from netsurgeon.nagn.inputs import nothing_to_grow

    graph = netsurgeon.trace(_Recurrent(), torch.randn(2, 5, 4), strict=False)
    reasons = {g.name: g.reason for g in graph.groups}
    assert not any(g.widenable for g in graph.groups)
    text = nothing_to_grow(graph)
    assert text.startswith(f"0 widenable groups of {len(reasons)}: ")
    assert "'fc' reaches the output" in text
    blocked = [name for name, g in zip(reasons, graph.groups, strict=True) if g.blocked]
    assert blocked
    for name in blocked:  # each blocked group named with the first clause of its reason
        first = re.split(r" \((?:fix: |at %)", graph.resolve(name).blocked)[0]
        assert f"'{name}' is blocked: {first[:100]}" in text
    assert "fix:" not in text and "%" not in text  # no fx-node dumps in a summary


def test_a_grower_with_nothing_to_grow_warns_and_logs_why(caplog):
    torch.manual_seed(0)
    model = _Recurrent()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    config = GrowthConfig(w_acc=1, delta_acc=1.0, delta_stop=-1.0, every=1)
    with pytest.warns(NetsurgeonWarning, match=r"nothing to grow, 0 widenable groups") as record:
        grower = Grower(model, optimizer, config, example_inputs=torch.randn(2, 5, 4))
    message = str(record[0].message)
    assert "'fc' reaches the output" in message and "'embed' is blocked" in message
    x, y = torch.randn(6, 5, 4), torch.arange(6) % 3
    with caplog.at_level(logging.WARNING, logger="netsurgeon"):
        for _ in range(2):
            F.cross_entropy(model(x), y).backward()
            assert grower.step(0.5) is None
    logged = [r.getMessage() for r in caplog.records if "nothing to grow" in r.getMessage()]
    assert logged and "'fc' reaches the output" in logged[0]


def test_a_grower_with_something_to_grow_does_not_warn():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        Grower(model, optimizer)
    assert [str(r.message) for r in record if "nothing to grow" in str(r.message)] == []
