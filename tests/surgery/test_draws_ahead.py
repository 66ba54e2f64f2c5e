"""The paper's rows drawn on a worker thread (``netsurgeon.surgery.ahead``) change nothing.

Invariants: with the worker forced on, a widening writes what the serial staging writes, bit for
bit (weights, buffers, ``.grad``, AdamW state), on models with concatenations, grouped and
depthwise convolutions and channels_last weights, new memory poisoned so that an entry left
unwritten shows; layers that cannot go ahead (weight norm, an ``Embedding`` with ``padding_idx``)
are staged after every pending draw, so the serial order of draws holds; an error on the worker
reaches the caller and leaves model and optimizer bit-identical.
"""

from __future__ import annotations

import copy
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_init_fast_paths import SPECS, _widen, draw_model_and_plan
from torch import nn

import netsurgeon
from netsurgeon.surgery import ahead
from netsurgeon.surgery.init import PaperInit


@pytest.mark.parametrize("name", sorted(SPECS))
@settings(max_examples=15)
@given(seed=st.integers(0, 2**31 - 1), data=st.data())
def test_drawing_ahead_writes_what_the_serial_staging_writes(
    name: str, seed: int, data: st.DataObject
) -> None:
    model, plan = draw_model_and_plan(name, seed, data)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ahead, "ENABLED", False)
        expected = _widen(model, plan, "paper", seed)
        mp.setattr(ahead, "ENABLED", True)
        found = _widen(model, plan, "paper", seed, poison=True)
    assert found.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(found[key], value, rtol=0, atol=0, msg=key)


class _Mixed(nn.Module):
    """Plain convolutions around a weight-normalised one and an embedding with padding_idx: the
    plain layers' rows go ahead, the others wait for them."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 6, padding_idx=0)
        self.a = nn.Conv1d(6, 8, 3)
        self.b = nn.utils.parametrizations.weight_norm(nn.Conv1d(8, 8, 3))
        self.c = nn.Conv1d(8, 8, 3)
        self.d = nn.Conv1d(8, 4, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.emb(tokens).transpose(1, 2)
        return self.d(torch.relu(self.c(torch.relu(self.b(torch.relu(self.a(x)))))))


_SUBMIT = ahead.DrawAhead.submit


def _slow_submit(self, fill) -> None:
    """The worker's fills start late: the main thread runs ahead of them."""

    def late() -> None:
        time.sleep(0.02)
        fill()

    _SUBMIT(self, late)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_layers_that_cannot_go_ahead_keep_the_serial_order(seed: int) -> None:
    torch.manual_seed(seed)
    model = _Mixed().eval()
    plan = {g.name: 2 * g.granularity for g in netsurgeon.trace(model).groups if g.widenable}
    assert len(plan) >= 3
    tokens = torch.randint(0, 10, (2, 16))
    before = model(tokens)
    grown = {}
    for enabled in (False, True):
        twin = copy.deepcopy(model)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ahead, "ENABLED", enabled)
            mp.setattr(ahead.DrawAhead, "submit", _slow_submit)  # a draw out of order would show
            netsurgeon.widen(twin, plan, generator=torch.Generator().manual_seed(seed))
        grown[enabled] = twin
        torch.testing.assert_close(twin(tokens), before, rtol=1e-5, atol=1e-5)
    for (key, value), other in zip(
        grown[False].state_dict().items(), grown[True].state_dict().values(), strict=True
    ):
        torch.testing.assert_close(other, value, rtol=0, atol=0, msg=key)


def test_an_error_on_the_worker_reaches_the_caller_and_changes_nothing(monkeypatch) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    saved = copy.deepcopy((model.state_dict(), opt.state_dict()))
    calls, fill_rows = [], PaperInit.fill_rows

    def failing(self, weight, **kwargs):
        calls.append(weight.shape)
        if len(calls) == 2:
            raise RuntimeError("draw failed")
        fill_rows(self, weight, **kwargs)

    monkeypatch.setattr(PaperInit, "fill_rows", failing)
    monkeypatch.setattr(ahead, "ENABLED", True)
    with pytest.raises(RuntimeError, match="draw failed"):
        netsurgeon.widen(model, {"0": 2, "2": 2}, optimizer=opt)
    assert len(calls) == 2
    state, opt_state = saved
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    for param_id, before in opt_state["state"].items():
        after = opt.state_dict()["state"][param_id]
        for key, value in before.items():
            assert torch.equal(after[key], value), (param_id, key)
