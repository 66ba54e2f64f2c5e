"""An ``Embedding`` is a producer whose units are dim 1 of its weight, and widens exactly.

``Embedding(V, D)`` maps token ``t`` to ``W[t]``, a ``D``-vector: its output units are the
weight's dim 1 and it reads no channels. Growing it by ``k`` appends ``k`` entries to every
token's vector; the consumer (a ``Linear``) gets ``k`` zero (paper) or split (net2net) input
columns, so its pre-activation is unchanged:

    max |y_after - y_before| <= tol * (1 + max |y_before|),  tol = 1e-5 (float32), 1e-10 (float64)

The new entries are ``N(0, 2)`` under the paper's init (Kaiming with a one-hot input, fan-in 1)
and copies of the source unit's under net2net; the ``padding_idx`` vector stays zero either way.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import netsurgeon
from netsurgeon.errors import UnsupportedModelError

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}
EXAMPLES = max(8, settings().max_examples // 4)


class Bag(nn.Module):
    """Embedding -> Linear -> ReLU -> mean over tokens -> Linear."""

    def __init__(self, vocab: int, dim: int, hidden: int, padding_idx: int | None) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=padding_idx)
        self.fc = nn.Linear(dim, hidden)
        self.drop = nn.Dropout(0.0)
        self.out = nn.Linear(hidden, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(torch.relu(self.fc(self.emb(tokens)))).mean(1))


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    dim=st.integers(1, 8),
    hidden=st.integers(1, 8),
    growth=st.tuples(st.integers(0, 5), st.integers(0, 5)),
    padding=st.booleans(),
    init=st.sampled_from(("paper", "net2net")),
    dtype=st.sampled_from((torch.float32, torch.float64)),
    train=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_widening_an_embedding_and_its_consumer_preserves_the_output(
    dim, hidden, growth, padding, init, dtype, train, seed
) -> None:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Bag(11, dim, hidden, 0 if padding else None).to(dtype).train(train)
    tokens = torch.randint(0, 11, (4, 6), generator=generator)
    before = model(tokens).detach()
    plan = {k: n for k, n in zip(("emb", "fc"), growth, strict=True) if n}
    netsurgeon.widen(model, plan, init=init, generator=generator, example_inputs=tokens)
    after = model(tokens).detach()
    tol = TOLERANCE[dtype] * (1 + before.abs().max().item())
    torch.testing.assert_close(after, before, atol=tol, rtol=0.0)
    assert model.emb.weight.shape == (11, dim + growth[0]) == (11, model.emb.embedding_dim)
    assert model.fc.in_features == dim + growth[0]
    if padding:
        assert torch.count_nonzero(model.emb.weight[0]) == 0


def test_paper_entries_of_a_new_embedding_unit_are_kaiming_with_fan_in_one() -> None:
    model = Bag(400, 4, 5, padding_idx=7)
    tokens = torch.randint(0, 400, (2, 3))
    netsurgeon.widen(model, {"emb": 50}, example_inputs=tokens)
    new = torch.cat([model.emb.weight[:7, 4:], model.emb.weight[8:, 4:]])
    torch.testing.assert_close(new.var().item(), 2.0, rtol=0.05, atol=0.0)
    assert torch.count_nonzero(model.emb.weight[7]) == 0, "the padding vector stays zero"
    assert torch.count_nonzero(model.fc.weight[:, 4:]) == 0, "the consumer's new columns are 0"


def test_widening_an_embedding_grows_its_adam_state_on_dim_1_and_the_new_units_learn() -> None:
    model = Bag(9, 4, 5, padding_idx=None)
    tokens = torch.randint(0, 9, (3, 5))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(tokens).square().mean().backward()
    opt.step()
    weight, state = model.emb.weight, opt.state[model.emb.weight]
    old_avg = state["exp_avg"].clone()
    netsurgeon.widen(model, {"emb": 2}, optimizer=opt, example_inputs=tokens)
    assert model.emb.weight is weight and state["exp_avg"].shape == (9, 6)
    assert torch.equal(state["exp_avg"][:, :4], old_avg)
    assert torch.count_nonzero(state["exp_avg"][:, 4:]) == 0
    opt.zero_grad()
    model(tokens).square().mean().backward()
    assert model.fc.weight.grad[:, 4:].abs().sum() > 0, "the consumer's new columns get gradient"
    opt.step()


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"max_norm": 1.0}, "rescales each looked-up vector by its norm"),
        ({"sparse": True}, "sparse gradients"),
    ],
)
def test_embeddings_whose_widening_cannot_be_exact_are_blocked_with_the_reason(
    kwargs, reason
) -> None:
    model = nn.Sequential(nn.Embedding(5, 4, **kwargs), nn.Linear(4, 3), nn.Linear(3, 2))
    graph = netsurgeon.trace(model, strict=False)
    assert reason in graph.unwidenable_reason("0")
    assert graph.group_of("1").widenable, "the rest of the model is still analysed"
    with pytest.raises(UnsupportedModelError, match=reason):
        netsurgeon.trace(model)
