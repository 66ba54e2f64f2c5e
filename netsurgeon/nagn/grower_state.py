"""``GrowerState``: everything a :class:`~netsurgeon.nagn.Grower` remembers, as one record.

The grower's atomicity and its checkpoints both read this one record: ``step`` keeps a
:meth:`GrowerState.copy` and puts it back if anything raises; ``Grower.state_dict`` is
:meth:`GrowerState.to_dict` (plus the config and the monitor's accumulators), and
:meth:`GrowerState.loaded_from` reads every checkpoint written so far. The model, the optimizer
and the monitor are saved separately.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from netsurgeon.nagn.events import GrowthEvent
from netsurgeon.nagn.trigger import TriggerState

__all__ = ["GrowerState"]


@dataclass
class GrowerState:
    """A grower's memory.

    Attributes:
        weights_rng: the generator that draws new weights (on the model's device).
        where_rng: the generator of the ``"random"`` where-criterion (CPU).
        epoch: the number of completed ``step`` calls.
        accuracies: every accuracy ``step`` recorded.
        history: every :class:`~netsurgeon.nagn.GrowthEvent`, in order.
        trigger: the trigger rules' memory (:class:`~netsurgeon.nagn.trigger.TriggerState`).
    """

    weights_rng: torch.Generator
    where_rng: torch.Generator
    epoch: int = 0
    accuracies: list[float] = field(default_factory=list)
    history: list[GrowthEvent] = field(default_factory=list)
    trigger: TriggerState = field(default_factory=TriggerState)

    @classmethod
    def seeded(cls, seed: int, device: torch.device) -> GrowerState:
        """A fresh state: weights drawn from ``seed`` on ``device``, the where-criterion from
        ``seed + 1``."""
        return cls(
            weights_rng=torch.Generator(device=device).manual_seed(seed),
            where_rng=torch.Generator().manual_seed(seed + 1),
        )

    def copy(self) -> GrowerState:
        """An independent copy: lists copied, generators cloned with their states (events and
        the trigger state are frozen records, shared)."""
        return GrowerState(
            weights_rng=_clone(self.weights_rng),
            where_rng=_clone(self.where_rng),
            epoch=self.epoch,
            accuracies=list(self.accuracies),
            history=list(self.history),
            trigger=self.trigger,
        )

    def to_dict(self) -> dict[str, Any]:
        """The state as checkpoint data (the keys ``Grower.state_dict`` has always written)."""
        trigger = self.trigger
        return {
            "epoch": self.epoch,
            "accuracies": list(self.accuracies),
            "window": list(trigger.window),
            "last_trigger_accuracy": trigger.last_trigger_accuracy,
            "stopped": trigger.stopped,
            "stop_cause": trigger.stop_cause,
            "stop_reason": trigger.stop_reason,
            "history": [event.to_dict() for event in self.history],
            "weights_rng": self.weights_rng.get_state(),
            "where_rng": self.where_rng.get_state(),
        }

    def loaded_from(self, data: Mapping[str, Any]) -> GrowerState:
        """A new state read from :meth:`to_dict` data, with generators on this state's devices;
        raises (and changes nothing) on a bad generator state or event record.

        Checkpoints written before ``stop_cause`` was recorded read back with ``None``.
        """
        history = [GrowthEvent.from_dict(e) for e in data["history"]]
        weights_rng, where_rng = _clone(self.weights_rng), _clone(self.where_rng)
        weights_rng.set_state(data["weights_rng"])
        where_rng.set_state(data["where_rng"])
        trigger = TriggerState(
            window=tuple(data["window"]),
            last_trigger_accuracy=data["last_trigger_accuracy"],
            stopped=data["stopped"],
            stop_cause=data.get("stop_cause"),
            stop_reason=data["stop_reason"],
        )
        return GrowerState(
            weights_rng=weights_rng,
            where_rng=where_rng,
            epoch=data["epoch"],
            accuracies=list(data["accuracies"]),
            history=history,
            trigger=trigger,
        )


def _clone(generator: torch.Generator) -> torch.Generator:
    out = torch.Generator(device=generator.device)
    out.set_state(generator.get_state())
    return out
