"""Subclasses of handled layers: accepted only when they override nothing the handler relies on.

Invariant: a handler's maths is that of its registered class. A subclass that overrides
``forward`` (timm's ``StdConv2d``: weight standardisation) or ``_conv_forward``, or that carries a
tensor the handler does not grow (``ScaledStdConv2d``'s per-channel ``gain``), computes something
else; widening it as its parent changed the output by 16 % or crashed the forward. Such a module
is refused in strict mode and blocks its groups otherwise, with a reason that names the module
path, the class, the method or tensor, and the fix.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netsurgeon
from netsurgeon.errors import UnsupportedModelError, WidenError
from netsurgeon.graph.registry import REGISTRY


class StdConv2d(nn.Conv2d):
    """timm's weight-standardised conv, in short."""

    def forward(self, x):
        w = F.batch_norm(
            self.weight.reshape(1, self.out_channels, -1), None, None, training=True, eps=1e-6
        ).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class HalfConv(nn.Conv2d):
    def _conv_forward(self, x, weight, bias):
        return super()._conv_forward(x, weight / weight.abs().sum(), bias)


class ScaledStdConv2d(nn.Conv2d):
    """nf_resnet's conv: a per-output-channel ``gain``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.full((self.out_channels, 1, 1, 1), 1.5))

    def forward(self, x):
        return F.conv2d(x, self.weight * self.gain, self.bias, self.stride, self.padding)


class GainOnly(nn.Conv2d):
    """A per-channel parameter added without overriding ``forward``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.ones(self.out_channels))


class SameConv(nn.Conv2d):
    def forward(self, x):
        return super().forward(x)


def _net(conv_type: type[nn.Conv2d]) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), conv_type(4, 5, 3), nn.ReLU(), nn.Conv2d(5, 2, 1)
    ).double()


@pytest.mark.parametrize(
    "conv_type, named",
    [
        (StdConv2d, "overrides 'forward'"),
        (HalfConv, "overrides '_conv_forward'"),
        (ScaledStdConv2d, "overrides 'forward'"),
        (GainOnly, "parameter 'gain'"),
    ],
)
def test_strict_trace_refuses_a_conv_subclass_naming_the_path_class_and_what_it_changes(
    conv_type: type, named: str
) -> None:
    with pytest.raises(UnsupportedModelError) as info:
        netsurgeon.trace(_net(conv_type), torch.randn(1, 3, 8, 8, dtype=torch.float64))
    message = str(info.value)
    assert "module '2'" in message and conv_type.__name__ in message and named in message
    assert "fix:" in message


@pytest.mark.parametrize("conv_type", [StdConv2d, HalfConv, ScaledStdConv2d, GainOnly])
def test_a_conv_subclass_blocks_the_groups_it_reads_and_makes(conv_type: type) -> None:
    model, x = _net(conv_type), torch.randn(1, 3, 8, 8, dtype=torch.float64)
    graph = netsurgeon.trace(model, x, strict=False)
    blocked = {g.name: g.blocked for g in graph.groups}
    assert blocked["0"] is not None and conv_type.__name__ in blocked["0"]
    assert blocked["2"] is not None
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WidenError, match=conv_type.__name__):
        netsurgeon.widen(model, {"0": 2}, example_inputs=x)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)


def test_registering_a_subclass_that_computes_what_its_parent_does_makes_it_widenable() -> None:
    model, x = _net(SameConv).eval(), torch.randn(1, 3, 8, 8, dtype=torch.float64)
    assert netsurgeon.trace(model, x, strict=False).group_of("0").blocked is not None
    REGISTRY.add_module(SameConv, REGISTRY.for_module(nn.Conv2d(1, 1, 1)))
    try:
        assert REGISTRY.registered_type(model[2]) is SameConv
        before = model(x)
        netsurgeon.widen(model, {"0": 2, "2": 3}, example_inputs=x)
        torch.testing.assert_close(model(x), before, rtol=1e-9, atol=1e-12)
    finally:
        del REGISTRY._modules[SameConv]


def test_the_registry_says_which_registered_type_a_subclass_matched() -> None:
    assert REGISTRY.registered_type(StdConv2d(1, 1, 1)) is nn.Conv2d
    assert REGISTRY.registered_type(nn.Module()) is None


class ScaledNorm(nn.BatchNorm2d):
    def forward(self, x):
        return super().forward(x) * x.shape[1] ** -0.5


def test_a_follower_subclass_overriding_forward_blocks_its_group() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), ScaledNorm(4), nn.Conv2d(4, 2, 1))
    graph = netsurgeon.trace(model.eval(), strict=False)
    reason = graph.group_of("0").blocked
    assert reason is not None and "ScaledNorm" in reason and "'forward'" in reason


def test_an_instance_whose_forward_was_replaced_is_refused() -> None:
    model = _net(nn.Conv2d)
    model[2].forward = lambda x: nn.Conv2d.forward(model[2], x) * 2
    with pytest.raises(UnsupportedModelError, match="instance's own 'forward'"):
        netsurgeon.trace(model)
