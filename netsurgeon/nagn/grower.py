"""``Grower``: grow a network while the user's own loop trains it (paper section 4).

The user keeps their loop and calls ``grower.step(val_accuracy)`` once per epoch, after
validation. NAGN is collected by the grower's :class:`NAGNMonitor` during the user's own
backward passes of that epoch. The rules (all in :class:`GrowthConfig`; when to grow and stop is
the pure :class:`~netsurgeon.nagn.trigger.TriggerPolicy`, what to grow ``config.planner``):

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
  not grow. ``max_growths`` and the caps (``max_params``, ``max_flops``, ``max_width``) stop it
  too; ``stop_cause`` says which rule did, ``stop_reason`` says it in words.
* **Where.** The group planner (:func:`netsurgeon.nagn.plan_group_growth`) turns the epoch's
  NAGN profile into increments per channel group (a VGG's layers, a ResNet's stage streams and
  block interiors); the where-criterion (``"nagn"``, ``"uniform"``, ``"random"``) decides how
  that budget is spread over the widenable groups, each rounded to its granularity, and the caps
  scale it down if it would exceed them. One trace per growth: the plan, every cost (previews
  and budget fitting on a meta copy, :class:`~netsurgeon.cost.Baseline`) and ``widen`` share it.

``step`` is atomic: it either completes, or raises and leaves the model, the optimizer and the
grower (windows, triggers, history, generators, the monitor's accumulators) as they were. Every
trigger, plan and stop is logged on the ``netsurgeon`` logger hierarchy (this module's logger).
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from netsurgeon.cost import Baseline, Budget, FittedPlan, fit
from netsurgeon.distributed import agree_on_accuracy, check_same_on_all_ranks
from netsurgeon.errors import NetsurgeonTypeError, NetsurgeonWarning
from netsurgeon.graph import LayerGraph, trace
from netsurgeon.nagn.config import GrowthConfig
from netsurgeon.nagn.events import GrowthEvent
from netsurgeon.nagn.groups import round_to_granularity, under_init
from netsurgeon.nagn.grower_state import GrowerState
from netsurgeon.nagn.inputs import (
    as_accuracy,
    as_number,
    check_budget,
    check_mirrors,
    check_model,
    config_differences,
    nothing_to_grow,
    training_mode,
)
from netsurgeon.nagn.monitor import NAGNMonitor
from netsurgeon.nagn.optimizers import optimizer_is_known, warn_about_optimizer
from netsurgeon.nagn.plan import GrowthPlan
from netsurgeon.nagn.planner import GrowthPlanner
from netsurgeon.nagn.trigger import StopCause, TriggerPolicy, window_gain
from netsurgeon.nagn.where import WHERE_CRITERIA
from netsurgeon.surgery import widen

__all__ = ["Grower", "GrowthConfig", "GrowthEvent", "StopCause", "window_gain"]

logger = logging.getLogger(__name__)


class Grower:
    """Grow ``model`` in place during training, where NAGN says it is under-expressive.

    Args:
        model: the user's model (any model ``netsurgeon.trace`` accepts), not a DDP wrapper.
        optimizer: the optimizer that trains ``model``; its state is carried across every growth.
            ``None`` warns (:class:`~netsurgeon.errors.NetsurgeonWarning`): an optimizer with
            per-parameter state that the grower does not know about fails at its next step.
        config: the growth rules.
        example_inputs: one input batch (a tensor or a tuple of forward arguments; only shapes
            are used) on which forward FLOPs are counted for the events and for ``max_flops``.
        distributed: the model is trained with ``DistributedDataParallel``: agree on the
            accuracy and all-reduce NAGN over ``group``; every rank calls ``step`` together.
            See :mod:`netsurgeon.distributed`.
        group: the process group (default: the whole world).
        mirrors: copies of ``model`` grown with it at every growth (an EMA, a
            ``torch.optim.swa_utils.AveragedModel``); see ``widen(..., mirrors=)``.
        frontend: how each growth traces the model (``trace(..., frontend=)``,
            ``docs/frontends.md``): ``"export"`` or ``"auto"`` for models symbolic tracing
            cannot read (Hugging Face transformers), with ``example_inputs``.

    Attributes:
        history: every :class:`GrowthEvent`, in order.
        accuracies: every accuracy ``step`` recorded.
        epoch: the number of completed ``step`` calls.
        stopped: growth is disabled for good (``step`` still records accuracies).
        stop_cause: why: ``"delta_stop"``, ``"max_growths"`` or ``"budget"``; ``None`` while
            growing.
        stop_reason: the same in words, with the numbers.

    Raises:
        WidenError: ``model`` is a DDP/FSDP/``torch.compile`` wrapper.
        TypeError: ``optimizer``, ``config`` or a mirror has the wrong type.
        ValueError: a mirror does not have the model's parameter names and shapes.
        ConfigError: the caps do not fit this model (unknown ``max_width`` layer, ``max_flops``
            without ``example_inputs``, a model already above ``max_params``/``max_flops``).

    Warns:
        NetsurgeonWarning: no optimizer, an untested optimizer class, an optimizer of another
            model (whose growth ``widen`` then refuses); a model with no widenable group (the
            warning says why, group by group).

    Example:
        >>> import torch, torch.nn.functional as F
        >>> from netsurgeon.models import vgg
        >>> model = vgg([[4], [4]], num_classes=3, image_size=8)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        >>> grower = Grower(model, opt, GrowthConfig(w_acc=1, delta_acc=1.0, every=1))
        >>> for epoch in range(2):
        ...     x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,))
        ...     opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()  # NAGN here
        ...     event = grower.step(0.5)  # validation accuracy, in [0, 1]
        >>> event.epoch, event.params_after > event.params_before
        (2, True)
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        config: GrowthConfig | None = None,
        *,
        example_inputs: Any = None,
        distributed: bool = False,
        group: Any = None,
        mirrors: Sequence[nn.Module] = (),
        frontend: str = "symbolic",
    ) -> None:
        check_model(model)
        _check_types(optimizer, config)
        self.model = model
        self.optimizer = optimizer
        self.config = config or GrowthConfig()
        self.example_inputs = example_inputs
        self.frontend = frontend
        self.distributed = bool(distributed)
        self.group = group
        self.mirrors = check_mirrors(model, mirrors)
        self.layers = self._inspect_model()
        self.monitor = NAGNMonitor(
            model, self.layers, reduction=self.config.reduction, every=self.config.every
        )
        self.planner = GrowthPlanner.of(self.config.planner)
        self.policy = TriggerPolicy.of(self.config)
        device = next(model.parameters()).device
        self._state = GrowerState.seeded(self.config.seed, device)

    def _inspect_model(self) -> list[str]:
        """Trace the model once: check the caps, that every rank agrees, the optimizer; warn
        when nothing can grow. Returns the layers to monitor."""
        model, frontend = self.model, self.frontend
        with training_mode(model):  # the forward that training runs (see _on_trigger)
            graph = trace(model, self.example_inputs, strict=False, frontend=frontend)
            check_budget(self.config, model, self.example_inputs, graph)
        if self.distributed:  # first: a rank that differs would fail alone below, and hang the rest
            check_same_on_all_ranks(
                (dataclasses.asdict(self.config), graph.widths()),
                "the GrowthConfig or the model's widths",
                self.group,
            )
        warn_about_optimizer(model, self.optimizer, stacklevel=3)  # the caller of __init__
        idle = nothing_to_grow(graph)
        if idle is not None:
            warnings.warn(
                f"Grower: {type(model).__name__} has nothing to grow, {idle}. Every trigger will "
                "add no units; see netsurgeon.trace(model, example_inputs).summary().",
                NetsurgeonWarning,
                stacklevel=3,
            )
        return graph.layers

    # -- the state, read through ----------------------------------------------------------------
    @property
    def history(self) -> list[GrowthEvent]:
        """Every :class:`GrowthEvent`, in order."""
        return self._state.history

    @property
    def accuracies(self) -> list[float]:
        """Every accuracy ``step`` recorded."""
        return self._state.accuracies

    @property
    def epoch(self) -> int:
        """The number of completed ``step`` calls."""
        return self._state.epoch

    @property
    def stopped(self) -> bool:
        """Growth is disabled for good (``step`` still records accuracies)."""
        return self._state.trigger.stopped

    @property
    def stop_cause(self) -> StopCause | None:
        """Why growth stopped: ``"delta_stop"``, ``"max_growths"`` or ``"budget"``."""
        return self._state.trigger.stop_cause

    @property
    def stop_reason(self) -> str | None:
        """Why growth stopped, in words, with the numbers."""
        return self._state.trigger.stop_reason

    @property
    def _weights_rng(self) -> torch.Generator:
        return self._state.weights_rng

    @property
    def _where_rng(self) -> torch.Generator:
        return self._state.where_rng

    # -- the per-epoch call ----------------------------------------------------------------------
    def step(self, val_accuracy: Any) -> GrowthEvent | None:
        """Record this epoch's validation accuracy; grow if the rules say so.

        Args:
            val_accuracy: the fraction of correct validation samples, in [0, 1] (not percent):
                a Python or numpy real (``np.float32`` too) or a one-element tensor or array.
                With ``distributed=True`` the ranks' values are averaged first.

        Returns:
            The :class:`GrowthEvent` when the model grew at this call, else ``None``.

        Raises:
            ValueError: the accuracy is not a finite number in [0, 1]. Nothing changes.
            MonitorError: a trigger found no NAGN (no training step since the last ``step``).
                Nothing changes: train an epoch and call ``step`` again.
            WidenError: the widening was refused. Nothing changes.
        """
        accuracy = self._accuracy(val_accuracy)
        saved = self._snapshot()
        try:
            event = self._advance(accuracy)
        except BaseException as e:
            self._restore(saved)
            logger.warning(
                "epoch %d: step failed (%s: %s); the model, the optimizer and the grower are "
                "unchanged",
                self.epoch + 1,
                type(e).__name__,
                e,
            )
            raise
        self.monitor.reset()
        if self.stopped:
            self.monitor.detach()
        return event

    def _accuracy(self, value: Any) -> float:
        if self.distributed:
            return agree_on_accuracy(as_number(value), self.group)
        return as_accuracy(value, self.config.delta_stop)

    def _advance(self, accuracy: float) -> GrowthEvent | None:
        state = self._state
        state.epoch += 1
        state.accuracies.append(accuracy)
        decision = self.policy.observe(state.trigger, accuracy)
        state.trigger = decision.state
        if decision.window_accuracy is None:
            return None
        cfg = self.config
        logger.info(
            "epoch %d: trigger: window gain %.4g < delta_acc=%g (window mean %.4f)",
            self.epoch,
            decision.gain,
            cfg.delta_acc,
            decision.window_accuracy,
        )
        if decision.stopped_now:  # the reason names the epoch, as every stop reason does
            reason = f"epoch {self.epoch}: {decision.state.stop_reason}"
            state.trigger = dataclasses.replace(decision.state, stop_reason=reason)
            logger.info("epoch %d: growth stopped (delta_stop): %s", self.epoch, reason)
            return None
        with training_mode(self.model):  # step() usually comes right after validation, in eval
            event = self._grow(decision.window_accuracy)
        if event is not None:
            after = self.policy.after_growth(state.trigger, len(state.history))
            if after.stopped and not state.trigger.stopped:
                self._stop("max_growths", after.stop_reason or "")
        return event

    def _grow(self, accuracy: float) -> GrowthEvent | None:
        cfg = self.config
        profile = self.monitor.profile(all_reduce=self.distributed, group=self.group)
        # The one trace of this growth: the plan, every cost and the widening read it (shapes
        # from the example inputs resolve what ranks alone cannot).
        graph = trace(self.model, self.example_inputs, strict=False, frontend=self.frontend)
        plan = self.planner.plan_groups(profile, graph, monotone_groups=None)
        groups = {record.name: record for record in plan.groups}
        group_widths = {name: record.width for name, record in groups.items()}
        granularity, growable, refused = under_init(graph, groups, cfg.init)
        for name, why in refused.items():
            logger.info("epoch %d: group '%s' does not grow: %s", self.epoch, name, why)
        increments = {g: k for g, k in plan.increments.items() if g in growable}
        if any(granularity[g] != groups[g].granularity for g in increments):  # e.g. a tiled stream
            increments = round_to_granularity(increments, group_widths, granularity)
        requested = WHERE_CRITERIA[cfg.where](
            increments, group_widths, growable, self._where_rng, granularity=granularity
        )
        if not requested:
            idle = nothing_to_grow(graph)
            if idle is not None:
                logger.warning("epoch %d: nothing to grow: %s", self.epoch, idle)
            else:
                logger.info("epoch %d: the plan adds no units (rule=%s)", self.epoch, plan.rule)
            return None
        basis = Baseline(self.model, self.example_inputs, graph=graph, init=cfg.init)
        if cfg.where != "nagn" and cfg.budget_match == "params":
            requested = self._match_params(
                basis, plan.increments, group_widths, growable, granularity
            )
        fitted = self._fit(basis, requested, granularity)
        if fitted.increments == plan.increments:  # what is applied is the plan: its cost
            plan = plan.with_cost(fitted.cost)
        logger.debug("epoch %d: %s", self.epoch, plan)
        if not fitted.increments:
            self._no_room(fitted, graph, growable)
            return None
        params_before = _count(self.model)
        widen(
            self.model,
            fitted.increments,
            optimizer=self.optimizer,
            generator=self._weights_rng,
            init=cfg.init,
            graph=graph,
            mirrors=self.mirrors,
        )
        # Nothing below can fail: the widening is the step's last fallible operation.
        return self._record(accuracy, profile, plan, fitted, graph, params_before)

    def _record(
        self,
        accuracy: float,
        profile: dict[str, float],
        plan: GrowthPlan,
        fitted: FittedPlan,
        graph: LayerGraph,
        params_before: int,
    ) -> GrowthEvent:
        """The event of a growth just applied, appended to the history and logged."""
        event = GrowthEvent(
            epoch=self.epoch,
            window_accuracy=accuracy,
            where=self.config.where,
            profile=profile,
            plan=plan,
            increments=fitted.increments,
            widths_before=graph.widths(),
            widths_after=fitted.cost.widths_after,  # from the plan: nothing is traced again
            params_before=params_before,
            params_after=_count(self.model),
            optimizer=None if self.optimizer is None else type(self.optimizer).__name__,
            optimizer_known=optimizer_is_known(self.optimizer),
            requested=fitted.requested,
            limited_by=fitted.limited_by,
            cost=fitted.cost,
        )
        self.history.append(event)
        logger.info("epoch %d: %s", event.epoch, event.summary())
        return event

    def _match_params(
        self,
        basis: Baseline,
        nagn: dict[str, int],
        widths: dict[str, int],
        growable: list[str],
        granularity: dict[str, int],
    ) -> dict[str, int]:
        """``budget_match="params"``: the criterion's spread of half the growable groups' total
        width (a random spread must not fill every group to doubling, where it would equal the
        uniform one), scaled down until it adds no more parameters than the NAGN plan ``nagn``
        would (``fit`` under a ``max_params`` cap; each increment rounded down to its group's
        granularity, so the spread stays the criterion's)."""
        if not nagn:
            return {}
        target = basis.cost(nagn).params_after
        half = sum(widths[name] for name in growable) // 2
        widest = WHERE_CRITERIA[self.config.where](
            nagn, widths, growable, self._where_rng, granularity=granularity, total=half
        )
        return fit(basis, widest, Budget(max_params=target), granularity=granularity).increments

    def _fit(
        self, basis: Baseline, requested: dict[str, int], granularity: dict[str, int]
    ) -> FittedPlan:
        """``requested`` within the caps, priced on this growth's baseline (no trace)."""
        budget = self.config.budget
        if budget.active:
            return fit(basis, requested, budget, granularity=granularity)
        return FittedPlan(requested, requested, (), 1.0, basis.cost(requested))

    def _no_room(self, fitted: FittedPlan, graph: LayerGraph, growable: list[str]) -> None:
        """The caps left nothing of the plan: stop for good if no later plan can fit."""
        cfg = self.config
        message = (
            f"epoch {self.epoch}: the caps {_caps(cfg, fitted.limited_by)} leave no room for "
            f"{fitted.requested} (the model has {fitted.cost.params_before:,} parameters)"
        )
        if cfg.budget.exhausted(fitted, graph, growable):
            self._stop("budget", message)
        else:
            logger.info("%s; other layers may still grow later", message)

    def _stop(self, cause: StopCause, reason: str) -> None:
        self._state.trigger = self._state.trigger.stop(cause, reason)
        logger.info("epoch %d: growth stopped (%s): %s", self.epoch, cause, reason)

    # -- atomicity ---------------------------------------------------------------------------------
    def _snapshot(self) -> GrowerState:
        return self._state.copy()

    def _restore(self, saved: GrowerState) -> None:
        self._state = saved

    # -- lifecycle and checkpoints ----------------------------------------------------------------
    def close(self) -> None:
        """Detach the monitor's hooks (growth stopping does this too)."""
        self.monitor.detach()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume mid-run (the model and optimizer are saved separately):
        the config, the grower's state (:meth:`GrowerState.to_dict`) and the monitor's
        accumulators: a checkpoint taken mid-epoch resumes with the same NAGN profile, bit for
        bit."""
        return {
            "config": dataclasses.asdict(self.config),
            **self._state.to_dict(),
            "monitor": self.monitor.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (load the grown model with
        ``netsurgeon.load_state_dict`` first). Nothing changes if it raises."""
        differing = config_differences(state["config"], self.config)
        if differing:
            raise ValueError(
                f"the checkpoint was made with a different GrowthConfig ({'; '.join(differing)});"
                " construct the Grower with GrowthConfig(**state['config'])"
            )
        loaded = self._state.loaded_from(state)
        if "monitor" in state:  # checkpoints written before it was saved have none
            self.monitor.check_state_dict(state["monitor"])
            self.monitor.load_state_dict(state["monitor"])
        self._state = loaded
        if self.stopped:
            self.monitor.detach()
        else:
            self.monitor.attach()


def _check_types(optimizer: Any, config: Any) -> None:
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise NetsurgeonTypeError(
            f"Grower: optimizer must be a torch.optim.Optimizer or None, got "
            f"{type(optimizer).__name__}."
        )
    if config is not None and not isinstance(config, GrowthConfig):
        raise NetsurgeonTypeError(
            f"Grower: config must be a GrowthConfig, got {type(config).__name__}; build one "
            "with GrowthConfig(**fields)."
        )


def _caps(config: GrowthConfig, names: tuple[str, ...]) -> str:
    return ", ".join(f"{name}={getattr(config, name)}" for name in names) or "(none)"


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
