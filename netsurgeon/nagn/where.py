"""Where-criteria: how a growth budget is spread over the layers.

Every criterion receives the NAGN plan (paper section 3) and returns increments. The grower
passes channel groups as the "layers" (group names, group widths, the widenable groups) and
their granularities. ``"nagn"`` uses the plan as is (the planner rounded it to the granularities
already); the others spread its total afresh and round what they spread, once
(:func:`~netsurgeon.nagn.groups.round_to_granularity`). ``"uniform"`` and ``"random"`` add *the same total number of units* as the NAGN
plan, so a comparison between criteria is at matched growth budget and asks only *where*:

* ``"uniform"``: every growable layer grows by the same fraction ``f = total / sum(n_l)`` of its
  width (largest-remainder rounding, so the total is exact);
* ``"random"``: units go one at a time to a uniformly drawn growable layer, seeded.

Each layer keeps the paper's cap (at most doubled per step).

"The same total number of units" is the paper's budget (``GrowthConfig.budget_match="units"``),
fair where every unit costs about the same. Where granularities and costs differ (a
transformer's stream unit touches every block, a head is ``3 d`` rows), the Grower can match the
added parameters instead (``budget_match="params"``): the criterion spreads half the growable
width, and :func:`netsurgeon.cost.fit` scales it down to the NAGN plan's parameter count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch

from netsurgeon.nagn.groups import round_to_granularity

__all__ = ["WHERE_CRITERIA", "spread_random", "spread_uniform"]


def spread_uniform(total: int, widths: Mapping[str, int], layers: Sequence[str]) -> dict[str, int]:
    """``total`` units over ``layers`` proportionally to their widths (exact total, capped at n_l).

    Example:
        >>> spread_uniform(6, {"a": 4, "b": 8}, ["a", "b"])
        {'a': 2, 'b': 4}
    """
    capacity = sum(widths[name] for name in layers)
    total = min(total, capacity)
    if total <= 0 or not layers:
        return {}
    shares = {name: total * widths[name] / capacity for name in layers}
    grown = {name: math.floor(share) for name, share in shares.items()}
    by_remainder = sorted(layers, key=lambda n: (grown[n] - shares[n], layers.index(n)))
    for name in by_remainder[: total - sum(grown.values())]:
        grown[name] += 1
    return {name: k for name, k in grown.items() if k > 0}


def spread_random(
    total: int, widths: Mapping[str, int], layers: Sequence[str], generator: torch.Generator
) -> dict[str, int]:
    """``total`` units, each to a uniformly drawn layer of ``layers`` that is not yet doubled."""
    grown = dict.fromkeys(layers, 0)
    for _ in range(min(total, sum(widths[name] for name in layers))):
        open_layers = [name for name in layers if grown[name] < widths[name]]
        pick = int(torch.randint(len(open_layers), (1,), generator=generator))
        grown[open_layers[pick]] += 1
    return {name: k for name, k in grown.items() if k > 0}


def _nagn(increments, widths, layers, generator, granularity=None):
    return dict(increments)  # rounded by the planner


def _uniform(increments, widths, layers, generator, granularity=None, total=None):
    total = sum(increments.values()) if total is None else total
    return round_to_granularity(spread_uniform(total, widths, layers), widths, granularity or {})


def _random(increments, widths, layers, generator, granularity=None, total=None):
    total = sum(increments.values()) if total is None else total
    spread = spread_random(total, widths, layers, generator)
    return round_to_granularity(spread, widths, granularity or {})


Criterion = Callable[..., dict[str, int]]

#: ``name -> criterion(nagn increments, widths, growable layers, generator, granularity=None,
#: total=None) -> increments``, each a multiple of its layer's granularity (``{layer: g}``;
#: default 1); ``total`` spreads that many units instead of the plan's total.
WHERE_CRITERIA: dict[str, Criterion] = {"nagn": _nagn, "uniform": _uniform, "random": _random}
