"""What a widening costs before it happens, and budgets that cap it.

- :func:`preview` stages ``netsurgeon.widen`` on a meta copy of the model and reports widths,
  parameters and forward FLOPs before and after, per layer and in total (:class:`CostPreview`).
- :class:`Baseline` holds a model's costs at its current widths and prices any number of plans
  against them, with one graph and no further trace.
- :func:`fit_to_budget` scales a plan down, deterministically, until it fits a :class:`Budget`
  (``max_params``, ``max_flops``, per-layer ``max_width``).
"""

from __future__ import annotations

from netsurgeon.cost.baseline import Baseline, count_flops
from netsurgeon.cost.budget import Budget, FittedPlan, fit, fit_to_budget, width_caps
from netsurgeon.cost.meta import meta_graph, meta_inputs, meta_model, meta_optimizer
from netsurgeon.cost.previewing import preview
from netsurgeon.cost.records import CostPreview, LayerCost

__all__ = [
    "Baseline",
    "Budget",
    "CostPreview",
    "FittedPlan",
    "LayerCost",
    "count_flops",
    "fit",
    "fit_to_budget",
    "meta_graph",
    "meta_inputs",
    "meta_model",
    "meta_optimizer",
    "preview",
    "width_caps",
]
