"""The relative contrast of a NAGN profile: paper eq. (2) and its end-layer rule, on a DAG.

``r_l = g_l / g~_l - 1`` with ``g~_l`` the neighbourhood mean. On a chain (the paper): the mean of
the two neighbours for interior layers; at the two ends, an extrapolation with the median slope
``m = median(g_{l+1} - g_l)``: ``g~_1 = g_2 - m`` and ``g~_L = g_{L-1} + m``.

On a DAG (:func:`graph_contrast`) each node ``i`` has the nodes it reads from (``before[i]``) and
the nodes that read it (``after[i]``). An interior node (both non-empty) uses
``g~_i = (mean(g[before]) + mean(g[after])) / 2``; a node with one side only is an end, and
extrapolates from the mean of that side with the median slope over every neighbouring pair
``u < v`` (depth order), ``m = median(g_v - g_u)``; a node with no neighbour has no contrast. On a
chain (``before[i] = [i - 1]``, ``after[i] = [i + 1]``) this is exactly the paper's rule:
:func:`relative_contrast` is :func:`graph_contrast` on the chain.

Readings the paper leaves open are arguments: ``neighbourhood`` (arithmetic or in log space) and
``end_rule`` (extrapolate, the single real neighbour side, or no contrast at the ends). The
decision rule (:mod:`netsurgeon.nagn.decision`) turns contrasts into increments.
"""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Sequence
from typing import Literal

__all__ = [
    "END_RULES",
    "NEIGHBOURHOODS",
    "EndRule",
    "Neighbourhood",
    "chain_neighbours",
    "graph_contrast",
    "median_slope",
    "relative_contrast",
]

Neighbourhood = Literal["arithmetic", "geometric"]
NEIGHBOURHOODS: tuple[str, ...] = ("arithmetic", "geometric")

EndRule = Literal["extrapolate", "adjacent", "none"]
END_RULES: tuple[str, ...] = ("extrapolate", "adjacent", "none")

Contrast = tuple[list[float], list[float], list[str], list[float | None], float]


def chain_neighbours(size: int) -> tuple[list[list[int]], list[list[int]]]:
    """``(before, after)`` of a chain of ``size`` nodes: ``[[], [0], [1], ...]``, ``[[1], ...]``.

    Example:
        >>> chain_neighbours(3)
        ([[], [0], [1]], [[1], [2], []])
    """
    before = [[i - 1] if i > 0 else [] for i in range(size)]
    after = [[i + 1] if i < size - 1 else [] for i in range(size)]
    return before, after


def relative_contrast(
    nagn: Sequence[float],
    neighbourhood: Neighbourhood = "arithmetic",
    end_rule: EndRule = "extrapolate",
) -> Contrast:
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
    before, after = chain_neighbours(len(nagn))
    return graph_contrast(nagn, before, after, neighbourhood, end_rule)


def graph_contrast(
    nagn: Sequence[float],
    before: Sequence[Sequence[int]],
    after: Sequence[Sequence[int]],
    neighbourhood: Neighbourhood = "arithmetic",
    end_rule: EndRule = "extrapolate",
) -> Contrast:
    """Relative contrasts of the nodes of a DAG (module docstring); a chain gives eq. (2).

    Args:
        nagn: ``(L,)`` non-negative NAGN values, in depth order.
        before: ``(L,)`` lists of indices node ``i`` reads from (its predecessors).
        after: ``(L,)`` lists of indices that read node ``i`` (its successors).
        neighbourhood: ``"arithmetic"`` or ``"geometric"`` (see :func:`relative_contrast`);
            the means over a side are then arithmetic or geometric too.
        end_rule: ``"extrapolate"``, ``"adjacent"`` or ``"none"`` (see :func:`relative_contrast`);
            an end is a node with neighbours on one side only.

    Returns:
        ``(neighbour, contrast, rule, extrapolated, m)`` as :func:`relative_contrast`; ``m`` is
        ``nan`` when no two nodes are neighbours. A node without neighbours gets rule
        ``"single"`` and ``r = 0``.

    Example:
        >>> _, r, how, _, _ = graph_contrast([1.0, 2.0, 4.0], [[], [0], [0, 1]], [[1, 2], [2], []])
        >>> [round(x, 3) for x in r], how
        ([0.0, -0.2, 0.143], ['extrapolated', 'interior', 'extrapolated'])
    """
    g = [float(x) for x in nagn]
    geometric = neighbourhood == "geometric" and len(g) > 0 and min(g) > 0
    values = [math.log(x) for x in g] if geometric else g
    m = median_slope(values, before, after)
    ends = [
        _end_neighbourhood(g, values, before[i], after[i], i, m, geometric, end_rule)
        for i in range(len(g))
    ]
    neighbour = [end[0] for end in ends]
    rule = [end[1] for end in ends]
    contrast = []
    for i, x in enumerate(g):
        if rule[i] in ("single", "end-none"):
            contrast.append(0.0)
        elif neighbour[i] > 0:  # a vanishing neighbourhood may overflow: keep it finite
            contrast.append(min(x / neighbour[i] - 1.0, sys.float_info.max))
        else:
            contrast.append(0.0)
            rule[i] = "zero"
    return neighbour, contrast, rule, [end[2] for end in ends], m


def median_slope(
    values: Sequence[float], before: Sequence[Sequence[int]], after: Sequence[Sequence[int]]
) -> float:
    """``m = median(values[v] - values[u])`` over every neighbouring pair ``u < v``; ``nan``
    when no two nodes are neighbours.

    Example:
        >>> median_slope([1.0, 2.0, 4.0], [[], [0], [1]], [[1], [2], []])
        1.5
    """
    pairs = sorted(
        {(min(i, j), max(i, j)) for i in range(len(values)) for j in (*before[i], *after[i])}
        - {(i, i) for i in range(len(values))}
    )
    return statistics.median(values[v] - values[u] for u, v in pairs) if pairs else math.nan


def _end_neighbourhood(
    g: Sequence[float],
    values: Sequence[float],
    before: Sequence[int],
    after: Sequence[int],
    i: int,
    m: float,
    geometric: bool,
    end_rule: str,
) -> tuple[float, str, float | None]:
    """Node ``i``'s ``(neighbourhood mean, rule, raw extrapolation)`` from its neighbours:
    interior, single, or an end under ``end_rule`` (``values`` are ``g`` or ``log g``)."""

    def side(indices: Sequence[int]) -> float:
        return math.fsum(values[j] for j in indices) / len(indices)

    def back(value: float) -> float:
        return math.exp(value) if geometric else value

    b = [j for j in before if j != i]
    a = [j for j in after if j != i]
    if b and a:
        return back((side(b) + side(a)) / 2), "interior", None
    if not b and not a:
        return g[i], "single", None
    guess = back(side(a) - m if a else side(b) + m)
    one_side = a or b
    real = g[one_side[0]] if len(one_side) == 1 else back(side(one_side))
    if end_rule == "adjacent":
        return real, "adjacent", guess
    if end_rule == "none":
        return g[i], "end-none", guess
    if geometric or guess > 0:
        return guess, "extrapolated", guess
    return real, "adjacent", guess
