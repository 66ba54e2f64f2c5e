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

Steps 2-6 are the decision rule of :mod:`netsurgeon.nagn.decision` (shared with the group
planner), under one :class:`~netsurgeon.nagn.settings.PlannerSettings` record. Every
intermediate is kept in a frozen :class:`GrowthPlan`. The plan is exactly invariant to
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

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, overload

from netsurgeon.errors import PlanError
from netsurgeon.graph import LayerGraph
from netsurgeon.nagn.checks import (
    DRAG_LIMITS,
    FALLBACKS,
    SCORES,
    _check_groups,
    _check_inputs,
)
from netsurgeon.nagn.contrast import (
    END_RULES,
    NEIGHBOURHOODS,
    chain_neighbours,
    relative_contrast,
)
from netsurgeon.nagn.decision import Nodes, decide, monotone_adjust
from netsurgeon.nagn.group_planner import plan_group_growth
from netsurgeon.nagn.groups import has_spatial_kernel
from netsurgeon.nagn.plan import GrowthPlan, LayerPlan
from netsurgeon.nagn.settings import PlannerSettings

__all__ = [
    "DRAG_LIMITS",
    "END_RULES",
    "FALLBACKS",
    "NEIGHBOURHOODS",
    "SCORES",
    "GrowthPlan",
    "GrowthPlanner",
    "LayerPlan",
    "PlannerSettings",
    "conv_backbone_groups",
    "monotone_adjust",
    "plan_growth",
    "relative_contrast",
]

# ----------------------------------------------------------------------------- planner


@overload
def plan_growth(
    profile: Mapping[str, float],
    widths: Mapping[str, int],
    *,
    output_layers: Iterable[str] | None = None,
    monotone_groups: Iterable[Iterable[str]] | None = None,
    settings: PlannerSettings | None = None,
    **overrides: Any,
) -> GrowthPlan: ...


@overload
def plan_growth(
    profile: Mapping[str, float],
    widths: LayerGraph,
    *,
    output_layers: None = None,
    monotone_groups: Iterable[Iterable[str]] | None = None,
    settings: PlannerSettings | None = None,
    **overrides: Any,
) -> GrowthPlan: ...


def plan_growth(
    profile: Mapping[str, float],
    widths: Mapping[str, int] | LayerGraph,
    *,
    output_layers: Iterable[str] | None = None,
    monotone_groups: Iterable[Iterable[str]] | None = None,
    settings: PlannerSettings | None = None,
    **overrides: Any,
) -> GrowthPlan:
    """Decide how many units each layer gains from its NAGN profile (paper section 3).

    Two routes, by the type of ``widths``: a mapping ``{layer: width}`` plans the layers as a
    chain (this function's rule); a ``LayerGraph`` (``netsurgeon.trace(model)``) plans its
    channel groups, exactly :func:`netsurgeon.nagn.plan_group_growth` (use it for models with
    residual streams, concatenations or grouped convolutions, where one layer's increment is
    not free; ``output_layers`` must then be ``None``: unwidenable groups never grow).

    Args:
        profile: ``{layer: NAGN}`` in depth order (e.g. ``NAGNMonitor.profile()``).
        widths: ``{layer: width}`` for the same layers, or the traced ``LayerGraph``.
        output_layers: layers that never grow; default: the last layer of ``profile``.
        monotone_groups: groups of layers (each in depth order) inside which the constraint
            applies; default: all growable layers as one group. For a CNN with a dense head pass
            :func:`conv_backbone_groups` so that a tapering classifier head is left alone.
        settings: the rule's settings (:class:`~netsurgeon.nagn.settings.PlannerSettings`:
            ``tau``, ``max_step``, ``monotone``, ``fallback``, ``fallback_fraction`` and the
            readings ``neighbourhood``, ``end_rule``, ``score``, ``drag_limit``); default: the
            paper's.
        **overrides: settings by name, on top of ``settings`` (``plan_growth(p, w, tau=0.1)``).

    Returns:
        A frozen :class:`GrowthPlan`; ``plan.increments`` is ``{layer: dn > 0}``;
        ``plan.settings`` records the settings (``neighbourhood_order="depth"``: a chain).

    Raises:
        ConfigError: an unknown or bad setting (naming it and what it allows).
        PlanError: mismatched layer names, a negative or non-finite NAGN, a width < 1, an
            unknown output layer or monotone group.

    Example:
        >>> plan = plan_growth({"a": 1.0, "b": 2.0, "c": 1.0, "out": 1.0},
        ...                    {"a": 8, "b": 4, "c": 8, "out": 10})
        >>> plan.increments
        {'b': 4}
    """
    chosen = (settings or PlannerSettings()).updated(**overrides)
    if isinstance(widths, LayerGraph):
        if output_layers is not None:
            raise PlanError(
                "plan_growth(profile, graph) plans channel groups: unwidenable groups (the output "
                "among them) never grow, so output_layers must be None; found "
                f"{output_layers!r}. Pass graph.widths() instead of the graph for a per-layer plan."
            )
        return plan_group_growth(profile, widths, settings=chosen, monotone_groups=monotone_groups)
    return _plan_chain(profile, widths, output_layers, monotone_groups, chosen)


def _plan_chain(
    profile: Mapping[str, float],
    widths: Mapping[str, int],
    output_layers: Iterable[str] | None,
    monotone_groups: Iterable[Iterable[str]] | None,
    settings: PlannerSettings,
) -> GrowthPlan:
    """The per-layer route of :func:`plan_growth`: checked inputs, a chain, the rule."""
    names, g, n = _check_inputs(profile, widths)
    outputs = _output_layers(names, output_layers)
    chains = None
    if settings.monotone:
        chains = (
            (tuple(name for name in names if name not in outputs),)
            if monotone_groups is None
            else _check_groups(monotone_groups, names)
        )
    before, after = chain_neighbours(len(names))
    nodes = Nodes(
        names=tuple(names),
        nagn=tuple(g),
        widths=tuple(n),
        outputs=frozenset(outputs),
        before=tuple(tuple(b) for b in before),
        after=tuple(tuple(a) for a in after),
    )
    as_used = replace(
        settings, combine=PlannerSettings.combine, neighbourhood_order="depth"
    )  # a chain of layers: no group statistic, neighbours in depth order
    return decide(nodes, as_used, chains)


def _output_layers(names: list[str], output_layers: Iterable[str] | None) -> set[str]:
    """The layers that never grow: ``output_layers`` checked against ``names``, default the last."""
    if output_layers is None:
        return {names[-1]}
    if isinstance(output_layers, str):
        output_layers = [output_layers]
    outputs = set(output_layers)
    unknown = sorted(outputs - set(names))
    if unknown:
        raise PlanError(
            f"output_layers {unknown} are not in the profile (layers: {names}). "
            "Pass the names of profiled layers that must never grow."
        )
    return outputs


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
    convs = tuple(name for name in layers if has_spatial_kernel(model.get_submodule(name)))
    return (convs,) if convs else ()


@dataclass(frozen=True)
class GrowthPlanner(PlannerSettings):
    """The planner's settings (:class:`~netsurgeon.nagn.settings.PlannerSettings`, checked once)
    with the two routes as methods: :meth:`plan` (a chain of layers, :func:`plan_growth`) and
    :meth:`plan_groups` (the channel groups of a graph, :func:`plan_group_growth`).

    Example:
        >>> planner = GrowthPlanner(tau=0.05, max_step=4)
        >>> planner.plan({"a": 1.0, "b": 3.0, "c": 1.0, "out": 1.0},
        ...              {"a": 8, "b": 8, "c": 8, "out": 10}).increments  # c keeps up with b
        {'b': 4, 'c': 4}
    """

    @classmethod
    def of(cls, settings: PlannerSettings) -> GrowthPlanner:
        """The planner with ``settings``."""
        return cls(**settings.to_dict())

    @property
    def settings(self) -> PlannerSettings:
        """These settings as a plain :class:`~netsurgeon.nagn.settings.PlannerSettings`."""
        return PlannerSettings(**self.to_dict())

    def plan_groups(
        self,
        profile: Mapping[str, float],
        graph: LayerGraph,
        *,
        monotone_groups: Iterable[Iterable[str]] | None = None,
    ) -> GrowthPlan:
        """Plan one growth of the channel groups of ``graph`` (see
        :func:`netsurgeon.nagn.plan_group_growth`); keys of the increments are group names."""
        return plan_group_growth(
            profile, graph, settings=self.settings, monotone_groups=monotone_groups
        )

    def plan(
        self,
        profile: Mapping[str, float],
        widths: Mapping[str, int],
        output_layers: Iterable[str] | None = None,
        *,
        monotone_groups: Iterable[Iterable[str]] | None = None,
    ) -> GrowthPlan:
        """Plan one growth step of a chain of layers with these settings (see
        :func:`plan_growth`)."""
        return _plan_chain(profile, widths, output_layers, monotone_groups, self.settings)
