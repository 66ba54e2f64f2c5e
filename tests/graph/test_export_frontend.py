"""The export front end (``trace(..., frontend="export")``) builds the graph symbolic tracing does.

Invariant: for a model both front ends read, the groups are the same (names, producers, widths,
granularity, consumers with their index maps, followers, widenable or not); for a model only
export reads (control flow on shapes, ``*x.size()[2:]``), every plan over the groups it calls
widenable keeps the output (float64, ``<= 1e-9`` relative), and what it cannot read blocks with a
reason naming the module or op. Tracing changes nothing in the model.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from widen_or_refuse import check_widen_or_refuse

import netsurgeon
from netsurgeon import TraceError
from netsurgeon.graph.export import export_program, exported_graph_module
from netsurgeon.graph.tracer import SurgeonTracer


def group_records(graph: netsurgeon.LayerGraph) -> list[tuple]:
    """What a group is, without the op labels of its consumers' paths (spellings differ)."""
    return [
        (
            g.name,
            g.producers,
            g.width,
            g.granularity,
            g.widenable,
            g.reaches_output,
            tuple((c.layer, c.index_map, c.flattened, c.groups) for c in g.consumers),
            g.followers,
        )
        for g in graph.groups
    ]


def both(model: nn.Module, inputs) -> tuple[netsurgeon.LayerGraph, netsurgeon.LayerGraph]:
    symbolic = netsurgeon.trace(model, inputs, strict=False)
    exported = netsurgeon.trace(model, inputs, strict=False, frontend="export")
    return symbolic, exported


# -- torchvision: the same graph ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "training"),
    [("resnet18", False), ("resnet18", True), ("vgg11_bn", False), ("mobilenet_v3_small", False)],
)
def test_export_reads_torchvision_models_as_symbolic_tracing_does(name, training):
    model = getattr(torchvision.models, name)(num_classes=10).train(training)
    symbolic, exported = both(model, torch.randn(2, 3, 64, 64))
    assert group_records(exported) == group_records(symbolic)
    assert exported.layers == symbolic.layers
    assert [g.blocked for g in exported.groups] == [g.blocked for g in symbolic.groups]


def test_export_leaves_the_model_untouched():
    model = torchvision.models.resnet18(num_classes=10).train()
    model.layer1.eval()
    x = torch.randn(2, 3, 32, 32)
    state = copy.deepcopy(model.state_dict())
    modes = {name: m.training for name, m in model.named_modules()}
    rng = torch.random.get_rng_state()
    netsurgeon.trace(model, x, strict=False, frontend="export")
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert torch.equal(torch.random.get_rng_state(), rng)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_rewritten_graph_computes_the_models_output(name):
    """The table's spellings and the collapsed module calls compute what export recorded."""
    model = getattr(torchvision.models, name)(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    gm = exported_graph_module(model, export_program(model, (x,)), SurgeonTracer())
    called = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    holding = {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert holding <= called  # every layer is one node, under its own path
    with torch.no_grad():
        torch.testing.assert_close(gm(x)[0], model(x), rtol=0, atol=0)


def test_widen_on_an_export_graph_keeps_the_output():
    model = torchvision.models.resnet18(num_classes=10).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    graph = netsurgeon.trace(model, x, strict=False, frontend="export")
    plan = {g.name: 2 * g.granularity for g in graph.groups if g.widenable}
    assert len(plan) >= 8
    outcome = check_widen_or_refuse(model, plan, (torch.randn(3, 3, 32, 32).double(),), graph=graph)
    assert not outcome.refused


# -- models symbolic tracing cannot read ---------------------------------------------------------


class ShapeBranch(nn.Module):
    """Pools only large maps: a branch on ``x.shape`` (symbolic tracing fails on it)."""

    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.body = nn.Conv2d(width, width + 2, 3, padding=1)
        self.head = nn.Linear(width + 2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        if x.shape[-1] > 8:
            x = nn.functional.max_pool2d(x, 2)
        x = self.body(x)
        return self.head(x.mean((2, 3)))


class NonLocal(nn.Module):
    """A non-local block (Wang et al.): attention over positions, ``view(b, -1, *x.size()[2:])``."""

    def __init__(self, width: int = 6, inner: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.theta = nn.Conv2d(width, inner, 1)
        self.phi = nn.Conv2d(width, inner, 1)
        self.g = nn.Conv2d(width, inner, 1)
        self.out = nn.Conv2d(inner, width, 1)
        self.head = nn.Conv2d(width, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        b = x.size(0)
        theta = self.theta(x).flatten(2).transpose(1, 2)
        attention = torch.softmax(theta @ self.phi(x).flatten(2), dim=-1)
        y = self.g(x).flatten(2) @ attention.transpose(1, 2)
        y = y.view(b, -1, *x.size()[2:])
        return self.head(x + self.out(y))


@pytest.mark.parametrize("make", [ShapeBranch, NonLocal])
def test_symbolic_tracing_fails_where_export_and_auto_trace(make):
    model = make().eval()
    x = torch.randn(2, 3, 12, 12)
    with pytest.raises(TraceError):
        netsurgeon.trace(model, x, strict=False)
    exported = netsurgeon.trace(model, x, strict=False, frontend="export")
    auto = netsurgeon.trace(model, x, strict=False, frontend="auto")
    assert group_records(auto) == group_records(exported)
    assert "stem" in exported.widenable_layers


def test_non_local_block_blocks_what_mixes_positions_and_widens_its_stream():
    x = torch.randn(2, 3, 8, 8)
    graph = netsurgeon.trace(NonLocal().eval(), x, frontend="export", strict=False)
    stream = graph.group_of("stem")
    assert stream.widenable and set(stream.producers) == {"stem", "out"}
    for name in ("theta", "phi", "g"):
        group = graph.group_of(name)
        assert not group.widenable and "matmul" in group.blocked


def test_branch_on_shape_reads_the_branch_taken():
    """Export records the branch of the traced shape: the pool is in the graph at 12x12."""
    graph = netsurgeon.trace(ShapeBranch().eval(), torch.randn(2, 3, 12, 12), frontend="export")
    assert any(n.target is nn.functional.max_pool2d for n in graph.gm.graph.nodes)
    assert set(graph.widenable_layers) == {"stem", "body"}


_MODELS = {
    "ShapeBranch": (ShapeBranch, torch.randn(2, 3, 12, 12, dtype=torch.float64)),
    "NonLocal": (NonLocal, torch.randn(2, 3, 8, 8, dtype=torch.float64)),
}
_GRAPHS: dict[str, tuple[nn.Module, netsurgeon.LayerGraph]] = {}


def _traced(name: str) -> tuple[nn.Module, netsurgeon.LayerGraph]:
    if name not in _GRAPHS:
        make, x = _MODELS[name]
        model = make().double().eval()
        _GRAPHS[name] = model, netsurgeon.trace(model, x, strict=False, frontend="export")
    return _GRAPHS[name]


@settings(max_examples=20)
@given(name=st.sampled_from(sorted(_MODELS)), data=st.data())
def test_every_plan_on_an_export_graph_keeps_the_output(name, data):
    model, graph = _traced(name)
    widenable = [g for g in graph.groups if g.widenable]
    ks = data.draw(st.lists(st.integers(0, 3), min_size=len(widenable), max_size=len(widenable)))
    plan = {g.name: k * g.granularity for g, k in zip(widenable, ks, strict=True) if k}
    model, graph = copy.deepcopy((model, graph))  # the copy's graph reads the copied modules
    x = _MODELS[name][1]
    check = (torch.randn(3, *x.shape[1:], dtype=torch.float64),)
    assert not check_widen_or_refuse(model, plan, check, graph=graph).refused


class ChannelBranch(nn.Module):
    """Doubles the map only at 8 channels: export records the branch, not the condition."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)
        self.side = nn.Conv2d(3, 4, 1)
        self.side_head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.shape[1] == 8:
            y = y * 2
        return self.head(y) + self.side_head(torch.relu(self.side(x)))


def test_a_widening_that_changes_the_exported_branch_is_refused_untouched():
    model = ChannelBranch().double().eval()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    graph = netsurgeon.trace(model, x, frontend="export")
    check = (torch.randn(3, 3, 4, 4, dtype=torch.float64),)
    outcome = check_widen_or_refuse(model, {"conv": 2}, check, graph=graph)  # bit-identical
    assert outcome.refused and "changes with the widths" in str(outcome.error)
    assert "aten.mul.Tensor" in str(outcome.error)
    assert not check_widen_or_refuse(model, {"side": 3}, check, graph=graph).refused


# -- what export cannot read blocks, named -----------------------------------------------------


class PairOut(nn.Module):
    """A leaf (by ``leaf_modules``) that returns two tensors."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2, x + 1


class WithPair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.pair = PairOut()
        self.head = nn.Conv2d(4, 2, 1)
        self.other = nn.Conv2d(3, 5, 1)
        self.tail = nn.Conv2d(5, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.pair(self.conv(x))
        return self.head(a + b) + self.tail(torch.relu(self.other(x)))


def test_a_module_call_that_is_not_one_node_blocks_its_groups_naming_it():
    x = torch.randn(2, 3, 4, 4)
    graph = netsurgeon.trace(WithPair(), x, strict=False, leaf_modules=[PairOut], frontend="export")
    blocked = graph.group_of("conv")
    assert not blocked.widenable
    assert "module 'pair' (PairOut)" in blocked.blocked and "gives 2 tensors" in blocked.blocked
    assert graph.group_of("other").widenable


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(3, 4)
        self.bilinear = nn.Bilinear(4, 4, 5)  # a kept-whole module with two tensor inputs
        self.side = nn.Linear(3, 6)
        self.head = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bilinear(self.a(x), self.b(x)) + self.head(torch.relu(self.side(x)))


def test_a_module_reading_two_tensors_blocks_what_it_reads_and_nothing_else():
    graph = netsurgeon.trace(TwoInputs(), torch.randn(2, 3), strict=False, frontend="export")
    for name in ("a", "b"):
        reason = graph.group_of(name).blocked
        assert "module 'bilinear' (Bilinear)" in reason and "reads 2 tensors" in reason
    assert graph.group_of("side").widenable


class Cummax(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).cummax(2).values)


def test_an_aten_op_without_a_table_entry_blocks_as_an_unknown_op():
    symbolic, exported = both(Cummax(), torch.randn(2, 3, 4, 4))
    group = exported.group_of("conv")
    assert not group.widenable and "cummax" in group.blocked
    assert "not an op netsurgeon knows" in group.blocked
    assert not symbolic.group_of("conv").widenable
    with pytest.raises(netsurgeon.UnsupportedModelError, match="cummax"):
        netsurgeon.trace(Cummax(), torch.randn(2, 3, 4, 4), frontend="export")


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.twice = nn.Conv2d(4, 4, 1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.twice(self.twice(self.conv(x))))


def test_a_module_called_twice_is_weight_sharing_on_both_front_ends():
    symbolic, exported = both(Shared(), torch.randn(2, 3, 4, 4))
    assert group_records(exported) == group_records(symbolic)
    assert "called 2 times" in exported.group_of("conv").blocked


class DataBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y if y.sum() > 0 else -y


def test_export_failures_and_bad_arguments_are_named():
    with pytest.raises(TraceError, match="needs example_inputs"):
        netsurgeon.trace(ShapeBranch(), frontend="export")
    with pytest.raises(ValueError, match="frontend must be one of"):
        netsurgeon.trace(ShapeBranch(), torch.randn(1, 3, 8, 8), frontend="dynamo")
    with pytest.raises(TraceError, match=r"torch\.export could not capture DataBranch"):
        netsurgeon.trace(DataBranch(), torch.randn(1, 3, 4, 4), frontend="export")
    with pytest.raises(TraceError, match=r"(?s)torch.fx could not trace.*torch.export could not"):
        netsurgeon.trace(DataBranch(), torch.randn(1, 3, 4, 4), frontend="auto")
    with pytest.raises(TraceError, match=r"torch\.fx could not trace ShapeBranch"):
        netsurgeon.trace(ShapeBranch(), frontend="auto")  # no inputs: nothing to export with


# -- transformers' Conv1D, registered by qualified name (transformers not needed) ----------------


class Conv1D(nn.Module):
    """transformers' ``Conv1D`` as it is written there: a ``Linear`` with an ``(in, out)`` weight."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf, self.nx = nf, nx
        self.weight = nn.Parameter(torch.randn(nx, nf) / nx**0.5)
        self.bias = nn.Parameter(torch.randn(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size_out = x.size()[:-1] + (self.nf,)  # noqa: RUF005  (as transformers writes it)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return x.view(size_out)


Conv1D.__module__ = "transformers.pytorch_utils"  # the name the handler is registered under


@pytest.mark.parametrize("frontend", ["symbolic", "export"])
def test_conv1d_widens_exactly_on_both_front_ends(frontend):
    model = nn.Sequential(Conv1D(12, 8), nn.GELU(), Conv1D(8, 12)).double().eval()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    graph = netsurgeon.trace(model, x, frontend=frontend)
    assert graph.widenable_layers == ["0"] and graph.output_layers == {"2"}
    outcome = check_widen_or_refuse(model, {"0": 3}, (torch.randn(3, 4, 8).double(),), graph=graph)
    assert not outcome.refused
    assert model[0].weight.shape == (8, 15) and model[0].nf == 15
    assert model[2].weight.shape == (15, 8) and model[2].nx == 15
