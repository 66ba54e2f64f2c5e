"""MLP-Mixer stacks written the way people write them, for the token-MLP tests.

``Mixer(tokens, width, token_hidden, channel_hidden, depth, norm=...)``: a patch embedding (a
``Linear`` over each token's features), ``depth`` blocks of

    x = x + token_mlp(norm1(x).transpose(1, 2)).transpose(1, 2)   # mixes the tokens, per channel
    x = x + channel_mlp(norm2(x))                                 # mixes the channels, per token

then a final norm, a mean over the tokens and a head. ``norm`` is ``nn.LayerNorm``,
``nn.RMSNorm`` or ``None`` (no norm: the stream appends); ``layer_scale=True`` multiplies the
token branch by a per-channel parameter after the transpose back (ResMLP's ``ls1``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FEATURES, CLASSES = 5, 3


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class MixerBlock(nn.Module):
    def __init__(
        self, tokens: int, width: int, token_hidden: int, channel_hidden: int, norm, scale: bool
    ) -> None:
        super().__init__()
        self.norm1 = norm(width) if norm is not None else nn.Identity()
        self.token = Mlp(tokens, token_hidden)
        self.norm2 = norm(width) if norm is not None else nn.Identity()
        self.channel = Mlp(width, channel_hidden)
        # away from uniform, so a wrong follower would show
        self.gamma = nn.Parameter(torch.rand(width) + 0.5) if scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = self.token(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        x = x + (mixed if self.gamma is None else self.gamma * mixed)
        return x + self.channel(self.norm2(x))


class Mixer(nn.Module):
    def __init__(
        self,
        tokens: int = 4,
        width: int = 6,
        token_hidden: int = 5,
        channel_hidden: int = 7,
        depth: int = 2,
        norm: type | None = nn.LayerNorm,
        layer_scale: bool = False,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(FEATURES, width)
        self.blocks = nn.Sequential(
            *(
                MixerBlock(tokens, width, token_hidden, channel_hidden, norm, layer_scale)
                for _ in range(depth)
            )
        )
        self.norm = norm(width) if norm is not None else nn.Identity()
        self.head = nn.Linear(width, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.embed(x))).mean(1))


def inputs(tokens: int = 4, *, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    """A batch of 3 sequences of ``tokens`` tokens with ``FEATURES`` features."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(3, tokens, FEATURES, generator=generator, dtype=dtype)
