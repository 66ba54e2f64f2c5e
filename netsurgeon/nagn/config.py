"""``GrowthConfig``: the grower's rules, every field checked when the config is made.

The planner's eleven settings are keyword fields of the config (``GrowthConfig(tau=0.1)``,
``dataclasses.replace(config, score="damped")``, a flat ``dataclasses.asdict`` for records and
checkpoints) and one :class:`~netsurgeon.nagn.settings.PlannerSettings` record,
``config.planner``, built and checked once at construction by the settings' own check.

A bad value fails at ``GrowthConfig(...)`` with a :class:`~netsurgeon.errors.ConfigError` (a
``ValueError``) that names the field, the value and what the field allows, not at the first
growth epochs later. A value of the wrong type raises ``NetsurgeonTypeError``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from netsurgeon.cost import Budget
from netsurgeon.errors import ConfigError, NetsurgeonTypeError
from netsurgeon.nagn.checks import DEFAULT_MAX_STEP
from netsurgeon.nagn.monitor import DEFAULT_EVERY
from netsurgeon.nagn.settings import PLANNER_FIELDS, PlannerSettings, check_planner_settings
from netsurgeon.nagn.where import WHERE_CRITERIA
from netsurgeon.surgery import INIT_STRATEGIES

__all__ = ["GrowthConfig"]


@dataclass(frozen=True)
class GrowthConfig:
    """Growth hyper-parameters; defaults are the paper's (section 4).

    Attributes:
        delta_acc: relative validation-accuracy gain between two consecutive windows below which
            growth triggers (paper: 3e-3). Any finite number.
        w_acc: window length in epochs (paper: 3); an int >= 1.
        tau: contrast threshold of the planner (paper: 5e-2); finite, >= 0.
        delta_stop: minimum improvement of the window accuracy between two consecutive
            triggers; below it growth stops for good (paper: 5e-2). Any finite number (a
            negative one never stops).
        stop_mode: ``"absolute"`` (accuracy points, 0.05 = 5 points) or ``"relative"``.
        max_step: most units one layer gains per growth (paper: unset; see docs/nagn.md); an
            int >= 1 or ``None``.
        where: ``"nagn"`` (paper), ``"uniform"`` or ``"random"``, at matched budget.
        budget_match: what ``"uniform"`` and ``"random"`` hold equal to the NAGN plan:
            ``"units"`` (the paper's: its number of new units, each spread rounded up to the
            group's granularity) or ``"params"`` (its added parameters: the criterion's spread
            scaled down to fit; for groups of unequal granularity or cost, docs/nagn.md).
        monotone: enforce the non-decreasing width constraint along the backbone chain of
            channel groups (a VGG's conv layers, a ResNet's stage streams;
            ``netsurgeon.nagn.groups.backbone_chain``).
        fallback: planner rule when no layer clears ``tau`` (``"fraction"``, ``"unit"``, ``"none"``).
        fallback_fraction: the fraction of its width a fallback group gains (at least one unit).
        neighbourhood: ``"arithmetic"`` (the paper's eq. 2 and end rule) or ``"geometric"``
            (the same in log space; see ``netsurgeon.nagn.planner.relative_contrast``).
        end_rule, score, drag_limit: planner readings the paper leaves open; the defaults are
            its text (``netsurgeon.nagn.planner.plan_growth``, docs/nagn.md).
        combine: one NAGN per channel group from its producers': ``"rms"``, ``"max"`` or
            ``"mean"`` (``netsurgeon.nagn.groups``; the same for single-producer groups).
        neighbourhood_order: a group's neighbourhood: ``"graph"`` (the groups it reads and that
            read it) or ``"depth"`` (its neighbours in depth order); the same on a chain.
        every: NAGN is collected on one training step out of ``every``; an int >= 1.
        reduction: how the user's loss reduces over the batch (``"mean"`` or ``"sum"``).
        restart_windows: restart the accuracy windows after each trigger.
        max_growths: stop after this many growth events; an int >= 1 or ``None`` (no limit).
        init: initialisation strategy for new units: a registered name (``"paper"``,
            ``"net2net"``, or one added with ``netsurgeon.register_init``).
        seed: seeds new weights and the ``"random"`` criterion; an int.
        max_params: most parameters the model may reach (``None``: no cap).
        max_flops: most forward FLOPs on the grower's ``example_inputs`` (``None``: no cap).
        max_width: most units per layer: an int for every growable layer, or
            ``{layer name: width}`` (``None``: no cap).

    ``config.planner`` holds ``tau``, ``max_step``, ``monotone``, ``fallback``,
    ``fallback_fraction``, ``neighbourhood``, ``end_rule``, ``score``, ``drag_limit``,
    ``combine`` and ``neighbourhood_order`` as one
    :class:`~netsurgeon.nagn.settings.PlannerSettings`, which the grower plans with.

    A plan that would break a cap is scaled down (:func:`netsurgeon.cost.fit_to_budget`) and the
    event records it (``GrowthEvent.limited_by``). Unknown fields are refused by the constructor.

    Example:
        >>> GrowthConfig(w_acc=2, max_params=50_000).w_acc
        2
        >>> GrowthConfig(init="kaiming")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        netsurgeon.errors.ConfigError: GrowthConfig.init='kaiming': expected one of [...'paper'...]...
    """

    delta_acc: float = 3e-3
    w_acc: int = 3
    tau: float = 5e-2
    delta_stop: float = 5e-2
    stop_mode: Literal["absolute", "relative"] = "absolute"
    max_step: int | None = DEFAULT_MAX_STEP
    where: str = "nagn"
    budget_match: Literal["units", "params"] = "units"
    monotone: bool = True
    fallback: str = "fraction"
    fallback_fraction: float = 0.125
    neighbourhood: Literal["arithmetic", "geometric"] = "arithmetic"
    # The end layers' neighbourhood: "extrapolate" (median slope), "adjacent" or "none".
    end_rule: Literal["extrapolate", "adjacent", "none"] = "extrapolate"
    # s_l: "normalised" (p / max p), "damped" (p / max(max p, 1)) or "excess" (min(p, 1)).
    score: Literal["normalised", "damped", "excess"] = "normalised"
    # Most the non-decreasing constraint adds to a layer per step: "step", "double" or "none".
    drag_limit: Literal["step", "double", "none"] = "step"
    # One NAGN per channel group from its producers': "rms", "max" or "mean".
    combine: Literal["rms", "max", "mean"] = "rms"
    # A group's neighbours: "graph" (reads / read by) or "depth" (chain in depth order).
    neighbourhood_order: Literal["graph", "depth"] = "graph"
    every: int = DEFAULT_EVERY
    reduction: Literal["mean", "sum"] = "mean"
    restart_windows: bool = True
    max_growths: int | None = None
    init: str = "paper"
    seed: int = 0
    max_params: int | None = None
    max_flops: int | None = None
    max_width: int | Mapping[str, int] | None = None

    def __post_init__(self) -> None:
        _number(self, "delta_acc")
        _number(self, "delta_stop")
        _integer(self, "w_acc", minimum=1)
        _integer(self, "every", minimum=1)
        _integer(self, "seed")
        planner = {name: getattr(self, name) for name in PLANNER_FIELDS}
        check_planner_settings(planner, type(self).__name__)  # the settings' one check
        object.__setattr__(self, "_planner", PlannerSettings(**planner))
        for name in ("max_growths", "max_params", "max_flops"):
            if getattr(self, name) is not None:
                _integer(self, name, minimum=1, none_ok=True)
        _choice(self, "stop_mode", ("absolute", "relative"))
        _choice(self, "where", tuple(sorted(WHERE_CRITERIA)))
        _choice(self, "budget_match", ("params", "units"))
        _choice(self, "reduction", ("mean", "sum"))
        _choice(
            self,
            "init",
            tuple(sorted(INIT_STRATEGIES)),
            hint="; add a strategy with @netsurgeon.register_init(name) before making the config",
        )
        if not isinstance(self.restart_windows, bool):
            _fail(self, "restart_windows", "expected True or False", type_error=True)
        self._check_max_width()

    def _check_max_width(self) -> None:
        value = self.max_width
        if value is None:
            return
        if isinstance(value, Mapping):
            bad = {
                k: v
                for k, v in value.items()
                if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, int) or v < 1
            }
            if bad:
                _fail(
                    self,
                    "max_width",
                    f"expected {{layer name: int >= 1}}; these entries are not: {bad}",
                )
            object.__setattr__(self, "max_width", dict(value))  # a private copy
        else:
            _integer(self, "max_width", minimum=1, none_ok=True, extra="or {layer name: width}")

    @property
    def planner(self) -> PlannerSettings:
        """The planner's settings as one record (checked when the config was made)."""
        return self._planner  # type: ignore[attr-defined, no-any-return]

    @property
    def budget(self) -> Budget:
        """The caps as a :class:`~netsurgeon.cost.Budget`."""
        return Budget(self.max_params, self.max_flops, self.max_width)


def _fail(config: GrowthConfig, name: str, expected: str, *, type_error: bool = False) -> None:
    value = getattr(config, name)
    message = f"GrowthConfig.{name}={value!r}: {expected}."
    raise (NetsurgeonTypeError if type_error else ConfigError)(message)


def _number(config: GrowthConfig, name: str, *, minimum: float | None = None) -> None:
    value: Any = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(config, name, "expected a finite number", type_error=True)
    if not math.isfinite(value):
        _fail(config, name, "expected a finite number")
    if minimum is not None and value < minimum:
        _fail(config, name, f"expected a number >= {minimum:g}")


def _integer(
    config: GrowthConfig,
    name: str,
    *,
    minimum: int | None = None,
    none_ok: bool = False,
    extra: str = "",
) -> None:
    value: Any = getattr(config, name)
    allowed = "an int" + (f" >= {minimum}" if minimum is not None else "")
    allowed += f" {extra}" if extra else ""
    allowed += " or None" if none_ok else ""
    if isinstance(value, bool) or not isinstance(value, int):
        hint = f" (write {int(value)})" if isinstance(value, float) and value.is_integer() else ""
        _fail(config, name, f"expected {allowed}{hint}", type_error=True)
    if minimum is not None and value < minimum:
        _fail(config, name, f"expected {allowed}")


def _choice(config: GrowthConfig, name: str, allowed: tuple[str, ...], hint: str = "") -> None:
    value = getattr(config, name)
    if not isinstance(value, str) or value not in allowed:
        _fail(config, name, f"expected one of {list(allowed)}{hint}")
