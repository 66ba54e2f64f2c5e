"""A grown checkpoint loads into a fresh model whatever the layer's weight layout.

The loader reads each layer's width off the checkpoint through the layer's handler (the dim of the
tensor that holds its output units: dim 1 for ``ConvTranspose`` and ``Embedding``), widens the
fresh model to it and loads the values, so the reloaded model computes what the grown one does.
"""

from __future__ import annotations

import torch
from torch import nn

import netsurgeon


class Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(6, 4, 2, stride=2)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.up(torch.relu(self.enc(x)))))


def test_a_widened_transposed_convolution_checkpoint_loads_into_a_fresh_model() -> None:
    torch.manual_seed(0)
    grown = netsurgeon.widen(Decoder(), {"enc": 3, "up": 5})
    fresh = netsurgeon.load_state_dict(Decoder(), grown.state_dict())
    assert fresh.up.weight.shape == (9, 9, 2, 2)
    assert (fresh.up.in_channels, fresh.up.out_channels) == (9, 9)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(fresh(x), grown(x), atol=0.0, rtol=0.0)


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(12, 5, padding_idx=0)
        self.fc = nn.Linear(5, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc(self.emb(tokens))))


def test_a_widened_embedding_checkpoint_loads_into_a_fresh_model() -> None:
    torch.manual_seed(0)
    tokens = torch.randint(0, 12, (2, 7))
    grown = netsurgeon.widen(Tagger(), {"emb": 3, "fc": 2}, init="net2net")
    fresh = netsurgeon.load_state_dict(Tagger(), grown.state_dict())
    assert fresh.emb.weight.shape == (12, 8) and fresh.emb.embedding_dim == 8
    torch.testing.assert_close(fresh(tokens), grown(tokens), atol=0.0, rtol=0.0)


def test_a_widened_weight_normalised_checkpoint_loads_into_a_fresh_model() -> None:
    """Both spellings: the width is read off ``v`` (``original1`` / ``weight_v``) on dim 0."""
    import warnings

    from torch.nn.utils import parametrizations
    from torch.nn.utils import weight_norm as legacy

    for spelling in (parametrizations.weight_norm, legacy):

        def make(spelling=spelling) -> nn.Sequential:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                return nn.Sequential(
                    spelling(nn.Conv2d(3, 4, 3)), nn.ReLU(), spelling(nn.Conv2d(4, 2, 1))
                )

        torch.manual_seed(0)
        grown = netsurgeon.widen(make(), {"0": 3}, init="net2net")
        fresh = netsurgeon.load_state_dict(make(), grown.state_dict())
        x = torch.randn(2, 3, 6, 6)
        torch.testing.assert_close(fresh(x), grown(x), atol=0.0, rtol=0.0)
        assert fresh[0].out_channels == 7 and fresh[2].in_channels == 7
