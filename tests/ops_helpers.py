"""Shared checks for the op tests: widen every widenable group and compare outputs.

Widening adds channels whose consumer columns are zero (``"paper"``) or split copies
(``"net2net"``); every op between producers and consumers must keep the old channels where the
consumers read them. So for any op the analysis accepts, the widened model computes the same
outputs:

    max |y_after - y_before| <= 1e-9 * (1 + max |y_before|)    (float64)
    max |y_after - y_before| <= 1e-5 * (1 + max |y_before|)    (float32)
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import netsurgeon

TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-5}


def randomise_(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so followers matter."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model


def widen_all_and_compare(
    make: Callable[[], nn.Module],
    inputs: Any,
    *,
    dtype: torch.dtype = torch.float64,
    shapes: bool = True,
    init: str = "paper",
    multiple: int = 2,
    train: bool = False,
) -> tuple[list[str], nn.Module]:
    """Widen every widenable group by ``multiple * granularity``; assert the outputs are kept.

    ``train``: compare in train mode (BatchNorm on batch statistics, which are per channel).

    Returns the widened group names and the widened model.
    """
    model = randomise_(make()).to(dtype).eval()
    inputs = tuple(x.to(dtype) if x.is_floating_point() else x for x in _as_tuple(inputs))
    graph = netsurgeon.trace(model, inputs if shapes else None, strict=True)
    plan = {g.name: multiple * g.granularity for g in graph.groups if g.widenable}
    model.train(train)
    before = model(*inputs)
    reference = copy.deepcopy(model)
    netsurgeon.widen(
        model, plan, example_inputs=inputs if shapes else None, init=init,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    after = model(*inputs)
    scale = 1 + before.abs().max().item()
    torch.testing.assert_close(after, before, atol=TOLERANCE[dtype] * scale, rtol=0)
    widened = [
        name
        for name, p in model.named_parameters()
        if p.shape != dict(reference.named_parameters())[name].shape
    ]
    assert not plan or widened, "a widenable group was planned but nothing grew"
    return sorted(plan), model


def _as_tuple(inputs: Any) -> tuple[Any, ...]:
    return inputs if isinstance(inputs, tuple) else (inputs,)
