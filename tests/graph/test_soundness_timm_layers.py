"""timm's layers under the soundness rule: refused where their maths differs, exact where not.

``StdConv2d`` (BiT, ResNetV2) standardises its weight in ``forward``: a new input column changes
every row's mean and variance, so widening it as a plain conv changed the output by 16 %.
``ScaledStdConv2d`` (NF-ResNets) adds a per-channel ``gain``. Both are refused, naming the class
and method. ``BatchNormAct2d`` (``act(drop(batch_norm(x)))``) and timm's ``Linear`` compute what
netsurgeon's handlers model, and widen exactly.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netsurgeon
from netsurgeon.errors import UnsupportedModelError

timm_layers = pytest.importorskip("timm.layers")


def _net(middle: nn.Module, width: int = 5) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), middle, nn.Conv2d(width, 2, 1)).double()


@pytest.mark.parametrize("layer", ["StdConv2d", "ScaledStdConv2d"])
def test_timm_weight_standardised_convs_are_refused_naming_their_forward(layer: str) -> None:
    torch.manual_seed(0)
    model = _net(getattr(timm_layers, layer)(4, 5, 3))
    with pytest.raises(UnsupportedModelError) as info:
        netsurgeon.trace(model)
    assert "module '2'" in str(info.value) and f"{layer} overrides 'forward'" in str(info.value)
    blocked = {g.name: g.blocked for g in netsurgeon.trace(model, strict=False).groups}
    assert blocked["0"] is not None and blocked["2"] is not None


def test_timm_batchnorm_act_is_a_follower_and_widens_exactly() -> None:
    torch.manual_seed(0)
    norm = timm_layers.BatchNormAct2d(5, act_layer=nn.SiLU)
    norm.running_mean.uniform_(-1, 1)
    norm.running_var.uniform_(0.5, 2)
    model = nn.Sequential(nn.Conv2d(3, 5, 3), norm, nn.Conv2d(5, 2, 1)).double().eval()
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    graph = netsurgeon.trace(model, x)
    assert graph.followers_of("0") == ["1"]
    before = model(x)
    netsurgeon.widen(model, {"0": 3}, example_inputs=x)
    assert model[1].num_features == 8 and model[1].running_var.shape == (8,)
    torch.testing.assert_close(model(x), before, rtol=1e-9, atol=1e-12)


def test_timm_batchnorm_act_with_an_unknown_activation_is_refused_naming_it() -> None:
    class Odd(nn.Module):
        def forward(self, x):
            return x - x.mean(1, keepdim=True)

    norm = timm_layers.BatchNormAct2d(5, act_layer=Odd)
    model = nn.Sequential(nn.Conv2d(3, 5, 3), norm, nn.Conv2d(5, 2, 1))
    with pytest.raises(UnsupportedModelError, match=r"its 'act' \(.*Odd\)"):
        netsurgeon.trace(model)


def test_timm_linear_widens_like_nn_linear() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(timm_layers.Linear(4, 6), nn.ReLU(), timm_layers.Linear(6, 3)).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    before = model(x)
    netsurgeon.widen(model, {"0": 2})
    torch.testing.assert_close(model(x), before, rtol=1e-9, atol=1e-12)
