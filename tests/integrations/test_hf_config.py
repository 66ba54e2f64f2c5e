"""A grown Hugging Face model round-trips through ``save_pretrained`` / ``from_pretrained``.

Invariant: after every MLP of a tiny BERT, GPT-2, Llama or ViT grows by the same number of units
(export front end, float64) and ``sync_config`` writes the widths into the config, the reloaded
model computes the grown model's output (``<= 1e-9`` relative), which is the original's; MLPs
grown to different widths are refused by ``sync_config``, naming the layers.
"""

from __future__ import annotations

import pytest
import torch
from hf_models import MLP, MLP_FIRST, MODELS, inputs
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
    with pytest.raises(ConfigError, match="knows the MLP width fields"):
        sync_config(torch.nn.Linear(2, 2))
