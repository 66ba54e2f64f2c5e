"""The decision rule of section 3 (steps 2-6 of :mod:`netsurgeon.nagn.planner`), on checked nodes.

Both planners import it: :func:`netsurgeon.nagn.plan_growth` builds the nodes of a chain of
layers, :func:`netsurgeon.nagn.plan_group_growth` those of the channel groups of a traced graph;
:func:`decide` turns them into a :class:`~netsurgeon.nagn.plan.GrowthPlan` through named pure
steps: contrast (:func:`~netsurgeon.nagn.contrast.graph_contrast`), :func:`excess`,
:func:`contrast_increments` or :func:`fallback_increments`, :func:`monotone_adjust` along the
monotone chains, and rounding to each node's granularity.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from netsurgeon.nagn.contrast import graph_contrast
from netsurgeon.nagn.groups import round_to_granularity
from netsurgeon.nagn.plan import GrowthPlan, LayerPlan
from netsurgeon.nagn.settings import PlannerSettings

__all__ = [
    "Nodes",
    "contrast_increments",
    "decide",
    "excess",
    "fallback_increments",
    "monotone_adjust",
    "step_caps",
]


@dataclass(frozen=True)
class Nodes:
    """What the rule decides over: ``L`` nodes (layers or channel groups) in depth order.

    Attributes:
        names: ``(L,)`` node names.
        nagn: ``(L,)`` NAGN values, finite and >= 0.
        widths: ``(L,)`` widths, ints >= 1.
        outputs: names that never grow (they still have a contrast).
        before, after: ``(L,)`` neighbour indices (:func:`graph_contrast`); a chain gives the
            paper's rule. The fallback compares a node with the mean NAGN of ``before``.
        granularity: ``(L,)`` multiples the final increments are rounded up to; ``None``: all 1.
    """

    names: tuple[str, ...]
    nagn: tuple[float, ...]
    widths: tuple[int, ...]
    outputs: frozenset[str]
    before: tuple[tuple[int, ...], ...]
    after: tuple[tuple[int, ...], ...]
    granularity: tuple[int, ...] | None = None

    @property
    def growable(self) -> list[int]:
        """Indices of the nodes that may grow."""
        return [i for i, name in enumerate(self.names) if name not in self.outputs]


def monotone_adjust(
    widths: Sequence[int], increments: Sequence[int], caps: Sequence[int]
) -> list[int]:
    """Raise increments so that ``widths + increments`` is non-decreasing, within ``caps``.

    Walks forward: layer ``k`` is raised to its predecessor's new width when it is narrower, but
    never beyond ``caps[k]``; a layer that cannot catch up stays as wide as its cap allows and the
    walk continues from its new width. Increments are never lowered.

    Args:
        widths: ``(K,)`` widths of one group, in order.
        increments: ``(K,)`` planned increments, ``0 <= increments[k] <= caps[k]``.
        caps: ``(K,)`` per-step limits.

    Returns:
        ``(K,)`` adjusted increments.

    Example:
        >>> monotone_adjust([8, 3, 8], [0, 0, 0], [8, 3, 8])
        [0, 3, 0]
    """
    out = list(increments)
    for k in range(1, len(out)):
        need = widths[k - 1] + out[k - 1] - widths[k]
        if need > out[k]:
            out[k] = max(out[k], min(need, caps[k]))
    return out


def step_caps(widths: Sequence[int], max_step: int | None) -> list[int]:
    """``(L,)`` per-step limits ``min(max_step, n_l)`` (only "at most doubled" when ``None``)."""
    return [n if max_step is None else min(max_step, n) for n in widths]


def excess(contrast: Sequence[float], tau: float) -> list[float]:
    """``(L,)`` excesses ``p_l = max(r_l - tau, 0)``."""
    return [max(r - tau, 0.0) for r in contrast]


def contrast_increments(
    nodes: Nodes, p: Sequence[float], caps: Sequence[int], score: str
) -> tuple[list[float], list[int]]:
    """Steps 3-4: scores ``s_l`` and increments ``min(cap_l, floor(s_l n_l))`` of the growable
    nodes, when some growable node has a positive excess.

    Returns:
        ``((L,) scores, (L,) increments)``; zero for output nodes.
    """
    max_p = max(p[i] for i in nodes.growable)
    scale = {"normalised": max_p, "damped": max(max_p, 1.0), "excess": 1.0}[score]
    s = [0.0] * len(nodes.names)
    raw = [0] * len(nodes.names)
    for i in nodes.growable:
        s[i] = min(p[i] / scale, 1.0)
        raw[i] = min(caps[i], math.floor(s[i] * nodes.widths[i]))
    return s, raw


def fallback_increments(
    nodes: Nodes, caps: Sequence[int], fallback: str, fraction: float
) -> list[int]:
    """Step 5: when no growable node clears ``tau``, each growable node whose NAGN exceeds the
    mean of its predecessors' gains ``max(1, floor(fraction * n_l))`` (``"fraction"``), one unit
    (``"unit"``) or nothing (``"none"``), within its cap. Returns ``(L,)`` increments."""
    raw = [0] * len(nodes.names)
    if fallback == "none":
        return raw
    g, n = nodes.nagn, nodes.widths
    for i in nodes.growable:
        if not nodes.before[i]:
            continue
        previous = math.fsum(g[j] for j in nodes.before[i]) / len(nodes.before[i])
        if g[i] > previous:
            step = 1 if fallback == "unit" else max(1, math.floor(fraction * n[i]))
            raw[i] = min(caps[i], step)
    return raw


def _constrain(
    nodes: Nodes,
    raw: Sequence[int],
    chains: tuple[tuple[str, ...], ...] | None,
    caps: Sequence[int],
    drag_limit: str,
) -> list[int]:
    """Step 6 along each monotone chain (``None``: off), then rounding to the granularity."""
    final = list(raw)
    n = nodes.widths
    if chains is not None:
        index = {name: i for i, name in enumerate(nodes.names)}
        drag = {"step": caps, "double": n, "none": [sys.maxsize] * len(n)}[drag_limit]
        for chain in chains:
            members = [index[name] for name in chain if name not in nodes.outputs]
            adjusted = monotone_adjust(
                [n[i] for i in members], [final[i] for i in members], [drag[i] for i in members]
            )
            for i, dn in zip(members, adjusted, strict=True):
                final[i] = dn
    if nodes.granularity is None:
        return final
    rounded = round_to_granularity(
        dict(zip(nodes.names, final, strict=True)),
        dict(zip(nodes.names, n, strict=True)),
        dict(zip(nodes.names, nodes.granularity, strict=True)),
    )
    return [rounded.get(name, 0) for name in nodes.names]


def decide(
    nodes: Nodes,
    settings: PlannerSettings,
    monotone_chains: tuple[tuple[str, ...], ...] | None,
    **record: Any,
) -> GrowthPlan:
    """Steps 1-6 of :mod:`netsurgeon.nagn.planner` on checked nodes; every planner's core.

    Args:
        nodes: the layers or groups, checked (:class:`Nodes`).
        settings: the rule's settings (``combine`` and ``neighbourhood_order`` are the
            caller's: they shaped ``nodes``).
        monotone_chains: the chains the non-decreasing constraint runs along, each in depth
            order; ``None`` when the constraint is off.
        record: extra :class:`GrowthPlan` fields (``on_groups``, ``groups``).
    """
    neighbour, r, how, extrapolated, m = graph_contrast(
        nodes.nagn, nodes.before, nodes.after, settings.neighbourhood, settings.end_rule
    )
    p = excess(r, settings.tau)
    caps = step_caps(nodes.widths, settings.max_step)
    max_p = max((p[i] for i in nodes.growable), default=0.0)
    s = [0.0] * len(nodes.names)
    if not nodes.growable:
        rule, raw = "no growable layers", [0] * len(nodes.names)
    elif max_p > 0:
        rule = "contrast"
        s, raw = contrast_increments(nodes, p, caps, settings.score)
    else:
        rule = f"fallback:{settings.fallback}"
        raw = fallback_increments(nodes, caps, settings.fallback, settings.fallback_fraction)
    final = _constrain(nodes, raw, monotone_chains, caps, settings.drag_limit)
    rows = tuple(
        LayerPlan(
            name=name,
            width=nodes.widths[i],
            nagn=nodes.nagn[i],
            neighbour=neighbour[i],
            neighbour_rule=how[i],
            extrapolated=extrapolated[i],
            contrast=r[i],
            excess=p[i],
            score=s[i],
            raw_increment=raw[i],
            increment=final[i],
            is_output=name in nodes.outputs,
            adjusted=final[i] != raw[i],
        )
        for i, name in enumerate(nodes.names)
    )
    return GrowthPlan(
        rows=rows,
        rule=rule,
        median_slope=m,
        max_excess=max_p,
        settings=settings,
        monotone_groups=monotone_chains or (),
        **record,
    )
