"""The trigger policy alone, on hand-written accuracy sequences, and the grower agreeing with it.

Accuracies are sums of powers of two, so every window mean, gain and improvement below is exact
in binary floating point: the boundary ``improvement == delta_stop`` is tested exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from benchmarks.grow_cifar.analysis import replay
from netsurgeon.models import vgg
from netsurgeon.nagn import Grower, GrowthConfig, TriggerPolicy, TriggerState

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def _run(policy: TriggerPolicy, accuracies: list[float], grow: bool = True) -> tuple:
    """Trigger epochs, the stop epoch and the final state over ``accuracies`` (1-based epochs);
    every trigger grows when ``grow``."""
    state, triggers, growths = TriggerState(), [], 0
    for epoch, accuracy in enumerate(accuracies, start=1):
        decision = policy.observe(state, accuracy)
        state = decision.state
        if decision.stopped_now:
            return triggers, epoch, state
        if decision.trigger:
            triggers.append(epoch)
            if grow:
                growths += 1
                state = policy.after_growth(state, growths)
                if state.stopped:
                    return triggers, epoch, state
    return triggers, None, state


def test_the_first_trigger_needs_two_full_windows_of_no_gain() -> None:
    policy = TriggerPolicy(w_acc=2, delta_acc=0.01, delta_stop=0.0)
    triggers, stop, _ = _run(policy, [0.25, 0.5, 0.75, 0.75, 0.75, 0.75])
    # windows (0.25, 0.5) -> (0.75, 0.75) gain 1.0 at epoch 4; (0.75, 0.75) -> same at epoch 6
    assert (triggers, stop) == ([6], None)


def test_the_window_restarts_after_a_trigger_and_only_then() -> None:
    flat = [0.5] * 9
    restart = TriggerPolicy(w_acc=2, delta_acc=0.01, delta_stop=-1.0)
    keep = TriggerPolicy(w_acc=2, delta_acc=0.01, delta_stop=-1.0, restart_windows=False)
    assert _run(restart, flat)[0] == [4, 8]  # 2 * w_acc fresh epochs each time
    assert _run(keep, flat)[0] == [4, 5, 6, 7, 8, 9]


def test_a_trigger_improving_less_than_delta_stop_stops_and_does_not_grow() -> None:
    policy = TriggerPolicy(w_acc=1, delta_acc=0.01, delta_stop=0.25)
    triggers, stop, state = _run(policy, [0.25, 0.25, 0.375, 0.375])
    assert (triggers, stop) == ([2], 4)  # 0.375 - 0.25 = 0.125 < 0.25
    assert state.stopped and state.stop_cause == "delta_stop"
    assert "improved by 0.125 (absolute)" in state.stop_reason
    assert "delta_stop=0.25" in state.stop_reason


def test_an_improvement_of_exactly_delta_stop_grows() -> None:
    policy = TriggerPolicy(w_acc=1, delta_acc=0.01, delta_stop=0.25)
    triggers, stop, state = _run(policy, [0.25, 0.25, 0.5, 0.5, 0.625, 0.625])
    assert triggers == [2, 4]  # 0.5 - 0.25 == delta_stop: not below it
    assert stop == 6 and state.last_trigger_accuracy == 0.5  # 0.625 - 0.5 < 0.25


def test_relative_stop_mode_divides_by_the_last_window_mean() -> None:
    absolute = TriggerPolicy(w_acc=1, delta_acc=0.01, delta_stop=0.375)
    relative = TriggerPolicy(w_acc=1, delta_acc=0.01, delta_stop=0.375, stop_mode="relative")
    accuracies = [0.5, 0.5, 0.75, 0.75]  # +0.25 absolute, +0.5 relative
    assert _run(absolute, accuracies)[:2] == ([2], 4)
    assert _run(relative, accuracies)[:2] == ([2, 4], None)


def test_max_growths_stops_after_the_last_growth() -> None:
    policy = TriggerPolicy(w_acc=1, delta_acc=0.01, delta_stop=-1.0, max_growths=2)
    triggers, stop, state = _run(policy, [0.5] * 8)
    assert (triggers, stop, state.stop_cause) == ([2, 4], 4, "max_growths")
    assert state.stop_reason == "reached max_growths=2"


def test_a_trigger_that_grows_nothing_does_not_count_towards_max_growths() -> None:
    policy = TriggerPolicy(w_acc=1, delta_acc=0.01, delta_stop=-1.0, max_growths=1)
    triggers, stop, state = _run(policy, [0.5] * 6, grow=False)
    assert (triggers, stop, state.stopped) == ([2, 4, 6], None, False)


def test_a_stopped_policy_never_triggers_but_keeps_the_window() -> None:
    policy = TriggerPolicy(w_acc=1, delta_acc=0.01, delta_stop=0.0)
    state = TriggerState().stop("budget", "the caps leave no room")
    for accuracy in (0.5, 0.5, 0.5):
        decision = policy.observe(state, accuracy)
        assert not decision.trigger and not decision.stopped_now
        state = decision.state
    assert state.window == (0.5, 0.5, 0.5) and state.stop_cause == "budget"


def test_the_policy_of_a_config_has_its_rules() -> None:
    config = GrowthConfig(w_acc=4, delta_acc=0.5, delta_stop=0.125, max_growths=3)
    policy = TriggerPolicy.of(config)
    assert (policy.w_acc, policy.delta_acc, policy.delta_stop, policy.max_growths) == (
        4,
        0.5,
        0.125,
        3,
    )
    assert TriggerPolicy.of({"w_acc": 4, "delta_acc": 0.5}).delta_stop == GrowthConfig().delta_stop


# ----------------------------------------------------------------------------- agreement


@pytest.mark.parametrize(
    "record",
    [
        "cpu-fig2a/runs/grown-nagn_2.2.2-4.4.4-8.8.8_s0.json",
        "resnet-cpu/runs/grown-nagn_4.4.4.4-8.8.8.8-16.16.16.16_s1.json",
    ],
)
def test_the_grower_and_the_replay_stop_where_a_recorded_run_stopped(record: str) -> None:
    run = json.loads((RESULTS / record).read_text())
    growth = run["config"]["growth"]
    rules = {k: growth[k] for k in ("w_acc", "delta_acc", "delta_stop", "max_growths")}
    model = vgg([[2], [2], [2]], num_classes=3, image_size=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    grower = Grower(model, optimizer, GrowthConfig(every=1, **rules))
    generator = torch.Generator().manual_seed(0)
    stop_epoch = None
    for epoch, row in enumerate(run["epochs"], start=1):
        x = torch.randn(8, 3, 8, 8, generator=generator)
        y = torch.randint(0, 3, (8,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        grower.step(row["val_acc"])
        if grower.stopped:
            stop_epoch = epoch
            break
    replayed = replay.replay_stops(run, "restart, absolute (default)")
    assert grower.stop_reason == run["stop_reason"]
    assert stop_epoch == replayed.stop_epoch
    assert [event.epoch for event in grower.history] == list(replayed.growth_epochs)
    assert list(replayed.growth_epochs) == [event["epoch"] for event in run["events"]]
