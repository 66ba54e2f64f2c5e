"""After a widening, the optimizer moves the old coordinates as it moves a never-widened twin's.

On a LLaMA-style decoder (RMSNorm stream, grouped-query heads, SwiGLU MLPs), every widening is
*function-preserving in the old coordinates*: the new stream channels are zero whatever the old
weights are (zero-padding), and new heads and MLP units reach the output through zero columns.
So the loss, as a function of the old coordinates with the new ones at their initial values,
is the twin's loss, with one change of variable: each stream norm's weight is
``w' = sqrt(s) w`` (``s = C / (C + k)``), so its gradient is ``g / sqrt(s)``.

Hence one step on the same batch gives, coordinate for coordinate (``U`` the twin's update):

* every coordinate that is not a stream norm weight: the twin's update, exactly as the twin;
* a stream norm weight under AdamW (its moments were rescaled with its gradient, and Adam's
  step is invariant to that scale): ``w'_after = w'(1 - lr wd) + U``, the twin's update itself;
* under SGD with momentum (the buffer rescaled): ``w'_after = w' + U / sqrt(s)``.

Under mean-padding (LayerNorm streams) this does not hold and is not claimed: a new channel is
the mean of the old ones only at the widening, so moving an old producer row moves the
LayerNorm's statistics differently than in the twin (docs/widen.md).
"""

from __future__ import annotations

import copy
import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformer_models import Llama

import netsurgeon

VOCAB, T = 20, 6


def _step(model, optimizer, ids, targets) -> None:
    optimizer.zero_grad()
    logits = model(ids)
    torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1)).backward()
    optimizer.step()


@settings(max_examples=12, deadline=None)
@given(
    kv_heads=st.integers(1, 2),
    groups=st.integers(1, 2),
    head_dim=st.sampled_from([2, 4]),
    dim=st.integers(6, 12),
    hidden=st.integers(4, 10),
    draws=st.lists(st.integers(0, 2), min_size=8, max_size=8),
    adamw=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_old_coordinates_step_like_a_never_widened_twins(
    kv_heads, groups, head_dim, dim, hidden, draws, adamw, seed
) -> None:
    torch.manual_seed(seed)
    model = Llama(VOCAB, dim, kv_heads * groups, kv_heads, head_dim, hidden, layers=2).double()
    for name, p in model.named_parameters():  # norm weights away from 1: a real rescaling
        if "norm" in name:
            torch.nn.init.normal_(p, 1.0, 0.3)
    if adamw:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, eps=1e-30)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    batches = [
        (
            torch.randint(0, VOCAB, (3, T), generator=gen),
            torch.randint(0, VOCAB, (3, T), generator=gen),
        )
        for _ in range(3)
    ]
    for ids, targets in batches[:2]:
        _step(model, optimizer, ids, targets)
    twin, twin_optimizer = copy.deepcopy((model, optimizer))

    graph = netsurgeon.trace(model, (batches[0][0],))
    plan = {}
    for draw, group in zip(draws, (g for g in graph.groups if g.widenable), strict=False):
        if draw:
            plan[group.name] = draw * group.granularity
    stream = graph.group_of("embed_tokens")
    k_stream = plan.get(stream.name, 0)
    root = math.sqrt(dim / (dim + k_stream))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    netsurgeon.widen(model, plan, optimizer=optimizer, graph=graph)

    _step(model, optimizer, *batches[2])
    _step(twin, twin_optimizer, *batches[2])
    decay = 1 - 1e-2 * 0.1 if adamw else 1.0
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        old = tuple(slice(0, n) for n in q.shape)
        update = q.detach() - before[name] * decay  # the twin's step (old w = twin's w here)
        if "norm" in name and k_stream:
            widened_before = before[name] * root
            expected = widened_before * decay + (update if adamw else update / root)
        else:
            expected = q.detach()  # the twin's coordinates themselves
        scale = float(update.abs().max()) + 1e-300
        torch.testing.assert_close(
            p.detach()[old], expected, rtol=0, atol=1e-8 * scale + 1e-13, msg=name
        )
