"""netsurgeon.trace refuses what it cannot analyse, by name, and never guesses.

Strict tracing raises ``UnsupportedModelError`` naming the fx node, the module path and what is
unsupported; tracing failures raise ``TraceError`` naming the submodule and the workarounds;
``strict=False`` marks only the affected producers unwidenable.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netsurgeon
from netsurgeon import NetsurgeonError, TraceError, UnsupportedModelError


class Residual(nn.Module):
    """``stem -> a -> b``, ``stem + b -> mid -> fc``: stem and b are coupled by the add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.mid = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.b(F.relu(self.a(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.mid(x), 1), 1))


class TwoBranches(nn.Module):
    """``a(x) <op> b(x) -> out`` for a binary op combining two layers' channels."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(4, 8)
        self.out = nn.Linear(16 if op == "cat" else 8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.op == "mul":
            return self.out(self.a(x) * torch.sigmoid(self.b(x)))
        if self.op == "cat":
            return self.out(torch.cat([self.a(x), self.b(x)], dim=1))
        return self.out(self.a(x) + self.b(x))


def conv_stack(middle: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), middle, nn.Conv2d(8, 4, 1))


class CalledTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.fc = nn.Linear(8, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.fc(F.relu(self.fc(self.a(x)))))


class Aliased(CalledTwice):
    """One module under two attribute names: still one module called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.fc_again = self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.fc_again(F.relu(self.fc(self.a(x)))))


class FunctionalWeight(CalledTwice):
    """``fc`` is called and its weight is also read by ``F.linear`` (tied weights)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(F.relu(self.a(x)))
        return self.out(F.linear(h, self.fc.weight))


class FunctionalOnly(CalledTwice):
    """``fc`` is never called: ``a``'s channels flow into an unknown ``F.linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.linear(F.relu(self.a(x)), self.fc.weight, self.fc.bias))


class SharedBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3)
        self.c2 = nn.Conv2d(8, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.c2(F.relu(self.bn(self.c1(x)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def tied_parameter() -> nn.Module:
    model = nn.Sequential(
        nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4), nn.Linear(4, 8), nn.Linear(8, 2)
    )
    model[3].weight = model[0].weight  # both (8, 4)
    return model


class Cummax(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3)
        self.d = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.d(torch.cummax(self.c(x), dim=1)[0])


class FlattenedChannelsOnABatchDim(nn.Module):
    """``fc`` maps the last dim; the channels, merged with the rows, are a batch dim of it that
    netsurgeon cannot follow (a plain ``fc(conv(x))`` is fine: one map per channel)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten(1, 2))


REFUSED = {
    "module called twice": (CalledTwice, r"at module 'fc': module 'fc' is called 2 times"),
    "module under two names": (Aliased, r"module 'fc' is called 2 times \(weight sharing\)"),
    "weight read by F.linear": (FunctionalWeight, r"parameter 'fc.weight' is used directly"),
    "tied parameters": (tied_parameter, r"at module '0': it shares a parameter with '3'"),
    "shared batchnorm": (SharedBatchNorm, r"at module 'bn': module 'bn' is called 2 times"),
    "torch.cummax": (Cummax, r"at node 'cummax': 'cummax' is not an op netsurgeon knows"),
    "return_indices": (
        lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.MaxPool2d(2, return_indices=True)),
        r"pooling with return_indices=True",
    ),
    "linear over flattened channels on a batch dim": (
        FlattenedChannelsOnABatchDim,
        r"channels are on dim 1 of a rank-3 tensor, flattened",
    ),
    "wrong linear in_features": (
        lambda: nn.Sequential(nn.Linear(4, 8), nn.Linear(9, 2)),
        r"at module '1': input width is 9 but the channels arriving deliver 8",
    ),
    "wrong conv in_channels": (
        lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(9, 2, 1)),
        r"input width is 9 but the channels arriving deliver 8 \(channels on dim 1: 0\[0:8\]\)",
    ),
    "wrong batchnorm size": (
        lambda: conv_stack(nn.BatchNorm2d(9)),
        r"'1' width is 9 but the channels arriving deliver 8",
    ),
    "flattened size not a multiple": (
        lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(12, 2)),
        r"input width 12 is not a multiple of the 8 channels arriving",
    ),
}

#: Known ops whose effect on the channels forbids growing the groups they touch: the model traces
#: (also strictly), and only those groups are unwidenable, with the reason.
BLOCKED = {
    "F.linear with a layer's weight": (FunctionalOnly, "a", r"'linear' mixes these channels"),
    "flatten of the batch dim": (
        lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(0), nn.Linear(4, 2)),
        "0",
        r"Flatten\(start_dim=0, end_dim=-1\) merges the channels into the dim before them",
    ),
    "LayerNorm over the channels": (
        lambda: conv_stack(nn.LayerNorm([8, 6, 6])),
        "0",
        r"LayerNorm '\d+' normalises across channels merged with other dims",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_unsupported_structure_is_refused_naming_node_and_module(case: str) -> None:
    build, pattern = REFUSED[case]
    with pytest.raises(UnsupportedModelError, match=pattern) as info:
        netsurgeon.trace(build())
    assert "fx node: %" in str(info.value)
    assert "fix: " in str(info.value)
    assert "strict=False" in str(info.value)


@pytest.mark.parametrize("case", list(REFUSED))
def test_non_strict_tracing_blocks_the_refused_groups_with_the_same_reason(case: str) -> None:
    build, pattern = REFUSED[case]
    graph = netsurgeon.trace(build(), strict=False)
    blocked = [n for n in graph.layers if graph.group_of(n).blocked is not None]
    assert blocked
    assert any(re.search(pattern, graph.unwidenable_reason(n) or "") for n in blocked)
    assert not set(blocked) & set(graph.widenable_layers)
    for name in blocked:  # advice to go non-strict would be stale here
        assert "strict=False" not in (graph.unwidenable_reason(name) or "")


@pytest.mark.parametrize("case", list(BLOCKED))
def test_known_ops_that_forbid_growth_block_only_their_groups(case: str) -> None:
    build, layer, pattern = BLOCKED[case]
    graph = netsurgeon.trace(build(), strict=True)
    assert re.search(pattern, graph.unwidenable_reason(layer) or "")
    assert "fx node" not in (graph.unwidenable_reason(layer) or "")
    assert layer not in graph.widenable_layers


def test_residual_stream_is_one_group_and_every_layer_stays_widenable() -> None:
    graph = netsurgeon.trace(Residual(), torch.randn(1, 3, 6, 6))
    assert graph.layers == ["stem", "a", "b", "mid", "fc"]
    assert graph.group_of("b").name == "stem"
    assert graph.group_of("stem").producers == ("stem", "b")
    assert graph.widenable_layers == ["stem", "a", "b", "mid"]
    assert graph.consumers_of("stem") == ["a", "mid"]
    assert graph.consumers_of("a") == ["b"]
    assert graph.edges_from("mid")[0].consumer == "fc"
    assert graph.output_layers == {"fc"}


def test_view_to_a_literal_width_makes_the_producer_unwidenable_but_traces() -> None:
    class LiteralView(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.hidden = nn.Linear(128, 16)
            self.out = nn.Linear(16, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(F.relu(self.hidden(F.relu(self.conv(x)).view(-1, 128))))

    for inputs in (None, torch.randn(2, 3, 4, 4)):
        graph = netsurgeon.trace(LiteralView(), inputs)
        reason = graph.unwidenable_reason("conv")
        assert reason is not None
        assert "(-1, 128)" in reason and "use torch.flatten(x, 1)" in reason
        assert graph.widenable_layers == ["hidden"]
        assert graph.consumers_of("hidden") == ["out"]


def test_softmax_over_the_channels_makes_the_producer_unwidenable() -> None:
    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.score = nn.Linear(4, 6)
            self.out = nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(F.softmax(self.score(x), dim=1))

    graph = netsurgeon.trace(Attention(), torch.randn(2, 4))
    assert "normalises across these channels" in (graph.unwidenable_reason("score") or "")
    assert graph.widenable_layers == []


# -- tracing failures ---------------------------------------------------------------------------
class Gate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow
            return x
        return -x


class GatedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate = Gate()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.gate(x))


class LenNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * len(x)


def test_data_dependent_control_flow_names_the_submodule_and_the_workarounds() -> None:
    with pytest.raises(
        TraceError, match=r"could not trace GatedNet in submodule 'gate' \(Gate\)"
    ) as info:
        netsurgeon.trace(GatedNet())
    message = str(info.value)
    assert "control flow" in message
    assert "leaf_modules=" in message and "concrete_args=" in message
    assert isinstance(info.value.__cause__, Exception)


def test_making_the_offending_submodule_a_leaf_lets_tracing_succeed() -> None:
    graph = netsurgeon.trace(GatedNet(), leaf_modules=[Gate])
    assert graph.layers == ["conv"]


def test_len_of_a_traced_tensor_is_a_trace_error() -> None:
    with pytest.raises(TraceError, match=r"could not trace LenNet: .*'len' is not supported"):
        netsurgeon.trace(LenNet())


def test_example_inputs_the_model_rejects_are_a_trace_error() -> None:
    with pytest.raises(TraceError, match=r"on example_inputs failed: RuntimeError: mat1 and mat2"):
        netsurgeon.trace(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)), torch.randn(2, 5))


def test_example_inputs_of_the_wrong_type_are_a_type_error() -> None:
    with pytest.raises(TypeError, match="example_inputs must be a tensor or a tuple"):
        netsurgeon.trace(nn.Linear(4, 2), {"x": torch.randn(2, 4)})


def test_non_module_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"trace\(\) expects an nn.Module, got function"):
        netsurgeon.trace(lambda x: x)  # type: ignore[arg-type]


# -- wrappers -----------------------------------------------------------------------------------
class DistributedDataParallel(nn.Module):
    """Stands in for torch's DDP, which needs a process group."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


def test_data_parallel_is_refused_with_what_to_pass() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    for wrapped in (nn.DataParallel(model), DistributedDataParallel(model)):
        with pytest.raises(NetsurgeonError, match=r"DataParallel wrapper.*Pass model\.module"):
            netsurgeon.trace(wrapped)
    assert netsurgeon.trace(nn.DataParallel(model).module).layers == ["0", "1"]


def test_compiled_module_is_refused_with_what_to_pass() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    with pytest.raises(NetsurgeonError, match=r"OptimizedModule wrapper.*Pass model\._orig_mod"):
        netsurgeon.trace(torch.compile(model))
