"""``widen(optimizer=)`` must be the optimizer of the parameters it grows.

An optimizer that trains another model (or misses part of this one) used to be accepted
silently: its state did not grow with the parameters, and the user's next ``step()`` failed far
from the cause, or the grown parameters were never trained. Invariant: ``widen`` refuses such an
optimizer with a :class:`~netsurgeon.errors.WidenError` naming the missing parameters and the
fix, and model and optimizer are bit-identical afterwards; the Grower, which passes its optimizer
to ``widen``, refuses the same growth atomically.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netsurgeon
from netsurgeon import NetsurgeonError, WidenError
from netsurgeon.models import vgg
from netsurgeon.nagn import Grower, GrowthConfig

FORCED = {"w_acc": 1, "delta_acc": 1.0, "delta_stop": -1.0, "every": 1}


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))


def _trained(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    model(x).square().mean().backward()
    optimizer.step()


def _snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple:
    params = {k: v.clone() for k, v in model.state_dict().items()}
    state = {
        id(p): {k: v.clone() for k, v in s.items() if isinstance(v, torch.Tensor)}
        for p, s in optimizer.state.items()
    }
    return params, state, repr(model)


def _assert_same(before: tuple, after: tuple) -> None:
    assert before[2] == after[2]
    assert before[0].keys() == after[0].keys()
    for key in before[0]:
        assert torch.equal(before[0][key], after[0][key]), key
    assert before[1].keys() == after[1].keys()
    for pid, state in before[1].items():
        for key, value in state.items():
            assert torch.equal(value, after[1][pid][key])


def test_widen_refuses_the_optimizer_of_another_model_and_changes_nothing():
    model, other = _net(), _net()
    optimizer = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    _trained(other, optimizer)
    before = _snapshot(model, optimizer)
    with pytest.raises(WidenError, match="holds none of the model's parameters") as info:
        netsurgeon.widen(model, {"0": 4}, optimizer=optimizer)
    assert "optimizer=None" in str(info.value)  # the fix
    _assert_same(before, _snapshot(model, optimizer))
    assert isinstance(info.value, NetsurgeonError)


def test_widen_names_the_grown_parameters_an_optimizer_misses():
    model = _net()
    optimizer = torch.optim.SGD(model[3].parameters(), lr=0.1, momentum=0.9)  # misses 0 and 1
    _trained(model, optimizer)
    before = _snapshot(model, optimizer)
    with pytest.raises(WidenError) as info:
        netsurgeon.widen(model, {"0": 4}, optimizer=optimizer)
    message = str(info.value)
    for name in ("'0.weight'", "'0.bias'", "'1.weight'", "'1.bias'"):
        assert name in message
    assert "'3.weight'" not in message  # held: it grows its input columns but is not missing
    assert "param_groups" in message
    _assert_same(before, _snapshot(model, optimizer))


def test_widen_accepts_an_optimizer_without_the_frozen_parameters_it_grows():
    model = _net()
    model[1].requires_grad_(False)  # a frozen BatchNorm: not trained, so not in the optimizer
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trained, lr=0.1, momentum=0.9)
    _trained(model, optimizer)
    netsurgeon.widen(model, {"0": 4}, optimizer=optimizer)
    assert model[0].out_channels == 12 and model[1].weight.shape == (12,)
    assert optimizer.state[model[0].weight]["momentum_buffer"].shape == (12, 3, 3, 3)


def test_a_grower_with_another_models_optimizer_refuses_the_growth_atomically():
    torch.manual_seed(0)
    model, other = vgg([[4], [4]], num_classes=3, image_size=8), _net()
    optimizer = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the construction-time warning is tested elsewhere
        grower = Grower(model, optimizer, GrowthConfig(**FORCED))
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    y = torch.arange(8) % 3
    F.cross_entropy(model(x), y).backward()
    assert grower.step(0.5) is None  # the first trigger needs 2 * w_acc epochs
    F.cross_entropy(model(x), y).backward()
    before = _snapshot(model, optimizer)
    with pytest.raises(WidenError, match="holds none of the model's parameters"):
        grower.step(0.5)
    _assert_same(before, _snapshot(model, optimizer))
    assert grower.epoch == 1 and grower.history == []
    grower.optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    assert grower.step(0.5) is not None  # the same growth with the right optimizer
