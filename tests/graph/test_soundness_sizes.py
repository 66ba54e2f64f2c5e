"""Size reads (``x.shape``, ``x.size(d)``, ``x.numel()``) of channel-carrying dims.

Invariant: a value read off a channel dim changes with the width. Where it goes decides what is
sound: passed to a reshape at the channel position of a tensor whose channels grow alike (the SE
block's ``pool(x).view(b, c)``) it sizes the new tensor correctly, and the widening stays exact;
used anywhere else (``D // heads``, a ``x.shape[-1] ** -0.5`` scale) it ties the forward to
today's width, and the group it was read from is blocked, naming the read and the use.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netsurgeon
from netsurgeon.errors import WidenError


class Heads(nn.Module):
    """``B, T, D = x.shape; q.view(B, T, h, D // h)``: the head split reads the width."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.q = nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        x = self.inp(x)
        B, T, D = x.shape
        q = self.q(x).view(B, T, 2, D // 2)
        return self.out(q.reshape(B, T, D))


class Scale(nn.Module):
    """``att * x.shape[-1] ** -0.5``: a scale computed from the width."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.q = nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        x = self.inp(x)
        return self.out(self.q(x) * x.shape[-1] ** -0.5)


def _blocked(model: nn.Module, example) -> dict[str, str | None]:
    return {g.name: g.blocked for g in netsurgeon.trace(model, example, strict=False).groups}


def test_a_head_split_computed_from_a_channel_size_blocks_the_group_it_was_read_from() -> None:
    x = torch.randn(2, 5, 6)
    blocked = _blocked(Heads(), x)
    reason = blocked["inp"]
    assert reason is not None
    assert "getitem_2" in reason and "channel-carrying dim" in reason and "'view'" in reason


def test_without_example_inputs_an_undecidable_size_read_asks_for_them() -> None:
    blocked = _blocked(Heads(), None)
    assert blocked["inp"] is not None and "pass example_inputs" in blocked["inp"]


def test_a_scale_computed_from_a_channel_size_blocks_the_group_and_widening_it_is_refused() -> None:
    model, x = Scale().double().eval(), torch.randn(2, 5, 6, dtype=torch.float64)
    blocked = _blocked(model, x)
    assert blocked["inp"] is not None and "'mul'" in blocked["inp"]
    assert blocked["q"] is None  # the scale does not read q's width
    before = model(x)
    with pytest.raises(WidenError, match="channel-carrying dim"):
        netsurgeon.widen(model, {"inp": 2}, example_inputs=x)
    netsurgeon.widen(model, {"q": 2}, example_inputs=x)
    torch.testing.assert_close(model(x), before, rtol=1e-9, atol=1e-12)


class SE(nn.Module):
    """The classic squeeze-and-excitation spelling, after a conv and before a consumer."""

    def __init__(self, spatial_scale: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc1 = nn.Linear(6, 2)
        self.fc2 = nn.Linear(2, 6)
        self.head = nn.Conv2d(6, 4, 1)
        self.spatial_scale = spatial_scale

    def forward(self, x):
        x = self.conv(x)
        b, c, _, _ = x.size()
        y = F.adaptive_avg_pool2d(x, 1).view(b, c)
        y = torch.sigmoid(self.fc2(F.relu(self.fc1(y)))).view(b, c, 1, 1)
        x = x * y
        if self.spatial_scale:
            x = x * x.shape[-1] ** -0.5  # a spatial size: independent of every width
        return self.head(x).flatten(1)


@pytest.mark.parametrize("spatial_scale", [False, True])
def test_the_squeeze_excitation_size_reads_widen_exactly(spatial_scale: bool) -> None:
    torch.manual_seed(0)
    model = SE(spatial_scale).double().eval()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    graph = netsurgeon.trace(model, x)
    group = graph.group_of("conv")
    assert set(group.producers) == {"conv", "fc2"}  # the gate joins the map it scales
    assert group.blocked is None
    before = model(x)
    netsurgeon.widen(model, {"conv": 3, "fc1": 2}, example_inputs=x)
    assert model.conv.out_channels == 9 and model.fc2.out_features == 9
    torch.testing.assert_close(model(x), before, rtol=1e-9, atol=1e-12)


class Mismatch(nn.Module):
    """``y.view(b, c, 1, 1)`` with ``c`` read off another group's channels: sized wrong later."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Linear(3, 4)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        h = self.a(x)
        b, c, _, _ = h.shape
        y = self.b(x.mean((2, 3))).view(b, c, 1, 1)
        return self.head(y).flatten(1) + self.head(h).mean((2, 3))


def test_a_size_read_that_sizes_another_groups_channels_blocks_both() -> None:
    x = torch.randn(2, 3, 4, 4)
    graph = netsurgeon.trace(Mismatch(), x, strict=False)
    blocked = {g.name: g.blocked for g in graph.groups}
    # head is called twice (weight sharing) and joins nothing; a and b stay separate groups
    assert blocked["a"] is not None and blocked["b"] is not None
    assert "grow differently" in blocked["b"]


class Flat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 4, 2)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.conv(x), 2)
        b, c, h, w = x.shape
        x = x.reshape(b, c, h * w).view(b, c, h, w)  # a round trip through the sizes
        return self.fc(x.view(x.size(0), -1))


def test_a_batch_flatten_and_a_reshape_round_trip_through_the_sizes_widen_exactly() -> None:
    torch.manual_seed(0)
    model, x = Flat().double().eval(), torch.randn(2, 3, 6, 6, dtype=torch.float64)
    before = model(x)
    netsurgeon.widen(model, {"conv": 2}, example_inputs=x)
    assert model.fc.in_features == 6 * 4
    torch.testing.assert_close(model(x), before, rtol=1e-9, atol=1e-12)


class NumelScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        h = self.conv(x)
        return self.head(h / h.numel()).flatten(1)


def test_a_numel_read_used_as_a_scale_blocks_the_group() -> None:
    blocked = _blocked(NumelScale(), torch.randn(1, 3, 5, 5))
    assert blocked["conv"] is not None and "numel" in blocked["conv"]


class Upsample(nn.Module):
    """An FPN/U-Net resize to a skip's spatial size: spatial reads are plain numbers."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.skip = nn.Conv2d(3, 4, 1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        skip = self.skip(x)
        up = F.interpolate(self.down(x), size=skip.shape[-2:], mode="nearest")
        return self.head(up + skip).flatten(1)


@pytest.mark.parametrize("with_shapes", [True, False])
def test_a_resize_to_another_maps_spatial_size_widens_exactly(with_shapes: bool) -> None:
    torch.manual_seed(0)
    model, x = Upsample().double().eval(), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    before = model(x)
    netsurgeon.widen(model, {"down": 2}, example_inputs=x if with_shapes else None)
    assert model.skip.out_channels == 6  # joined with down by the add
    torch.testing.assert_close(model(x), before, rtol=1e-9, atol=1e-12)
