"""Budgets: cap what a widening may add, and scale a plan down to fit, deterministically.

Three caps, each optional (:class:`Budget`):

* ``max_width``: a layer's width after growth (one int for every layer, or ``{layer: width}``);
  resolved to channel groups (a cap on any producer of a group caps the group, whose producers
  share one width; two different caps for one group are an error), and applied first, group by
  group: ``k_l <- min(k_l, max(0, cap_l - n_l))``.
* ``max_params``: the model's parameter count after growth;
* ``max_flops``: the model's forward FLOPs on the example inputs after growth.

If the (width-capped) plan ``k`` exceeds ``max_params`` or ``max_flops``, it is scaled by the
largest ``t`` in ``0..T`` (``T = max_l k_l``) for which ``k_l(t) = floor(k_l * t / T)`` fits.
Each ``k_l(t)`` is non-decreasing in ``t`` and parameters and FLOPs only grow with a plan, so a
bisection over ``t`` finds it with ``log2(T) + 1`` previews; the result keeps the plan's
proportions (where to grow) and cuts how much. Every count comes from one
:class:`~netsurgeon.cost.Baseline`, i.e. from the real ``widen`` staged on a meta copy with the
model's graph: the model is traced at most once per fit (not at all with ``graph=``).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from netsurgeon.cost.baseline import Baseline
from netsurgeon.cost.records import CostPreview
from netsurgeon.errors import ConfigError, NetsurgeonError, NetsurgeonTypeError
from netsurgeon.graph import LayerGraph

__all__ = ["Budget", "FittedPlan", "fit", "fit_to_budget", "width_caps"]


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

    def exhausted(self, fitted: FittedPlan, graph: LayerGraph, groups: Sequence[str]) -> bool:
        """Whether no later plan over ``groups`` can fit, after ``fitted`` found no room: a
        global cap bound (``max_params``, ``max_flops``; the model only grows), or every group
        is at its width cap (resolved with :func:`width_caps`)."""
        if set(fitted.limited_by) & {"max_params", "max_flops"}:
            return True
        caps = width_caps(self.max_width, graph)
        return all(name in caps and graph.resolve(name).width >= caps[name] for name in groups)


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
    graph: LayerGraph | None = None,
) -> FittedPlan:
    """Scale ``plan`` down until ``model`` widened by it stays within ``budget``; changes nothing.

    Args:
        model: the model the plan is for (not modified).
        plan: ``{group or layer: units to add}``.
        budget: the caps; ``max_width`` keys are resolved to channel groups
            (:func:`width_caps`).
        example_inputs: needed when ``budget.max_flops`` is set (FLOPs are counted on them).
        init: passed to the previews (``widen`` checks it).
        granularity: ``{plan key: g}``: every capped or scaled ``k`` is rounded down to a
            multiple of ``g`` (``widen`` requires it); default: each group's granularity.
        graph: ``netsurgeon.trace(model)`` at the current widths (as for ``widen(..., graph=)``);
            ``None`` traces the model once. Either way, nothing else is traced.

    Returns:
        A :class:`FittedPlan`; its ``increments`` may be empty when nothing fits.

    Raises:
        ValueError: ``max_flops`` without ``example_inputs``.
        ConfigError: a ``max_width`` key that is no layer, or two caps for one group.
        WidenError, TypeError, ValueError: ``widen`` would refuse the plan (the same error).

    Example:
        >>> import torch, torch.nn as nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> fitted = fit_to_budget(net, {"0": 8}, Budget(max_params=80))
        >>> fitted.increments, fitted.limited_by, fitted.cost.params_after
        ({'0': 3}, ('max_params',), 79)
    """
    _check_inputs(budget, example_inputs is not None)
    basis = Baseline(model, example_inputs, graph=graph, init=init)
    return fit(basis, plan, budget, granularity=granularity)


def fit(
    basis: Baseline,
    plan: Mapping[str, int],
    budget: Budget,
    *,
    granularity: Mapping[str, int] | None = None,
) -> FittedPlan:
    """:func:`fit_to_budget` against a :class:`~netsurgeon.cost.Baseline` (its graph, its
    "before" counts): every plan it tries is priced on that baseline, so nothing is traced.

    Width caps first, then, if a global cap is exceeded, the largest ``t`` whose scaled plan
    fits, by bisection; FLOPs are counted for each candidate only under ``max_flops``, and for
    the answer whenever the baseline has example inputs (one forward pass of a meta copy each).
    """
    _check_inputs(budget, basis.inputs is not None)
    down = _rounding(basis.graph, granularity)
    flops = budget.max_flops is not None  # a candidate's FLOPs only when a cap reads them
    asked = basis.cost(plan, flops=flops)  # refuses what widen refuses, before any arithmetic
    requested = asked.plan
    capped = _cap_widths(requested, width_caps(budget.max_width, basis.graph), basis.graph, down)
    limited = ["max_width"] if capped != requested else []
    full = asked if capped == requested else basis.cost(capped, flops=flops)
    over = budget.exceeded_by(full)
    if not over:
        return FittedPlan(requested, capped, tuple(limited), 1.0, _priced(basis, capped, full))
    limited.extend(over)
    steps = max(capped.values(), default=0)
    best_t, best = _largest_fit(basis, capped, steps, budget, down)
    increments = _scaled(capped, best_t, steps, down)  # t = 0: {}, the model is already over
    scale = best_t / steps if steps else 0.0
    return FittedPlan(
        requested, increments, tuple(limited), scale, _priced(basis, increments, best)
    )


def _priced(basis: Baseline, plan: Mapping[str, int], cost: CostPreview | None) -> CostPreview:
    """``cost`` of ``plan``, priced again with its FLOPs when the baseline counts them."""
    if cost is None or (basis.inputs is not None and cost.flops_after is None):
        return basis.cost(plan)
    return cost


def _largest_fit(
    basis: Baseline,
    capped: Mapping[str, int],
    steps: int,
    budget: Budget,
    down: Callable[[str, int], int],
) -> tuple[int, CostPreview | None]:
    """The largest ``t < steps`` whose scaled plan fits (0 when none does), and its cost."""
    best_t, best, low, high = 0, None, 0, steps - 1  # t = steps is the full plan: over
    while low <= high:
        t = (low + high) // 2
        cost = basis.cost(_scaled(capped, t, steps, down), flops=budget.max_flops is not None)
        if budget.exceeded_by(cost):
            high = t - 1
        else:
            best_t, best, low = t, cost, t + 1
    return best_t, best


def width_caps(
    max_width: int | Mapping[str, int] | None, graph: LayerGraph, field: str = "Budget.max_width"
) -> dict[str, int]:
    """``{group name: most units}`` from width caps naming layers or groups.

    A cap on any producer of a channel group caps the group (its producers share one width),
    resolved with ``graph.resolve``; one int caps every group.

    Raises:
        ConfigError: a key that is no layer or group of ``graph`` (a follower names its group),
            or two keys of one group with different caps, naming both.

    Example:
        >>> import netsurgeon
        >>> from netsurgeon.models import resnet
        >>> graph = netsurgeon.trace(resnet((4, 8, 8), blocks=1))
        >>> width_caps({"stages.0.0.conv2": 6}, graph)   # the stem's stream, second producer
        {'conv': 6}
    """
    if max_width is None:
        return {}
    if not isinstance(max_width, Mapping):
        return {group.name: int(max_width) for group in graph.groups}
    caps: dict[str, int] = {}
    named_by: dict[str, str] = {}
    for key, cap in max_width.items():
        try:
            group = graph.resolve(key)
        except (NetsurgeonError, KeyError) as e:
            raise ConfigError(
                f"{field} names {[key]}, which are not layers of {type(graph.model).__name__}: {e}"
            ) from e
        if group.name in caps and caps[group.name] != cap:
            first = named_by[group.name]
            raise ConfigError(
                f"{field} caps {first!r} at {caps[group.name]} and {key!r} at {cap}, but both "
                f"name channel group '{group.name}' (producers {', '.join(group.producers)}), "
                f"whose producers share one width; give the group one cap, e.g. "
                f"{{{group.name!r}: {min(cap, caps[group.name])}}}"
            )
        caps[group.name], named_by[group.name] = int(cap), key
    return caps


def _check_inputs(budget: Budget, has_inputs: bool) -> None:
    if budget.max_flops is not None and not has_inputs:
        raise ValueError(
            f"budget.max_flops={budget.max_flops} needs example_inputs to count FLOPs on; pass "
            "one input batch (its FLOPs are what max_flops caps)."
        )


def _rounding(
    graph: LayerGraph, granularity: Mapping[str, int] | None
) -> Callable[[str, int], int]:
    """``down(key, k)``: ``k`` rounded down to a multiple of the key's granularity."""
    steps = dict(granularity) if granularity is not None else None

    def down(name: str, k: int) -> int:
        g = steps.get(name, 1) if steps is not None else graph.resolve(name).granularity
        g = max(1, int(g))
        return k // g * g

    return down


def _cap_widths(
    requested: Mapping[str, int],
    caps: Mapping[str, int],
    graph: LayerGraph,
    down: Callable[[str, int], int],
) -> dict[str, int]:
    """``k_l <- min(k_l, max(0, cap - n_l))`` per key (rounded down), zeros dropped."""
    capped = {}
    for name, k in requested.items():
        group = graph.resolve(name)
        cap = caps.get(group.name)
        if cap is not None and group.width + k > cap:
            k = down(name, max(0, cap - group.width))
        if k > 0:
            capped[name] = k
    return capped


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
