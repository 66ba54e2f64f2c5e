"""Where and how much to grow: section 3 of "Where to grow" turned into pure functions.

Given a NAGN profile ``g_1 .. g_L`` (depth order) and the current widths ``n_1 .. n_L``:

1. Neighbourhood mean. Interior layers: ``g~_l = (g_{l-1} + g_{l+1}) / 2``. End layers use the
   median slope ``m = median(g_{l+1} - g_l)``: ``g~_1 = g_2 - m`` and ``g~_L = g_{L-1} + m``. When
   that extrapolation is not positive (a steep profile), the end layer falls back to its single
   real neighbour ``g_2`` or ``g_{L-1}``. A neighbourhood mean of zero (all-zero neighbours) gives
   no evidence: ``r = 0``; a contrast that overflows is clamped to the largest finite float.
2. Relative contrast ``r_l = g_l / g~_l - 1``; excess ``p_l = max(r_l - tau, 0)``.
3. Score ``s_l = p_l / max_j p_j``, the max over growable layers only (output layers get a
   contrast, because their NAGN feeds the extrapolation, but never grow and never set the scale).
4. Increment ``dn_l = min(max_step, floor(s_l * n_l))``; ``dn_l <= n_l`` ("at most doubled").
5. Fallback when no growable layer clears ``tau``: each growable layer whose NAGN exceeds its
   predecessor's grows ``max(1, floor(fallback_fraction * n_l))`` (``"fraction"``), one unit
   (``"unit"``), or nothing (``"none"``).
6. Non-decreasing constraint (``monotone``): inside each group of layers (default: every growable
   layer, in profile order; for a CNN pass the conv backbone, see :func:`conv_backbone_groups`)
   a layer narrower than its (grown) predecessor is raised towards it, never beyond its per-step
   limit ``min(max_step, n_l)``.

Every intermediate is kept in a frozen :class:`GrowthPlan`. The plan is exactly invariant to
scaling the profile by a power of two (the contrast is a ratio).

Readings the paper leaves open, as named options (defaults = the paper's text; docs/nagn.md):

- ``end_rule``: the end layers' neighbourhood: ``"extrapolate"`` (median slope, step 1),
  ``"adjacent"`` (the single real neighbour) or ``"none"`` (no contrast at the ends: ``r = 0``).
- ``score``: ``"normalised"`` (``s = p / max p``, step 3), ``"damped"`` (``s = p / max(max p, 1)``:
  normalised only when the leading excess exceeds 1, else the excess itself, so a layer that
  clears ``tau`` by 0.2 gains 20 % instead of doubling) or ``"excess"`` (``s = min(p, 1)``, never
  normalised).
- ``drag_limit``: how far the non-decreasing constraint may raise a layer in one step:
  ``"step"`` (``min(max_step, n_l)``, step 6), ``"double"`` (``n_l``, ignoring ``max_step``) or
  ``"none"`` (all the way to its predecessor).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from netsurgeon.errors import PlanError
from netsurgeon.nagn.checks import (
    DEFAULT_MAX_STEP,
    DRAG_LIMITS,
    FALLBACKS,
    SCORES,
    DragLimit,
    Fallback,
    Score,
    _check_groups,
    _check_inputs,
    _check_readings,
    _check_settings,
)
from netsurgeon.nagn.contrast import (
    END_RULES,
    NEIGHBOURHOODS,
    EndRule,
    Neighbourhood,
    chain_neighbours,
    graph_contrast,
    relative_contrast,
)
from netsurgeon.nagn.groups import (
    COMBINES,
    NEIGHBOURHOOD_ORDERS,
    Combine,
    NeighbourhoodOrder,
    _check_choice,
    round_to_granularity,
)
from netsurgeon.nagn.plan import GrowthPlan, LayerPlan

__all__ = [
    "DRAG_LIMITS",
    "END_RULES",
    "FALLBACKS",
    "NEIGHBOURHOODS",
    "SCORES",
    "GrowthPlan",
    "GrowthPlanner",
    "LayerPlan",
    "conv_backbone_groups",
    "monotone_adjust",
    "plan_growth",
    "relative_contrast",
]

# ----------------------------------------------------------------------------- constraint


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


# ----------------------------------------------------------------------------- planner


def plan_growth(
    profile: Mapping[str, float],
    widths: Mapping[str, int] | Any,
    *,
    output_layers: Iterable[str] | None = None,
    tau: float = 0.05,
    max_step: int | None = DEFAULT_MAX_STEP,
    monotone: bool = True,
    monotone_groups: Iterable[Iterable[str]] | None = None,
    fallback: Fallback = "fraction",
    fallback_fraction: float = 0.125,
    neighbourhood: Neighbourhood = "arithmetic",
    end_rule: EndRule = "extrapolate",
    score: Score = "normalised",
    drag_limit: DragLimit = "step",
) -> GrowthPlan:
    """Decide how many units each layer gains from its NAGN profile (paper section 3).

    Args:
        profile: ``{layer: NAGN}`` in depth order (e.g. ``NAGNMonitor.profile()``).
        widths: ``{layer: width}`` for the same layers.
        output_layers: layers that never grow; default: the last layer of ``profile``.
        tau: contrast threshold; a layer grows under the main rule only when ``r_l > tau``.
        max_step: most units added to one layer in one step (``None``: only "at most doubled").
        monotone: enforce the non-decreasing width constraint.
        monotone_groups: groups of layers (each in depth order) inside which the constraint
            applies; default: all growable layers as one group. For a CNN with a dense head pass
            :func:`conv_backbone_groups` so that a tapering classifier head is left alone.
        fallback: what grows when no growable layer clears ``tau``: ``"fraction"`` (each growable
            layer with ``NAGN_l > NAGN_{l-1}`` gains ``max(1, floor(fallback_fraction * n_l))``),
            ``"unit"`` (one unit each) or ``"none"``.
        fallback_fraction: the fraction used by ``fallback="fraction"``.
        neighbourhood: ``"arithmetic"`` (the paper) or ``"geometric"``; see
            :func:`relative_contrast`.
        end_rule: the end layers' neighbourhood: ``"extrapolate"`` (the paper),
            ``"adjacent"`` or ``"none"``; see :func:`relative_contrast`.
        score: ``"normalised"`` (the paper: ``s = p / max p``), ``"damped"``
            (``s = p / max(max p, 1)``) or ``"excess"`` (``s = min(p, 1)``).
        drag_limit: most the non-decreasing constraint adds to a layer in one step:
            ``"step"`` (``min(max_step, n_l)``), ``"double"`` (``n_l``) or ``"none"``.

    Returns:
        A frozen :class:`GrowthPlan`; ``plan.increments`` is ``{layer: dn > 0}``.

    Passing a ``LayerGraph`` (``netsurgeon.trace(model)``) as ``widths`` plans on its channel
    groups instead, with the group readings' defaults: ``plan_growth(profile, graph)`` is
    :func:`netsurgeon.nagn.plan_group_growth`; ``output_layers`` must then be ``None``
    (unwidenable groups never grow). Use it for models with residual streams, concatenations or
    grouped convolutions, where one layer's increment is not free.

    Raises:
        PlanError: mismatched layer names, a negative or non-finite NAGN, a width < 1, an
            unknown output layer or a bad setting.

    Example:
        >>> plan = plan_growth({"a": 1.0, "b": 2.0, "c": 1.0, "out": 1.0},
        ...                    {"a": 8, "b": 4, "c": 8, "out": 10})
        >>> plan.increments
        {'b': 4}
    """
    if hasattr(widths, "groups") and hasattr(widths, "group_of"):  # a LayerGraph
        if output_layers is not None:
            raise PlanError(
                "plan_growth(profile, graph) plans channel groups: unwidenable groups (the output "
                "among them) never grow, so output_layers must be None; found "
                f"{output_layers!r}. Pass graph.widths() instead of the graph for a per-layer plan."
            )
        from netsurgeon.nagn.group_planner import plan_group_growth

        return plan_group_growth(
            profile,
            widths,  # type: ignore[arg-type]
            tau=tau,
            max_step=max_step,
            monotone=monotone,
            monotone_groups=monotone_groups,
            fallback=fallback,
            fallback_fraction=fallback_fraction,
            neighbourhood=neighbourhood,
            end_rule=end_rule,
            score=score,
            drag_limit=drag_limit,
        )
    _check_settings(tau, max_step, fallback, fallback_fraction)
    _check_readings(neighbourhood, end_rule, score, drag_limit)
    names, g, n = _check_inputs(profile, widths)
    if output_layers is None:
        outputs = {names[-1]}
    else:
        if isinstance(output_layers, str):
            output_layers = [output_layers]
        outputs = set(output_layers)
        unknown = sorted(outputs - set(names))
        if unknown:
            raise PlanError(
                f"output_layers {unknown} are not in the profile (layers: {names}). "
                "Pass the names of profiled layers that must never grow."
            )
    groups = None
    if monotone:
        groups = (
            (tuple(name for name in names if name not in outputs),)
            if monotone_groups is None
            else _check_groups(monotone_groups, names)
        )
    before, after = chain_neighbours(len(names))
    return decide(
        names,
        g,
        n,
        outputs,
        before,
        after,
        groups,
        tau=tau,
        max_step=max_step,
        fallback=fallback,
        fallback_fraction=fallback_fraction,
        neighbourhood=neighbourhood,
        end_rule=end_rule,
        score=score,
        drag_limit=drag_limit,
    )


def decide(
    names: Sequence[str],
    g: Sequence[float],
    n: Sequence[int],
    outputs: set[str] | frozenset[str],
    before: Sequence[Sequence[int]],
    after: Sequence[Sequence[int]],
    monotone_groups: tuple[tuple[str, ...], ...] | None,
    *,
    tau: float,
    max_step: int | None,
    fallback: str,
    fallback_fraction: float,
    neighbourhood: Neighbourhood,
    end_rule: EndRule,
    score: str,
    drag_limit: str,
    granularity: Sequence[int] | None = None,
    **record: Any,
) -> GrowthPlan:
    """Steps 1-6 of the module docstring on checked inputs; the shared core of every planner.

    Args:
        names, g, n: ``(L,)`` node names, NAGN values and widths, in depth order.
        outputs: names that never grow (they still have a contrast).
        before, after: ``(L,)`` neighbour indices (:func:`graph_contrast`); a chain gives the
            paper's rule. The fallback compares a node with the mean NAGN of ``before``.
        monotone_groups: the chains the non-decreasing constraint runs along, each in depth
            order; ``None`` when the constraint is off.
        granularity: ``(L,)``: final increments rounded up to a multiple
            (:func:`~netsurgeon.nagn.groups.round_to_granularity`); ``None``: all 1.
        record: extra :class:`GrowthPlan` fields (the group planner's settings and records).
    """
    growable = [i for i, name in enumerate(names) if name not in outputs]
    cap = [n[i] if max_step is None else min(max_step, n[i]) for i in range(len(names))]

    neighbour, r, how, extrapolated, m = graph_contrast(g, before, after, neighbourhood, end_rule)
    p = [max(x - tau, 0.0) for x in r]
    max_p = max((p[i] for i in growable), default=0.0)
    s = [0.0] * len(names)
    raw = [0] * len(names)
    if not growable:
        rule = "no growable layers"
    elif max_p > 0:
        rule = "contrast"
        scale = {"normalised": max_p, "damped": max(max_p, 1.0), "excess": 1.0}[score]
        for i in growable:
            s[i] = min(p[i] / scale, 1.0)
            raw[i] = min(cap[i], math.floor(s[i] * n[i]))
    else:
        rule = f"fallback:{fallback}"
        for i in growable:
            if not before[i] or fallback == "none":
                continue
            previous = math.fsum(g[j] for j in before[i]) / len(before[i])
            if g[i] <= previous:
                continue
            step = 1 if fallback == "unit" else max(1, math.floor(fallback_fraction * n[i]))
            raw[i] = min(cap[i], step)

    final = list(raw)
    if monotone_groups is not None:
        index = {name: i for i, name in enumerate(names)}
        drag = {"step": cap, "double": list(n), "none": [sys.maxsize] * len(n)}[drag_limit]
        for group in monotone_groups:
            members = [index[name] for name in group if name not in outputs]
            adjusted = monotone_adjust(
                [n[i] for i in members], [final[i] for i in members], [drag[i] for i in members]
            )
            for i, dn in zip(members, adjusted, strict=True):
                final[i] = dn
    if granularity is not None:
        rounded = round_to_granularity(
            dict(zip(names, final, strict=True)),
            dict(zip(names, n, strict=True)),
            dict(zip(names, granularity, strict=True)),
        )
        final = [rounded.get(name, 0) for name in names]

    rows = tuple(
        LayerPlan(
            name=name,
            width=n[i],
            nagn=g[i],
            neighbour=neighbour[i],
            neighbour_rule=how[i],
            extrapolated=extrapolated[i],
            contrast=r[i],
            excess=p[i],
            score=s[i],
            raw_increment=raw[i],
            increment=final[i],
            is_output=name in outputs,
            adjusted=final[i] != raw[i],
        )
        for i, name in enumerate(names)
    )
    return GrowthPlan(
        rows=rows,
        rule=rule,
        median_slope=m,
        max_excess=max_p,
        tau=float(tau),
        max_step=max_step,
        monotone=monotone_groups is not None,
        fallback=fallback,
        fallback_fraction=float(fallback_fraction),
        monotone_groups=monotone_groups or (),
        neighbourhood=neighbourhood,
        end_rule=end_rule,
        score=score,
        drag_limit=drag_limit,
        **record,
    )


def conv_backbone_groups(model: Any, layers: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """The monotone group of a CNN: the layers among ``layers`` with a spatial kernel.

    A layer has a spatial kernel when its ``weight`` has more than two dims (``(out, in,
    *kernel)``: a convolution), which is what the graph's layer handlers expose. The paper's
    constraint is about the conv backbone; a dense classifier head that tapers (512 -> 128 -> 10)
    is normal and is left unconstrained. For models with residual streams use the group planner
    (:func:`netsurgeon.nagn.plan_group_growth`), whose default chain is
    :func:`netsurgeon.nagn.groups.backbone_chain`.

    Args:
        model: the ``nn.Module`` the names refer to.
        layers: layer names in depth order (e.g. ``trace(model).layers``).

    Returns:
        ``((conv layers...),)`` or ``()`` when there is no convolution.

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
        >>> conv_backbone_groups(m, ["0", "2"])
        (('0',),)
    """
    from torch import nn

    def has_kernel(name: str) -> bool:
        weight = getattr(model.get_submodule(name), "weight", None)
        if weight is None or isinstance(weight, nn.parameter.UninitializedParameter):
            return False
        return weight.dim() > 2

    convs = tuple(name for name in layers if has_kernel(name))
    return (convs,) if convs else ()


@dataclass(frozen=True)
class GrowthPlanner:
    """The planner's settings, validated once; ``plan()`` calls :func:`plan_growth`.

    Attributes:
        tau: contrast threshold (paper: 0.05).
        max_step: most units added to one layer per step; ``None`` for only "at most doubled".
        monotone: enforce the non-decreasing width constraint.
        fallback: ``"fraction"``, ``"unit"`` or ``"none"`` (see :func:`plan_growth`).
        fallback_fraction: fraction of the width a fallback layer gains (at least one unit).
        neighbourhood, end_rule, score, drag_limit: the readings of :func:`plan_growth`.
        combine, neighbourhood_order: the group readings of :meth:`plan_groups`
            (:func:`netsurgeon.nagn.plan_group_growth`).

    Example:
        >>> planner = GrowthPlanner(tau=0.05, max_step=4)
        >>> planner.plan({"a": 1.0, "b": 3.0, "c": 1.0, "out": 1.0},
        ...              {"a": 8, "b": 8, "c": 8, "out": 10}).increments  # c keeps up with b
        {'b': 4, 'c': 4}
    """

    tau: float = 0.05
    max_step: int | None = DEFAULT_MAX_STEP
    monotone: bool = True
    fallback: Fallback = "fraction"
    fallback_fraction: float = 0.125
    neighbourhood: Neighbourhood = "arithmetic"
    end_rule: EndRule = "extrapolate"
    score: Score = "normalised"
    drag_limit: DragLimit = "step"
    combine: Combine = "rms"
    neighbourhood_order: NeighbourhoodOrder = "graph"

    def __post_init__(self) -> None:
        _check_settings(self.tau, self.max_step, self.fallback, self.fallback_fraction)
        _check_readings(self.neighbourhood, self.end_rule, self.score, self.drag_limit)
        _check_choice("combine", self.combine, COMBINES)
        _check_choice("neighbourhood_order", self.neighbourhood_order, NEIGHBOURHOOD_ORDERS)

    def plan_groups(
        self,
        profile: Mapping[str, float],
        graph: Any,
        *,
        monotone_groups: Iterable[Iterable[str]] | None = None,
    ) -> GrowthPlan:
        """Plan one growth of the channel groups of ``graph`` (see
        :func:`netsurgeon.nagn.plan_group_growth`); keys of the increments are group names."""
        from netsurgeon.nagn.group_planner import plan_group_growth

        return plan_group_growth(
            profile,
            graph,
            combine=self.combine,
            neighbourhood_order=self.neighbourhood_order,
            monotone_groups=monotone_groups,
            **self._rules(),
        )

    def plan(
        self,
        profile: Mapping[str, float],
        widths: Mapping[str, int],
        output_layers: Iterable[str] | None = None,
        *,
        monotone_groups: Iterable[Iterable[str]] | None = None,
    ) -> GrowthPlan:
        """Plan one growth step with these settings (see :func:`plan_growth`)."""
        return plan_growth(
            profile,
            widths,
            output_layers=output_layers,
            monotone_groups=monotone_groups,
            **self._rules(),
        )

    def _rules(self) -> dict[str, Any]:
        """The settings both planners share, as keyword arguments."""
        names = ("tau", "max_step", "monotone", "fallback", "fallback_fraction")
        readings = ("neighbourhood", "end_rule", "score", "drag_limit")
        return {name: getattr(self, name) for name in (*names, *readings)}
