"""Hugging Face transformers through the export front end (tiny configs built offline).

Invariant: BERT (post-LN), GPT-2 (pre-LN, ``Conv1D`` weights ``(in, out)``), Llama (RMSNorm,
RoPE, grouped-query attention, SwiGLU) and ViT trace with ``frontend="export"``, as base models
and with a task head; at least 90 % of their non-output linear layers are in widenable groups
(residual streams, attention heads, MLPs), and any plan over the widenable groups keeps the
output (float64, ``<= 1e-9`` relative; Llama with a head, whose stream crosses ``LlamaRMSNorm``'s
own float32 computation, ``<= 1e-6``). The attention modules' stored widths follow the heads, and a
grown model traces to the same widenable groups and grows again.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hf_models import HEADED, HEADS, HIDDEN, LAYERS, MLP, MLP_FIRST, MODELS, inputs
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from widen_or_refuse import check_widen_or_refuse

import netsurgeon

transformers = pytest.importorskip("transformers")

_TRACED: dict[tuple[str, bool], tuple[nn.Module, netsurgeon.LayerGraph]] = {}
CASES = [(name, headed) for name in sorted(MODELS) for headed in (False, True)]


def traced(name: str, headed: bool = False) -> tuple[nn.Module, netsurgeon.LayerGraph]:
    """A float64 eval model and its export graph, once per model (export takes ~1 s)."""
    if (name, headed) not in _TRACED:
        torch.manual_seed(0)
        model = (HEADED if headed else MODELS)[name]().double().eval()
        graph = netsurgeon.trace(model, inputs(name, 2, 0), strict=False, frontend="export")
        _TRACED[name, headed] = model, graph
    return _TRACED[name, headed]


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__qualname__ == "Conv1D"


def inner_linear(model: nn.Module, graph: netsurgeon.LayerGraph) -> list[str]:
    """The linear layers whose group does not reach the model's output."""
    linear = [n for n, m in model.named_modules() if is_linear(m) and n in graph.layers]
    return [n for n in linear if not graph.group_of(n).reaches_output]


@pytest.mark.parametrize(("name", "headed"), CASES)
def test_nine_in_ten_inner_linear_layers_are_widenable(name, headed, record_property):
    model, graph = traced(name, headed)
    inner = inner_linear(model, graph)
    widenable = [n for n in inner if n in graph.widenable_layers]
    record_property("widenable_share", f"{len(widenable)}/{len(inner)}")
    blocked = {graph.group_of(n).reason for n in inner if n not in widenable}
    assert len(widenable) >= 0.9 * len(inner), blocked
    assert len(inner) >= 2 * LAYERS  # the attention projections are counted, not only the MLPs


@pytest.mark.parametrize("name", sorted(MODELS))
def test_heads_widen_by_whole_heads_and_mlps_by_units(name):
    _, graph = traced(name)
    mlp = [g for g in graph.groups if any(p.endswith(MLP_FIRST) for p in g.producers)]
    assert len(mlp) == LAYERS and all(g.widenable and g.width == MLP for g in mlp)
    heads = [g for g in graph.groups if g.widenable and g.granularity > 1]
    assert len(heads) == LAYERS, graph.summary()
    fused = 3 if name == "gpt2" else 1  # c_attn: q, k, v splits of HIDDEN each
    assert {g.granularity for g in heads} == {fused * HIDDEN // HEADS}


@settings(max_examples=16, deadline=None)
@given(case=st.sampled_from(CASES), data=st.data())
def test_every_plan_over_the_widenable_groups_keeps_the_output(case, data):
    name, headed = case
    model, graph = traced(name, headed)
    widenable = [g for g in graph.groups if g.widenable]
    ks = data.draw(st.lists(st.integers(0, 3), min_size=len(widenable), max_size=len(widenable)))
    plan = {g.name: k * g.granularity for g, k in zip(widenable, ks, strict=True) if k}
    model, graph = copy.deepcopy((model, graph))
    stream = any(g.name.endswith("embed_tokens") for g in graph.groups if g.name in plan)
    tolerance = 1e-6 if stream else None  # LlamaRMSNorm computes in float32 (module docstring)
    outcome = check_widen_or_refuse(model, plan, inputs(name, 3, 1), graph=graph, tol=tolerance)
    assert not outcome.refused, outcome.error


def test_gpt2_conv1d_grows_its_in_out_weight():
    model, graph = copy.deepcopy(traced("gpt2"))
    netsurgeon.widen(model, {"h.0.mlp.c_fc": 5}, graph=graph)
    c_fc, c_proj = model.h[0].mlp.c_fc, model.h[0].mlp.c_proj
    assert c_fc.weight.shape == (HIDDEN, MLP + 5) and c_fc.bias.shape == (MLP + 5,)
    assert c_fc.nf == MLP + 5
    assert c_proj.weight.shape == (MLP + 5, HIDDEN) and c_proj.nx == MLP + 5


HEAD_GROUPS = {
    "bert": ("encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self"),
    "gpt2": ("h.0.attn.c_attn", "h.0.attn"),
    "llama": ("layers.0.self_attn.k_proj", "layers.0.self_attn"),
    "vit": ("layers.0.attention.q_proj", "layers.0.attention"),
}
#: the attributes each attention stores of its heads: (head count, widths it stores)
STORED = {
    "bert": ("num_attention_heads", ("all_head_size",)),
    "gpt2": ("num_heads", ("split_size",)),
    "llama": (None, ()),
    "vit": ("num_attention_heads", ()),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_grown_heads_update_the_attributes_the_forward_reads(name):
    """Two heads more in layer 0 (Llama: one key/value head, so two query heads): the stored
    head count and widths follow, and the forward runs at another batch and sequence length."""
    model, graph = copy.deepcopy(traced(name))
    group, path = HEAD_GROUPS[name]
    d = HIDDEN // HEADS
    k = d if name == "llama" else 2 * d * (3 if name == "gpt2" else 1)
    netsurgeon.widen(model, {group: k}, graph=graph)
    attention = model.get_submodule(path)
    count, widths = STORED[name]
    if count is not None:
        assert getattr(attention, count) == HEADS + 2
    for attr in widths:
        assert getattr(attention, attr) == (HEADS + 2) * d
    if name == "llama":
        assert attention.q_proj.out_features == (HEADS + 2) * d
        assert attention.k_proj.out_features == (HEADS // 2 + 1) * d
        assert attention.num_key_value_groups == 2  # the ratio kept by the grouped-query tie
    other = model.get_submodule(path.replace(".0.", ".1."))
    assert count is None or getattr(other, count) == HEADS  # layer 1 untouched
    model(*inputs(name, 3, 5))  # a batch of 3, another sequence length: sizes read at run time


def test_gpt2_model_stores_the_stream_width_it_reads():
    model, graph = copy.deepcopy(traced("gpt2", headed=True))
    netsurgeon.widen(model, {"transformer.wte": 3}, graph=graph)
    assert model.transformer.embed_dim == HIDDEN + 3
    assert model.transformer.ln_f.normalized_shape == (HIDDEN + 3,)


def test_tracing_leaves_the_model_untouched():
    torch.manual_seed(0)
    model = MODELS["bert"]().train()
    state = copy.deepcopy(model.state_dict())
    netsurgeon.trace(model, inputs("bert", 2, 0), strict=False, frontend="export")
    assert model.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_monitor_optimizer_and_widening_work_on_an_exported_model():
    """The NAGN monitor hooks the user's modules (export never replaces them); an export during
    monitoring is not a training step; widening keeps every Parameter and grows AdamW's state."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=64, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, intermediate_size=MLP, max_position_embeddings=32,
    )  # fmt: skip
    model = transformers.BertForSequenceClassification(cfg).train()
    ids, labels = torch.randint(0, 64, (4, 9)), torch.randint(0, 2, (4,))
    graph = netsurgeon.trace(model, (ids,), strict=False, frontend="export")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with netsurgeon.NAGNMonitor(model, graph.layers, every=2) as monitor:
        graph = netsurgeon.trace(model, (ids,), strict=False, frontend="export")
        nn.functional.cross_entropy(model(ids).logits, labels).backward()
        profile = monitor.profile()
    assert set(profile) == set(graph.layers) and all(v > 0 for v in profile.values())
    assert monitor.samples["classifier"] == 4  # the export was not counted as step 0
    optimizer.step()
    params = {n: id(p) for n, p in model.named_parameters()}
    dense = model.bert.encoder.layer[0].intermediate.dense
    netsurgeon.widen(model, {"bert.encoder.layer.0.intermediate.dense": 4}, optimizer=optimizer,
                     graph=graph)  # fmt: skip
    assert {n: id(p) for n, p in model.named_parameters()} == params
    assert optimizer.state[dense.weight]["exp_avg"].shape == (MLP + 4, HIDDEN)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_grown_model_traces_and_grows_again(name):
    """After a growth of everything widenable, the grown attributes are the ones the forward
    reads: the next trace finds the same widenable groups, and a second growth is exact too."""
    torch.manual_seed(0)
    model = HEADED[name]().double().eval()
    x = inputs(name, 2, 0)
    widenable = []
    for _ in range(2):
        graph = netsurgeon.trace(model, x, strict=False, frontend="export")
        widenable.append(sorted(g.name for g in graph.groups if g.widenable))
        plan = {g.name: g.granularity for g in graph.groups if g.widenable}
        tolerance = 1e-6 if name == "llama" else None  # LlamaRMSNorm's float32 (module docstring)
        outcome = check_widen_or_refuse(model, plan, inputs(name, 3, 1), graph=graph, tol=tolerance)
        assert not outcome.refused, outcome.error
    assert widenable[0] == widenable[1]
