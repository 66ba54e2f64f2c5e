"""``PlannerSettings``: the planner's eleven settings as one frozen record, checked once.

Every planner reads its settings from this record: :func:`netsurgeon.nagn.plan_growth` (a chain
of layers), :func:`netsurgeon.nagn.plan_group_growth` (the channel groups of a traced graph),
:class:`~netsurgeon.nagn.GrowthPlanner`, the :class:`~netsurgeon.nagn.GrowthConfig` of a
``Grower`` (``config.planner``) and the :class:`~netsurgeon.nagn.GrowthPlan` it produced
(``plan.settings``). A bad value fails where the record is made, with a
:class:`~netsurgeon.errors.ConfigError` naming the field, the value and what it allows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from netsurgeon.errors import ConfigError
from netsurgeon.nagn.checks import (
    DEFAULT_MAX_STEP,
    DRAG_LIMITS,
    FALLBACKS,
    SCORES,
    DragLimit,
    Fallback,
    Score,
)
from netsurgeon.nagn.contrast import END_RULES, NEIGHBOURHOODS, EndRule, Neighbourhood
from netsurgeon.nagn.groups import COMBINES, NEIGHBOURHOOD_ORDERS, Combine, NeighbourhoodOrder

__all__ = ["PLANNER_FIELDS", "PlannerSettings", "check_planner_settings"]


@dataclass(frozen=True)
class PlannerSettings:
    """How the planner turns a NAGN profile into increments (paper section 3; docs/nagn.md).

    Attributes:
        tau: contrast threshold; a layer grows under the main rule only when ``r_l > tau``
            (paper: 0.05); a finite number >= 0.
        max_step: most units one layer (or group) gains per growth; an int >= 1, or ``None``
            for only "at most doubled".
        monotone: enforce the non-decreasing width constraint along the backbone.
        fallback: what grows when no layer clears ``tau``: ``"fraction"``, ``"unit"`` or
            ``"none"``.
        fallback_fraction: the fraction of its width a fallback layer gains (at least one
            unit); in (0, 1].
        neighbourhood: ``"arithmetic"`` (the paper's eq. 2) or ``"geometric"`` (in log space).
        end_rule: the end layers' neighbourhood: ``"extrapolate"`` (the paper), ``"adjacent"``
            or ``"none"``.
        score: ``"normalised"`` (the paper: ``s = p / max p``), ``"damped"`` or ``"excess"``.
        drag_limit: most the non-decreasing constraint adds per step: ``"step"``, ``"double"``
            or ``"none"``.
        combine: one NAGN per channel group from its producers': ``"rms"``, ``"max"`` or
            ``"mean"`` (group plans only).
        neighbourhood_order: a group's neighbours: ``"graph"`` (the groups it reads and that
            read it) or ``"depth"`` (a chain in depth order; group plans only).

    Example:
        >>> PlannerSettings(tau=0.1).tau
        0.1
        >>> PlannerSettings(score="max")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        netsurgeon.errors.ConfigError: PlannerSettings.score='max': expected one of ['normalised', ...
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
        check_planner_settings(self.to_dict(), type(self).__name__)

    def to_dict(self) -> dict[str, Any]:
        """The eleven settings as a flat, JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlannerSettings:
        """The settings named in ``data`` (other keys are ignored); a missing one is its default,
        which is what records written before it existed were planned with."""
        return cls(**{name: data[name] for name in PLANNER_FIELDS if name in data})

    def updated(self, **overrides: Any) -> PlannerSettings:
        """A copy with ``overrides`` (setting names only; an unknown one raises ``ConfigError``)."""
        unknown = sorted(set(overrides) - set(PLANNER_FIELDS))
        if unknown:
            raise ConfigError(
                f"{type(self).__name__}: unknown settings {unknown}; the planner's settings are "
                f"{list(PLANNER_FIELDS)}."
            )
        return replace(self, **overrides) if overrides else self


PLANNER_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(PlannerSettings))

_CHOICES: dict[str, tuple[str, ...]] = {
    "fallback": FALLBACKS,
    "neighbourhood": NEIGHBOURHOODS,
    "end_rule": END_RULES,
    "score": SCORES,
    "drag_limit": DRAG_LIMITS,
    "combine": COMBINES,
    "neighbourhood_order": NEIGHBOURHOOD_ORDERS,
}


def check_planner_settings(values: Mapping[str, Any], owner: str) -> None:
    """Raise :class:`~netsurgeon.errors.ConfigError` for the first setting in ``values`` that
    its field does not allow, naming ``owner.field``, the value and what is allowed.

    The one check of the planner's settings (``PlannerSettings`` and ``GrowthConfig`` call it).
    """
    for name, value in values.items():
        expected = _expected(name, value)
        if expected is not None:
            raise ConfigError(f"{owner}.{name}={value!r}: expected {expected}.")


def _expected(name: str, value: Any) -> str | None:
    """What setting ``name`` allows, when ``value`` is not allowed; ``None`` when it is."""
    if name in _CHOICES:
        allowed = _CHOICES[name]
        ok = isinstance(value, str) and value in allowed
        return None if ok else f"one of {list(allowed)} (docs/nagn.md)"
    if name == "monotone":
        return None if isinstance(value, bool) else "True or False"
    if name == "max_step":
        ok = value is None or (_is_int(value) and value >= 1)
        return None if ok else "an int >= 1 or None (no absolute cap)"
    if name == "tau":
        ok = _is_real(value) and math.isfinite(value) and value >= 0
        return None if ok else "a finite number >= 0 (a contrast threshold, e.g. 0.05)"
    if name == "fallback_fraction":
        ok = _is_real(value) and 0 < value <= 1
        return None if ok else "a number in (0, 1]"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
