"""``Grower``: grow a network while the user's own loop trains it (paper section 4).

The user keeps their loop and calls ``grower.step(val_accuracy)`` once per epoch, after
validation. NAGN is collected by the grower's :class:`NAGNMonitor` during the user's own
backward passes of that epoch. The rules (all in :class:`GrowthConfig`):

* **Trigger.** Over the validation accuracies since the last restart, compare the mean of the
  last ``w_acc`` epochs (current window) with the mean of the ``w_acc`` before (previous window):
  a relative gain ``(cur - prev) / prev < delta_acc`` triggers. The first trigger therefore
  needs ``2 * w_acc`` epochs.
* **Restart.** After a trigger the windows restart (``restart_windows``): the grown network gets
  ``2 * w_acc`` fresh epochs before it can trigger again, and pre-growth accuracies never mix
  with post-growth ones.
* **Termination.** At every trigger after the first, the current-window mean is compared with the
  one at the previous trigger; an improvement below ``delta_stop`` (absolute accuracy points by
  default, ``stop_mode="relative"`` for a fraction) disables growth for good, and that trigger does
  not grow.
* **Where.** The planner turns the epoch's NAGN profile into increments; the where-criterion
  (``"nagn"``, ``"uniform"``, ``"random"``) decides how that budget is spread.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from netsurgeon.graph import trace
from netsurgeon.nagn.monitor import DEFAULT_EVERY, NAGNMonitor
from netsurgeon.nagn.planner import (
    DEFAULT_MAX_STEP,
    GrowthPlan,
    GrowthPlanner,
    conv_backbone_groups,
)
from netsurgeon.nagn.where import WHERE_CRITERIA
from netsurgeon.surgery import widen

__all__ = ["Grower", "GrowthConfig", "GrowthEvent", "window_gain"]


@dataclass(frozen=True)
class GrowthConfig:
    """Growth hyper-parameters; defaults are the paper's (section 4).

    Attributes:
        delta_acc: relative validation-accuracy gain between two consecutive windows below which
            growth triggers (paper: 3e-3).
        w_acc: window length in epochs (paper: 3).
        tau: contrast threshold of the planner (paper: 5e-2).
        delta_stop: minimum improvement of the window accuracy between two consecutive
            triggers; below it growth stops for good (paper: 5e-2).
        stop_mode: ``"absolute"`` (accuracy points, 0.05 = 5 points) or ``"relative"``.
        max_step: most units one layer gains per growth (paper: unset; see docs/nagn.md).
        where: ``"nagn"`` (paper), ``"uniform"`` or ``"random"``, at matched budget.
        monotone: enforce the non-decreasing width constraint over the conv backbone.
        fallback: planner rule when no layer clears ``tau`` (``"fraction"``, ``"unit"``, ``"none"``).
        neighbourhood: ``"arithmetic"`` (the paper's eq. 2 and end rule) or ``"geometric"``
            (the same in log space; see ``netsurgeon.nagn.planner.relative_contrast``).
        end_rule, score, drag_limit: planner readings the paper leaves open; the defaults are
            its text (``netsurgeon.nagn.planner.plan_growth``, docs/nagn.md).
        every: NAGN is collected on one training step out of ``every``.
        reduction: how the user's loss reduces over the batch (``"mean"`` or ``"sum"``).
        restart_windows: restart the accuracy windows after each trigger.
        max_growths: stop after this many growth events (``None``: no limit).
        init: initialisation strategy for new units (``"paper"``, ``"net2net"``).
        seed: seeds new weights and the ``"random"`` criterion.
    """

    delta_acc: float = 3e-3
    w_acc: int = 3
    tau: float = 5e-2
    delta_stop: float = 5e-2
    stop_mode: Literal["absolute", "relative"] = "absolute"
    max_step: int | None = DEFAULT_MAX_STEP
    where: str = "nagn"
    monotone: bool = True
    fallback: str = "fraction"
    neighbourhood: Literal["arithmetic", "geometric"] = "arithmetic"
    # The end layers' neighbourhood: "extrapolate" (median slope), "adjacent" or "none".
    end_rule: Literal["extrapolate", "adjacent", "none"] = "extrapolate"
    # s_l: "normalised" (p / max p), "damped" (p / max(max p, 1)) or "excess" (min(p, 1)).
    score: Literal["normalised", "damped", "excess"] = "normalised"
    # Most the non-decreasing constraint adds to a layer per step: "step", "double" or "none".
    drag_limit: Literal["step", "double", "none"] = "step"
    every: int = DEFAULT_EVERY
    reduction: Literal["mean", "sum"] = "mean"
    restart_windows: bool = True
    max_growths: int | None = None
    init: str = "paper"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.where not in WHERE_CRITERIA:
            raise ValueError(f"where={self.where!r}; expected one of {sorted(WHERE_CRITERIA)}")
        if self.stop_mode not in ("absolute", "relative"):
            raise ValueError(f"stop_mode={self.stop_mode!r}; expected 'absolute' or 'relative'")
        if isinstance(self.w_acc, bool) or not isinstance(self.w_acc, int) or self.w_acc < 1:
            raise ValueError(f"w_acc={self.w_acc!r}; expected an int >= 1 (epochs per window)")
        for name in ("delta_acc", "delta_stop", "tau"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name}={getattr(self, name)!r}; expected a finite number")


@dataclass(frozen=True)
class GrowthEvent:
    """One growth: when, why (the NAGN profile and the planner's record) and what changed.

    Attributes:
        epoch: the epoch (1-based count of ``step`` calls) at whose end the model grew.
        window_accuracy: mean validation accuracy of the window that triggered.
        where: the criterion that spread the budget.
        profile: NAGN per layer during the epoch.
        plan: the planner's record (its increments are the NAGN plan's).
        increments: units actually added per layer (equal to the plan's for ``"nagn"``).
        widths_before, widths_after: layer widths.
        params_before, params_after: parameter counts.
    """

    epoch: int
    window_accuracy: float
    where: str
    profile: dict[str, float]
    plan: GrowthPlan
    increments: dict[str, int]
    widths_before: dict[str, int]
    widths_after: dict[str, int]
    params_before: int
    params_after: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["plan"] = self.plan.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GrowthEvent:
        return cls(**{**data, "plan": GrowthPlan.from_dict(data["plan"])})


def window_gain(accuracies: list[float], w: int) -> float | None:
    """Relative gain of the last ``w`` accuracies' mean over the ``w`` before, or ``None``.

    Example:
        >>> round(window_gain([0.5, 0.5, 0.6, 0.6], 2), 3)
        0.2
    """
    if len(accuracies) < 2 * w:
        return None
    previous = sum(accuracies[-2 * w : -w]) / w
    current = sum(accuracies[-w:]) / w
    return math.inf if previous <= 0 else (current - previous) / previous


class Grower:
    """Grow ``model`` in place during training, where NAGN says it is under-expressive.

    Args:
        model: the user's model (any model ``netsurgeon.trace`` accepts).
        optimizer: its state is carried across every growth.
        config: the growth rules.

    Example:
        >>> grower = Grower(model, optimizer, GrowthConfig())          # doctest: +SKIP
        >>> for epoch in range(epochs):                                 # doctest: +SKIP
        ...     train_one_epoch(model, optimizer)   # NAGN collected here
        ...     event = grower.step(evaluate(model, val_loader))
        ...     if event: print(event.widths_after)
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        config: GrowthConfig | None = None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.config = config or GrowthConfig()
        graph = trace(model, strict=False)
        self.layers = graph.layers
        self.monitor = NAGNMonitor(
            model, self.layers, reduction=self.config.reduction, every=self.config.every
        )
        self.planner = GrowthPlanner(
            tau=self.config.tau,
            max_step=self.config.max_step,
            monotone=self.config.monotone,
            fallback=self.config.fallback,
            neighbourhood=self.config.neighbourhood,
            end_rule=self.config.end_rule,
            score=self.config.score,
            drag_limit=self.config.drag_limit,
        )
        device = next(model.parameters()).device
        self._weights_rng = torch.Generator(device=device).manual_seed(self.config.seed)
        self._where_rng = torch.Generator().manual_seed(self.config.seed + 1)
        self.history: list[GrowthEvent] = []
        self.accuracies: list[float] = []
        self.epoch = 0
        self.stopped = False
        self.stop_reason: str | None = None
        self._window: list[float] = []
        self._last_trigger_accuracy: float | None = None

    # -- the per-epoch call ----------------------------------------------------------------------
    def step(self, val_accuracy: float) -> GrowthEvent | None:
        """Record this epoch's validation accuracy; grow if the rules say so.

        Returns:
            The :class:`GrowthEvent` when the model grew at this call, else ``None``.
        """
        if isinstance(val_accuracy, torch.Tensor):
            val_accuracy = float(val_accuracy)
        if not isinstance(val_accuracy, (int, float)) or not math.isfinite(val_accuracy):
            raise ValueError(f"val_accuracy must be a finite number, got {val_accuracy!r}")
        self.epoch += 1
        self.accuracies.append(float(val_accuracy))
        self._window.append(float(val_accuracy))
        event = None
        gain = window_gain(self._window, self.config.w_acc)
        if not self.stopped and gain is not None and gain < self.config.delta_acc:
            event = self._on_trigger()
        self.monitor.reset()
        return event

    def _on_trigger(self) -> GrowthEvent | None:
        cfg = self.config
        accuracy = sum(self._window[-cfg.w_acc :]) / cfg.w_acc
        if cfg.restart_windows:
            self._window = []
        if self._last_trigger_accuracy is not None:
            improvement = accuracy - self._last_trigger_accuracy
            if cfg.stop_mode == "relative" and self._last_trigger_accuracy > 0:
                improvement /= self._last_trigger_accuracy
            if improvement < cfg.delta_stop:
                self._stop(
                    f"epoch {self.epoch}: window accuracy improved by {improvement:.4g} "
                    f"({cfg.stop_mode}) since the last trigger, below delta_stop={cfg.delta_stop}"
                )
                return None
        self._last_trigger_accuracy = accuracy
        event = self._grow(accuracy)
        if cfg.max_growths is not None and len(self.history) >= cfg.max_growths:
            self._stop(f"reached max_growths={cfg.max_growths}")
        return event

    def _grow(self, accuracy: float) -> GrowthEvent | None:
        profile = self.monitor.profile()  # MonitorError if the epoch had no training step
        graph = trace(self.model, strict=False)
        widths = graph.widths()
        growable = graph.widenable_layers
        plan = self.planner.plan(
            profile,
            widths,
            output_layers=[n for n in self.layers if n not in growable],
            monotone_groups=conv_backbone_groups(self.model, self.layers)
            if self.config.monotone
            else None,
        )
        increments = WHERE_CRITERIA[self.config.where](
            plan.increments, widths, growable, self._where_rng
        )
        if not increments:
            return None
        params_before = _count(self.model)
        widen(
            self.model,
            increments,
            optimizer=self.optimizer,
            generator=self._weights_rng,
            init=self.config.init,
        )
        event = GrowthEvent(
            epoch=self.epoch,
            window_accuracy=accuracy,
            where=self.config.where,
            profile=profile,
            plan=plan,
            increments=increments,
            widths_before=widths,
            widths_after=graph.widths(),
            params_before=params_before,
            params_after=_count(self.model),
        )
        self.history.append(event)
        return event

    def _stop(self, reason: str) -> None:
        self.stopped, self.stop_reason = True, reason

    # -- lifecycle and checkpoints ----------------------------------------------------------------
    def close(self) -> None:
        """Detach the monitor's hooks."""
        self.monitor.detach()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume mid-run (the model and optimizer are saved separately)."""
        return {
            "config": dataclasses.asdict(self.config),
            "epoch": self.epoch,
            "accuracies": list(self.accuracies),
            "window": list(self._window),
            "last_trigger_accuracy": self._last_trigger_accuracy,
            "stopped": self.stopped,
            "stop_reason": self.stop_reason,
            "history": [event.to_dict() for event in self.history],
            "weights_rng": self._weights_rng.get_state(),
            "where_rng": self._where_rng.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (load the grown model with
        ``netsurgeon.load_state_dict`` first)."""
        if state["config"] != dataclasses.asdict(self.config):
            raise ValueError(
                "the checkpoint was made with a different GrowthConfig; construct the Grower "
                f"with GrowthConfig(**state['config']). Checkpoint: {state['config']}"
            )
        self.epoch = state["epoch"]
        self.accuracies = list(state["accuracies"])
        self._window = list(state["window"])
        self._last_trigger_accuracy = state["last_trigger_accuracy"]
        self.stopped = state["stopped"]
        self.stop_reason = state["stop_reason"]
        self.history = [GrowthEvent.from_dict(e) for e in state["history"]]
        self._weights_rng.set_state(state["weights_rng"])
        self._where_rng.set_state(state["where_rng"])


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
