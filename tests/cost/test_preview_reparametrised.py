"""``preview`` refuses what ``widen`` refuses and counts what ``widen`` makes, whatever reshapes a
layer's weight: weight norm in either spelling, hooks, torch's hook-based reparametrisations.

Invariants tested:

* on a layer under ``nn.utils.parametrizations.weight_norm`` or the legacy
  ``nn.utils.weight_norm``, the preview's widths, parameters (per layer and in total) and FLOPs
  are those of the model widened for real, and the model is untouched;
* on a layer with an unmarked hook, a legacy ``spectral_norm`` or a ``prune`` mask, the preview
  raises what ``widen`` raises, with the same message;
* a hook marked as an observer is accepted by both and never runs on the preview's copy.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn.utils import prune
from torch.utils.flop_counter import FlopCounterMode

import netsurgeon
from netsurgeon.cost import preview
from netsurgeon.graph.soundness import mark_observer

PLAN = {"0": 3}
X = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))


def _net(reparametrise: Callable[[nn.Module], object] = lambda layer: None) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 1), nn.Flatten())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the legacy spellings are deprecated
        reparametrise(net[0])
    return net


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _flops(model: nn.Module) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(X)
    return counter.get_total_flops()


WEIGHT_NORMS = {
    "parametrizations.weight_norm": nn.utils.parametrizations.weight_norm,
    "legacy weight_norm": nn.utils.weight_norm,
}


@pytest.mark.parametrize("norm", list(WEIGHT_NORMS.values()), ids=list(WEIGHT_NORMS))
def test_preview_counts_what_widen_makes_of_a_weight_normalised_layer(norm):
    model, grown = _net(norm), _net(norm)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cost = preview(model, PLAN, X)
    netsurgeon.widen(grown, PLAN, generator=torch.Generator().manual_seed(0))
    assert cost.params_before == _params(model) and cost.params_after == _params(grown)
    assert cost.params_after > cost.params_before
    for row in cost.layers:
        assert row.params_after == _params(grown.get_submodule(row.name))
    assert cost.widths_after == netsurgeon.trace(grown).widths() == {"0": 7, "2": 5}
    assert (cost.flops_before, cost.flops_after) == (_flops(model), _flops(grown))
    after = model.state_dict()
    assert after.keys() == state.keys()
    for key, value in state.items():
        torch.testing.assert_close(after[key], value, rtol=0, atol=0)


def _hook(net: nn.Module) -> None:
    net[0].register_forward_hook(lambda module, args, out: None)


def _pre_hook(net: nn.Module) -> None:
    net[0].register_forward_pre_hook(lambda module, args: None)


def _spectral_norm(net: nn.Module) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        nn.utils.spectral_norm(net[0])


def _pruned(net: nn.Module) -> None:
    prune.l1_unstructured(net[0], "weight", amount=0.5)


@pytest.mark.parametrize("reshape", [_hook, _pre_hook, _spectral_norm, _pruned])
def test_preview_refuses_what_widen_refuses_on_a_reshaped_layer(reshape):
    model, twin = _net(), _net()
    reshape(model)
    reshape(twin)
    with pytest.raises(netsurgeon.WidenError) as refused:
        netsurgeon.widen(twin, PLAN)
    with pytest.raises(netsurgeon.WidenError) as previewed:
        preview(model, PLAN, X)
    assert str(previewed.value) == str(refused.value)
    assert model[0].out_channels == 4


def test_an_observer_hook_is_accepted_and_never_runs_on_the_preview_copy():
    model, grown = _net(), _net()
    seen: list[tuple[int, ...]] = []
    model[0].register_forward_hook(mark_observer(lambda m, args, out: seen.append(out.shape)))
    cost = preview(model, PLAN, X)
    assert seen == []
    netsurgeon.widen(grown, PLAN)
    assert cost.params_after == _params(grown) and cost.flops_after == _flops(grown)
