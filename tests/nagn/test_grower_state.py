"""``GrowerState``: the grower's memory as one record; its copy is the step's snapshot and its
dict the checkpoint, with the keys every ``Grower.state_dict`` has written."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from netsurgeon.errors import MonitorError, NetsurgeonWarning
from netsurgeon.models import vgg
from netsurgeon.nagn import Grower, GrowthConfig
from netsurgeon.nagn.grower_state import GrowerState

CHECKPOINT_KEYS = {
    "config",
    "epoch",
    "accuracies",
    "window",
    "last_trigger_accuracy",
    "stopped",
    "stop_cause",
    "stop_reason",
    "history",
    "weights_rng",
    "where_rng",
    "monitor",
}


def _grower() -> tuple[Grower, torch.nn.Module, torch.optim.Optimizer]:
    model = vgg([[2], [2]], num_classes=3, image_size=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    config = GrowthConfig(w_acc=1, delta_acc=1.0, delta_stop=-1.0, every=1)
    return Grower(model, optimizer, config), model, optimizer


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,))
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()


def test_a_copy_shares_nothing_that_the_grower_mutates() -> None:
    state = GrowerState.seeded(7, torch.device("cpu"))
    state.accuracies.append(0.5)
    copy = state.copy()
    state.accuracies.append(0.75)
    state.epoch += 1
    drawn = torch.rand(3, generator=state.weights_rng)
    assert copy.accuracies == [0.5] and copy.epoch == 0
    torch.testing.assert_close(torch.rand(3, generator=copy.weights_rng), drawn, rtol=0, atol=0)


def test_the_state_dict_is_the_states_dict_with_the_historical_keys() -> None:
    grower, model, optimizer = _grower()
    for accuracy in (0.25, 0.5):
        _train(model, optimizer)
        grower.step(accuracy)
    state = grower.state_dict()
    assert set(state) == CHECKPOINT_KEYS
    fresh, _, _ = _grower()
    reread = fresh._state.loaded_from(state).to_dict()
    assert reread["accuracies"] == [0.25, 0.5] and reread["epoch"] == 2
    assert [e["epoch"] for e in reread["history"]] == [e.epoch for e in grower.history]
    torch.testing.assert_close(reread["weights_rng"], state["weights_rng"], rtol=0, atol=0)


def test_a_failed_step_puts_the_whole_state_back() -> None:
    grower, model, optimizer = _grower()
    _train(model, optimizer)
    grower.step(0.25)  # one window: no trigger yet
    before = grower.state_dict()
    with pytest.raises(MonitorError):  # the trigger finds no NAGN: no training since the step
        grower.step(0.25)
    after = grower.state_dict()
    assert {k: v for k, v in after.items() if "rng" not in k} == {
        k: v for k, v in before.items() if "rng" not in k
    }
    for key in ("weights_rng", "where_rng"):
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0)


def test_construction_warnings_point_at_the_callers_line() -> None:
    model = vgg([[2], [2]], num_classes=3, image_size=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Grower(model, None)
    ours = [w for w in caught if issubclass(w.category, NetsurgeonWarning)]
    assert ours and all(w.filename == __file__ for w in ours)
