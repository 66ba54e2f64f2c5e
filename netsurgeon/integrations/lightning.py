"""``GrowthCallback``: grow a LightningModule from a logged validation metric.

The callback runs a :class:`~netsurgeon.nagn.grower.Grower` inside Lightning's own loop:

* ``on_fit_start``: the grower is built on the module (or one of its submodules) with the
  optimizer the trainer built from ``configure_optimizers``; the LR scheduler keeps stepping it,
  since a widening keeps every parameter object;
* the NAGN monitor collects during the trainer's training steps;
* ``on_validation_end`` (not during the sanity check): ``grower.step(metric)``, where ``metric``
  is ``trainer.callback_metrics[monitor]``, a fraction in [0, 1] such as a validation accuracy.
  A growth widens the module in place; training continues with the same optimizer object.

Checkpoints and resume: the grower's state is the callback's ``state_dict`` (saved in every
Lightning checkpoint). On ``trainer.fit(model, ckpt_path=...)`` with a fresh, narrower module,
the callback widens the module to the checkpoint's widths when Lightning loads the weights
(a ``load_state_dict`` pre-hook installed at ``setup``), before the optimizer is built, so the
model, optimizer and scheduler states load as saved and the run continues as if uninterrupted.

EMA and ``AveragedModel`` copies: name them in ``mirrors`` (attribute paths on the
LightningModule, e.g. ``module="net", mirrors=["ema"]`` for ``self.ema =
AveragedModel(self.net)``) and every growth widens them with the module
(``netsurgeon.widen(..., mirrors=)``); a resume widens them to the checkpoint's widths too.

Scope: one optimizer, one process (``trainer.world_size == 1``). For
``DistributedDataParallel`` use the Grower in your own loop (:mod:`netsurgeon.distributed`).

Needs Lightning: ``pip install netsurgeon[lightning]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

try:
    import lightning.pytorch as pl
    from lightning.pytorch.trainer.states import TrainerFn
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "netsurgeon.integrations.lightning needs Lightning: pip install 'netsurgeon[lightning]' "
        "(or pip install lightning)."
    ) from e

from netsurgeon.errors import NetsurgeonError
from netsurgeon.nagn import Grower, GrowthConfig, GrowthEvent
from netsurgeon.surgery import load_state_dict
from netsurgeon.surgery.mirror import mirror_module

__all__ = ["GrowthCallback"]


class GrowthCallback(pl.Callback):
    """Grow the model during ``trainer.fit`` whenever the growth rules say so.

    Args:
        monitor: the logged metric that drives growth (``self.log("val_acc", acc)`` in
            ``validation_step``), a fraction in [0, 1] where higher is better.
        config: the growth rules.
        module: attribute path of the submodule to grow (e.g. ``"net"``), or ``None`` for the
            LightningModule itself. Its ``forward`` must be what ``training_step`` calls (the
            NAGN monitor watches it).
        example_inputs: one input batch of that module, for FLOP counts and ``max_flops``;
            default: the LightningModule's ``example_input_array`` when ``module`` is ``None``.
        mirrors: copies of that module grown with it at every growth (an EMA, a
            ``torch.optim.swa_utils.AveragedModel``): attribute paths on the LightningModule
            (``"ema"``) or the modules themselves. A mirror copies the grown module: with
            ``self.ema = AveragedModel(self.net)``, pass ``module="net"``.

    Attributes:
        grower: the :class:`~netsurgeon.nagn.grower.Grower` (``None`` before ``fit``); its
            ``history`` lists every growth.

    Example:
        >>> growth = GrowthCallback("val_acc", GrowthConfig(max_params=2_000_000))  # doctest: +SKIP
        >>> trainer = lightning.Trainer(max_epochs=100, callbacks=[growth])         # doctest: +SKIP
        >>> trainer.fit(model)                                                      # doctest: +SKIP
        >>> [e.increments for e in growth.grower.history]                           # doctest: +SKIP
    """

    def __init__(
        self,
        monitor: str = "val_acc",
        config: GrowthConfig | None = None,
        *,
        module: str | None = None,
        example_inputs: Any = None,
        mirrors: Sequence[str | nn.Module] = (),
    ) -> None:
        super().__init__()
        self.monitor = monitor
        self.config = config or GrowthConfig()
        self.module = module
        self.example_inputs = example_inputs
        self.mirrors = tuple(mirrors)
        self.grower: Grower | None = None
        self._pending: dict[str, Any] | None = None
        self._load_hooks: list[Any] = []
        self._mirror_modules: list[nn.Module] = []
        self._widening: set[int] = set()

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, module=self.module)

    @property
    def history(self) -> list[GrowthEvent]:
        """Every growth so far (empty before ``fit``)."""
        return [] if self.grower is None else list(self.grower.history)

    # -- set-up ------------------------------------------------------------------------------------
    def _target(self, pl_module: pl.LightningModule) -> nn.Module:
        if self.module is None:
            return pl_module
        try:
            return pl_module.get_submodule(self.module)
        except AttributeError as e:
            raise NetsurgeonError(
                f"GrowthCallback(module={self.module!r}): {type(pl_module).__name__} has no such "
                f"submodule; submodules: {[n for n, _ in pl_module.named_children()]}."
            ) from e

    def _mirrors(self, pl_module: pl.LightningModule) -> list[nn.Module]:
        found = []
        for mirror in self.mirrors:
            if not isinstance(mirror, str):
                found.append(mirror)
                continue
            try:
                found.append(pl_module.get_submodule(mirror))
            except AttributeError as e:
                raise NetsurgeonError(
                    f"GrowthCallback(mirrors=[{mirror!r}]): {type(pl_module).__name__} has no "
                    f"such submodule; submodules: {[n for n, _ in pl_module.named_children()]}."
                ) from e
        return found

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.world_size > 1:
            raise NetsurgeonError(
                f"GrowthCallback runs in one process; this trainer has world_size="
                f"{trainer.world_size}. Under DDP, run netsurgeon.Grower(..., distributed=True) "
                "in your own loop and re-wrap with netsurgeon.distributed.rewrap (docs/nagn.md)."
            )
        self._remove_load_hook()
        self._mirror_modules = [mirror_module(m) for m in self._mirrors(pl_module)]
        for module in (self._target(pl_module), *self._mirror_modules):
            self._load_hooks.append(
                module.register_load_state_dict_pre_hook(self._widen_to_checkpoint)
            )

    def _widen_to_checkpoint(
        self, module: nn.Module, state_dict: Any, prefix: str, *_: Any
    ) -> None:
        """Before Lightning loads a (grown) checkpoint, widen ``module`` to its widths."""
        if id(module) in self._widening:  # the load inside netsurgeon.load_state_dict below
            return
        own = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        self._widening.add(id(module))
        try:
            load_state_dict(module, own, strict=False)
        finally:
            self._widening.discard(id(module))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if len(trainer.optimizers) != 1:
            raise NetsurgeonError(
                f"GrowthCallback carries the state of one optimizer; configure_optimizers returned "
                f"{len(trainer.optimizers)}. Return one optimizer, or run netsurgeon.Grower "
                "yourself and pass it the optimizer of the grown parameters."
            )
        inputs = self.example_inputs
        if inputs is None and self.module is None:
            inputs = getattr(pl_module, "example_input_array", None)
        state = self._pending
        if self.grower is not None:  # a second fit() with this callback: carry the state over
            state = self.grower.state_dict()
            self.grower.close()
        self.grower = Grower(
            self._target(pl_module),
            trainer.optimizers[0],
            self.config,
            example_inputs=inputs,
            mirrors=self._mirrors(pl_module),
        )
        if state is not None:
            self.grower.load_state_dict(state)
        self._pending = None

    # -- the per-validation call -------------------------------------------------------------------
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.grower is None or trainer.state.fn != TrainerFn.FITTING:
            return  # grow only from the validation runs inside fit(), not trainer.validate()
        if self.monitor not in trainer.callback_metrics:
            raise NetsurgeonError(
                f"GrowthCallback(monitor={self.monitor!r}): no such logged metric after "
                f"validation; logged: {sorted(trainer.callback_metrics)}. Log it in "
                f'validation_step, e.g. self.log("{self.monitor}", accuracy).'
            )
        event = self.grower.step(trainer.callback_metrics[self.monitor])
        if event is not None:
            for logger in trainer.loggers:
                logger.log_metrics(
                    {
                        "netsurgeon/params": event.params_after,
                        "netsurgeon/growths": len(self.history),
                    },
                    step=trainer.global_step,
                )

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._remove_load_hook()
        if self.grower is not None:
            self.grower.close()  # leave no hooks on the user's model

    def _remove_load_hook(self) -> None:
        for hook in self._load_hooks:
            hook.remove()
        self._load_hooks = []

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.grower is not None:
            return self.grower.state_dict()
        return dict(self._pending or {})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.grower is not None:
            self.grower.load_state_dict(state_dict)
        else:
            self._pending = dict(state_dict)  # applied when the grower is built (on_fit_start)
