"""Registered hooks: fx does not record them, so the analysis must account for them.

Invariant: a hook runs in the real forward but not in the traced graph. A hook that changes a
layer's output (or its input, or its gradient) can depend on the width, so a handled module with a
hook blocks its groups, and the reason names the module, the hook and the fix. A hook marked as a
pure observer (``mark_observer``; netsurgeon's own ``NAGNMonitor`` marks its hooks so) does not.
A hook on a module fx traces through (not a leaf) is recorded in the graph and analysed like the
module's ``forward``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netsurgeon
from netsurgeon.errors import UnsupportedModelError
from netsurgeon.graph.soundness import is_observer, mark_observer
from netsurgeon.nagn.monitor import NAGNMonitor


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.Conv2d(5, 2, 1))


def centre(module, args, output):
    return output - output.mean(1, keepdim=True)  # depends on every channel


def rescale(module, args):
    return (args[0] * args[0].shape[1] ** -0.5,)


def grad_hook(module, grad_input, grad_output):
    return None


@pytest.mark.parametrize(
    "register, kind, name",
    [
        (lambda m: m.register_forward_hook(centre), "forward hook", "centre"),
        (lambda m: m.register_forward_pre_hook(rescale), "forward pre-hook", "rescale"),
        (lambda m: m.register_full_backward_hook(grad_hook), "backward hook", "grad_hook"),
    ],
)
def test_a_hook_on_a_layer_is_refused_naming_the_module_and_the_hook(register, kind, name) -> None:
    model = _net()
    register(model[2])
    with pytest.raises(UnsupportedModelError) as info:
        netsurgeon.trace(model)
    message = str(info.value)
    assert "module '2'" in message and kind in message and name in message
    assert "mark_observer" in message


def test_a_width_dependent_hook_blocks_the_groups_it_touches() -> None:
    model = _net()
    model[2].register_forward_hook(centre)
    blocked = {g.name: g.blocked for g in netsurgeon.trace(model, strict=False).groups}
    assert blocked["0"] is not None and blocked["2"] is not None and "centre" in blocked["2"]


def test_a_marked_observer_hook_does_not_block_and_the_widening_is_exact() -> None:
    model = _net().double().eval()
    seen: list[torch.Size] = []
    model[2].register_forward_hook(mark_observer(lambda m, i, o: seen.append(o.shape)))
    x = torch.randn(1, 3, 9, 9, dtype=torch.float64)
    before = model(x)
    netsurgeon.widen(model, {"0": 2, "2": 3}, example_inputs=x)
    torch.testing.assert_close(model(x), before, rtol=1e-9, atol=1e-12)
    assert seen[-1][1] == 8


def test_nagn_monitor_hooks_are_observers_so_a_monitored_model_traces_strictly() -> None:
    model = _net()
    monitor = NAGNMonitor(model)
    graph = netsurgeon.trace(model)
    assert graph.group_of("0").blocked is None
    hooks = [h for m in model.modules() for h in m._forward_hooks.values()]
    assert hooks and all(is_observer(h) for h in hooks)
    monitor.detach()


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))


def test_a_hook_on_a_module_fx_traces_through_is_analysed_like_its_forward() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), Block(), nn.Conv2d(4, 2, 1)).double().eval()
    model[1].register_forward_hook(centre)  # recorded in the graph: a mean over the channels
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    blocked = {g.name: g.blocked for g in netsurgeon.trace(model, x, strict=False).groups}
    assert blocked["1.conv"] is not None and ".mean()" in blocked["1.conv"]
    assert blocked["0"] is None
    before = model(x)
    netsurgeon.widen(model, {"0": 2}, example_inputs=x)
    torch.testing.assert_close(model(x), before, rtol=1e-9, atol=1e-12)


def test_a_global_module_hook_is_refused_like_a_hook_on_the_layer() -> None:
    handle = torch.nn.modules.module.register_module_forward_hook(centre)
    try:
        with pytest.raises(UnsupportedModelError, match="global forward hook 'centre'"):
            netsurgeon.trace(_net())
    finally:
        handle.remove()
