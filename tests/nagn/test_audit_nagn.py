"""The Grower's termination pinned with hand-computed expectations.

* ``stop_cause`` survives ``Grower.state_dict`` / ``load_state_dict`` (a resumed run knows why
  growth stopped, not only that it did).
* ``delta_stop`` is the *minimum* improvement (docs: "below it growth stops for good"): an
  improvement of exactly ``delta_stop`` keeps growing; one a hair below stops. The accuracies
  are chosen so that the improvements are exact in binary floating point
  (``0.75 - 0.5 = 0.25``, ``(0.75 - 0.5) / 0.5 = 0.5``).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netsurgeon.nagn import Grower, GrowthConfig


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def _epoch(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()


def _run(config: GrowthConfig, accuracies: list[float]) -> Grower:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    grower = Grower(model, optimizer, config)
    for accuracy in accuracies:
        _epoch(model, optimizer)
        grower.step(accuracy)
    return grower


@pytest.mark.parametrize(
    ("overrides", "accuracies", "cause"),
    [
        ({"max_growths": 1, "delta_stop": -1.0}, [0.5, 0.5], "max_growths"),
        ({"delta_stop": 0.25}, [0.5, 0.5, 0.6, 0.6], "delta_stop"),
    ],
)
def test_stop_cause_survives_the_grower_state_dict(overrides, accuracies, cause) -> None:
    """Mutation killed: ``"stop_cause"`` dropped from ``state_dict`` or not read back."""
    config = GrowthConfig(w_acc=1, delta_acc=1.0, every=1, **overrides)
    grower = _run(config, accuracies)
    assert grower.stopped and grower.stop_cause == cause
    state = grower.state_dict()
    model = _model()
    fresh = Grower(model, torch.optim.SGD(model.parameters(), lr=0.1), config)
    assert fresh.stop_cause is None
    fresh.load_state_dict(state)
    assert fresh.stopped and fresh.stop_cause == cause
    assert fresh.stop_reason == grower.stop_reason


@pytest.mark.parametrize(
    ("mode", "delta_stop", "second"),
    [("absolute", 0.25, 0.75), ("relative", 0.5, 0.75)],
)
def test_an_improvement_of_exactly_delta_stop_keeps_growing(mode, delta_stop, second) -> None:
    """Mutation killed: ``improvement < cfg.delta_stop`` -> ``<=``.

    Triggers at epochs 2 and 4 (``w_acc=1``, ``delta_acc=1``: every full pair of windows gains
    less than 100 %); the window accuracy goes 0.5 -> 0.75 between them.
    """
    config = GrowthConfig(w_acc=1, delta_acc=1.0, delta_stop=delta_stop, stop_mode=mode, every=1)
    improvement = second - 0.5 if mode == "absolute" else (second - 0.5) / 0.5
    assert improvement == delta_stop  # exact, by the choice of numbers
    grower = _run(config, [0.5, 0.5, second, second])
    assert not grower.stopped and grower.stop_cause is None
    assert [event.epoch for event in grower.history] == [2, 4]


@pytest.mark.parametrize(("mode", "delta_stop"), [("absolute", 0.25), ("relative", 0.5)])
def test_an_improvement_just_below_delta_stop_stops(mode, delta_stop) -> None:
    second = math.nextafter(0.75, 0.0)
    config = GrowthConfig(w_acc=1, delta_acc=1.0, delta_stop=delta_stop, stop_mode=mode, every=1)
    grower = _run(config, [0.5, 0.5, second, second])
    assert grower.stopped and grower.stop_cause == "delta_stop"
    assert [event.epoch for event in grower.history] == [2]
