"""Transformer stacks written the way people write them, for the residual-stream tests.

``Stack(width, depth, norm=...)``: a token embedding (a ``Linear`` over features), a class token
concatenated on the token dim and a position embedding added, ``depth`` blocks, a final norm, a
mean over the tokens and a head. A block is ``x + attn(norm(x))`` then ``x + mlp(norm(x))``
(pre-norm), or ``norm(x + attn(x))`` then ``norm(x + mlp(x))`` (``post=True``); ``attn`` is an
``F.scaled_dot_product_attention`` block (its heads stay blocked) or absent; the MLP is
``Linear -> GELU -> Linear`` or SwiGLU; ``layer_scale=True`` multiplies each branch by a
per-channel parameter (pre-norm only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TOKENS, FEATURES, CLASSES = 4, 5, 3


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, t, -1))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int, swiglu: bool) -> None:
        super().__init__()
        self.swiglu = swiglu
        self.fc1 = nn.Linear(width, hidden)
        self.gate = nn.Linear(width, hidden) if swiglu else None
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            return self.fc2(F.silu(self.gate(x)) * self.fc1(x))
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(
        self, width: int, norm: type, post: bool, attention: bool, swiglu: bool, scale: bool
    ):
        super().__init__()
        self.post = post
        # layer scales (CaiT, DeiT III), away from uniform so the weighting is tested
        self.gamma1 = nn.Parameter(torch.rand(width) + 0.1) if scale else None
        self.gamma2 = nn.Parameter(torch.rand(width) + 0.1) if scale else None
        self.norm1 = norm(width) if attention else None
        self.attn = Attention(width, 2) if attention else None
        self.norm2 = norm(width)
        self.mlp = Mlp(width, 2 * width, swiglu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.post:
            if self.attn is not None:
                x = self.norm1(x + self.attn(x))
            return self.norm2(x + self.mlp(x))
        if self.gamma1 is not None:
            if self.attn is not None:
                x = x + self.gamma1 * self.attn(self.norm1(x))
            return x + self.gamma2 * self.mlp(self.norm2(x))
        if self.attn is not None:
            x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Stack(nn.Module):
    def __init__(
        self,
        width: int = 8,
        depth: int = 2,
        *,
        norm: type = nn.LayerNorm,
        post: bool = False,
        attention: bool = True,
        swiglu: bool = False,
        layer_scale: bool = False,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(FEATURES, width)
        self.cls = nn.Parameter(torch.randn(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, TOKENS + 1, width))
        self.blocks = nn.Sequential(
            *(Block(width, norm, post, attention, swiglu, layer_scale) for _ in range(depth))
        )
        self.norm = norm(width)
        self.head = nn.Linear(width, CLASSES)
        for module in self.modules():  # norms away from their identity init: a real test
            if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                nn.init.normal_(module.weight, 1.0, 0.3)
                if getattr(module, "bias", None) is not None:
                    nn.init.normal_(module.bias, 0.0, 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = self.blocks(x)
        return self.head(self.norm(x).mean(1))


def inputs(batch: int = 3, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, TOKENS, FEATURES, generator=generator, dtype=dtype)
