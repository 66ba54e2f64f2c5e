"""What the Hugging Face attention handlers accept beyond float64 eval, and what they refuse.

Invariant: widening every widenable group of a tiny BERT, GPT-2 or ViT with a task head keeps
its output in float32 (``<= 1e-5`` relative) and in train mode without dropout (float64,
``<= 1e-9``); the eager attention kernel is read as the sdpa one is. An attention the handlers do
not model blocks its heads with a reason naming the module (an attention kernel other than
eager/sdpa, a subclass with its own forward; an RMSNorm subclass computing otherwise blocks the
stream it reads), and a widening of those heads is refused leaving the model bit-identical. A
cache in the output (``use_cache=True``) is refused with export's reason.
"""

from __future__ import annotations

import pytest
import torch
from hf_models import HEADED, HIDDEN, MODELS, inputs
from widen_or_refuse import check_widen_or_refuse

import netsurgeon

transformers = pytest.importorskip("transformers")


def _trace(model, name):
    return netsurgeon.trace(model, inputs(name, 2, 0), strict=False, frontend="export")


def _plan(graph) -> dict[str, int]:
    return {g.name: g.granularity for g in graph.groups if g.widenable}


@pytest.mark.parametrize("name", ["bert", "gpt2", "vit"])
def test_float32_widening_keeps_the_output(name):
    torch.manual_seed(0)
    model = HEADED[name]().float().eval()
    x = tuple(t.float() if t.is_floating_point() else t for t in inputs(name, 3, 1))
    graph = netsurgeon.trace(model, x, strict=False, frontend="export")
    outcome = check_widen_or_refuse(model, _plan(graph), x, graph=graph)
    assert not outcome.refused and outcome.max_error <= 1e-5


NO_DROPOUT = {
    "bert": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
    "gpt2": {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
}


@pytest.mark.parametrize("name", sorted(NO_DROPOUT))
def test_train_mode_widening_keeps_the_output(name):
    torch.manual_seed(0)
    model = HEADED[name](**NO_DROPOUT[name]).double().train()
    graph = _trace(model, name)  # traced in train mode: the ops training runs
    outcome = check_widen_or_refuse(model, _plan(graph), inputs(name, 3, 1), graph=graph)
    assert not outcome.refused and outcome.max_error <= 1e-9
    assert model.training


def test_eager_attention_widens_its_heads_exactly():
    torch.manual_seed(0)
    model = MODELS["bert"]().double().eval()
    model.set_attn_implementation("eager")
    graph = _trace(model, "bert")
    heads = [g for g in graph.groups if g.name.endswith("attention.self.query")]
    assert heads and all(g.widenable for g in heads), graph.summary()
    outcome = check_widen_or_refuse(model, _plan(graph), inputs("bert", 3, 1), graph=graph)
    assert not outcome.refused


def _sdpa_by_another_name(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def test_an_attention_kernel_it_does_not_read_blocks_the_heads():
    transformers.AttentionInterface.register("netsurgeon_test", _sdpa_by_another_name)
    torch.manual_seed(0)
    model = MODELS["bert"]().double().eval()
    model.set_attn_implementation("netsurgeon_test")
    graph = _trace(model, "bert")
    group = graph.group_of("encoder.layer.0.attention.self.query")
    assert not group.widenable
    assert "'encoder.layer.0.attention.self' (BertSelfAttention)" in group.reason
    assert "'netsurgeon_test'" in group.reason
    outcome = check_widen_or_refuse(model, {group.name: 8}, inputs("bert", 3, 1), graph=graph)
    assert outcome.refused  # and bit-identical: check_widen_or_refuse asserts it


def test_a_gpt2_attention_with_its_own_forward_is_not_vouched_for():
    """The split size GPT2Attention's forward reads is vouched for from its code: a subclass
    that splits at a literal of its own is not, and its fused projection blocks."""
    from transformers.models.gpt2 import modeling_gpt2

    class FixedSplit(modeling_gpt2.GPT2Attention):
        def forward(self, hidden_states, *args, **kwargs):
            q, k, v = self.c_attn(hidden_states).split(HIDDEN, dim=2)
            shape = (*q.shape[:-1], -1, self.head_dim)
            q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.c_proj(out.transpose(1, 2).reshape(*out.shape[:1], -1, HIDDEN)), None

    torch.manual_seed(0)
    model = MODELS["gpt2"]().double().eval()
    old = model.h[0].attn
    new = FixedSplit(model.config, layer_idx=0).double()
    new.load_state_dict(old.state_dict())
    model.h[0].attn = new
    graph = _trace(model, "gpt2")
    assert not graph.group_of("h.0.attn.c_attn").widenable
    assert "'split' along the channels with fixed sizes" in graph.group_of("h.0.attn.c_attn").reason
    assert graph.group_of("h.1.attn.c_attn").widenable


def test_an_rms_norm_subclass_with_its_own_forward_blocks_the_stream():
    """LlamaRMSNorm is modelled from its own forward: a subclass that computes otherwise (here
    without the mean: a sum of squares) is not, and the stream it reads blocks naming it."""
    from transformers.models.llama import modeling_llama

    class SumNorm(modeling_llama.LlamaRMSNorm):
        def forward(self, x):
            return self.weight * x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + 1e-6)

    torch.manual_seed(0)
    model = HEADED["llama"]().double().eval()
    old = model.model.layers[1].input_layernorm
    new = SumNorm(HIDDEN).double()
    new.load_state_dict(old.state_dict())
    model.model.layers[1].input_layernorm = new
    graph = _trace(model, "llama")
    stream = graph.group_of("model.embed_tokens")
    assert not stream.widenable
    assert "model.layers.1.input_layernorm" in stream.reason
    assert graph.group_of("model.layers.0.mlp.gate_proj").widenable


def test_a_cache_in_the_output_is_refused_with_exports_reason():
    torch.manual_seed(0)
    model = MODELS["gpt2"]().double().eval()
    model.config.use_cache = True
    with pytest.raises(netsurgeon.TraceError, match=r"DynamicCache(.|\n)*use_cache=False"):
        _trace(model, "gpt2")
