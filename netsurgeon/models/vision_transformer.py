"""A small pre-LN Vision Transformer for 32x32 images, written the way people write one.

Patches of ``patch x patch`` pixels are embedded by a strided conv, a learned position embedding
is added, ``depth`` pre-LN blocks follow (multi-head self-attention through
``F.scaled_dot_product_attention``, then a two-layer GELU MLP, each added to the residual stream),
and a final LayerNorm, a mean over the tokens and a Linear classify. ``vit(((64, 64, 128),) * 4)``
is a 4-block ViT with a 64-wide stream, 4 heads of 16 and an MLP of 128 (0.14M parameters at 10
classes).

Every width is a channel group netsurgeon can grow:

* the **stream** (``embed.proj``, every ``attn.proj`` and ``mlp.fc2``, the position embedding, and
  every LayerNorm reading it);
* each block's **heads** (``blocks.{i}.attn.qkv``): the attention reshapes its channels to
  ``(-1, head_dim)``, so a width is ``heads * head_dim`` and grows by whole heads;
* each block's **MLP hidden** (``blocks.{i}.mlp.fc1``).

Shapes: ``(N, in_channels, S, S) -> (N, num_classes)``; tokens are ``(N, T, C)`` with
``T = (S / patch) ** 2``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MLP", "Attention", "Block", "PatchEmbed", "ViT", "vit", "vit_widths_of"]


class PatchEmbed(nn.Module):
    """``(N, in, S, S) -> (N, T, dim)``: a conv with kernel and stride ``patch``, then tokens."""

    def __init__(self, in_channels: int, dim: int, patch: int, **factory: Any) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch, patch, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention over ``(N, T, dim)``: fused qkv, heads of ``head_dim``.

    The head count is never stored: ``view(N, T, -1, head_dim)`` derives it from the width of
    ``qkv``, so growing ``qkv`` by whole heads needs no attribute update.
    """

    def __init__(self, dim: int, width: int, head_dim: int, **factory: Any) -> None:
        super().__init__()
        if width % head_dim:
            raise ValueError(f"attention width {width} is not a multiple of head_dim {head_dim}")
        self.head_dim = head_dim
        self.qkv = nn.Linear(dim, 3 * width, **factory)
        self.proj = nn.Linear(width, dim, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        qkv = self.qkv(x).chunk(3, dim=-1)  # (N, T, width) each
        q, k, v = (qkv[i].view(n, t, -1, self.head_dim).transpose(1, 2) for i in range(3))
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, T, head_dim)
        return self.proj(out.transpose(1, 2).reshape(n, t, -1))


class MLP(nn.Module):
    """``fc2(gelu(fc1(x)))``: ``(N, T, dim) -> (N, T, dim)`` through ``hidden`` features."""

    def __init__(self, dim: int, hidden: int, **factory: Any) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, **factory)
        self.fc2 = nn.Linear(hidden, dim, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, width: int, hidden: int, head_dim: int, **factory: Any) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, **factory)
        self.attn = Attention(dim, width, head_dim, **factory)
        self.norm2 = nn.LayerNorm(dim, **factory)
        self.mlp = MLP(dim, hidden, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """A pre-LN ViT; build it with :func:`vit`.

    Attributes:
        embed: the patch embedding; ``pos``: the position embedding ``(1, T, dim)``.
        blocks: ``ModuleList`` of :class:`Block`.
        norm, head: the final LayerNorm and the classifier.
    """

    def __init__(
        self,
        embed: PatchEmbed,
        pos: nn.Parameter,
        blocks: nn.ModuleList,
        norm: nn.LayerNorm,
        head: nn.Linear,
    ) -> None:
        super().__init__()
        self.embed, self.pos, self.blocks, self.norm, self.head = embed, pos, blocks, norm, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))


def vit(
    widths: Sequence[Sequence[int]],
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    *,
    patch: int = 4,
    head_dim: int = 16,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> ViT:
    """A ViT with one block per row ``(stream, attention width, MLP hidden)`` of ``widths``.

    Every row names the same stream width (one residual stream runs through all blocks); the
    attention width is ``heads * head_dim``.

    Example:
        >>> model = vit([(32, 32, 64)] * 2, num_classes=10)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    rows = [tuple(int(w) for w in row) for row in widths]
    if not rows or any(len(row) != 3 for row in rows):
        raise ValueError(
            f"vit widths must be rows (stream, attention width, MLP hidden), one per block; "
            f"got {widths!r}"
        )
    if len({row[0] for row in rows}) != 1:
        raise ValueError(f"every block of one ViT shares its stream width; got {widths!r}")
    if image_size % patch:
        raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch}")
    dim, factory = rows[0][0], {"device": device, "dtype": dtype}
    tokens = (image_size // patch) ** 2
    pos = nn.Parameter(torch.empty(1, tokens, dim, **factory))
    nn.init.trunc_normal_(pos, std=0.02)
    blocks = nn.ModuleList(Block(dim, w, h, head_dim, **factory) for _, w, h in rows)
    return ViT(
        PatchEmbed(in_channels, dim, patch, **factory),
        pos,
        blocks,
        nn.LayerNorm(dim, **factory),
        nn.Linear(dim, num_classes, **factory),
    )


def vit_widths_of(model: ViT) -> tuple[tuple[int, int, int], ...]:
    """The ``(stream, attention width, MLP hidden)`` row of every block, read off the modules."""
    return tuple(
        (
            block.attn.qkv.in_features,
            block.attn.proj.in_features,
            block.mlp.fc1.out_features,
        )
        for block in model.blocks
    )
