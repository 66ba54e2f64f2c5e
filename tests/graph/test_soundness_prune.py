"""``torch.nn.utils.prune``: ``weight_orig`` and ``weight_mask`` with a forward pre-hook.

Invariant: the pruned weight is recomputed from ``weight_orig * weight_mask`` before every
forward. Growing ``weight_orig`` without the mask broke the forward; netsurgeon refuses it,
naming both tensors and the fix (``prune.remove``), and widens exactly once the mask is folded in.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import netsurgeon
from netsurgeon.errors import UnsupportedModelError, WidenError


def _pruned() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.Conv2d(5, 2, 1))
    prune.l1_unstructured(model[2], "weight", amount=0.5)
    return model.double().eval()


def test_strict_trace_refuses_a_pruned_layer_naming_the_mask_and_the_fix() -> None:
    with pytest.raises(UnsupportedModelError) as info:
        netsurgeon.trace(_pruned())
    message = str(info.value)
    assert "module '2'" in message and "weight_orig" in message and "weight_mask" in message
    assert "prune.remove" in message


def test_widening_next_to_a_pruned_layer_is_refused_with_everything_unchanged() -> None:
    model = _pruned()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WidenError, match="pruned"):
        netsurgeon.widen(model, {"0": 2})
    assert state.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)


def test_after_prune_remove_the_layer_widens_exactly() -> None:
    model = _pruned()
    prune.remove(model[2], "weight")
    x = torch.randn(1, 3, 9, 9, dtype=torch.float64)
    before = model(x)
    netsurgeon.widen(model, {"0": 2, "2": 3}, example_inputs=x)
    torch.testing.assert_close(model(x), before, rtol=1e-9, atol=1e-12)
