"""Tests of NAGNMonitor against an explicit per-sample reference.

Invariant: with ``g_i = dL_i/dz_{l,i}`` the gradient of sample ``i``'s own loss,
``NAGN_l = sqrt(sum_i ||g_i||^2 / (N * T_l))``. For a model without batch coupling (no BatchNorm
in training mode) a mean-reduced batch loss gives ``dL/dz_i = g_i / B`` and a sum-reduced one
``dL/dz_i = g_i``, so the monitor must (1) equal a loop of per-sample ``autograd.grad`` calls and
(2) give the same profile however the same samples are split into batches.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from training_helpers import toy_images

from netsurgeon.nagn import NAGNMonitor

RTOL = 1e-5  # float64 throughout


class SmallNet(nn.Module):
    """Conv -> ReLU -> Conv -> ReLU -> flatten -> Linear -> ReLU -> Linear (no batch coupling)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 4, 3, stride=2)
        self.fc1 = nn.Linear(4 * 2 * 2, 5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc2(torch.relu(self.fc1(h.flatten(1))))


LAYERS = ["conv1", "conv2", "fc1", "fc2"]


def _net() -> SmallNet:
    return SmallNet().double()


def _data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` float64 samples shaped for ``SmallNet``: ``(n, 2, 5, 5)`` and labels in ``[0, 3)``."""
    return toy_images(n, channels=2, size=5, classes=3, dtype=torch.float64)


def _reference(net: nn.Module, layers: list[str], x: torch.Tensor, y: torch.Tensor) -> dict:
    """NAGN by a loop over samples: per-sample loss, autograd.grad w.r.t. the captured z's."""
    totals = dict.fromkeys(layers, 0.0)
    per_sample = {}
    for i in range(len(x)):
        captured: dict[str, torch.Tensor] = {}
        handles = [
            net.get_submodule(name).register_forward_hook(
                lambda m, a, z, name=name, store=captured: store.__setitem__(name, z)
            )
            for name in layers
        ]
        loss = nn.functional.cross_entropy(net(x[i : i + 1]), y[i : i + 1])
        for handle in handles:
            handle.remove()
        grads = torch.autograd.grad(loss, [captured[name] for name in layers])
        for name, grad in zip(layers, grads, strict=True):
            totals[name] += float(grad.pow(2).sum())
            per_sample[name] = grad.numel()
    return {name: (totals[name] / (len(x) * per_sample[name])) ** 0.5 for name in layers}


def _train_pass(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, sizes: list[int], reduction: str = "mean"
) -> None:
    """Forward/backward over consecutive batches of the given sizes (no optimizer step)."""
    start = 0
    for size in sizes:
        net.zero_grad()
        out = net(x[start : start + size])
        nn.functional.cross_entropy(out, y[start : start + size], reduction=reduction).backward()
        start += size


def _close(got: dict, expected: dict) -> None:
    assert list(got) == list(expected)
    torch.testing.assert_close(
        torch.tensor(list(got.values()), dtype=torch.float64),
        torch.tensor(list(expected.values()), dtype=torch.float64),
        rtol=RTOL,
        atol=0.0,
    )


# ----------------------------------------------------------------------------- definition


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_profile_matches_explicit_per_sample_gradients(reduction: str) -> None:
    net, (x, y) = _net(), _data(12)
    expected = _reference(net, LAYERS, x, y)
    with NAGNMonitor(net, LAYERS, reduction=reduction, every=1) as monitor:
        _train_pass(net, x, y, [5, 7], reduction=reduction)
        got = monitor.profile()
    _close(got, expected)
    assert monitor.samples == dict.fromkeys(LAYERS, 12)


@given(cuts=st.lists(st.integers(1, 11), max_size=4, unique=True))
def test_profile_is_independent_of_batch_size(cuts: list[int]) -> None:
    net, (x, y) = _net(), _data(12)
    bounds = [0, *sorted(cuts), 12]
    sizes = [b - a for a, b in itertools.pairwise(bounds)]
    with NAGNMonitor(net, LAYERS, every=1) as whole:
        _train_pass(net, x, y, [12])
        expected = whole.profile()
    with NAGNMonitor(net, LAYERS, every=1) as split:
        _train_pass(net, x, y, sizes)
        _close(split.profile(), expected)


def test_profile_keeps_the_given_layer_order() -> None:
    net, (x, y) = _net(), _data(4)
    with NAGNMonitor(net, ["fc2", "conv1"], every=1) as monitor:
        _train_pass(net, x, y, [4])
        assert list(monitor.profile()) == ["fc2", "conv1"]


# ----------------------------------------------------------------------------- sampling


def test_every_k_collects_exactly_steps_0_k_2k() -> None:
    net, (x, y) = _net(), _data(28)
    sizes = [1, 2, 3, 4, 5, 6, 7]  # distinct sizes identify the collected steps
    with NAGNMonitor(net, LAYERS, every=3) as monitor:
        _train_pass(net, x, y, sizes)
        assert (monitor.steps, monitor.collected_steps) == (7, 3)
        assert monitor.samples == dict.fromkeys(LAYERS, 1 + 4 + 7)
        got = monitor.profile()
    starts = [0, 1, 3, 6, 10, 15, 21]
    keep = torch.cat([torch.arange(starts[k], starts[k] + sizes[k]) for k in (0, 3, 6)])
    _close(got, _reference(net, LAYERS, x[keep], y[keep]))


def test_no_grad_and_eval_forwards_are_ignored() -> None:
    net, (x, y) = _net(), _data(8)
    with NAGNMonitor(net, LAYERS, every=2) as monitor:
        _train_pass(net, x, y, [4])
        with torch.no_grad():
            net(x)
        with torch.inference_mode():
            net(x)
        net.eval()
        nn.functional.cross_entropy(net(x), y).backward()  # eval mode: not a training step
        net.train()
        assert (monitor.steps, monitor.samples["fc1"]) == (1, 4)
        _train_pass(net, x, y, [2, 3])  # step 1 skipped (every=2), step 2 collected
        assert (monitor.steps, monitor.samples["fc1"]) == (3, 7)


def test_eval_forwards_are_collected_when_train_only_is_false() -> None:
    net, (x, y) = _net(), _data(6)
    net.eval()
    with NAGNMonitor(net, LAYERS, every=1, train_only=False) as monitor:
        _train_pass(net, x, y, [6])
        _close(monitor.profile(), _reference(net, LAYERS, x, y))


def test_forward_without_backward_adds_no_samples() -> None:
    net, (x, _) = _net(), _data(4)
    with NAGNMonitor(net, LAYERS, every=1) as monitor:
        net(x)
        assert monitor.samples == dict.fromkeys(LAYERS, 0)
        with pytest.raises(RuntimeError, match=r"no gradient for layer\(s\)"):
            monitor.profile()


class PartlyFrozen(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            frozen = self.b(x)
        return self.a(x) + frozen


def test_a_layer_called_under_no_grad_is_skipped_gracefully() -> None:
    net = PartlyFrozen()
    with NAGNMonitor(net, ["a", "b"], every=1) as monitor:
        net(torch.randn(5, 3)).sum().backward()
        assert monitor.samples == {"a": 5, "b": 0}
        with pytest.raises(RuntimeError, match=r"\['b'\]"):
            monitor.profile()


# ----------------------------------------------------------------------------- lifecycle


def test_reset_forgets_everything_and_restarts_the_step_count() -> None:
    net, (x, y) = _net(), _data(10)
    with NAGNMonitor(net, LAYERS, every=2) as monitor:
        _train_pass(net, x, y, [2, 3, 4])
        monitor.reset()
        assert (monitor.steps, monitor.samples["conv1"]) == (0, 0)
        _train_pass(net, x[9:], y[9:], [1])  # first step after a reset is collected
        _close(monitor.profile(), _reference(net, LAYERS, x[9:], y[9:]))


def test_gradients_in_flight_across_a_reset_are_dropped() -> None:
    net, (x, y) = _net(), _data(4)
    with NAGNMonitor(net, LAYERS, every=1) as monitor:
        loss = nn.functional.cross_entropy(net(x), y)
        monitor.reset()
        loss.backward()
        assert monitor.samples == dict.fromkeys(LAYERS, 0)


def test_detach_removes_every_hook_and_keeps_the_result() -> None:
    net, (x, y) = _net(), _data(6)
    before = {name: len(m._forward_hooks) for name, m in net.named_modules()}
    monitor = NAGNMonitor(net, LAYERS, every=1)
    _train_pass(net, x, y, [3])
    profile = monitor.profile()
    monitor.detach()
    monitor.detach()  # idempotent
    assert not monitor.attached
    assert {name: len(m._forward_hooks) for name, m in net.named_modules()} == before
    assert len(net._forward_pre_hooks) == 0
    _train_pass(net, x, y, [3])
    assert monitor.profile() == profile and monitor.samples["fc2"] == 3
    monitor.attach()
    _train_pass(net, x[3:], y[3:], [3])
    _close(monitor.profile(), _reference(net, LAYERS, x, y))


def test_context_manager_detaches_on_exit() -> None:
    net = _net()
    with NAGNMonitor(net, LAYERS) as monitor:
        assert monitor.attached
    assert not monitor.attached and not net.conv1._forward_hooks


# ----------------------------------------------------------------------------- widening


def _widen_hidden(net: nn.Sequential, extra: int) -> None:
    """Grow net[0] (Linear) by `extra` outputs in place: same module objects, new parameters."""
    first, second = net[0], net[2]
    f64 = {"dtype": torch.float64}
    with torch.no_grad():
        new_rows = torch.randn(extra, first.in_features, **f64)
        first.weight = nn.Parameter(torch.cat([first.weight, new_rows]))
        first.bias = nn.Parameter(torch.cat([first.bias, torch.zeros(extra, **f64)]))
        new_cols = torch.zeros(second.out_features, extra, **f64)
        second.weight = nn.Parameter(torch.cat([second.weight, new_cols], 1))
    first.out_features += extra
    second.in_features += extra


def test_profile_follows_a_layer_widened_in_place() -> None:
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(8, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (8,), generator=gen)
    with NAGNMonitor(net, ["0", "2"], every=1) as monitor:
        _train_pass(net, x, y, [8])
        old = monitor.profile()
        _widen_hidden(net, 3)  # T of layer "0" goes from 6 to 9
        _train_pass(net, x, y, [8])
        mixed = monitor.profile()
        new = _reference(net, ["0", "2"], x, y)
        # without a reset: the sample-weighted mean of per-element squares over both widths
        for name in ("0", "2"):
            expected = ((old[name] ** 2 + new[name] ** 2) / 2) ** 0.5
            torch.testing.assert_close(mixed[name], expected, rtol=RTOL, atol=0.0)
        monitor.reset()
        _train_pass(net, x, y, [8])
        _close(monitor.profile(), new)


# ----------------------------------------------------------------------------- inputs


def test_unknown_layer_names_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown layer name\(s\) \['fc9'\].*'conv1', 'conv2'"):
        NAGNMonitor(_net(), ["conv1", "fc9"])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"layers": []}, ValueError, "layers is empty"),
        ({"layers": ["fc1", "fc1"]}, ValueError, r"lists \['fc1'\] more than once"),
        ({"layers": "fc1"}, TypeError, "sequence of names"),
        ({"reduction": "none"}, ValueError, "reduction must be 'mean' or 'sum'"),
        ({"every": 0}, ValueError, "every must be an int >= 1"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, error: type, match: str) -> None:
    kwargs = {"layers": LAYERS, **kwargs}
    with pytest.raises(error, match=match):
        NAGNMonitor(_net(), **kwargs)


def test_default_layers_are_the_traced_layers() -> None:
    graph = pytest.importorskip("netsurgeon.graph")
    if not hasattr(graph, "trace"):
        pytest.skip("netsurgeon.graph.trace is not available yet")
    net, (x, y) = _net(), _data(4)
    with NAGNMonitor(net, every=1) as monitor:
        assert monitor.layers == list(graph.trace(net).layers)
        _train_pass(net, x, y, [4])
        assert set(monitor.profile()) == set(LAYERS)


def test_an_inplace_activation_after_the_layer_does_not_change_the_profile() -> None:
    torch.manual_seed(0)
    inplace = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 3)).double()
    plain = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    plain.load_state_dict(inplace.state_dict())
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(8, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (8,), generator=gen)
    profiles = []
    for net in (inplace, plain):
        with NAGNMonitor(net, ["0", "2"], every=1) as monitor:
            _train_pass(net, x, y, [8])
            profiles.append(monitor.profile())
    _close(profiles[0], profiles[1])
    _close(profiles[1], _reference(plain, ["0", "2"], x, y))


def test_profile_after_netsurgeon_widen_matches_the_reference() -> None:
    surgery = pytest.importorskip("netsurgeon.surgery")
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    net = net.double()
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(8, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (8,), generator=gen)
    with NAGNMonitor(net, ["0", "2", "4"], every=1) as monitor:
        _train_pass(net, x, y, [8])
        surgery.widen(net, {"0": 3, "2": 2}, generator=torch.Generator().manual_seed(0))
        monitor.reset()
        _train_pass(net, x, y, [8])
        assert (net[0].out_features, net[2].out_features) == (9, 7)
        _close(monitor.profile(), _reference(net, ["0", "2", "4"], x, y))
