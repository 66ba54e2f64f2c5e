"""The Grower: trigger, termination, where-criteria, continuity across growth, resume.

Invariants tested:

* growth happens exactly when the window rule says so, and never after termination;
* a growth does not change the function: the loss on a fixed batch right before and right after
  the ``widen`` inside ``step`` is equal (eval mode);
* ``uniform`` and ``random`` add exactly the NAGN plan's number of units;
* a run checkpointed mid-growth and resumed on a fresh model continues bit-identically.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from training_helpers import toy_images, train_epoch

import netsurgeon
from netsurgeon.models import vgg
from netsurgeon.nagn.grower import Grower, GrowthConfig, window_gain
from netsurgeon.nagn.where import spread_random, spread_uniform


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return vgg([[4], [4], [4]], num_classes=4, image_size=8)


def _eval_loss(model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


# ---- the window rule --------------------------------------------------------------------------
def test_window_gain_is_relative_gain_of_consecutive_window_means():
    assert window_gain([0.4, 0.5], 2) is None
    assert window_gain([0.4, 0.4, 0.5, 0.5], 2) == pytest.approx(0.25)
    assert window_gain([0.1, 0.4, 0.4, 0.5, 0.5], 2) == pytest.approx(0.25)  # last 2w only


def test_growth_triggers_exactly_when_the_window_gain_drops_below_delta_acc():
    x, y = toy_images()
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), 1e-2)
    grower = Grower(model, opt, GrowthConfig(w_acc=2, delta_acc=0.01, delta_stop=-1.0, every=1))
    accuracies = [0.30, 0.40, 0.50, 0.60, 0.61, 0.61]  # gain at epoch 4: 0.5, at 6: ~0.10/0.55
    events = []
    for acc in accuracies:
        train_epoch(model, opt, x, y)
        events.append(grower.step(acc))
    assert [e is not None for e in events] == [False] * 6  # gains 0.556, 0.1.. stay above 1%
    train_epoch(model, opt, x, y)
    grower.step(0.61)  # window (0.61, 0.61) vs (0.60, 0.61): gain 0.8% < 1% -> trigger
    assert len(grower.history) == 1 and grower.history[0].epoch == 7


def test_windows_restart_after_a_trigger():
    x, y = toy_images()
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), 1e-2)
    grower = Grower(model, opt, GrowthConfig(w_acc=1, delta_acc=1.0, delta_stop=-1.0, every=1))
    grown_at = []
    for epoch in range(1, 7):
        train_epoch(model, opt, x, y)
        if grower.step(0.5) is not None:
            grown_at.append(epoch)
    assert grown_at == [2, 4, 6]  # every trigger needs 2 * w_acc fresh epochs


@pytest.mark.parametrize(
    ("mode", "second_window", "stops"),
    [
        ("absolute", 0.54, True),
        ("absolute", 0.56, False),
        ("relative", 0.52, True),
        ("relative", 0.53, False),
    ],
)
def test_delta_stop_disables_growth_for_good(mode, second_window, stops):
    x, y = toy_images()
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), 1e-2)
    cfg = GrowthConfig(w_acc=1, delta_acc=1.0, delta_stop=0.05, stop_mode=mode, every=1)
    grower = Grower(model, opt, cfg)
    for acc in (0.5, 0.5, second_window, second_window):
        train_epoch(model, opt, x, y)
        grower.step(acc)
    assert grower.stopped is stops
    assert len(grower.history) == (1 if stops else 2)
    for _ in range(4):
        train_epoch(model, opt, x, y)
        grower.step(0.0 if stops else second_window)
    if stops:
        assert len(grower.history) == 1 and "delta_stop" in grower.stop_reason


def test_max_growths_stops_after_that_many_events():
    x, y = toy_images()
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), 1e-2)
    grower = Grower(
        model, opt, GrowthConfig(w_acc=1, delta_acc=1.0, delta_stop=-1.0, max_growths=1, every=1)
    )
    for _ in range(6):
        train_epoch(model, opt, x, y)
        grower.step(0.5)
    assert len(grower.history) == 1 and grower.stopped


@pytest.mark.filterwarnings("ignore:Grower has no optimizer")
def test_step_rejects_non_finite_accuracy():
    grower = Grower(_model(), None)
    with pytest.raises(ValueError, match="finite"):
        grower.step(math.nan)


def test_config_rejects_unknown_criterion():
    with pytest.raises(ValueError, match="where='everywhere'"):
        GrowthConfig(where="everywhere")


# ---- growth itself ----------------------------------------------------------------------------
def test_end_to_end_growth_keeps_the_loss_on_a_fixed_batch_and_trains_on():
    x, y = toy_images()
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), 1e-2)
    steps = 6 * math.ceil(len(x) / 64)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    grower = Grower(model, opt, GrowthConfig(w_acc=1, delta_acc=1.0, delta_stop=-1.0, every=1))
    jumps = []
    for _ in range(6):
        train_epoch(model, opt, x, y, scheduler=sched)
        before = _eval_loss(model, x[:64], y[:64])
        event = grower.step(0.5)
        after = _eval_loss(model, x[:64], y[:64])
        if event is not None:
            jumps.append(abs(after - before))
            assert event.params_after > event.params_before
            assert all(
                event.widths_after[n] == event.widths_before[n] + k
                for n, k in event.increments.items()
            )
    assert len(jumps) >= 1
    assert max(jumps) <= 1e-5
    assert sched.get_last_lr()[0] == pytest.approx(opt.param_groups[0]["lr"])
    assert sched.last_epoch == steps  # the scheduler kept stepping across growth
    final_loss = _eval_loss(model, x, y)
    assert math.isfinite(final_loss)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_event_records_profile_and_plan_and_serialises():
    import json

    x, y = toy_images()
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), 1e-2)
    grower = Grower(model, opt, GrowthConfig(w_acc=1, delta_acc=1.0, delta_stop=-1.0, every=1))
    for _ in range(2):
        train_epoch(model, opt, x, y)
        event = grower.step(0.5)
    assert event is not None
    assert list(event.profile) == netsurgeon.trace(model).layers
    assert event.plan.profile == event.profile
    data = json.loads(json.dumps(event.to_dict()))
    assert data["increments"] == event.increments and data["epoch"] == 2


@pytest.mark.parametrize("where", ["uniform", "random"])
def test_baseline_criteria_add_the_same_total_as_the_nagn_plan(where):
    x, y = toy_images()
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), 1e-2)
    grower = Grower(
        model, opt, GrowthConfig(w_acc=1, delta_acc=1.0, delta_stop=-1.0, every=1, where=where)
    )
    for _ in range(2):
        train_epoch(model, opt, x, y)
        event = grower.step(0.5)
    assert event is not None
    assert sum(event.increments.values()) == sum(event.plan.increments.values())
    assert event.where == where


def test_spread_uniform_is_proportional_and_exact():
    assert spread_uniform(6, {"a": 4, "b": 8}, ["a", "b"]) == {"a": 2, "b": 4}
    grown = spread_uniform(7, {"a": 4, "b": 8, "c": 4}, ["a", "b", "c"])
    assert sum(grown.values()) == 7 and grown["b"] >= grown["a"]
    assert spread_uniform(100, {"a": 2}, ["a"]) == {"a": 2}  # at most doubled


def test_spread_random_is_seeded_and_capped():
    widths = {"a": 2, "b": 3, "c": 8}
    one = spread_random(9, widths, list(widths), torch.Generator().manual_seed(3))
    two = spread_random(9, widths, list(widths), torch.Generator().manual_seed(3))
    assert one == two and sum(one.values()) == 9
    assert all(one.get(n, 0) <= widths[n] for n in widths)


# ---- resume -----------------------------------------------------------------------------------
def test_resume_mid_growth_continues_bit_identically(tmp_path):
    x, y = toy_images()
    cfg = GrowthConfig(w_acc=1, delta_acc=1.0, delta_stop=-1.0, every=1)
    accs = [0.5, 0.5, 0.6, 0.6, 0.7, 0.7]

    def run(model, opt, grower, epochs):
        for acc in epochs:
            torch.manual_seed(len(grower.accuracies))  # the data order's randomness, per epoch
            train_epoch(model, opt, x, y)
            grower.step(acc)

    model = _model()
    opt = torch.optim.AdamW(model.parameters(), 1e-2)
    grower = Grower(model, opt, cfg)
    run(model, opt, grower, accs[:3])
    assert len(grower.history) == 1
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "grower": grower.state_dict()},
        tmp_path / "ckpt.pt",
    )
    run(model, opt, grower, accs[3:])

    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    fresh = _model()
    netsurgeon.load_state_dict(fresh, ckpt["model"])
    fresh_opt = torch.optim.AdamW(fresh.parameters(), 1e-2)
    fresh_opt.load_state_dict(ckpt["opt"])
    fresh_grower = Grower(fresh, fresh_opt, cfg)
    fresh_grower.load_state_dict(copy.deepcopy(ckpt["grower"]))
    assert fresh_grower.history == grower.history[:1]
    run(fresh, fresh_opt, fresh_grower, accs[3:])

    assert [e.increments for e in fresh_grower.history] == [e.increments for e in grower.history]
    for (name, a), (_, b) in zip(
        model.state_dict().items(), fresh.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


@pytest.mark.filterwarnings("ignore:Grower has no optimizer")
def test_load_state_dict_rejects_a_different_config():
    grower = Grower(_model(), None, GrowthConfig(w_acc=2))
    state = grower.state_dict()
    with pytest.raises(ValueError, match="different GrowthConfig"):
        Grower(_model(), None, GrowthConfig(w_acc=3)).load_state_dict(state)


def test_a_checkpoint_from_before_a_config_field_existed_loads_and_other_settings_are_named():
    model = _model()
    grower = Grower(model, torch.optim.AdamW(model.parameters()))
    state = grower.state_dict()
    older = {**state, "config": {k: v for k, v in state["config"].items() if k != "max_params"}}
    grower.load_state_dict(older)  # the missing field was at its default when saved
    changed = {**state, "config": {**state["config"], "tau": 0.5}}
    with pytest.raises(ValueError, match=r"tau: checkpoint 0.5, this grower 0.05"):
        grower.load_state_dict(changed)
