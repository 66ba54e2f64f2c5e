"""The relative contrast of a NAGN profile: paper eq. (2) and its end-layer rule.

``r_l = g_l / g~_l - 1`` with ``g~_l`` the neighbourhood mean: the mean of the two neighbours
for interior layers; at the two ends, an extrapolation with the median slope
``m = median(g_{l+1} - g_l)``: ``g~_1 = g_2 - m`` and ``g~_L = g_{L-1} + m``. Readings the paper
leaves open are arguments: ``neighbourhood`` (arithmetic or in log space) and ``end_rule``
(extrapolate, the single real neighbour, or no contrast at the ends). The planner
(:mod:`netsurgeon.nagn.planner`) turns contrasts into increments.
"""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Sequence
from typing import Literal

__all__ = ["END_RULES", "NEIGHBOURHOODS", "EndRule", "Neighbourhood", "relative_contrast"]

Neighbourhood = Literal["arithmetic", "geometric"]
NEIGHBOURHOODS: tuple[str, ...] = ("arithmetic", "geometric")

EndRule = Literal["extrapolate", "adjacent", "none"]
END_RULES: tuple[str, ...] = ("extrapolate", "adjacent", "none")


def relative_contrast(
    nagn: Sequence[float],
    neighbourhood: Neighbourhood = "arithmetic",
    end_rule: EndRule = "extrapolate",
) -> tuple[list[float], list[float], list[str], list[float | None], float]:
    """Neighbourhood means and relative contrasts of a profile (paper eq. 2 and the end rule).

    Args:
        nagn: ``(L,)`` non-negative NAGN values in depth order.
        neighbourhood: ``"arithmetic"`` (the paper: mean of the two neighbours, median slope of
            differences at the ends) or ``"geometric"`` (the same rules in log space: geometric
            mean of the neighbours, median *ratio* at the ends; ``m`` is then that log-ratio).
            NAGN tends to grow geometrically with depth; in log space such a trend has zero
            contrast everywhere, including at the end layers. Needs a positive profile; with a
            zero anywhere the arithmetic rules are used.
        end_rule: ``"extrapolate"`` (the paper), ``"adjacent"`` (an end layer's neighbourhood is
            its single real neighbour; rule ``adjacent``) or ``"none"`` (end layers get
            ``r = 0``; rule ``end-none``). The raw extrapolation is recorded in every case.

    Returns:
        ``(neighbour, contrast, rule, extrapolated, m)``: three ``(L,)`` lists (see
        :class:`LayerPlan` for the rule names), the ``(L,)`` raw end-layer extrapolations
        (``None`` for interior layers) and the median slope ``m`` (``nan`` when ``L == 1``).

    Example:
        >>> _, r, _, _, m = relative_contrast([1.0, 2.0, 1.0, 1.0])
        >>> [round(x, 3) for x in r], m
        ([-0.5, 1.0, -0.333, 0.0], 0.0)
    """
    g = [float(x) for x in nagn]
    size = len(g)
    if size == 1:
        return [g[0]], [0.0], ["single"], [None], math.nan
    if neighbourhood == "geometric" and min(g) > 0:
        neighbour, contrast, rule, extrapolated, m = _geometric_contrast(g)
    else:
        neighbour, contrast, rule, extrapolated, m = _arithmetic_contrast(g)
    if end_rule != "extrapolate":
        for i in (0, size - 1):
            if end_rule == "adjacent":
                neighbour[i] = g[1] if i == 0 else g[size - 2]
                rule[i] = "adjacent"
                contrast[i] = _ratio(g[i], neighbour[i])
                if neighbour[i] <= 0:
                    rule[i] = "zero"
            else:
                neighbour[i], contrast[i], rule[i] = g[i], 0.0, "end-none"
    return neighbour, contrast, rule, extrapolated, m


def _ratio(value: float, neighbour: float) -> float:
    """``value / neighbour - 1``, 0 for a non-positive neighbourhood, clamped to stay finite."""
    if neighbour <= 0:
        return 0.0
    return min(value / neighbour - 1.0, sys.float_info.max)


def _arithmetic_contrast(
    g: list[float],
) -> tuple[list[float], list[float], list[str], list[float | None], float]:
    """The paper's rules: neighbour mean inside, median-difference extrapolation at the ends."""
    size = len(g)
    m = statistics.median(g[i + 1] - g[i] for i in range(size - 1))
    neighbour: list[float] = []
    rule: list[str] = []
    extrapolated: list[float | None] = []
    for i in range(size):
        if 0 < i < size - 1:
            neighbour.append((g[i - 1] + g[i + 1]) / 2)
            rule.append("interior")
            extrapolated.append(None)
            continue
        adjacent = g[1] if i == 0 else g[size - 2]
        guess = adjacent - m if i == 0 else adjacent + m
        extrapolated.append(guess)
        if guess > 0:
            neighbour.append(guess)
            rule.append("extrapolated")
        else:
            neighbour.append(adjacent)
            rule.append("adjacent")
    contrast = []
    for i in range(size):
        if neighbour[i] > 0:  # a vanishing neighbourhood may overflow: keep it finite
            contrast.append(min(g[i] / neighbour[i] - 1.0, sys.float_info.max))
        else:
            contrast.append(0.0)
            rule[i] = "zero"
    return neighbour, contrast, rule, extrapolated, m


def _geometric_contrast(
    g: list[float],
) -> tuple[list[float], list[float], list[str], list[float | None], float]:
    """:func:`relative_contrast` in log space, for a strictly positive profile."""
    logs = [math.log(x) for x in g]
    size = len(g)
    m = statistics.median(logs[i + 1] - logs[i] for i in range(size - 1))
    neighbour, rule, extrapolated = [], [], []
    for i in range(size):
        if 0 < i < size - 1:
            neighbour.append(math.exp((logs[i - 1] + logs[i + 1]) / 2))
            rule.append("interior")
            extrapolated.append(None)
        else:
            guess = math.exp(logs[1] - m) if i == 0 else math.exp(logs[size - 2] + m)
            neighbour.append(guess)
            rule.append("extrapolated")
            extrapolated.append(guess)
    contrast = [min(x / nb - 1.0, sys.float_info.max) for x, nb in zip(g, neighbour, strict=True)]
    return neighbour, contrast, rule, extrapolated, m
