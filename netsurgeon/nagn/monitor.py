"""NAGN (Normalized Activation Gradient Norm) collected from the user's own backward passes.

For a layer ``l`` with pre-activation output ``z_l`` (the module's output ``W h + b``, before any
BatchNorm or activation), ``T_l`` elements of ``z_l`` per sample (``n_l`` for a dense layer,
``n_l * H * W`` for a 2-D conv; in general ``numel / B``), and ``N`` samples seen since the last
reset::

    NAGN_l = sqrt( sum_i ||g_i||^2 / (N * T_l) ),     g_i = dL_i / dz_{l,i}

where ``L_i`` is sample ``i``'s own loss. With a batch loss that is the mean of per-sample losses
(``reduction="mean"``) autograd delivers ``dL_batch/dz_i = g_i / B``, so a batch contributes
``B**2 * ||dL_batch/dz||_F**2``; with ``reduction="sum"`` it contributes ``||dL_batch/dz||_F**2``.
The statistic is therefore independent of batch size and loss reduction. One batch needs one
read of the gradient (``torch.linalg.vector_norm``) and a few scalar ops on its device; nothing
synchronises with the host until :meth:`NAGNMonitor.profile`.

Each batch's contribution is divided by its own ``T_l``: after a layer is widened in place
(same module object, more output units) the accumulator stays an average of per-element squares
but mixes the old and new widths. Call :meth:`NAGNMonitor.reset` after a widen (the grower does)
to measure the new network alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
from torch import nn

from netsurgeon.errors import ConfigError, MonitorError, NetsurgeonTypeError
from netsurgeon.graph.soundness import mark_observer

__all__ = ["DEFAULT_EVERY", "NAGNMonitor"]

Reduction = Literal["mean", "sum"]

#: Default sampling period: collect on one training forward/backward out of ``DEFAULT_EVERY``.
#: See docs/nagn.md (cost measurements) for why.
DEFAULT_EVERY = 4


@dataclass
class _LayerState:
    """Mutable accumulator of one monitored layer (private to the monitor)."""

    name: str
    module: nn.Module
    handle: Any = None
    total: torch.Tensor | None = None  # 0-d, on the gradient's device: sum of ||g_i||^2 / T_l
    samples: int = 0


class NAGNMonitor:
    """Collect the NAGN of chosen layers during ordinary training steps.

    Forward hooks on the layers register a tensor hook on each output ``z_l`` of a collected
    step; the tensor hook adds ``||dL/dz_l||^2`` (scaled, see the module docstring) to an
    on-device accumulator. A step is a grad-enabled forward of ``model`` in training mode
    (``train_only``); forwards under ``torch.no_grad``/``inference_mode``, in eval mode, or whose
    gradient never comes back are ignored. Steps are counted from the last reset and step ``k``
    (0-based) is collected when ``k % every == 0``, so the first step after a reset always is.

    Args:
        model: the model whose training forwards are observed.
        layers: qualified module names, in depth order; default
            ``netsurgeon.trace(model, strict=False).layers``: every width-owning layer of any
            model ``trace`` accepts, output layers and layers of unwidenable groups included
            (measuring never needs a layer to be widenable).
        reduction: how the training loss reduces over the batch: ``"mean"`` (the default of
            ``nn.CrossEntropyLoss``) or ``"sum"``.
        every: collect on one training forward/backward out of ``every``.
        train_only: ignore forwards while ``model.training`` is False.

    Raises:
        ConfigError: unknown or repeated layer names (the message lists the valid ones), a bad
            ``reduction`` or ``every``.
        NetsurgeonTypeError: ``model`` is not an ``nn.Module`` or ``layers`` is a single string.

    Example:
        >>> import torch, torch.nn as nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> with NAGNMonitor(net, ["0", "2"], every=1) as monitor:
        ...     loss = nn.functional.cross_entropy(net(torch.randn(16, 4)), torch.zeros(16).long())
        ...     loss.backward()
        ...     profile = monitor.profile()
        >>> list(profile), monitor.samples
        (['0', '2'], {'0': 16, '2': 16})
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str] | None = None,
        *,
        reduction: Reduction = "mean",
        every: int = DEFAULT_EVERY,
        train_only: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise NetsurgeonTypeError(
                f"NAGNMonitor needs an nn.Module; found {type(model).__name__}."
            )
        if reduction not in ("mean", "sum"):
            raise ConfigError(
                f"reduction must be 'mean' or 'sum' (how the loss reduces over the batch); "
                f"found {reduction!r}."
            )
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"every must be an int >= 1; found {every!r}.")
        if layers is None:
            from netsurgeon.graph import trace  # lazy: graph depends on torch.fx tracing

            layers = list(trace(model, strict=False).layers)
        elif isinstance(layers, str):
            raise NetsurgeonTypeError(
                f"layers must be a sequence of names; found the string {layers!r}."
            )
        names = list(layers)
        self._check_names(model, names)
        self.model = model
        self.reduction: Reduction = reduction
        self.every = every
        self.train_only = train_only
        self._states = [_LayerState(name, model.get_submodule(name)) for name in names]
        self._generation = 0
        self._steps = 0
        self._collected = 0
        self._active = False
        self._root_handles: list[Any] = []
        self.attach()

    # ------------------------------------------------------------------ lifecycle

    @staticmethod
    def _check_names(model: nn.Module, names: list[str]) -> None:
        if not names:
            raise ConfigError("layers is empty: pass at least one module name to monitor.")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"layers lists {dupes} more than once; list each layer once.")
        known = dict(model.named_modules())
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError(
                f"unknown layer name(s) {unknown} in {type(model).__name__}; valid layer names "
                f"(width-owning layers): {_layer_names(model)}. Use the qualified names of "
                "model.named_modules()."
            )

    def attach(self) -> NAGNMonitor:
        """(Re-)install the hooks; a no-op when attached. Returns ``self``."""
        if self._root_handles:
            return self
        self._root_handles = [
            self.model.register_forward_pre_hook(mark_observer(self._on_model_forward)),
            self.model.register_forward_hook(
                mark_observer(self._on_model_return), always_call=True
            ),
        ]
        for state in self._states:
            # the hooks only read z_l (and its gradient): marked so the analysis accepts them
            hook = mark_observer(partial(self._on_layer, state))
            state.handle = state.module.register_forward_hook(hook)
        return self

    def detach(self) -> None:
        """Remove every hook. Accumulated values stay readable; gradients of steps still in flight
        are dropped. Idempotent."""
        for handle in self._root_handles:
            handle.remove()
        self._root_handles = []
        for state in self._states:
            if state.handle is not None:
                state.handle.remove()
                state.handle = None
        self._active = False
        self._generation += 1

    @property
    def attached(self) -> bool:
        """Whether the hooks are installed."""
        return bool(self._root_handles)

    def reset(self) -> None:
        """Forget everything collected and restart the step count (the next step is collected).

        Gradients of forwards made before the reset but arriving after it are dropped.
        """
        self._generation += 1
        self._steps = 0
        self._collected = 0
        for state in self._states:
            state.total = None
            state.samples = 0

    def __enter__(self) -> NAGNMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def __repr__(self) -> str:
        return (
            f"NAGNMonitor(layers={self.layers}, reduction={self.reduction!r}, every={self.every}, "
            f"steps={self._steps}, collected={self._collected}, attached={self.attached})"
        )

    # ------------------------------------------------------------------ results

    @property
    def layers(self) -> list[str]:
        """Monitored layer names, in depth order."""
        return [state.name for state in self._states]

    @property
    def samples(self) -> dict[str, int]:
        """Samples whose gradient reached each layer since the last reset (``N`` per layer)."""
        return {state.name: state.samples for state in self._states}

    @property
    def steps(self) -> int:
        """Training forwards seen since the last reset (collected or not)."""
        return self._steps

    @property
    def collected_steps(self) -> int:
        """Training forwards selected for collection since the last reset."""
        return self._collected

    def profile(self, *, all_reduce: bool = False, group: Any = None) -> dict[str, float]:
        """``{layer: NAGN}`` in depth order. The only place that synchronises with the device.

        Args:
            all_reduce: sum the accumulators of every rank of ``group`` first (one
                ``torch.distributed.all_reduce`` of a ``(2, layers)`` float64 tensor), so every
                rank gets the NAGN of all the samples seen by all ranks. Every rank of the group
                must call it (a collective); the local accumulators are left as they are.
            group: the process group (default: the whole world).

        Raises:
            MonitorError: a layer has received no gradient since the last reset (on any rank,
                with ``all_reduce``).
        """
        totals = [0.0 if s.total is None else s.total for s in self._states]
        samples = [s.samples for s in self._states]
        scope = ""
        if all_reduce:
            totals, samples, world = _all_reduce_sums(totals, samples, group)
            scope = f" on any of the {world} ranks"
        empty = [s.name for s, n in zip(self._states, samples, strict=True) if n == 0]
        if empty:
            raise MonitorError(
                f"NAGNMonitor has no gradient for layer(s) {empty} since the last reset{scope} "
                f"({self._steps} training forwards seen here, every={self.every}). Run a training "
                "forward and backward (grad enabled, model.train()) while the monitor is attached."
            )
        return {
            s.name: math.sqrt(float(total) / n)
            for s, total, n in zip(self._states, totals, samples, strict=True)
        }

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """The accumulators since the last reset: step counts and, per layer, the running sum
        (a 0-d tensor, its dtype and device kept, or ``None``) and the sample count."""
        return {
            "steps": self._steps,
            "collected": self._collected,
            "layers": {
                s.name: {
                    "total": None if s.total is None else s.total.detach().clone(),
                    "samples": s.samples,
                }
                for s in self._states
            },
        }

    def check_state_dict(self, state: dict[str, Any]) -> None:
        """Raise :class:`~netsurgeon.errors.ConfigError` unless ``state`` is a :meth:`state_dict` of these layers."""
        layers = state.get("layers") if isinstance(state, dict) else None
        if not isinstance(layers, dict) or list(layers) != self.layers:
            found = list(layers) if isinstance(layers, dict) else type(state).__name__
            raise ConfigError(
                f"NAGNMonitor state is for layers {found}, this monitor watches {self.layers}; "
                "load a state saved from a monitor of the same model and layers"
            )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`: the next profile is the one the saved monitor would give.

        Gradients of forwards made before the load but arriving after it are dropped.

        Raises:
            ConfigError: the state is for other layers. Nothing changes.
        """
        self.check_state_dict(state)
        self._generation += 1
        self._steps = int(state["steps"])
        self._collected = int(state["collected"])
        for s in self._states:
            saved = state["layers"][s.name]
            total = saved["total"]
            s.total = None if total is None else torch.as_tensor(total).detach().clone()
            s.samples = int(saved["samples"])

    # ------------------------------------------------------------------ hooks

    def _on_model_forward(self, module: nn.Module, args: Any) -> None:
        if not torch.is_grad_enabled() or (self.train_only and not module.training):
            self._active = False
            return
        self._active = self._steps % self.every == 0
        self._steps += 1
        self._collected += self._active

    def _on_model_return(self, module: nn.Module, args: Any, output: Any) -> None:
        self._active = False

    def _on_layer(self, state: _LayerState, module: nn.Module, args: Any, z: Any) -> None:
        if not self._active:
            return
        z, batch_dim = _layer_output(module, z)
        if not isinstance(z, torch.Tensor):
            raise NetsurgeonTypeError(
                f"NAGNMonitor: layer {state.name!r} ({type(module).__name__}) returned "
                f"{type(z).__name__}, expected a Tensor. Monitor layers whose output is z = Wh + b."
            )
        if not z.requires_grad:  # called under no_grad, or nothing upstream needs a gradient
            return
        batch = z.shape[batch_dim] if z.dim() > batch_dim else 1
        per_sample = z.numel() // max(batch, 1)
        if batch == 0 or per_sample == 0:
            return
        scale = (batch * batch if self.reduction == "mean" else 1) / per_sample
        z.register_hook(partial(self._on_grad, state, batch, scale, self._generation))

    def _on_grad(
        self, state: _LayerState, batch: int, scale: float, generation: int, grad: torch.Tensor
    ) -> None:
        if generation != self._generation:
            return
        upcast = grad.dtype in (torch.float16, torch.bfloat16)
        norm = torch.linalg.vector_norm(grad, dtype=torch.float32 if upcast else None)
        if state.total is None:
            dtype = torch.float32 if grad.device.type == "mps" else torch.float64
            state.total = torch.zeros((), dtype=dtype, device=grad.device)
        elif state.total.device != grad.device:
            state.total = state.total.to(grad.device)
        state.total.add_(norm.square(), alpha=scale)
        state.samples += batch


def _layer_names(model: nn.Module) -> list[str]:
    """The width-owning layers of ``model`` as the graph sees them (for error messages)."""
    from netsurgeon.graph import trace  # lazy: graph depends on torch.fx tracing

    try:
        return list(trace(model, strict=False).layers)
    except Exception:  # an untraceable model: fall back to modules that own a weight
        return [
            n
            for n, m in model.named_modules()
            if isinstance(getattr(m, "weight", None), nn.Parameter)
        ]


def _all_reduce_sums(
    totals: list[Any], samples: list[int], group: Any
) -> tuple[list[float], list[int], int]:
    """Sum per-layer ``totals`` and ``samples`` over the ranks of ``group`` (one collective)."""
    import torch.distributed as dist  # lazy: most users never need it

    if not (dist.is_available() and dist.is_initialized()):
        raise MonitorError(
            "NAGNMonitor.profile(all_reduce=True) needs an initialised torch.distributed process "
            "group; call torch.distributed.init_process_group first, or use all_reduce=False."
        )
    backend = str(dist.get_backend(group))
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if "nccl" in backend
        else torch.device("cpu")
    )
    sums = torch.stack(
        [
            torch.stack(
                [
                    torch.as_tensor(t).to(device=device, dtype=torch.float64).reshape(())
                    for t in totals
                ]
            ),
            torch.tensor(samples, dtype=torch.float64, device=device),
        ]
    )
    dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
    sums = sums.cpu()
    return sums[0].tolist(), [round(n) for n in sums[1].tolist()], dist.get_world_size(group)


def _layer_output(module: nn.Module, output: Any) -> tuple[Any, int]:
    """``z`` of a layer and its batch dim. ``nn.MultiheadAttention`` returns ``(out, weights)``:
    ``z`` is ``out`` (its ``out_proj``'s output), whose batch dim is 1 without ``batch_first``."""
    if isinstance(module, nn.MultiheadAttention) and isinstance(output, tuple) and output:
        return output[0], 0 if module.batch_first else 1
    return output, 0
