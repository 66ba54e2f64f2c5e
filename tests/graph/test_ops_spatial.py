"""Padding, pixel (un)shuffle, flip and roll: each passes, concatenates or blocks, and says why.

An op over the spatial dims treats every channel alike, so new channels appended to a group
leave the old ones (and the zero columns reading the new ones) as they were: the widened model
computes the same outputs (``ops_helpers`` states the tolerances). Constant padding of the channel
dim is a concatenation ``[p fixed | x | q fixed]``, and ``PixelUnshuffle(r)`` gives each channel
``r**2`` consecutive entries of its output's channel dim: both stay exact, with the consumer's new
columns inserted after the group's old entries (before the trailing padding). Ops that reorder
the channels (flip, roll, a pixel shuffle folding ``r**2`` channels into one) block the group,
naming the op.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from ops_helpers import widen_all_and_compare
from optiona_models import ResNetA
from torch import nn

import netsurgeon


class Around(nn.Module):
    """``head(op(conv(x)))``: ``conv`` makes a group of ``width`` channels, ``op`` acts on it."""

    def __init__(self, op, width: int = 6, head_in: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.op = op
        self.head = nn.Conv2d(width if head_in is None else head_in, 5, 1)

    def forward(self, x):
        return self.head(self.op(self.bn(self.conv(x))))


class Fn(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


X = torch.randn(2, 3, 8, 8)
PADDING_MODULES = [
    nn.ReflectionPad2d(2), nn.ReplicationPad2d((1, 2, 0, 1)), nn.ZeroPad2d(1),
    nn.ConstantPad2d(1, 0.5), nn.CircularPad2d(1),
]  # fmt: skip


@pytest.mark.parametrize("pad", PADDING_MODULES, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shapes", [True, False])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_widening_through_a_padding_module_preserves_output(pad, dtype, shapes, train):
    make = lambda: Around(pad)  # noqa: E731
    widened, model = widen_all_and_compare(make, X, dtype=dtype, shapes=shapes, train=train)
    assert widened == ["conv"]
    assert model.head.in_channels == 6 + 2


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shapes", [True, False])
def test_constant_padding_of_the_channel_dim_is_a_concatenation_of_fixed_channels(dtype, shapes):
    def make():
        return Around(Fn(lambda z: F.pad(z, (1, 1, 0, 0, 2, 3), value=0.25)), head_in=6 + 5)

    graph = netsurgeon.trace(make(), X if shapes else None)
    (edge,) = graph.edges_from("conv")
    assert (edge.consumer, edge.offset) == ("head", 2)  # two fixed channels come first
    widened, model = widen_all_and_compare(make, X, dtype=dtype, shapes=shapes)
    assert widened == ["conv"]
    # the 2 new channels sit after the 6 old ones and before the 3 trailing padded channels
    new_columns = model.head.weight[:, 2 + 6 : 2 + 6 + 2]
    assert torch.count_nonzero(new_columns) == 0
    assert torch.count_nonzero(model.head.weight[:, -3:]) == model.head.weight[:, -3:].numel()


class FlatHead(nn.Module):
    """``fc(op(flatten(conv(x))))``: the channels flattened with the map, then ``op``."""

    def __init__(self, op, features: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.op = op
        self.fc = nn.Linear(features, 5)

    def forward(self, x):
        return self.fc(self.op(self.conv(x).flatten(1)))


BLOCKED_PADS = {
    "reflect-channels": (
        lambda: Around(Fn(lambda z: F.pad(z, (0, 0, 0, 0, 1, 1), mode="reflect")), head_in=8),
        r"mode='reflect'\) over the channel dim copies channels",
    ),
    "negative-crop": (
        lambda: Around(Fn(lambda z: F.pad(z, (0, 0, 0, 0, -1, 0))), head_in=5),
        r"over the channel dim crops channels",
    ),
    "replicate-flattened": (
        lambda: FlatHead(Fn(lambda z: F.pad(z[:, None], (0, 1), mode="replicate")[:, 0]), 257),
        r"mode='replicate'\) over the channel dim copies channels",
    ),
}


@pytest.mark.parametrize("case", sorted(BLOCKED_PADS))
def test_padding_that_copies_or_crops_channels_blocks_with_the_reason(case):
    make, match = BLOCKED_PADS[case]
    graph = netsurgeon.trace(make(), X, strict=True)  # understood: blocked, not refused
    assert not graph.group_of("conv").widenable
    assert re.search(match, graph.unwidenable_reason("conv"))


def test_a_padding_module_that_reaches_the_channel_dim_pads_them_with_fixed_channels():
    # ZeroPad3d on a 4-d tensor reads it as an unbatched (C, D, H, W): "D" is our channel dim
    make = lambda: Around(nn.ZeroPad3d((0, 0, 0, 0, 1, 2)), head_in=6 + 3)  # noqa: E731
    assert netsurgeon.trace(make(), X).edges_from("conv")[0].offset == 1
    widened, model = widen_all_and_compare(make, X)
    assert widened == ["conv"] and model.head.in_channels == 9 + 2


# -- pixel (un)shuffle ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shapes", [True, False])
@pytest.mark.parametrize("spelling", ["module", "functional"])
@pytest.mark.parametrize("init", ["paper", "net2net"])
def test_pixel_unshuffle_gives_each_channel_r_squared_entries_and_widens_exactly(
    init, spelling, shapes, dtype
):
    op = nn.PixelUnshuffle(2) if spelling == "module" else Fn(lambda z: F.pixel_unshuffle(z, 2))
    make = lambda: Around(op, head_in=6 * 4)  # noqa: E731
    graph = netsurgeon.trace(make(), X if shapes else None)
    assert graph.edges_from("conv")[0].multiplicity == 4
    widened, model = widen_all_and_compare(make, X, dtype=dtype, shapes=shapes, init=init)
    assert widened == ["conv"] and model.head.in_channels == (6 + 2) * 4


@pytest.mark.parametrize("spelling", ["module", "functional"])
def test_pixel_shuffle_of_a_group_blocks_it_naming_the_runs_it_folds(spelling):
    op = nn.PixelShuffle(2) if spelling == "module" else Fn(lambda z: F.pixel_shuffle(z, 2))
    graph = netsurgeon.trace(Around(op, width=8, head_in=2), X, strict=True)
    assert re.search(r"folds each run of 4 channels", graph.unwidenable_reason("conv"))


def test_pixel_shuffle_after_an_unshuffle_folds_the_runs_back_and_widens_exactly():
    make = lambda: Around(nn.Sequential(nn.PixelUnshuffle(2), nn.PixelShuffle(2)))  # noqa: E731
    assert netsurgeon.trace(make(), X).edges_from("conv")[0].multiplicity == 1
    widened, _ = widen_all_and_compare(make, X)
    assert widened == ["conv"]


# -- flip and roll --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn",
    [
        lambda z: z.flip(3),
        lambda z: torch.flip(z, dims=(2, 3)),
        lambda z: z.flip(-1, -2),
        lambda z: torch.roll(z, 2, 3),
        lambda z: z.roll((1, -1), dims=(2, -1)),
    ],
    ids=["flip-method", "flip-dims", "flip-varargs", "roll", "roll-two"],
)
@pytest.mark.parametrize("shapes", [True, False])
def test_flipping_or_rolling_the_map_widens_exactly(fn, shapes):
    widened, _ = widen_all_and_compare(lambda: Around(Fn(fn)), X, shapes=shapes)
    assert widened == ["conv"]


@pytest.mark.parametrize(
    ("fn", "match"),
    [
        (lambda z: z.flip(1), "flip over the channel dim reorders the channels"),
        (lambda z: torch.fliplr(z), "fliplr over the channel dim reorders"),
        (lambda z: torch.roll(z, 1, 1), "roll over the channel dim reorders"),
        (lambda z: torch.roll(z, 1), "roll without dims shifts entries across the channels"),
    ],
    ids=["flip", "fliplr", "roll", "roll-flat"],
)
def test_flipping_or_rolling_the_channels_blocks_with_the_reason(fn, match):
    graph = netsurgeon.trace(Around(Fn(fn)), X, strict=True)
    assert re.search(match, graph.unwidenable_reason("conv"))


# -- option A: zero-padded shortcuts --------------------------------------------------------------

BLOCK_INNER = ["layers.0.conv1", "layers.1.conv1", "layers.2.conv1", "layers.3.conv1",
               "layers.4.conv1", "layers.5.conv1"]  # fmt: skip


@pytest.mark.parametrize("shapes", [True, False])
def test_option_a_resnet_widens_its_block_inner_widths_and_blocks_its_padded_streams(shapes):
    graph = netsurgeon.trace(ResNetA(blocks=2), X if shapes else None, strict=True)
    assert [g.name for g in graph.groups if g.widenable] == BLOCK_INNER
    # each stream meets the next stage's stream through the padded shortcut: [p | C | p] + [2C]
    for stream in ("conv1", "layers.2.conv2", "layers.4.conv2"):
        assert re.search(
            r"'add' joins tensors whose channels are laid out differently .*untracked \+ "
            r"(conv1|layers\.2\.conv2)\[0:\d+\] \+ untracked",
            graph.unwidenable_reason(stream),
        )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("init", ["paper", "net2net"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_widening_every_widenable_group_of_an_option_a_resnet_preserves_output(dtype, init, train):
    make = lambda: ResNetA(blocks=2)  # noqa: E731
    widened, model = widen_all_and_compare(make, X, dtype=dtype, init=init, train=train)
    assert widened == BLOCK_INNER
    assert model.layers[2].conv1.out_channels == 16 + 2


def test_the_padded_shortcut_alone_feeds_a_consumer_exactly():
    class PadThenConv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.head = nn.Conv2d(8, 3, 1)

        def forward(self, x):
            return self.head(F.pad(self.bn(self.conv(x))[:, :, ::2, ::2], (0, 0, 0, 0, 2, 2)))

    graph = netsurgeon.trace(PadThenConv(), X)
    assert graph.edges_from("conv")[0].offset == 2
    widened, model = widen_all_and_compare(PadThenConv, X, init="net2net")
    assert widened == ["conv"] and model.head.in_channels == 10


# -- padding by computed sizes, flattening neighbours into the channels (Swin) ---------------------


class ToWindows(nn.Module):
    """Channels last, padded to whole windows (of 3) by sizes computed from ``H`` and ``W`` (timm's
    Swin), then ``op``; ``Linear`` head over the channels."""

    def __init__(self, op, width: int = 6, head_in: int | None = None, window: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.op, self.window = op, window
        self.head = nn.Linear(width if head_in is None else head_in, 5)

    def forward(self, x):
        x = self.conv(x).permute(0, 2, 3, 1)
        _, h, w, _ = x.shape
        s = self.window
        x = F.pad(x, (0, 0, 0, (s - w % s) % s, 0, (s - h % s) % s))
        return self.head(self.op(x))


def test_padding_spatial_dims_by_computed_sizes_passes():
    make = lambda: ToWindows(nn.Identity())  # noqa: E731
    widened, model = widen_all_and_compare(make, X)
    assert widened == ["conv"] and model.head.in_features == 6 + 2


def test_padding_the_channels_by_a_computed_size_blocks():
    class ChannelPad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            return F.pad(y, (0, 0, 0, 0, 0, y.shape[2] % 3 + 1))

    graph = netsurgeon.trace(ChannelPad(), X, strict=True)
    assert "pads the channel dim by a computed amount" in graph.unwidenable_reason("conv")


def test_a_pad_size_computed_from_the_channels_blocks():
    class WidthPad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, padding=1)
            self.head = nn.Conv2d(6, 5, 1)

        def forward(self, x):
            y = self.conv(x)
            return self.head(F.pad(y, (0, y.shape[1] % 4)))  # pads W by a channel count

    graph = netsurgeon.trace(WidthPad(), X, strict=True)
    assert "a size depends on a width" in graph.unwidenable_reason("conv")


def test_flattening_neighbours_before_the_channels_is_copies_side_by_side():
    """``(B, H/2, W/2, 2, 2, C) -> (B, H/2, W/2, 4 C)`` (timm's patch merging): entry
    ``(i * 2 + j) * C + c``, four copies of the channels; the head's new columns go at the end of
    each copy."""

    def merge(x):
        b, h, w, c = x.shape
        return x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).flatten(3)

    make = lambda: ToWindows(Fn(merge), head_in=24, window=2)  # noqa: E731
    graph = netsurgeon.trace(make(), X)
    (head,) = graph.group_of("conv").consumers
    assert [(o, p.group, p.stop) for o, p in head.index_map.offsets()] == [
        (o, "conv", 6) for o in (0, 6, 12, 18)
    ]
    widened, model = widen_all_and_compare(make, X, multiple=1)
    assert widened == ["conv"] and model.head.in_features == 4 * 7
    blind = netsurgeon.trace(make(), strict=False)  # without shapes nothing can be counted
    assert "pass example_inputs" in blind.unwidenable_reason("conv")


class PaddedStream(nn.Module):
    """``norm(pad(proj(x)))`` over channels last: spatial padding between a producer and the
    LayerNorm that reads its channels."""

    def __init__(self, value: float, mode: str = "constant") -> None:
        super().__init__()
        self.proj, self.norm, self.head = nn.Linear(3, 6), nn.LayerNorm(6), nn.Linear(6, 5)
        self.value, self.mode = value, mode

    def forward(self, x):
        h = self.proj(x.permute(0, 2, 3, 1))
        if self.mode == "constant":
            return self.head(self.norm(F.pad(h, (0, 0, 1, 1, 0, 1), value=self.value)))
        h = F.pad(h.permute(0, 3, 1, 2), (1, 1, 0, 1), mode=self.mode)  # (H, W) of (B, C, H, W)
        return self.head(self.norm(h.permute(0, 2, 3, 1)))


@pytest.mark.parametrize(
    ("value", "mode", "construction"),
    [(0.0, "constant", "mean_pad"), (1.5, "constant", "tile"), (0.0, "circular", "mean_pad")],
)
def test_padding_keeps_a_mean_padded_stream_unless_it_writes_a_nonzero_constant(
    value, mode, construction
):
    """Padded positions hold 0 (or a copied position) in every channel: a new channel holding
    the mean of the old ones (or 0 after a norm) still does. A nonzero constant would be written
    into the new channels too, where a norm's zero output must stay 0: tiling only."""
    make = lambda: PaddedStream(value, mode)  # noqa: E731
    assert netsurgeon.trace(make(), X).group_of("proj").construction == construction
    widened, model = widen_all_and_compare(make, X, multiple=1)
    assert widened == ["proj"] and model.norm.normalized_shape[0] > 6
