"""Two reference decoders written the way people write them (with ``-1`` for the head count).

* :class:`GPT2`: LayerNorm, a fused ``qkv`` Linear cut by ``split``/``chunk`` or by a fused
  ``(B, T, 3, -1, d)`` reshape, causal ``F.scaled_dot_product_attention`` (or the explicit
  ``q @ k^T``, mask, softmax, ``@ v``), a 4x GELU MLP.
* :class:`Llama`: ``nn.RMSNorm``, separate ``q/k/v`` projections, RoPE on ``q`` and ``k``
  (rotate-half), grouped-query attention (``repeat_interleave``, ``enable_gqa=True`` or Hugging
  Face's ``repeat_kv``), SwiGLU.

Their head groups and MLP hidden groups are what netsurgeon widens exactly; the residual stream
goes through the norms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GPT2Attention(nn.Module):
    def __init__(self, dim: int, head_dim: int, *, fused_view: bool = False, sdpa: bool = True):
        super().__init__()
        self.head_dim, self.fused_view, self.sdpa = head_dim, fused_view, sdpa
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)
        self.register_buffer("bias", torch.tril(torch.ones(64, 64)).view(1, 1, 64, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        if self.fused_view:
            qkv = self.c_attn(x).view(B, T, 3, -1, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
        else:
            q, k, v = self.c_attn(x).chunk(3, dim=2)
            q = q.view(B, T, -1, self.head_dim).transpose(1, 2)
            k = k.view(B, T, -1, self.head_dim).transpose(1, 2)
            v = v.view(B, T, -1, self.head_dim).transpose(1, 2)
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / k.size(-1) ** 0.5)
            att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
            y = F.softmax(att, dim=-1) @ v
        y = y.transpose(1, 2).reshape(B, T, -1)
        return self.c_proj(y)


class GPT2Block(nn.Module):
    def __init__(self, dim: int, head_dim: int, **attention):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = GPT2Attention(dim, head_dim, **attention)
        self.ln_2 = nn.LayerNorm(dim)
        self.c_fc = nn.Linear(dim, 4 * dim)
        self.c_proj = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x))))


class GPT2(nn.Module):
    """``GPT2(vocab, dim, head_dim, layers)``; input ``(B, T)`` token ids, output logits."""

    def __init__(self, vocab=50, dim=32, head_dim=8, layers=2, block_size=16, **attention):
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.wpe = nn.Embedding(block_size, dim)
        self.h = nn.ModuleList(GPT2Block(dim, head_dim, **attention) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Hugging Face's: ``(B, H_kv, T, d) -> (B, H_kv * n_rep, T, d)``."""
    batch, num_key_value_heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(
        batch, num_key_value_heads, n_rep, slen, head_dim
    )
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)


class LlamaAttention(nn.Module):
    """``gqa``: ``"repeat_interleave"``, ``"enable_gqa"`` (SDPA's) or ``"repeat_kv"`` (HF's)."""

    def __init__(
        self, dim: int, heads: int, kv_heads: int, head_dim: int, *, gqa="repeat_interleave"
    ):
        super().__init__()
        self.head_dim, self.groups, self.gqa = head_dim, heads // kv_heads, gqa
        self.q_proj = nn.Linear(dim, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.gqa == "enable_gqa":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            if self.gqa == "repeat_kv":
                k, v = repeat_kv(k, self.groups), repeat_kv(v, self.groups)
            else:
                k = k.repeat_interleave(self.groups, dim=1)
                v = v.repeat_interleave(self.groups, dim=1)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class LlamaMLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaBlock(nn.Module):
    def __init__(self, dim, heads, kv_heads, head_dim, hidden, **attention):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(dim)
        self.self_attn = LlamaAttention(dim, heads, kv_heads, head_dim, **attention)
        self.post_attention_layernorm = nn.RMSNorm(dim)
        self.mlp = LlamaMLP(dim, hidden)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    """``Llama(vocab, dim, heads, kv_heads, head_dim, hidden, layers)``; ``(B, T)`` ids -> logits."""

    def __init__(
        self, vocab=50, dim=32, heads=4, kv_heads=2, head_dim=8, hidden=48, layers=2, **attention
    ):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(
            LlamaBlock(dim, heads, kv_heads, head_dim, hidden, **attention) for _ in range(layers)
        )
        self.norm = nn.RMSNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.size(1), device=idx.device, dtype=self.inv_freq.dtype)
        freqs = torch.outer(pos, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        x = self.embed_tokens(idx)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.norm(x))
