"""``widen`` refuses bad input with a message that names the fix, and then changes nothing.

Atomicity: the whole plan is validated and every new tensor staged before the first one is
committed, so after any error the model's ``state_dict()``, its module attributes and the
optimizer's state are bit-identical to before.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netsurgeon
from netsurgeon import NetsurgeonError, WidenError


class Net(nn.Module):
    """conv1 -> conv2 -> flatten -> fc1 -> fc2 (the output layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc1 = nn.Linear(6 * 2 * 2, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class ViewNet(nn.Module):
    """``x.view(-1, 24)`` after conv2 fixes its width: conv2 cannot be widened."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 4)
        return self.fc(x.view(-1, 24))


def _trained(model: nn.Module) -> torch.optim.Optimizer:
    """An Adam with state, after two steps (so the state is nonzero everywhere)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(4, 3, 8, 8, generator=g)).pow(2).mean().backward()
        optimizer.step()
    return optimizer


def _snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    return {
        "model": copy.deepcopy(model.state_dict()),
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "grads": {n: p.grad.clone() for n, p in model.named_parameters()},
        "repr": repr(model),
    }


def _assert_unchanged(model: nn.Module, optimizer: torch.optim.Optimizer, before: dict) -> None:
    after = _snapshot(model, optimizer)
    assert after["repr"] == before["repr"]  # module attributes (out_channels, ...) too
    assert after["model"].keys() == before["model"].keys()
    for key, value in before["model"].items():
        assert torch.equal(after["model"][key], value), key
    for key, value in before["grads"].items():
        assert torch.equal(after["grads"][key], value), key
    assert after["optimizer"]["param_groups"] == before["optimizer"]["param_groups"]
    assert after["optimizer"]["state"].keys() == before["optimizer"]["state"].keys()
    for index, state in before["optimizer"]["state"].items():
        assert after["optimizer"]["state"][index].keys() == state.keys()
        for key, value in state.items():
            assert torch.equal(after["optimizer"]["state"][index][key], value), (index, key)


CASES: dict[str, tuple[Any, type[Exception], str]] = {
    "unknown-name": ({"conv_1": 2}, WidenError, r"'conv_1' is not a layer.*Did you mean 'conv1'"),
    "output-layer": ({"fc2": 2}, WidenError, r"cannot widen layer 'fc2'.*model output"),
    "zero-units": ({"conv1": 0}, WidenError, r"plan\['conv1'\] = 0: expected a positive int"),
    "negative-units": ({"conv1": -1}, WidenError, r"= -1: expected a positive int"),
    "fractional-units": ({"conv1": 1.5}, WidenError, r"= 1.5: expected a positive int"),
    "bool-units": ({"conv1": True}, WidenError, r"= True: expected a positive int"),
    "non-str-key": ({0: 2}, TypeError, r"plan keys must be layer names \(str\), got 0"),
    "not-a-mapping": ([("conv1", 2)], TypeError, r"plan must be a mapping .* got list"),
    "valid-and-invalid": ({"conv1": 2, "fc1": 3, "fc2": 1}, WidenError, r"'fc2'.*model output"),
    "valid-and-unknown": ({"conv1": 2, "conv9": 1}, WidenError, r"'conv9' is not a layer"),
    "valid-and-bad-count": ({"conv2": 2, "fc1": 0}, WidenError, r"plan\['fc1'\] = 0"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_plan_raises_a_clear_error_and_changes_nothing(case: str) -> None:
    plan, error, match = CASES[case]
    model = Net()
    optimizer = _trained(model)
    before = _snapshot(model, optimizer)
    with pytest.raises(error, match=match):
        netsurgeon.widen(model, plan, optimizer=optimizer)
    _assert_unchanged(model, optimizer, before)


def test_widen_errors_are_value_errors_and_netsurgeon_errors() -> None:
    with pytest.raises(WidenError) as info:
        netsurgeon.widen(Net(), {"fc2": 1})
    assert isinstance(info.value, NetsurgeonError) and isinstance(info.value, ValueError)


def test_layer_marked_unwidenable_is_refused_with_the_reason() -> None:
    model = ViewNet()
    optimizer = _trained(model)
    before = _snapshot(model, optimizer)
    assert netsurgeon.trace(model, strict=False).widenable_layers == ["conv1"]
    with pytest.raises(
        WidenError, match=r"cannot widen layer 'conv2'.*view.*torch\.flatten\(x, 1\)"
    ):
        netsurgeon.widen(model, {"conv1": 1, "conv2": 2}, optimizer=optimizer)
    _assert_unchanged(model, optimizer, before)


WRAPPERS: dict[str, tuple[Callable[[nn.Module], nn.Module], str]] = {
    "DataParallel": (nn.DataParallel, r"DataParallel wrapper.*Pass model\.module instead"),
    "torch.compile": (torch.compile, r"OptimizedModule wrapper.*Pass model\._orig_mod"),
}


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_wrapped_model_is_refused_with_what_to_pass_instead(wrapper: str) -> None:
    wrap, match = WRAPPERS[wrapper]
    model = Net()
    optimizer = _trained(model)
    before = _snapshot(model, optimizer)
    with pytest.raises(WidenError, match=match):
        netsurgeon.widen(wrap(model), {"conv1": 2}, optimizer=optimizer)
    _assert_unchanged(model, optimizer, before)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"init": "kaiming"}, ValueError, r"unknown init strategy 'kaiming'.*'net2net', 'paper'"),
        ({"optimizer": "adam"}, TypeError, r"optimizer must be a torch\.optim\.Optimizer"),
    ],
    ids=["unknown-init", "not-an-optimizer"],
)
def test_bad_keyword_arguments_are_refused_and_change_nothing(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    model = Net()
    optimizer = _trained(model)
    before = _snapshot(model, optimizer)
    with pytest.raises(error, match=match):
        netsurgeon.widen(model, {"conv1": 2}, **kwargs)
    _assert_unchanged(model, optimizer, before)


def test_error_cases_leave_a_model_that_widens_normally_afterwards() -> None:
    model = Net()
    optimizer = _trained(model)
    with pytest.raises(WidenError):
        netsurgeon.widen(model, {"conv1": 2, "fc2": 1}, optimizer=optimizer)
    netsurgeon.widen(model, {"conv1": 2}, optimizer=optimizer)
    assert model.conv1.out_channels == 6 and model.conv2.in_channels == 6
    assert optimizer.state[model.conv1.weight]["exp_avg"].shape == (6, 3, 3, 3)
