"""LayerGraph API (queries, networkx, summary), torchvision's VGG-11-BN, and tracing side effects.

Tracing must be read-only: the model's outputs, parameters, buffers (BatchNorm running statistics
and ``num_batches_tracked``), training flags and the global RNG state are bit-for-bit the same
after ``trace``, with and without ``example_inputs``.
"""

from __future__ import annotations

import copy
import itertools

import networkx as nx
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import netsurgeon
from netsurgeon import LayerGraph, UnknownLayerError, WidenError


class SmallNet(nn.Module):
    """conv1 -> bn1 -> relu -> pool -> conv2 -> prelu(C) -> flatten -> fc1 -> bn -> drop -> fc2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 5, 3, padding=1)
        self.act2 = nn.PReLU(5)
        self.fc1 = nn.Linear(5 * 2 * 2, 7)
        self.bn_fc = nn.BatchNorm1d(7)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = self.act2(self.conv2(x))
        x = x.view(x.size(0), -1)
        return self.fc2(self.drop(F.relu(self.bn_fc(self.fc1(x)))))


@pytest.fixture
def graph() -> LayerGraph:
    return netsurgeon.trace(SmallNet(), torch.randn(2, 3, 4, 4))


def test_widths_are_out_widths_in_depth_order(graph: LayerGraph) -> None:
    assert list(graph.widths().items()) == [("conv1", 6), ("conv2", 5), ("fc1", 7), ("fc2", 3)]
    assert graph.layers == list(graph.widths())


def test_producers_consumers_and_followers(graph: LayerGraph) -> None:
    assert graph.consumers_of("conv1") == ["conv2"]
    assert graph.consumers_of("conv2") == ["fc1"]
    assert graph.consumers_of("fc2") == []
    assert graph.producers_of("conv1") == []
    assert graph.producers_of("fc1") == ["conv2"]
    assert graph.producers_of("fc2") == ["fc1"]
    assert graph.followers_of("conv1") == ["bn1"]
    assert graph.followers_of("conv2") == ["act2"]
    assert graph.followers_of("fc1") == ["bn_fc"]
    assert graph.edges_into("fc1") == graph.edges_from("conv2")
    (edge,) = graph.edges_from("conv2")
    assert (edge.multiplicity, edge.flattened) == (4, True)
    assert edge.path == ("PReLU", ".view()(batch, -1)")


def test_output_and_widenable_layers(graph: LayerGraph) -> None:
    assert graph.output_layers == frozenset({"fc2"})
    assert graph.widenable_layers == ["conv1", "conv2", "fc1"]
    assert graph.unwidenable_reason("conv1") is None
    assert "reaches the model output" in (graph.unwidenable_reason("fc2") or "")


def test_module_returns_the_models_own_submodule(graph: LayerGraph) -> None:
    assert graph.module("conv2") is graph.model.conv2
    assert graph.module("bn_fc") is graph.model.bn_fc


def test_to_networkx_has_layer_nodes_and_path_edges(graph: LayerGraph) -> None:
    g = graph.to_networkx()
    assert isinstance(g, nx.DiGraph)
    assert list(g.nodes) == graph.layers
    assert g.nodes["conv1"]["type"] == "Conv2d"
    assert g.nodes["conv1"]["width"] == 6
    assert g.nodes["conv1"]["followers"] == ["bn1"]
    assert g.nodes["fc2"]["output"] is True and g.nodes["fc2"]["widenable"] is False
    assert g.nodes["fc1"]["widenable"] is True and g.nodes["fc1"]["blocked"] is None
    assert set(g.edges) == {("conv1", "conv2"), ("conv2", "fc1"), ("fc1", "fc2")}
    assert g.edges["conv2", "fc1"]["kind"] == "flatten"
    assert g.edges["conv2", "fc1"]["multiplicity"] == 4
    assert g.edges["conv1", "conv2"]["kind"] == "identity"
    assert g.edges["conv1", "conv2"]["path"] == ["BatchNorm2d", "relu", "max_pool2d"]
    assert g.edges["fc1", "fc2"]["path"] == ["BatchNorm1d", "relu", "Dropout"]


def test_summary_lists_each_layer_with_type_width_consumers_and_status(graph: LayerGraph) -> None:
    text = graph.summary()
    assert str(graph) == text
    rows = {line.split()[0]: line.split() for line in text.splitlines()[2:]}
    assert list(rows) == [g.name for g in graph.groups] == graph.layers
    # group, producers, width, granularity, construction, consumers (x multiplicity), followers,
    # status
    assert rows["conv1"][:6] == ["conv1", "conv1", "6", "1", "append", "conv2"]
    assert rows["conv2"][:7] == ["conv2", "conv2", "5", "1", "append", "fc1", "x4"]
    assert rows["fc1"][:6] == ["fc1", "fc1", "7", "1", "append", "fc2"]
    assert rows["fc2"][:6] == ["fc2", "fc2", "3", "1", "append", "-"]
    assert rows["fc2"][-1] == "output" and rows["fc1"][-1] == "yes"
    assert "bn_fc" in rows["fc1"]


def test_unknown_layer_name_lists_close_matches(graph: LayerGraph) -> None:
    with pytest.raises(
        UnknownLayerError,
        match=r"'conv3' is not a layer of SmallNet\. Did you mean 'conv2', 'conv1'\?",
    ):
        graph.consumers_of("conv3")
    with pytest.raises(UnknownLayerError, match=r"Layers: conv1, conv2, fc1, fc2"):
        graph.followers_of("bn1")


def test_concrete_args_fix_a_python_flag_in_forward() -> None:
    class Flagged(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 8)
            self.b = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor, relu: bool = True) -> torch.Tensor:
            h = self.a(x)
            if relu:
                h = F.relu(h)
            return self.b(h)

    with pytest.raises(netsurgeon.TraceError):
        netsurgeon.trace(Flagged())
    graph = netsurgeon.trace(Flagged(), concrete_args={"relu": True})
    assert graph.edges_from("a")[0].path == ("relu",)


def scale_input(x: torch.Tensor) -> torch.Tensor:
    """Data-dependent control flow that fx cannot follow, used only on the input."""
    return x / x.abs().max() if x.abs().max() > 1 else x


def test_autowrap_functions_record_a_helper_as_one_node() -> None:
    class Normalised(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 8)
            self.b = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(scale_input(x)))

    with pytest.raises(netsurgeon.TraceError):
        netsurgeon.trace(Normalised())
    graph = netsurgeon.trace(Normalised(), autowrap_functions=[scale_input])
    assert graph.consumers_of("a") == ["b"]


# -- torchvision VGG-11-BN (built on the meta device: shapes only, no 130M-parameter init) ------
@pytest.fixture(scope="module")
def vgg11_bn() -> nn.Module:
    with torch.device("meta"):
        return torchvision.models.vgg11_bn()


@pytest.mark.parametrize("with_inputs", [False, True], ids=["no_inputs", "inputs"])
def test_vgg11_bn_graph(vgg11_bn: nn.Module, with_inputs: bool) -> None:
    inputs = torch.randn(1, 3, 224, 224, device="meta") if with_inputs else None
    graph = netsurgeon.trace(vgg11_bn, inputs)
    convs = ["features.0", "features.4", "features.8", "features.11", "features.15",
             "features.18", "features.22", "features.25"]  # fmt: skip
    assert graph.layers == [*convs, "classifier.0", "classifier.3", "classifier.6"]
    assert graph.output_layers == {"classifier.6"}
    assert graph.widenable_layers == graph.layers[:-1]
    assert graph.widths()["features.25"] == 512 and graph.widths()["classifier.0"] == 4096
    (edge,) = graph.edges_from("features.25")
    assert (edge.consumer, edge.multiplicity, edge.flattened) == ("classifier.0", 49, True)
    for producer, consumer in itertools.pairwise(convs):
        assert graph.consumers_of(producer) == [consumer]
        assert graph.followers_of(producer) == [f"features.{int(producer.split('.')[1]) + 1}"]
    assert graph.consumers_of("classifier.0") == ["classifier.3"]
    assert graph.followers_of("classifier.0") == []
    assert "classifier.0 x49" in graph.summary()


# -- tracing is read-only -----------------------------------------------------------------------
def snapshot(model: nn.Module) -> dict[str, object]:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "params": [id(p) for p in model.parameters()],
        "grad": [p.requires_grad for p in model.parameters()],
        "training": {n: m.training for n, m in model.named_modules()},
        "rng": torch.get_rng_state(),
    }


def assert_same(before: dict[str, object], after: dict[str, object]) -> None:
    assert before["state"].keys() == after["state"].keys()  # type: ignore[attr-defined]
    for key, value in before["state"].items():  # type: ignore[attr-defined]
        assert torch.equal(value, after["state"][key]), key  # type: ignore[index]
    assert before["params"] == after["params"]
    assert before["grad"] == after["grad"]
    assert before["training"] == after["training"]
    assert torch.equal(before["rng"], after["rng"])  # type: ignore[arg-type]


@pytest.mark.parametrize("with_inputs", [False, True], ids=["no_inputs", "inputs"])
@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_tracing_changes_no_output_parameter_buffer_flag_or_rng(
    mode: str, with_inputs: bool
) -> None:
    model = SmallNet()
    x = torch.randn(4, 3, 4, 4)
    model.train()
    model(x)  # non-trivial running statistics and num_batches_tracked
    model.train(mode != "eval")
    if mode == "mixed":
        model.bn1.eval()
        model.drop.eval()
    reference = copy.deepcopy(model).eval()
    before = snapshot(model)
    graph = netsurgeon.trace(model, x if with_inputs else None)
    assert_same(before, snapshot(model))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
        torch.testing.assert_close(graph.gm(x), reference(x), rtol=0, atol=0)


def test_shape_propagation_does_not_advance_the_global_rng() -> None:
    class AlwaysDropout(nn.Module):  # draws random numbers even in eval mode
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 8)
            self.b = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(F.dropout(self.a(x), 0.5, True))

    model, x = AlwaysDropout(), torch.randn(3, 4)
    rng = torch.get_rng_state()
    graph = netsurgeon.trace(model, x)
    assert torch.equal(torch.get_rng_state(), rng)
    assert graph.consumers_of("a") == ["b"]


def test_graph_queries_raise_unknown_layer_error_and_widen_raises_widen_error(
    graph: LayerGraph,
) -> None:
    with pytest.raises(KeyError) as caught:
        graph.group_of("nope")
    assert isinstance(caught.value, UnknownLayerError)
    assert str(caught.value).startswith("'nope' is not a layer of SmallNet.")
    with pytest.raises(WidenError, match=r"'nope' is not a layer of SmallNet") as refused:
        netsurgeon.widen(SmallNet(), {"nope": 2})
    assert isinstance(refused.value.__cause__, UnknownLayerError)
    assert not isinstance(refused.value, KeyError)
