"""netsurgeon.trace: producer/consumer pairs, followers, output layers and multiplicities.

Invariant: for every edge ``(producer, consumer, m)``, producer channel ``c`` feeds consumer input
columns ``[c*m, (c+1)*m)``, so ``consumer.in_width == producer.out_width * m``. Every model below is
checked twice, without ``example_inputs`` (multiplicities inferred from the consumer's width) and
with them (multiplicities from propagated shapes), against the same hand-derived expectation.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import netsurgeon
from netsurgeon import LayerGraph

EdgeSet = set[tuple[str, str, int]]


def edges(graph: LayerGraph) -> EdgeSet:
    return {
        (e.producer, e.consumer, e.multiplicity) for n in graph.layers for e in graph.edges_from(n)
    }


def followers(graph: LayerGraph) -> dict[str, list[tuple[str, int]]]:
    return {
        n: [(f.name, f.multiplicity) for f in graph.group_of(n).followers]
        for n in graph.layers
        if graph.group_of(n).followers
    }


@dataclass(frozen=True)
class Case:
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    layers: list[str]
    edges: EdgeSet
    outputs: set[str]
    followers: dict[str, list[tuple[str, int]]] = field(default_factory=dict)


def check(case: Case, with_inputs: bool) -> LayerGraph:
    model = case.build()
    x = torch.randn(case.input_shape)
    model(x)  # the case itself is a valid model
    graph = netsurgeon.trace(model, x if with_inputs else None)
    assert graph.layers == case.layers
    assert edges(graph) == case.edges
    assert followers(graph) == case.followers
    assert graph.output_layers == frozenset(case.outputs)
    assert graph.widenable_layers == [n for n in case.layers if n not in case.outputs]
    modules = dict(model.named_modules())
    for producer, consumer, m in case.edges:
        assert graph.module(consumer) is modules[consumer]
        assert graph.handler(consumer).in_width(modules[consumer]) == graph.widths()[producer] * m
    return graph


# -- models -------------------------------------------------------------------------------------
def sequential_vgg() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(),
        nn.Linear(32, 10),
    )  # fmt: skip


class CustomNet(nn.Module):
    """Attributes declared in a different order than they are called; functional ops."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Linear(16 * 2 * 2, 10)
        self.conv_b = nn.Conv2d(8, 16, 3, padding=1)
        self.norm_a = nn.BatchNorm2d(8)
        self.conv_a = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.norm_a(self.conv_a(x))), 2)
        x = F.adaptive_max_pool2d(self.conv_b(x).relu(), 2)
        return self.classifier(torch.flatten(x, 1))


class NestedNet(nn.Module):
    """ModuleDict of a Sequential and a ModuleList of nested Sequentials; a Sequential head."""

    def __init__(self) -> None:
        super().__init__()
        stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        inner = nn.Sequential(
            nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU6()), nn.MaxPool2d(2)
        )
        body = nn.ModuleList([inner, nn.Conv2d(6, 5, 1)])
        self.blocks = nn.ModuleDict({"stem": stem, "body": body})
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Sequential(nn.Linear(5, 3))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks["stem"](x)
        for block in self.blocks["body"]:
            x = block(x)
        return self.head(x)


def conv1d_net() -> nn.Module:  # length 8 -> pool 4 -> conv k3 -> 2
    return nn.Sequential(
        nn.Conv1d(2, 4, 3, padding=1), nn.BatchNorm1d(4), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(4, 6, 3), nn.Flatten(), nn.Linear(12, 3),
    )  # fmt: skip


def conv3d_net() -> nn.Module:  # 4^3 -> pool 2^3 -> adaptive (1, 2, 2)
    return nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.MaxPool3d(2),
        nn.Conv3d(4, 2, 1), nn.AdaptiveAvgPool3d((1, 2, 2)), nn.Flatten(), nn.Linear(8, 3),
    )  # fmt: skip


def bn1d_after_flatten() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.BatchNorm1d(36), nn.PReLU(36),
        nn.ReLU(), nn.Linear(36, 5),
    )  # fmt: skip


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 8), nn.BatchNorm1d(8),
        nn.ReLU(), nn.Linear(8, 3),
    )  # fmt: skip


def layernorm_on_input() -> nn.Module:
    """An unknown op on no producer's path does not matter."""
    return nn.Sequential(nn.LayerNorm(5), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))


CASES = {
    "sequential": Case(
        sequential_vgg, (2, 3, 8, 8), ["0", "4", "9", "13"],
        {("0", "4", 1), ("4", "9", 4), ("9", "13", 1)}, {"13"},
        {"0": [("1", 1)], "4": [("5", 1)], "9": [("10", 1)]},
    ),
    "custom_forward": Case(
        CustomNet, (2, 3, 8, 8), ["conv_a", "conv_b", "classifier"],
        {("conv_a", "conv_b", 1), ("conv_b", "classifier", 4)}, {"classifier"},
        {"conv_a": [("norm_a", 1)]},
    ),
    "nested_containers": Case(
        NestedNet, (2, 3, 8, 8), ["blocks.stem.0", "blocks.body.0.0.0", "blocks.body.1", "head.2.0"],
        {("blocks.stem.0", "blocks.body.0.0.0", 1), ("blocks.body.0.0.0", "blocks.body.1", 1),
         ("blocks.body.1", "head.2.0", 1)},
        {"head.2.0"}, {"blocks.stem.0": [("blocks.stem.1", 1)]},
    ),
    "conv1d": Case(
        conv1d_net, (2, 2, 8), ["0", "4", "6"], {("0", "4", 1), ("4", "6", 2)}, {"6"},
        {"0": [("1", 1)]},
    ),
    "conv3d": Case(
        conv3d_net, (2, 1, 4, 4, 4), ["0", "4", "7"], {("0", "4", 1), ("4", "7", 4)}, {"7"},
        {"0": [("1", 1)]},
    ),
    "bn1d_after_flatten": Case(
        bn1d_after_flatten, (2, 3, 3, 3), ["0", "5"], {("0", "5", 9)}, {"5"},
        {"0": [("2", 9), ("3", 9)]},
    ),
    "mlp": Case(
        mlp, (4, 6), ["0", "3", "6"], {("0", "3", 1), ("3", "6", 1)}, {"6"},
        {"0": [("1", 1)], "3": [("4", 1)]},
    ),
    "layernorm_on_input": Case(
        layernorm_on_input, (2, 5), ["1", "3"], {("1", "3", 1)}, {"3"},
    ),
}  # fmt: skip


@pytest.mark.parametrize("with_inputs", [False, True], ids=["no_inputs", "inputs"])
@pytest.mark.parametrize("name", list(CASES))
def test_pairs_followers_and_outputs_are_exact(name: str, with_inputs: bool) -> None:
    check(CASES[name], with_inputs)


@pytest.mark.parametrize("name", list(CASES))
def test_graph_is_the_same_with_and_without_example_inputs(name: str) -> None:
    case = CASES[name]
    model = case.build()
    without = netsurgeon.trace(model).to_networkx()
    with_shapes = netsurgeon.trace(model, torch.randn(case.input_shape)).to_networkx()
    assert dict(without.nodes(data=True)) == dict(with_shapes.nodes(data=True))
    assert sorted(without.edges(data=True)) == sorted(with_shapes.edges(data=True))


# -- every spelling of an op between two layers -------------------------------------------------
class Between(nn.Module):
    """``conv_in -> op -> conv_out`` (2d) with ``op`` given as a callable or a module."""

    def __init__(self, op: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, 8, 3, padding=1)
        self.op = op
        self.conv_out = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.op(self.conv_in(x)))


OPS: dict[str, Callable[[], Callable[[torch.Tensor], torch.Tensor]]] = {
    # activations: module, functional, torch.* and Tensor-method spellings
    "nn.ReLU": nn.ReLU, "nn.ReLU(inplace)": lambda: nn.ReLU(inplace=True),
    "F.relu": lambda: F.relu, "torch.relu": lambda: torch.relu, "x.relu()": lambda: lambda x: x.relu(),
    "F.relu(inplace)": lambda: lambda x: F.relu(x, inplace=True),
    "nn.ReLU6": nn.ReLU6, "F.relu6": lambda: F.relu6, "nn.LeakyReLU": nn.LeakyReLU,
    "F.leaky_relu": lambda: lambda x: F.leaky_relu(x, 0.1), "nn.ELU": nn.ELU, "F.elu": lambda: F.elu,
    "nn.GELU": nn.GELU, "F.gelu": lambda: F.gelu, "nn.SiLU": nn.SiLU, "F.silu": lambda: F.silu,
    "nn.Mish": nn.Mish, "F.mish": lambda: F.mish, "nn.Hardswish": nn.Hardswish,
    "F.hardswish": lambda: F.hardswish, "nn.Sigmoid": nn.Sigmoid, "torch.sigmoid": lambda: torch.sigmoid,
    "x.sigmoid()": lambda: lambda x: x.sigmoid(), "nn.Tanh": nn.Tanh, "torch.tanh": lambda: torch.tanh,
    "x.tanh()": lambda: lambda x: x.tanh(), "nn.PReLU(1)": nn.PReLU,
    # dropout variants, identity, contiguous
    "nn.Dropout": nn.Dropout, "nn.Dropout2d": nn.Dropout2d, "nn.AlphaDropout": nn.AlphaDropout,
    "F.dropout": lambda: lambda x: F.dropout(x, 0.5, True), "F.dropout2d": lambda: F.dropout2d,
    "nn.Identity": nn.Identity, "x.contiguous()": lambda: lambda x: x.contiguous(),
    # scalar arithmetic
    "x * 2": lambda: lambda x: x * 2, "2 * x": lambda: lambda x: 2 * x,
    "x + 1": lambda: lambda x: x + 1, "x - 0.5": lambda: lambda x: x - 0.5,
    "x / 2": lambda: lambda x: x / 2, "-x": lambda: lambda x: -x,
    # pooling: module and functional
    "nn.MaxPool2d": lambda: nn.MaxPool2d(2), "F.max_pool2d": lambda: lambda x: F.max_pool2d(x, 2),
    "nn.AvgPool2d": lambda: nn.AvgPool2d(2), "F.avg_pool2d": lambda: lambda x: F.avg_pool2d(x, 2),
    "nn.AdaptiveAvgPool2d": lambda: nn.AdaptiveAvgPool2d(3),
    "F.adaptive_avg_pool2d": lambda: lambda x: F.adaptive_avg_pool2d(x, 3),
    "nn.AdaptiveMaxPool2d": lambda: nn.AdaptiveMaxPool2d(3),
    "F.adaptive_max_pool2d": lambda: lambda x: F.adaptive_max_pool2d(x, 3),
    # several in a row
    "chain": lambda: lambda x: F.max_pool2d(F.dropout(F.gelu(x * 2 + 1), 0.1, False), 2).relu(),
}  # fmt: skip


@pytest.mark.parametrize("with_inputs", [False, True], ids=["no_inputs", "inputs"])
@pytest.mark.parametrize("op", list(OPS))
def test_width_preserving_op_connects_the_two_layers(op: str, with_inputs: bool) -> None:
    model = Between(OPS[op]())
    x = torch.randn(2, 3, 8, 8)
    graph = netsurgeon.trace(model, x if with_inputs else None)
    assert edges(graph) == {("conv_in", "conv_out", 1)}
    assert graph.followers_of("conv_in") == []
    assert graph.output_layers == {"conv_out"}
    assert graph.widenable_layers == ["conv_in"]


def test_per_channel_prelu_is_a_follower_and_a_single_slope_is_not() -> None:
    per_channel = netsurgeon.trace(Between(nn.PReLU(8)))
    shared_slope = netsurgeon.trace(Between(nn.PReLU()))
    assert per_channel.followers_of("conv_in") == ["op"]
    assert shared_slope.followers_of("conv_in") == []
    assert edges(per_channel) == edges(shared_slope) == {("conv_in", "conv_out", 1)}


# -- every spelling of a flatten ----------------------------------------------------------------
class Flattened(nn.Module):
    """``conv (8 ch, 4x4) -> flatten spelling -> Linear(8*16, 10)``."""

    def __init__(self, flatten: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.flatten = flatten
        self.fc = nn.Linear(8 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(F.relu(self.conv(x))))


def _reshape_batch(x: torch.Tensor) -> torch.Tensor:
    b = x.shape[0]
    return x.reshape(b, -1)


FLATTENS: dict[str, Callable[[], Callable[[torch.Tensor], torch.Tensor]]] = {
    "torch.flatten(x, 1)": lambda: lambda x: torch.flatten(x, 1),
    "torch.flatten(x, start_dim=1)": lambda: lambda x: torch.flatten(x, start_dim=1),
    "nn.Flatten()": nn.Flatten,
    "x.flatten(1)": lambda: lambda x: x.flatten(1),
    "x.view(x.size(0), -1)": lambda: lambda x: x.view(x.size(0), -1),
    "x.reshape(b, -1)": lambda: _reshape_batch,
    "x.view(x.size()[0], -1)": lambda: lambda x: x.view(x.size()[0], -1),
    "x.view(x.shape[0], -1)": lambda: lambda x: x.view(x.shape[0], -1),
    "torch.reshape(x, (x.size(0), -1))": lambda: lambda x: torch.reshape(x, (x.size(0), -1)),
    "x.contiguous().view(...)": lambda: lambda x: x.contiguous().view(x.size(0), -1),
}


@pytest.mark.parametrize("with_inputs", [False, True], ids=["no_inputs", "inputs"])
@pytest.mark.parametrize("spelling", list(FLATTENS))
def test_every_flatten_spelling_gives_the_spatial_multiplicity(
    spelling: str, with_inputs: bool
) -> None:
    model = Flattened(FLATTENS[spelling]())
    x = torch.randn(2, 3, 4, 4)
    graph = netsurgeon.trace(model, x if with_inputs else None)
    (edge,) = graph.edges_from("conv")
    assert (edge.consumer, edge.multiplicity, edge.flattened) == ("fc", 16, True)
    assert graph.widenable_layers == ["conv"]


def test_fan_out_to_two_returned_heads_gives_two_edges_and_two_outputs() -> None:
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = nn.Linear(4, 6)
            self.head_a = nn.Linear(6, 2)
            self.head_b = nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = F.relu(self.trunk(x))
            return self.head_a(h), self.head_b(h)

    graph = netsurgeon.trace(TwoHeads(), torch.randn(2, 4))
    assert edges(graph) == {("trunk", "head_a", 1), ("trunk", "head_b", 1)}
    assert graph.output_layers == {"head_a", "head_b"}
    assert graph.widenable_layers == ["trunk"]


# -- property: random VGG-like stacks ------------------------------------------------------------
class Lambda(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


@given(
    widths=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    pools=st.lists(st.booleans(), min_size=3, max_size=3),
    hidden=st.lists(st.integers(1, 5), max_size=2),
    size=st.integers(8, 11),
    spelling=st.sampled_from(sorted(FLATTENS)),
    with_inputs=st.booleans(),
)
def test_random_conv_stacks_have_the_multiplicity_of_the_last_map(
    widths: list[int],
    pools: list[bool],
    hidden: list[int],
    size: int,
    spelling: str,
    with_inputs: bool,
) -> None:
    layers: list[nn.Module] = []
    names: list[str] = []
    in_channels, side = 2, size
    for width, pool in zip(widths, pools, strict=False):
        names.append(str(len(layers)))
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        if pool:
            layers.append(nn.MaxPool2d(2))
            side //= 2
        in_channels = width
    layers.append(Lambda(FLATTENS[spelling]()))
    features = in_channels * side * side
    for width in [*hidden, 3]:
        names.append(str(len(layers)))
        layers += [nn.Linear(features, width), nn.ReLU()]
        features = width
    model = nn.Sequential(*layers[:-1])
    x = torch.randn(2, 2, size, size)
    graph = netsurgeon.trace(model, x if with_inputs else None)
    last_conv = names[len(widths) - 1]
    assert graph.layers == names
    assert edges(graph) == {
        (a, b, side * side if a == last_conv else 1) for a, b in itertools.pairwise(names)
    }
    assert followers(graph) == {n: [(str(int(n) + 1), 1)] for n in names[: len(widths)]}
    assert graph.output_layers == {names[-1]}
