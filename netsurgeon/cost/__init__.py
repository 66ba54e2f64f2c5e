"""What a widening costs before it happens, and budgets that cap it.

- :func:`preview` stages ``netsurgeon.widen`` on a meta copy of the model and reports widths,
  parameters and forward FLOPs before and after, per layer and in total (:class:`CostPreview`).
- :func:`fit_to_budget` scales a plan down, deterministically, until it fits a :class:`Budget`
  (``max_params``, ``max_flops``, per-layer ``max_width``).
"""

from __future__ import annotations

from netsurgeon.cost.budget import Budget, FittedPlan, fit_to_budget
from netsurgeon.cost.meta import meta_inputs, meta_model, meta_optimizer
from netsurgeon.cost.previewing import CostPreview, LayerCost, count_flops, preview

__all__ = [
    "Budget",
    "CostPreview",
    "FittedPlan",
    "LayerCost",
    "count_flops",
    "fit_to_budget",
    "meta_inputs",
    "meta_model",
    "meta_optimizer",
    "preview",
]
