"""A mid-epoch Grower checkpoint resumes with the same NAGN profile, bit for bit.

``Grower.state_dict()`` used to drop the monitor's accumulators (the per-layer sums of
``||dL/dz||^2``, the sample counts and the step count that decides which step ``every``
samples). A run resumed from a checkpoint taken mid-window then planned its next growth from the
batches after the resume only. Invariant: train, checkpoint (through ``torch.save``), resume in
a fresh process-like copy, train on the same batches: the resumed monitor's profile equals the
uninterrupted one exactly, and so does the next growth.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F

from netsurgeon.models import vgg
from netsurgeon.nagn import Grower, GrowthConfig, NAGNMonitor

CONFIG = GrowthConfig(w_acc=1, delta_acc=1.0, delta_stop=-1.0, every=2)


def _batches(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(6, 3, 8, 8, generator=g), torch.randint(0, 3, (6,), generator=g))
        for _ in range(n)
    ]


def _setup() -> tuple[torch.nn.Module, torch.optim.Optimizer, Grower]:
    torch.manual_seed(0)
    model = vgg([[4], [6]], num_classes=3, image_size=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return model, optimizer, Grower(model, optimizer, CONFIG)


def _train(model, optimizer, batches) -> None:
    model.train()
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _roundtrip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_a_resume_mid_window_gives_the_same_profile_bit_for_bit():
    model, optimizer, grower = _setup()
    _train(model, optimizer, _batches(3, seed=1))  # steps 0, 1, 2: 0 and 2 are collected
    checkpoint = _roundtrip(
        {"model": model.state_dict(), "opt": optimizer.state_dict(), "grower": grower.state_dict()}
    )
    resumed_model, resumed_opt, resumed = _setup()
    resumed_model.load_state_dict(checkpoint["model"])
    resumed_opt.load_state_dict(checkpoint["opt"])
    resumed.load_state_dict(checkpoint["grower"])
    rest = _batches(3, seed=2)  # steps 3, 4, 5: only 4 is collected, in both runs
    _train(model, optimizer, rest)
    _train(resumed_model, resumed_opt, rest)
    assert resumed.monitor.steps == grower.monitor.steps == 6
    expected = {name: 18 for name in grower.layers}  # 3 collected batches of 6
    assert resumed.monitor.samples == grower.monitor.samples == expected
    assert resumed.monitor.profile() == grower.monitor.profile()  # floats, exactly


def test_a_resume_mid_window_makes_the_same_growth():
    model, optimizer, grower = _setup()
    _train(model, optimizer, _batches(2, seed=1))
    assert grower.step(0.5) is None
    _train(model, optimizer, _batches(3, seed=3))
    checkpoint = _roundtrip(
        {"model": model.state_dict(), "opt": optimizer.state_dict(), "grower": grower.state_dict()}
    )
    resumed_model, resumed_opt, resumed = _setup()
    resumed_model.load_state_dict(checkpoint["model"])
    resumed_opt.load_state_dict(checkpoint["opt"])
    resumed.load_state_dict(checkpoint["grower"])
    rest = _batches(1, seed=4)
    _train(model, optimizer, rest)
    _train(resumed_model, resumed_opt, rest)
    event, again = grower.step(0.5), resumed.step(0.5)
    assert event is not None and again is not None
    assert again.profile == event.profile and again.increments == event.increments


def test_a_monitor_state_of_other_layers_is_refused_and_changes_nothing():
    model, optimizer, grower = _setup()
    _train(model, optimizer, _batches(1, seed=1))
    before = copy.deepcopy(grower.monitor.state_dict())
    other = NAGNMonitor(model, ["blocks.0.0.conv"], every=1)
    _train(model, optimizer, _batches(1, seed=2))
    other.detach()
    with pytest.raises(ValueError, match=r"state is for layers \['blocks\.0\.0\.conv'\]"):
        grower.monitor.load_state_dict(other.state_dict())
    after = grower.monitor.state_dict()
    assert after["steps"] == before["steps"] + 1 and after["collected"] == before["collected"]
    state = grower.state_dict()
    state["monitor"] = other.state_dict()
    epoch = grower.epoch
    with pytest.raises(ValueError, match="state is for layers"):
        grower.load_state_dict(state)
    assert grower.epoch == epoch and grower.monitor.state_dict()["steps"] == after["steps"]
