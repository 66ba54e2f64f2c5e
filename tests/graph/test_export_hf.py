"""Hugging Face transformers through the export front end (tiny configs built offline).

Invariant: BERT (post-LN), GPT-2 (pre-LN, ``Conv1D`` weights ``(in, out)``), Llama (RMSNorm,
RoPE, grouped-query attention, SwiGLU) and ViT trace with ``frontend="export"``; every MLP hidden
group is widenable, and any plan over the widenable groups keeps the output (float64, ``<= 1e-9``
relative). What stays blocked (residual streams across LayerNorm/RMSNorm, attention heads) names
the node that blocks it. The widenable share of the non-output linear layers is recorded
(``record_property``) for the report.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hf_models import HEADS, HIDDEN, LAYERS, MLP, MLP_FIRST, MODELS, inputs
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from widen_or_refuse import check_widen_or_refuse

import netsurgeon

transformers = pytest.importorskip("transformers")

_TRACED: dict[str, tuple[nn.Module, netsurgeon.LayerGraph]] = {}


def traced(name: str) -> tuple[nn.Module, netsurgeon.LayerGraph]:
    """A float64 eval model and its export graph, once per model (export takes ~1 s)."""
    if name not in _TRACED:
        torch.manual_seed(0)
        model = MODELS[name]().double().eval()
        graph = netsurgeon.trace(model, inputs(name, 2, 0), strict=False, frontend="export")
        _TRACED[name] = model, graph
    return _TRACED[name]


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__qualname__ == "Conv1D"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_mlp_hidden_group_is_widenable(name, record_property):
    model, graph = traced(name)
    mlp = [g for g in graph.groups if any(p.endswith(MLP_FIRST) for p in g.producers)]
    assert len(mlp) == LAYERS and all(g.widenable for g in mlp)
    assert all(g.width == MLP for g in mlp)
    linear = [n for n, m in model.named_modules() if is_linear(m) and n in graph.layers]
    inner = [n for n in linear if n not in graph.output_layers]
    widenable = [n for n in inner if n in graph.widenable_layers]
    record_property("widenable_share", f"{len(widenable)}/{len(inner)}")
    assert len(widenable) >= LAYERS


@pytest.mark.parametrize("name", sorted(MODELS))
def test_blocked_groups_name_the_node_that_blocks_them(name):
    _, graph = traced(name)
    blocked = [g.blocked for g in graph.groups if g.blocked]
    assert blocked  # the residual stream and the heads, until their constructions land
    assert all("(at %" in reason for reason in blocked), blocked


@settings(max_examples=12)
@given(name=st.sampled_from(sorted(MODELS)), data=st.data())
def test_every_plan_over_the_widenable_groups_keeps_the_output(name, data):
    model, graph = traced(name)
    widenable = [g for g in graph.groups if g.widenable]
    ks = data.draw(st.lists(st.integers(0, 4), min_size=len(widenable), max_size=len(widenable)))
    plan = {g.name: k * g.granularity for g, k in zip(widenable, ks, strict=True) if k}
    model, graph = copy.deepcopy((model, graph))
    outcome = check_widen_or_refuse(model, plan, inputs(name, 3, 1), graph=graph)
    assert not outcome.refused


def test_gpt2_conv1d_grows_its_in_out_weight():
    model, graph = copy.deepcopy(traced("gpt2"))
    netsurgeon.widen(model, {"h.0.mlp.c_fc": 5}, graph=graph)
    c_fc, c_proj = model.h[0].mlp.c_fc, model.h[0].mlp.c_proj
    assert c_fc.weight.shape == (HIDDEN, MLP + 5) and c_fc.bias.shape == (MLP + 5,)
    assert c_fc.nf == MLP + 5
    assert c_proj.weight.shape == (MLP + 5, HIDDEN) and c_proj.nx == MLP + 5


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
