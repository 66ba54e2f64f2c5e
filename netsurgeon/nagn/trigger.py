"""When to grow and when to stop: the grower's trigger rules as a pure policy (paper section 4).

:class:`TriggerPolicy` holds the rules (from a :class:`~netsurgeon.nagn.GrowthConfig`);
:class:`TriggerState` what they remember (the accuracy window, the window mean at the last
trigger, whether and why growth stopped). Accuracies go in, decisions come out, nothing is
mutated:

* **Trigger.** Over the accuracies since the last restart, the mean of the last ``w_acc``
  (current window) against the mean of the ``w_acc`` before: a relative gain below
  ``delta_acc`` triggers (:func:`window_gain`). The first trigger needs ``2 * w_acc`` epochs.
* **Restart.** After a trigger the window restarts (``restart_windows``).
* **Stop.** At every trigger after the first, the current-window mean is compared with the one
  at the previous trigger; an improvement below ``delta_stop`` (absolute accuracy points, or
  ``stop_mode="relative"``) stops growth for good, and that trigger does not grow (an
  improvement of exactly ``delta_stop`` grows). After a growth, ``max_growths`` may stop it.

``Grower`` and ``benchmarks/replay_planner.py`` (which replays recorded accuracies) both step it.

Example:
    >>> policy = TriggerPolicy(w_acc=1, delta_acc=0.01, delta_stop=0.05)
    >>> first = policy.observe(TriggerState(), 0.5)
    >>> second = policy.observe(first.state, 0.5)  # no gain over the window before
    >>> first.trigger, second.trigger, second.window_accuracy
    (False, True, 0.5)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

__all__ = ["StopCause", "TriggerDecision", "TriggerPolicy", "TriggerState", "window_gain"]

StopCause = Literal["delta_stop", "max_growths", "budget"]


def window_gain(accuracies: Sequence[float], w: int) -> float | None:
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


@dataclass(frozen=True)
class TriggerState:
    """What the trigger rules remember between epochs.

    Attributes:
        window: the accuracies since the last restart.
        last_trigger_accuracy: the current-window mean at the last trigger that grew or
            planned (``None`` before the first).
        stopped: growth is disabled for good.
        stop_cause: ``"delta_stop"``, ``"max_growths"`` or ``"budget"``; ``None`` while growing.
        stop_reason: the same in words, with the numbers.
    """

    window: tuple[float, ...] = ()
    last_trigger_accuracy: float | None = None
    stopped: bool = False
    stop_cause: StopCause | None = None
    stop_reason: str | None = None

    def stop(self, cause: StopCause, reason: str) -> TriggerState:
        """This state with growth stopped for ``cause``."""
        return replace(self, stopped=True, stop_cause=cause, stop_reason=reason)


@dataclass(frozen=True)
class TriggerDecision:
    """What one accuracy decided.

    Attributes:
        state: the state after it.
        trigger: grow now (a plan is due).
        gain: the window gain, ``None`` before two full windows.
        window_accuracy: the current-window mean at a trigger (also one that stopped), else
            ``None``.
    """

    state: TriggerState
    trigger: bool = False
    gain: float | None = None
    window_accuracy: float | None = None

    @property
    def stopped_now(self) -> bool:
        """This accuracy stopped growth (a trigger whose improvement is below ``delta_stop``)."""
        return self.window_accuracy is not None and not self.trigger


@dataclass(frozen=True)
class TriggerPolicy:
    """The trigger, restart and stop rules (fields as :class:`~netsurgeon.nagn.GrowthConfig`'s)."""

    w_acc: int = 3
    delta_acc: float = 3e-3
    delta_stop: float = 5e-2
    stop_mode: Literal["absolute", "relative"] = "absolute"
    restart_windows: bool = True
    max_growths: int | None = None

    @classmethod
    def of(cls, config: Any) -> TriggerPolicy:
        """The policy of a ``GrowthConfig`` (or any object, or mapping, with its fields)."""
        get = config.get if isinstance(config, dict) else lambda k, d: getattr(config, k, d)
        defaults = cls()
        return cls(**{name: get(name, getattr(defaults, name)) for name in _FIELDS})

    def observe(self, state: TriggerState, accuracy: float) -> TriggerDecision:
        """Take one epoch's accuracy: the state after it, and whether growth is due now."""
        window = (*state.window, float(accuracy))
        gain = window_gain(window, self.w_acc)
        if state.stopped or gain is None or gain >= self.delta_acc:
            return TriggerDecision(replace(state, window=window), gain=gain)
        current = sum(window[-self.w_acc :]) / self.w_acc
        after = replace(state, window=() if self.restart_windows else window)
        last = state.last_trigger_accuracy
        if last is not None:
            improvement = current - last
            if self.stop_mode == "relative" and last > 0:
                improvement /= last
            if improvement < self.delta_stop:
                reason = (
                    f"window accuracy improved by {improvement:.4g} ({self.stop_mode}) since the "
                    f"last trigger, below delta_stop={self.delta_stop}"
                )
                return TriggerDecision(after.stop("delta_stop", reason), False, gain, current)
        after = replace(after, last_trigger_accuracy=current)
        return TriggerDecision(after, True, gain, current)

    def after_growth(self, state: TriggerState, growths: int) -> TriggerState:
        """The state once the model has grown ``growths`` times in all: stopped at
        ``max_growths``."""
        if self.max_growths is not None and growths >= self.max_growths and not state.stopped:
            return state.stop("max_growths", f"reached max_growths={self.max_growths}")
        return state


_FIELDS = ("w_acc", "delta_acc", "delta_stop", "stop_mode", "restart_windows", "max_growths")
