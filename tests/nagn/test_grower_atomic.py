"""The Grower in a user's loop: atomic steps, config checked up front, loud about optimizers.

Invariants tested:

* a ``step`` that raises leaves the model (``state_dict``, module sizes, gradients), the
  optimizer state and the grower (windows, trigger, history, generators, monitor accumulators)
  bit-identical, and growth carries on normally afterwards;
* every ``GrowthConfig`` field is checked at construction; the error names field and value;
* an accuracy outside [0, 1] is refused before anything is recorded;
* growing without the optimizer, or with one netsurgeon's tests do not cover, warns at
  construction and every event says so;
* the monitor's hooks are removed once growth stops, for each stop cause;
* triggers, plans and stops are logged on the ``netsurgeon`` logger.
"""

from __future__ import annotations

import logging
import math
import warnings

import pytest
import torch
from training_helpers import toy_images, train_epoch

from netsurgeon import ConfigError, MonitorError, NetsurgeonTypeError, NetsurgeonWarning
from netsurgeon.models import vgg
from netsurgeon.nagn import Grower, GrowthConfig
from netsurgeon.surgery import INIT_STRATEGIES, PaperInit

FORCED = {"w_acc": 1, "delta_acc": 1.0, "delta_stop": -1.0, "every": 1}  # any gain < 1 triggers


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return vgg([[4], [4], [4]], num_classes=4, image_size=8)


def _fingerprint(model, optimizer, grower) -> dict:
    """Everything a failed step must leave alone, as plain values and cloned tensors."""
    return {
        "model": {k: v.clone() for k, v in model.state_dict().items()},
        "sizes": repr(model),
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "optimizer": _clone(optimizer.state_dict()) if optimizer is not None else None,
        "grower": _clone(grower.state_dict()),
        "history": list(grower.history),
        "monitor": (grower.monitor.samples, grower.monitor.steps, grower.monitor.attached),
        "accumulators": [
            None if s.total is None else s.total.clone() for s in grower.monitor._states
        ],
    }


def _clone(obj):
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone(v) for v in obj)
    return obj


def _assert_identical(a, b, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            _assert_identical(u, v, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, where


# ---- atomic steps -----------------------------------------------------------------------------
def test_trigger_without_a_training_step_changes_nothing_and_growth_continues():
    x, y = toy_images(96)
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), 1e-2)
    grower = Grower(model, opt, GrowthConfig(**{**FORCED, "delta_stop": 0.0}))
    train_epoch(model, opt, x, y, batch=48)
    assert grower.step(0.5) is None  # first epoch: no window yet
    before = _fingerprint(model, opt, grower)
    with pytest.raises(MonitorError, match="no gradient"):
        grower.step(0.5)  # triggers, but this "epoch" had no training step
    _assert_identical(before, _fingerprint(model, opt, grower), "after the failed step")
    train_epoch(model, opt, x, y, batch=48)
    event = grower.step(0.5)  # the same trigger, now with NAGN: it grows, it does not stop
    assert event is not None and not grower.stopped
    assert event.epoch == 2 and grower.accuracies == [0.5, 0.5]


class _ExplodingInit(PaperInit):
    """An init strategy that fails half-way through staging, after drawing random numbers.

    It overrides the row-filling method of both versions of the ``InitStrategy`` interface
    (``new_rows`` before channel groups, ``fill_rows`` after), so the test does not depend on which
    one this tree has.
    """

    def new_rows(self, *args, **kwargs):
        super().new_rows(*args, **kwargs)
        raise RuntimeError("init exploded")

    def fill_rows(self, *args, **kwargs):
        super().fill_rows(*args, **kwargs)
        raise RuntimeError("init exploded")


def test_failing_init_leaves_model_optimizer_and_grower_bit_identical(monkeypatch):
    monkeypatch.setitem(INIT_STRATEGIES, "explodes", _ExplodingInit)
    x, y = toy_images(96)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), 1e-2, momentum=0.9)
    grower = Grower(model, opt, GrowthConfig(**FORCED, init="explodes"))
    train_epoch(model, opt, x, y, batch=48)
    grower.step(0.5)
    train_epoch(model, opt, x, y, batch=48)
    before = _fingerprint(model, opt, grower)
    with pytest.raises(RuntimeError, match="init exploded"):
        grower.step(0.5)
    _assert_identical(before, _fingerprint(model, opt, grower), "after the failed step")
    opt.step()  # the optimizer still matches the model
    train_epoch(model, opt, x, y, batch=48)


class _FactoredAdam(torch.optim.Optimizer):
    """Keeps a row-sum of squared gradients per weight matrix: state growth cannot reproduce."""

    def __init__(self, params, lr: float = 1e-2) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                rows = p.grad.square().reshape(p.shape[0], -1).sum(1)
                state["row"] = state.get("row", torch.zeros_like(rows)) + rows
                p.sub_(
                    group["lr"]
                    * p.grad
                    / (1 + state["row"].sqrt()).reshape(-1, *[1] * (p.dim() - 1))
                )


def test_refused_optimizer_state_leaves_everything_bit_identical():
    x, y = toy_images(96)
    model = _model()
    opt = _FactoredAdam(model.parameters())
    with pytest.warns(NetsurgeonWarning, match="do not cover"):
        grower = Grower(model, opt, GrowthConfig(**FORCED))
    train_epoch(model, opt, x, y, batch=48)
    grower.step(0.5)
    train_epoch(model, opt, x, y, batch=48)
    before = _fingerprint(model, opt, grower)
    with pytest.raises(ValueError, match="factored state"):
        grower.step(0.5)
    _assert_identical(before, _fingerprint(model, opt, grower), "after the failed step")


@pytest.mark.parametrize("accuracy", [87.5, 1.0001, -0.01, math.inf, "0.5"])
def test_accuracy_outside_unit_interval_is_refused_before_anything_is_recorded(accuracy):
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), 1e-2)
    grower = Grower(model, opt, GrowthConfig(**FORCED))
    before = _fingerprint(model, opt, grower)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        grower.step(accuracy)
    _assert_identical(before, _fingerprint(model, opt, grower))


def test_percent_accuracy_error_shows_the_fraction():
    model = _model()
    grower = Grower(model, torch.optim.SGD(model.parameters(), 0.1), GrowthConfig())
    with pytest.raises(ValueError, match=r"percentage \(87.5 -> 0.875\)"):
        grower.step(87.5)


def test_accuracy_may_be_a_zero_dim_tensor_or_an_int_at_the_ends():
    x, y = toy_images(96)
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), 1e-2)
    grower = Grower(model, opt, GrowthConfig(**FORCED))
    for acc in (torch.tensor(0.25), 0, 1):
        train_epoch(model, opt, x, y, batch=48)
        grower.step(acc)
    assert grower.accuracies == [0.25, 0.0, 1.0]


# ---- the config is checked when it is made -----------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("init", "kaiming", ConfigError),
        ("every", 0, ConfigError),
        ("every", 2.0, NetsurgeonTypeError),
        ("w_acc", 0, ConfigError),
        ("delta_acc", math.nan, ConfigError),
        ("delta_stop", math.inf, ConfigError),
        ("tau", -0.1, ConfigError),
        ("tau", "0.05", ConfigError),  # a planner setting: PlannerSettings checks it
        ("stop_mode", "percent", ConfigError),
        ("max_step", 0, ConfigError),
        ("where", "everywhere", ConfigError),
        ("monotone", "yes", ConfigError),
        ("fallback", "double", ConfigError),
        ("neighbourhood", "harmonic", ConfigError),
        ("reduction", "none", ConfigError),
        ("restart_windows", 1, NetsurgeonTypeError),
        ("max_growths", 0, ConfigError),
        ("seed", 1.5, NetsurgeonTypeError),
        ("max_params", 0, ConfigError),
        ("max_flops", -5, ConfigError),
        ("max_width", 0, ConfigError),
        ("max_width", {"blocks.0.0.conv": 0}, ConfigError),
        ("max_width", {"blocks.0.0.conv": 8.0}, ConfigError),
    ],
)
def test_every_config_field_is_checked_at_construction(field, value, error):
    with pytest.raises(error, match=rf"GrowthConfig\.{field}=") as info:
        GrowthConfig(**{field: value})
    assert "expected" in str(info.value)


def test_config_errors_are_value_errors_and_type_errors():
    with pytest.raises(ValueError):
        GrowthConfig(every=0)
    with pytest.raises(TypeError):
        GrowthConfig(every="4")


def test_config_keeps_a_private_copy_of_max_width():
    caps = {"blocks.0.0.conv": 8}
    cfg = GrowthConfig(max_width=caps)
    caps["blocks.0.0.conv"] = 1
    assert cfg.max_width == {"blocks.0.0.conv": 8}


def test_grower_refuses_caps_that_do_not_fit_the_model():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), 0.1)
    with pytest.raises(ConfigError, match="not layers"):
        Grower(model, opt, GrowthConfig(max_width={"conv9": 8}))
    with pytest.raises(ConfigError, match="example_inputs"):
        Grower(model, opt, GrowthConfig(max_flops=10**6))
    with pytest.raises(ConfigError, match="below what the model has already"):
        Grower(model, opt, GrowthConfig(max_params=10))


def test_grower_refuses_a_ddp_wrapper_with_the_fix():
    class FakeDDP(torch.nn.parallel.DistributedDataParallel):
        def __init__(self) -> None:  # no process group needed to test the check
            torch.nn.Module.__init__(self)

    with pytest.raises(ValueError, match=r"rewrap"):
        Grower(FakeDDP(), None)


# ---- optimizers --------------------------------------------------------------------------------
def test_growing_without_an_optimizer_warns_and_every_event_records_it():
    x, y = toy_images(96)
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), 1e-2)
    with pytest.warns(NetsurgeonWarning, match="no optimizer"):
        grower = Grower(model, None, GrowthConfig(**FORCED))
    for _ in range(2):
        train_epoch(model, opt, x, y, batch=48)
        event = grower.step(0.5)
    assert event is not None and event.optimizer is None and not event.optimizer_known
    with pytest.raises(RuntimeError):  # the failure the warning announced
        opt.step()


def test_an_optimizer_the_tests_do_not_cover_warns_and_events_record_it():
    x, y = toy_images(96)
    model = _model()
    opt = torch.optim.NAdam(model.parameters(), 1e-2)
    with pytest.warns(NetsurgeonWarning, match="NAdam"):
        grower = Grower(model, opt, GrowthConfig(**FORCED))
    for _ in range(2):
        train_epoch(model, opt, x, y, batch=48)
        event = grower.step(0.5)
    assert event is not None and event.optimizer == "NAdam" and not event.optimizer_known


def test_a_known_optimizer_is_quiet_and_recorded():
    x, y = toy_images(96)
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), 1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NetsurgeonWarning)
        grower = Grower(model, opt, GrowthConfig(**FORCED))
    for _ in range(2):
        train_epoch(model, opt, x, y, batch=48)
        event = grower.step(0.5)
    assert event is not None and event.optimizer == "AdamW" and event.optimizer_known


def test_an_optimizer_of_another_model_warns():
    with pytest.warns(NetsurgeonWarning, match="none of the model's parameters"):
        Grower(_model(), torch.optim.SGD(_model().parameters(), 0.1))


# ---- stopping detaches the monitor -------------------------------------------------------------
def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize(
    ("overrides", "accuracies", "cause"),
    [
        ({"max_growths": 1}, [0.5, 0.5], "max_growths"),
        ({"delta_stop": 0.05}, [0.5, 0.5, 0.52, 0.52], "delta_stop"),
        ({"max_width": 4}, [0.5, 0.5], "budget"),
    ],
)
def test_monitor_hooks_are_removed_when_growth_stops(overrides, accuracies, cause):
    x, y = toy_images(96)
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), 1e-2)
    plain = _hooks(model)
    grower = Grower(model, opt, GrowthConfig(**{**FORCED, **overrides}))
    assert _hooks(model) > plain and grower.monitor.attached
    for acc in accuracies:
        train_epoch(model, opt, x, y, batch=48)
        grower.step(acc)
    assert grower.stopped and grower.stop_cause == cause and grower.stop_reason
    assert not grower.monitor.attached and _hooks(model) == plain


def test_loading_a_running_state_reattaches_the_monitor():
    x, y = toy_images(96)
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), 1e-2)
    grower = Grower(model, opt, GrowthConfig(**FORCED, max_growths=1))
    running = grower.state_dict()
    for _ in range(2):
        train_epoch(model, opt, x, y, batch=48)
        grower.step(0.5)
    assert not grower.monitor.attached
    grower.load_state_dict(running)
    assert grower.monitor.attached and not grower.stopped and grower.stop_cause is None


# ---- logging ------------------------------------------------------------------------------------
def test_triggers_plans_and_stops_are_logged(caplog):
    x, y = toy_images(96)
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), 1e-2)
    grower = Grower(model, opt, GrowthConfig(**FORCED, max_growths=1))
    with caplog.at_level(logging.INFO, logger="netsurgeon"):
        for _ in range(2):
            train_epoch(model, opt, x, y, batch=48)
            grower.step(0.5)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("netsurgeon")]
    assert any("epoch 2: trigger" in m for m in messages)
    assert any("epoch 2: grow {" in m and "params" in m for m in messages)
    assert any("growth stopped (max_growths)" in m for m in messages)


def test_a_failed_step_is_logged_as_a_warning(caplog):
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), 1e-2)
    grower = Grower(model, opt, GrowthConfig(**FORCED))
    grower.step(0.5)
    with caplog.at_level(logging.INFO, logger="netsurgeon"), pytest.raises(MonitorError):
        grower.step(0.5)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "unchanged" in warned[0].getMessage()
