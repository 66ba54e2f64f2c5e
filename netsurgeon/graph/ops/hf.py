"""Hugging Face transformers' layers, registered by qualified name (transformers is never imported).

``transformers.pytorch_utils.Conv1D`` (GPT-2's projections) is a ``Linear`` whose weight is
stored transposed: ``(nx, nf)`` = ``(in, out)``, ``y = x @ W + b``. Its rows (output units) are
dim 1 of the weight and its columns (input units) dim 0; ``nf`` is the width the forward reads
(``size_out = x.size()[:-1] + (self.nf,)``), so it grows with the weight.

Example: ``Conv1D(nf=8, nx=4)`` widened by 2 outputs has a ``(4, 10)`` weight, a ``(10,)`` bias
and ``nf == 10``.

The attention modules of BERT, ViT, GPT-2 and Llama are traced through (read op by op) and
registered as head owners (:mod:`.owners`): each handler says, from the module's code, which
attributes hold the head count, head size and widths, vouches for the literal sizes the export
front end records for them (GPT-2's ``split(self.split_size)``, Llama's ``repeat_kv`` merged
count), updates the attributes when the heads grow, and refuses the configurations it does not
model (attention kernels other than eager/sdpa, GPT-2's cross-attention). ``GPT2Model`` owns the
stream width its last ``view`` reads (``hidden_states.size(-1)``, a literal once exported) and
stores in ``embed_dim``. ``LlamaRMSNorm`` is kept whole, an RMSNorm follower (its ``pow``,
``mean``, ``rsqrt`` are never read op by op).
"""

from __future__ import annotations

from torch import nn

from netsurgeon.graph.ops.layer_norm import RMSNormHandler
from netsurgeon.graph.ops.linear import LinearHandler
from netsurgeon.graph.ops.owners import HeadOwnerHandler, TensorWidthOwnerHandler
from netsurgeon.graph.registry import register_module

__all__ = [
    "BertSelfAttentionHandler",
    "Conv1DHandler",
    "GPT2AttentionHandler",
    "GPT2ModelHandler",
    "LlamaAttentionHandler",
    "LlamaRMSNormHandler",
    "ViTAttentionHandler",
]


@register_module("transformers.pytorch_utils.Conv1D")
class Conv1DHandler(LinearHandler):
    """GPT-2's ``Conv1D``: a ``Linear`` with an ``(in, out)`` weight (module docstring)."""

    out_attr = "nf"
    in_attr = "nx"
    row_dim, col_dim = 1, 0

    def fan_in(self, module: nn.Module) -> float:
        return module.nx


# -- attention: head owners --------------------------------------------------------------------
_ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")


class HFAttentionHandler(HeadOwnerHandler):
    """An HF attention module traced through (module docstring): its ``view(*shape, -1, d)`` cut
    and ``reshape(*shape, -1)`` merge follow the heads; the attributes that store the head count
    and width grow with them. Refuses attention implementations other than eager/sdpa (their
    kernels are not ops the analysis reads)."""

    def refusal(self, module: nn.Module) -> str | None:
        found = getattr(getattr(module, "config", None), "_attn_implementation", None)
        if found not in _ATTENTION_IMPLEMENTATIONS:
            return (
                f"attention implementation {found!r} is not one netsurgeon reads "
                f"({', '.join(_ATTENTION_IMPLEMENTATIONS)}); set attn_implementation='sdpa'"
            )
        return None


@register_module("transformers.models.bert.modeling_bert.BertSelfAttention")
class BertSelfAttentionHandler(HFAttentionHandler):
    """BERT's self-attention: ``num_attention_heads`` heads of ``attention_head_size``."""

    count_attr = "num_attention_heads"
    size_attr = "attention_head_size"
    width_attrs = ("all_head_size",)


@register_module("transformers.models.vit.modeling_vit.ViTAttention")
class ViTAttentionHandler(HFAttentionHandler):
    """ViT's attention: ``num_attention_heads`` heads of ``head_dim``."""

    count_attr = "num_attention_heads"


@register_module("transformers.models.gpt2.modeling_gpt2.GPT2Attention")
class GPT2AttentionHandler(HFAttentionHandler):
    """GPT-2's attention: ``c_attn(x).split(self.split_size, dim=2)`` cuts the fused projection
    into ``q, k, v`` of ``split_size`` each (vouched for: ``split_attr``), ``num_heads`` heads of
    ``head_dim``; ``split_size`` grows with the heads. Cross-attention (``q_attn``) and the
    eager ``reorder_and_upcast_attn`` path are refused."""

    count_attr = "num_heads"
    width_attrs = ("split_size",)
    split_attr = "split_size"

    def refusal(self, module: nn.Module) -> str | None:
        if getattr(module, "is_cross_attention", False):
            return "cross-attention (q_attn over another sequence's channels) is not modelled"
        implementation = getattr(module.config, "_attn_implementation", None)
        if getattr(module, "reorder_and_upcast_attn", False) and implementation == "eager":
            return "reorder_and_upcast_attn merges the heads into the batch; set it False"
        return super().refusal(module)


@register_module("transformers.models.llama.modeling_llama.LlamaAttention")
class LlamaAttentionHandler(HFAttentionHandler):
    """Llama's grouped-query attention: ``head_dim`` fixed, the query head count is
    ``q_proj.out_features // head_dim`` (nothing stored to update); ``repeat_kv``'s merged count
    (a literal once exported) is vouched for. ``num_key_value_groups`` stays right because the
    analysis ties the query group to the key/value group at that ratio."""

    count_attr = None

    def count_of(self, module: nn.Module) -> int | None:
        return module.q_proj.out_features // module.head_dim


@register_module("transformers.models.gpt2.modeling_gpt2.GPT2Model")
class GPT2ModelHandler(TensorWidthOwnerHandler):
    """``GPT2Model.forward`` ends with ``hidden_states.view((-1, *input_shape[1:],
    hidden_states.size(-1)))``: the channel size is read off the stream (export records it as a
    literal); ``embed_dim`` stores the stream's width."""

    width_attrs = ("embed_dim",)


# -- RMSNorm kept whole ------------------------------------------------------------------------
@register_module("transformers.models.llama.modeling_llama.LlamaRMSNorm")
class LlamaRMSNormHandler(RMSNormHandler):
    """``weight * (x * rsqrt(mean(x**2, -1) + variance_epsilon))``, computed in float32 and cast
    back: ``nn.RMSNorm`` over the last dim with ``eps`` named ``variance_epsilon`` and no
    ``normalized_shape`` (its width is ``weight``'s). A zero-padded stream keeps it exact up to
    its own float32 rounding; the surgery scales ``variance_epsilon``."""

    eps_attr = "variance_epsilon"

    def width(self, module: nn.Module) -> int:
        return int(module.weight.shape[0])

    def normalized_dims(self, module: nn.Module) -> int:
        return 1

    def follower_attrs(self, module: nn.Module, added: int) -> dict[str, object]:
        return {}
