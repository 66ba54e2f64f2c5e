"""A ``Grower`` grows a Hugging Face model traced with the export front end, while it trains.

Invariant: on a tiny BERT classifier (float64) trained with AdamW and a learning-rate scheduler,
``Grower(..., frontend="export")`` grows widenable groups (the residual stream, heads, MLP
hidden units, the pooler) at a trigger, keeps every
``Parameter`` object (the optimizer and scheduler keep stepping them), and the growth keeps the
model's output (``<= 1e-9`` relative, eval mode). On a tiny ViT classifier the growth reaches the
residual stream and the attention heads, and the grown model's config round-trips through
``save_pretrained`` / ``from_pretrained``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hf_models import HEADS, HIDDEN, LAYERS, MLP
from torch import nn
from widen_or_refuse import max_relative_error

from netsurgeon import Grower, GrowthConfig

transformers = pytest.importorskip("transformers")


def test_grower_grows_an_exported_bert_with_adamw_and_a_scheduler():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=64, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_labels=3,
        num_attention_heads=HEADS, intermediate_size=MLP, max_position_embeddings=32,
    )  # fmt: skip
    model = transformers.BertForSequenceClassification(cfg).double()
    ids, labels = torch.randint(0, 64, (8, 9)), torch.randint(0, 3, (8,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    config = GrowthConfig(w_acc=1, delta_acc=1.0, every=1)
    grower = Grower(model, optimizer, config, example_inputs=(ids,), frontend="export")
    params = {n: id(p) for n, p in model.named_parameters()}
    widths = {n: _width(m) for n, m in model.named_modules() if isinstance(m, _LAYERS)}
    for _epoch in range(2):
        model.train()
        optimizer.zero_grad()
        F.cross_entropy(model(ids).logits, labels).backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            before = model.eval()(ids).logits
        grower.step(0.5)
        with torch.no_grad():
            after = model.eval()(ids).logits
        assert max_relative_error(after, before) <= 1e-9
    assert grower.history, "the trigger fired: a growth was expected"
    grown: dict[str, int] = {}
    for event in grower.history:
        for name, k in event.increments.items():
            grown[name] = grown.get(name, 0) + k
    assert grown, "a growth added units"
    for name, k in grown.items():  # a group is named after its first producer
        assert _width(model.get_submodule(name)) == widths[name] + k, name
    assert {n: id(p) for n, p in model.named_parameters()} == params
    model.train()
    optimizer.zero_grad()
    F.cross_entropy(model(ids).logits, labels).backward()
    optimizer.step()  # AdamW's grown state steps the grown parameters
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.25)


_LAYERS = (nn.Linear, nn.Embedding)


def _width(module: nn.Module) -> int:
    """A producer's units: a Linear's outputs, an Embedding's (the stream's first producer)."""
    return module.embedding_dim if isinstance(module, nn.Embedding) else module.out_features


def test_grower_grows_a_vit_classifier_whose_config_round_trips(tmp_path):
    """Growth on the stream and the heads as NAGN places it (``where="uniform"`` spreads it over
    every widenable group), AdamW and a scheduler stepping on; ``sync_config`` then writes the
    widths and the reloaded model computes the grown one's logits."""
    from hf_models import HEADED, inputs, output

    from netsurgeon.integrations.hf import sync_config

    torch.manual_seed(0)
    model = HEADED["vit"]().double()
    images, labels = inputs("vit", 8, 0)[0], torch.randint(0, 3, (8,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    config = GrowthConfig(w_acc=1, delta_acc=1.0, every=1, where="uniform", max_growths=1)
    grower = Grower(model, optimizer, config, example_inputs=(images,), frontend="export")
    for _epoch in range(2):
        model.train()
        optimizer.zero_grad()
        F.cross_entropy(model(images).logits, labels).backward()
        optimizer.step()
        scheduler.step()
        before = output(model.eval(), (images,))
        grower.step(0.5)
        assert max_relative_error(output(model, (images,)), before) <= 1e-9
    grown = {name for event in grower.history for name, k in event.increments.items() if k}
    stream, heads = "vit.embeddings.patch_embeddings.projection", "vit.layers.0.attention.q_proj"
    assert {stream, heads} <= grown, grown
    assert model.vit.layers[0].attention.num_attention_heads > HEADS
    sync_config(model)
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path, dtype=torch.float64).eval()
    grown_logits = output(model.eval(), (images,))
    assert max_relative_error(output(loaded, (images,)), grown_logits) <= 1e-9
