"""A grown Hugging Face model round-trips through ``save_pretrained`` / ``from_pretrained``.

Invariant: after every MLP of a tiny BERT, GPT-2, Llama or ViT grows by the same number of units,
or its residual stream, every layer's heads and MLP grow together (export front end, float64),
and ``sync_config`` writes the widths into the config, the reloaded model computes the grown
model's output (``<= 1e-9`` relative), which is the original's (Llama's stream, through
``LlamaRMSNorm``'s float32: ``<= 1e-6``), and its attention modules store the same head counts
and widths. Layers grown to different widths, and heads a config cannot rebuild, are refused by
``sync_config``, naming them, with the config unchanged.
"""

from __future__ import annotations

import pytest
import torch
from hf_models import HEADED, HEADS, HIDDEN, LAYERS, MLP, MLP_FIRST, MODELS, inputs, output
from widen_or_refuse import max_relative_error

import netsurgeon
from netsurgeon.errors import ConfigError
from netsurgeon.integrations.hf import sync_config

transformers = pytest.importorskip("transformers")


def _output(model, x) -> torch.Tensor:
    with torch.no_grad():
        return model(*x).last_hidden_state


@pytest.mark.parametrize("name", sorted(MODELS))
def test_grown_model_round_trips_through_save_and_load(name, tmp_path):
    torch.manual_seed(0)
    model = MODELS[name]().double().eval()
    x = inputs(name, 2, 0)
    before = _output(model, x)
    graph = netsurgeon.trace(model, x, strict=False, frontend="export")
    mlp = [g.name for g in graph.groups if any(p.endswith(MLP_FIRST) for p in g.producers)]
    netsurgeon.widen(model, dict.fromkeys(mlp, 4), graph=graph)
    changed = sync_config(model)
    assert set(changed.values()) == {MLP + 4}
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path, dtype=torch.float64).eval()
    after = _output(loaded, x)
    assert max_relative_error(after, before) <= 1e-9
    assert sync_config(loaded) == {}


def test_layers_grown_apart_are_refused_naming_them():
    torch.manual_seed(0)
    model = MODELS["bert"]().double().eval()
    x = inputs("bert", 2, 0)
    graph = netsurgeon.trace(model, x, strict=False, frontend="export")
    netsurgeon.widen(model, {"encoder.layer.0.intermediate.dense": 4}, graph=graph)
    with pytest.raises(ConfigError, match=r"'encoder\.layer\.1\.intermediate\.dense': 48"):
        sync_config(model)
    assert model.config.intermediate_size == MLP


def test_unknown_model_types_are_refused():
    with pytest.raises(ConfigError, match="knows the width fields"):
        sync_config(torch.nn.Linear(2, 2))


#: (stream group, head group pattern, its k, the stream's k, config fields after)
GROW_ALL = {
    "bert": (
        "bert.embeddings.word_embeddings", "bert.encoder.layer.{}.attention.self.query", 32, 32,
        {"hidden_size": 64, "num_attention_heads": 8, "intermediate_size": MLP + 4},
    ),
    "gpt2": (
        "transformer.wte", "transformer.h.{}.attn.c_attn", 24, 8,
        {"n_embd": 40, "n_head": 5, "n_inner": MLP + 4},
    ),
    "llama": (
        "model.embed_tokens", "model.layers.{}.self_attn.k_proj", 8, 4,
        {"hidden_size": 36, "num_attention_heads": 6, "num_key_value_heads": 3, "head_dim": 8},
    ),
    "vit": (
        "vit.embeddings.patch_embeddings.projection", "vit.layers.{}.attention.q_proj", 8, 5,
        {"hidden_size": 37, "num_attention_heads": 5, "head_dim": 8, "intermediate_size": MLP + 4},
    ),
}  # fmt: skip

STORED = ("num_heads", "split_size", "embed_dim", "num_attention_heads", "all_head_size",
          "attention_head_size", "head_dim", "num_key_value_groups")  # fmt: skip


def _stored(model: torch.nn.Module) -> dict[str, object]:
    return {
        f"{name}.{attr}": getattr(module, attr)
        for name, module in model.named_modules()
        for attr in STORED
        if isinstance(getattr(module, attr, None), int)
    }


@pytest.mark.parametrize("name", sorted(GROW_ALL))
def test_stream_heads_and_mlps_grown_together_round_trip(name, tmp_path):
    torch.manual_seed(0)
    model = HEADED[name]().double().eval()
    x = inputs(name, 2, 0)
    before = output(model, x)
    graph = netsurgeon.trace(model, x, strict=False, frontend="export")
    stream, heads, k_heads, k_stream, fields = GROW_ALL[name]
    mlp = [g.name for g in graph.groups if any(p.endswith(MLP_FIRST) for p in g.producers)]
    plan = dict.fromkeys(mlp, 4) | {stream: k_stream}
    if name == "bert":  # the pooler's width is the config's hidden_size too
        plan["bert.pooler.dense"] = k_stream
    plan |= {heads.format(i): k_heads for i in range(LAYERS)}
    netsurgeon.widen(model, plan, graph=graph)
    grown = output(model, x)
    assert max_relative_error(grown, before) <= (1e-6 if name == "llama" else 1e-9)
    changed = sync_config(model)
    assert {k: changed.get(k, getattr(model.config, k)) for k in fields} == fields
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path, dtype=torch.float64).eval()
    assert max_relative_error(output(loaded, x), grown) <= 1e-9
    assert _stored(loaded) == _stored(model)
    assert sync_config(loaded) == {}


def test_heads_the_config_cannot_rebuild_are_refused():
    """BERT's config rebuilds heads of hidden_size // num_attention_heads: more heads on the
    same stream would be cut smaller on reload."""
    torch.manual_seed(0)
    model = HEADED["bert"]().double().eval()
    x = inputs("bert", 2, 0)
    graph = netsurgeon.trace(model, x, strict=False, frontend="export")
    plan = {f"bert.encoder.layer.{i}.attention.self.query": HIDDEN // HEADS for i in range(LAYERS)}
    netsurgeon.widen(model, plan, graph=graph)
    config = model.config.to_dict()
    with pytest.raises(ConfigError, match=r"5 heads of \[8\] and a stream of 32"):
        sync_config(model)
    assert model.config.to_dict() == config


def test_widths_the_config_validates_away_are_refused_and_restored():
    """Llama's config requires a hidden size that is a multiple of the head count."""
    torch.manual_seed(0)
    model = HEADED["llama"]().double().eval()
    x = inputs("llama", 2, 0)
    graph = netsurgeon.trace(model, x, strict=False, frontend="export")
    netsurgeon.widen(model, {"model.embed_tokens": 5}, graph=graph)  # 37 over 4 heads
    config = model.config.to_dict()
    with pytest.raises(ConfigError, match="LlamaConfig refuses the widths"):
        sync_config(model)
    assert model.config.to_dict() == config
