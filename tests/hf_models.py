"""Tiny Hugging Face transformers models, built offline from configs (no hub downloads).

BERT (post-LN), GPT-2 (pre-LN, ``Conv1D``), Llama (RMSNorm, RoPE, grouped-query attention,
SwiGLU) and ViT at 2 layers, hidden 32, 4 heads, MLP 48: the base models (``MODELS``, whose
residual stream is their output) and the same with a task head (``HEADED``: a classifier, or
Llama's language-model head), whose stream is inside. transformers is imported by the builders
only: a test module calls ``pytest.importorskip("transformers")`` first.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["HEADED", "HEADS", "HIDDEN", "LAYERS", "MLP", "MLP_FIRST", "MODELS", "inputs", "output"]

HIDDEN, LAYERS, HEADS, MLP = 32, 2, 4, 48
MLP_FIRST = ("intermediate.dense", "mlp.c_fc", "mlp.gate_proj", "mlp.fc1")  # an MLP's first layer


def _transformers():
    import transformers

    return transformers


def _bert() -> nn.Module:
    t = _transformers()
    return t.BertModel(
        t.BertConfig(
            vocab_size=64, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, intermediate_size=MLP, max_position_embeddings=32,
        )
    )  # fmt: skip


def _gpt2() -> nn.Module:
    t = _transformers()
    return t.GPT2Model(
        t.GPT2Config(
            vocab_size=64, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=MLP,
            n_positions=32, use_cache=False, bos_token_id=0, eos_token_id=0,
        )
    )  # fmt: skip


def _llama() -> nn.Module:
    t = _transformers()
    return t.LlamaModel(
        t.LlamaConfig(
            vocab_size=64, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, num_key_value_heads=2, intermediate_size=MLP,
            max_position_embeddings=32, use_cache=False,
        )
    )  # fmt: skip


def _vit() -> nn.Module:
    t = _transformers()
    return t.ViTModel(
        t.ViTConfig(
            image_size=16, patch_size=4, num_channels=3, hidden_size=HIDDEN,
            num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=MLP,
        )
    )  # fmt: skip


MODELS = {"bert": _bert, "gpt2": _gpt2, "llama": _llama, "vit": _vit}


def _headed(name: str, **extra) -> nn.Module:
    """``name``'s base model's config, with a task head around the model."""
    t = _transformers()
    config = MODELS[name]().config
    for key, value in extra.items():
        setattr(config, key, value)
    heads = {
        "bert": t.BertForSequenceClassification,
        "gpt2": t.GPT2ForSequenceClassification,
        "llama": t.LlamaForCausalLM,
        "vit": t.ViTForImageClassification,
    }
    config.num_labels, config.pad_token_id = 3, 0
    return heads[name](config)


HEADED = {name: (lambda name=name, **extra: _headed(name, **extra)) for name in MODELS}


def output(model: nn.Module, x: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The tensor a model computes: ``logits`` with a head, else ``last_hidden_state``."""
    with torch.no_grad():
        out = model(*x)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def inputs(name: str, batch: int, seed: int) -> tuple[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    if name == "vit":
        return (torch.randn(batch, 3, 16, 16, generator=gen, dtype=torch.float64),)
    return (torch.randint(0, 64, (batch, 7 + batch), generator=gen),)
