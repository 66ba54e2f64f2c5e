"""Budgets: cap what a widening may add, and scale a plan down to fit, deterministically.

Three caps, each optional (:class:`Budget`):

* ``max_width``: a layer's width after growth (one int for every layer, or ``{layer: width}``);
  applied first, layer by layer: ``k_l <- min(k_l, max(0, cap_l - n_l))``.
* ``max_params``: the model's parameter count after growth;
* ``max_flops``: the model's forward FLOPs on the example inputs after growth.

If the (width-capped) plan ``k`` exceeds ``max_params`` or ``max_flops``, it is scaled by the
largest ``t`` in ``0..T`` (``T = max_l k_l``) for which ``k_l(t) = floor(k_l * t / T)`` fits.
Each ``k_l(t)`` is non-decreasing in ``t`` and parameters and FLOPs only grow with a plan, so a
bisection over ``t`` finds it with ``log2(T) + 1`` previews; the result keeps the plan's
proportions (where to grow) and cuts how much. Every count comes from
:func:`~netsurgeon.cost.previewing.preview`, i.e. from the real ``widen`` staged on a meta copy.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from netsurgeon.cost.previewing import CostPreview, preview
from netsurgeon.errors import ConfigError, NetsurgeonTypeError

__all__ = ["Budget", "FittedPlan", "fit_to_budget"]


@dataclass(frozen=True)
class Budget:
    """Caps on a model after growth; ``None`` leaves a cap off.

    Every cap is checked at construction: a positive int or ``None`` (``max_width`` also a
    mapping of layer names to positive ints); anything else raises
    :class:`~netsurgeon.errors.ConfigError` (a value below 1) or
    :class:`~netsurgeon.errors.NetsurgeonTypeError` (another type), naming the field.

    Attributes:
        max_params: most parameters the model may have.
        max_flops: most forward FLOPs on the example inputs.
        max_width: most units per layer: one int for every layer, or ``{layer name: width}``.
    """

    max_params: int | None = None
    max_flops: int | None = None
    max_width: int | Mapping[str, int] | None = None

    def __post_init__(self) -> None:
        for name in ("max_params", "max_flops"):
            _check_cap(f"Budget.{name}", getattr(self, name))
        if isinstance(self.max_width, Mapping):
            for layer, cap in self.max_width.items():
                if not isinstance(layer, str):
                    raise NetsurgeonTypeError(
                        f"Budget.max_width has the key {layer!r} ({type(layer).__name__}); "
                        "expected layer names (str) mapped to positive ints"
                    )
                _check_cap(f"Budget.max_width[{layer!r}]", cap)
            object.__setattr__(self, "max_width", dict(self.max_width))  # a private copy
        else:
            _check_cap("Budget.max_width", self.max_width, mapping=True)

    @property
    def active(self) -> bool:
        """Whether any cap is set."""
        return any(v is not None for v in (self.max_params, self.max_flops, self.max_width))

    def width_cap(self, layer: str) -> int | None:
        """The width cap of ``layer``, or ``None``."""
        if isinstance(self.max_width, Mapping):
            return self.max_width.get(layer)
        return self.max_width

    def exceeded_by(self, cost: CostPreview) -> tuple[str, ...]:
        """The caps (``"max_params"``, ``"max_flops"``) that ``cost.*_after`` exceeds."""
        out = []
        if self.max_params is not None and cost.params_after > self.max_params:
            out.append("max_params")
        if (
            self.max_flops is not None
            and cost.flops_after is not None
            and cost.flops_after > self.max_flops
        ):
            out.append("max_flops")
        return tuple(out)


@dataclass(frozen=True)
class FittedPlan:
    """A plan after the caps of a :class:`Budget`.

    Attributes:
        requested: the plan asked for.
        increments: what fits (layers cut to 0 are dropped); ready for ``widen``.
        limited_by: the caps that cut the plan, in the order ``max_width``, ``max_params``,
            ``max_flops``; empty when it fitted as asked.
        scale: the factor ``t / T`` applied after the width caps (1.0 when none was needed).
        cost: the :class:`CostPreview` of ``increments``.
    """

    requested: dict[str, int]
    increments: dict[str, int]
    limited_by: tuple[str, ...]
    scale: float
    cost: CostPreview

    def __str__(self) -> str:
        """The plan, what bound it, and its cost table, e.g.::

        FittedPlan {'0': 3} (asked {'0': 8}; bound by max_params, scale 0.375)
          params 58 -> 79, FLOPs not counted
        CostPreview(plan={'0': 3}, inputs=None)
        ...
        """
        if self.limited_by:
            bound = f"asked {self.requested}; bound by {', '.join(self.limited_by)}"
            bound += f", scale {self.scale:.4g}" if self.scale != 1.0 else ""
        else:
            bound = "as asked, no cap bound"
        cost = self.cost
        flops = (
            "FLOPs not counted (no example inputs)"
            if cost.flops_before is None or cost.flops_after is None
            else f"FLOPs {cost.flops_before:,} -> {cost.flops_after:,}"
        )
        return (
            f"FittedPlan {self.increments or '{} (nothing fits)'} ({bound})\n"
            f"  params {cost.params_before:,} -> {cost.params_after:,}, {flops}\n{cost}"
        )


def fit_to_budget(
    model: nn.Module,
    plan: Mapping[str, int],
    budget: Budget,
    example_inputs: Any = None,
    *,
    init: str = "paper",
    granularity: Mapping[str, int] | None = None,
) -> FittedPlan:
    """Scale ``plan`` down until ``model`` widened by it stays within ``budget``; changes nothing.

    Args:
        model: the model the plan is for (not modified).
        plan: ``{layer: units to add}``.
        budget: the caps.
        example_inputs: needed when ``budget.max_flops`` is set (FLOPs are counted on them).
        init: passed to the previews (``widen`` checks it).
        granularity: ``{plan key: g}``: every capped or scaled ``k`` is rounded down to a
            multiple of ``g`` (a channel group's granularity; ``widen`` requires it). Keys not
            in it have granularity 1.

    Returns:
        A :class:`FittedPlan`; its ``increments`` may be empty when nothing fits.

    Raises:
        ValueError: ``max_flops`` without ``example_inputs``.
        WidenError, TypeError, ValueError: ``widen`` would refuse the plan (the same error).

    Example:
        >>> import torch, torch.nn as nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> fitted = fit_to_budget(net, {"0": 8}, Budget(max_params=80))
        >>> fitted.increments, fitted.limited_by, fitted.cost.params_after
        ({'0': 3}, ('max_params',), 79)
    """
    if budget.max_flops is not None and example_inputs is None:
        raise ValueError(
            f"budget.max_flops={budget.max_flops} needs example_inputs to count FLOPs on; pass "
            "one input batch (its FLOPs are what max_flops caps)."
        )

    steps_of = dict(granularity or {})

    def down(name: str, k: int) -> int:
        g = max(1, int(steps_of.get(name, 1)))
        return k // g * g

    def cost_of(increments: Mapping[str, int]) -> CostPreview:
        return preview(model, increments, example_inputs, init=init)

    asked = cost_of(plan)  # refuses exactly what widen refuses, before any arithmetic on it
    requested, widths = asked.plan, asked.widths_before
    capped = dict(requested)
    limited: list[str] = []
    for name, k in requested.items():
        cap = budget.width_cap(name)
        if cap is not None and name in widths and widths[name] + k > cap:
            capped[name] = down(name, max(0, cap - widths[name]))
            if "max_width" not in limited:
                limited.append("max_width")
    capped = {name: k for name, k in capped.items() if k > 0}
    full = asked if capped == requested else cost_of(capped)
    over = budget.exceeded_by(full)
    if not over:
        return FittedPlan(requested, capped, tuple(limited), 1.0, full)
    limited.extend(over)
    steps = max(capped.values(), default=0)
    best_t, best = 0, None
    low, high = 0, steps - 1  # t = steps is the full plan, known not to fit
    while low <= high:
        t = (low + high) // 2
        cost = cost_of(_scaled(capped, t, steps, down))
        if budget.exceeded_by(cost):
            high = t - 1
        else:
            best_t, best, low = t, cost, t + 1
    if best is None:  # not even t = 0 fits: the model is already over budget
        best = cost_of({})
    increments = _scaled(capped, best_t, steps, down)
    return FittedPlan(requested, increments, tuple(limited), best_t / steps if steps else 0.0, best)


def _check_cap(field: str, value: object, *, mapping: bool = False) -> None:
    """Raise unless ``value`` is ``None`` or a positive int (not a bool).

    Raises:
        NetsurgeonTypeError: not an int (a float, a bool, a string).
        ConfigError: an int below 1.
    """
    if value is None:
        return
    allowed = "a positive int" + (", {layer name: positive int}" if mapping else "") + " or None"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        hint = f" (write {int(value)})" if isinstance(value, float) and value.is_integer() else ""
        raise NetsurgeonTypeError(f"{field}={value!r}: expected {allowed}{hint}")
    if value < 1:
        raise ConfigError(
            f"{field}={value!r}: expected {allowed}; a cap is the most the model may have "
            "after growth (leave it None for no cap)"
        )


def _scaled(
    plan: Mapping[str, int],
    t: int,
    steps: int,
    down: Callable[[str, int], int] = lambda name, k: k,
) -> dict[str, int]:
    """``{l: floor(k_l * t / steps)}``, rounded down by ``down`` (to a granularity), no zeros."""
    scaled = {name: down(name, k * t // steps) for name, k in plan.items()} if steps else {}
    return {name: k for name, k in scaled.items() if k > 0}
