"""``preview``: what a widening will cost, before anything changes.

The preview stages the real ``netsurgeon.widen`` on a shape-only copy of the model and counts
widths, parameters and forward FLOPs before and after (:class:`~netsurgeon.cost.Baseline` says
how). Given the model's graph (``graph=``, e.g. the one a growth plans and widens with), it traces
nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from netsurgeon.cost.baseline import Baseline, count_flops
from netsurgeon.cost.records import CostPreview, LayerCost
from netsurgeon.graph import LayerGraph
from netsurgeon.surgery import InitStrategy

__all__ = ["CostPreview", "LayerCost", "count_flops", "preview"]


def preview(
    model: nn.Module,
    plan: Mapping[str, int],
    example_inputs: Any = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    init: str | InitStrategy = "paper",
    graph: LayerGraph | None = None,
) -> CostPreview:
    """Widths, parameters and forward FLOPs before and after ``widen(model, plan)``; changes nothing.

    Args:
        model: the user's model (not modified; no RNG is consumed).
        plan: ``{layer name: units to add}``, as for ``netsurgeon.widen``.
        example_inputs: a tensor or tuple of forward arguments (any device; only shapes and
            dtypes are used) for the FLOP count; ``None`` skips FLOPs.
        optimizer: checked as ``widen(..., optimizer=)`` would check it (e.g. factored state).
        init: checked as ``widen(..., init=)`` would check it.
        graph: ``netsurgeon.trace(model)`` at the current widths, as for ``widen(..., graph=)``:
            the preview then traces nothing. ``None`` traces the model once, with the shapes of
            ``example_inputs`` when given (read on a meta copy, as ``widen(...,
            example_inputs=)`` reads them: a ViT's stream needs them).

    Returns:
        A :class:`CostPreview`; ``print`` it for a table.

    Raises:
        WidenError, TypeError, ValueError: exactly what ``widen(model, plan, optimizer=,
            init=, graph=)`` would raise; the model is untouched either way.
        RuntimeError: the forward pass on meta tensors failed (data-dependent control flow);
            pass ``example_inputs=None`` to preview without FLOPs.

    Example:
        >>> import torch, torch.nn as nn, netsurgeon
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> cost = netsurgeon.preview(net, {"0": 4}, torch.randn(1, 4))
        >>> cost.params_before, cost.params_after, cost.flops_before, cost.flops_after
        (58, 86, 96, 144)
        >>> net[0].out_features   # unchanged
        8
    """
    basis = Baseline(model, example_inputs, graph=graph, optimizer=optimizer, init=init)
    return basis.cost(plan)
