"""What the grower is handed, checked: the model, accuracies, mirrors, the caps, a checkpoint's
config, and a model with nothing to grow; and the mode it traces the model in.

Each check fails where the value comes in, with a message that names the value and the fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from netsurgeon.cost import Baseline, width_caps
from netsurgeon.errors import ConfigError, NetsurgeonTypeError
from netsurgeon.graph import LayerGraph
from netsurgeon.guards import check_plain_module
from netsurgeon.nagn.config import GrowthConfig
from netsurgeon.surgery.mirror import mirror_module

__all__ = [
    "as_accuracy",
    "as_number",
    "check_budget",
    "check_mirrors",
    "check_model",
    "config_differences",
    "nothing_to_grow",
    "training_mode",
]


def as_number(value: Any) -> Any:
    """A one-element tensor or array as a Python number; a numpy or Python real as a ``float``.

    Anything else (a bool, a string, a longer tensor) is returned as it is, for the caller to
    refuse. ``np.float32`` is not a ``float`` subclass (``np.float64`` is), so this is what lets
    both through.
    """
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    if type(value).__module__ == "numpy" and getattr(value, "size", None) == 1:
        value = value.item()
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, numbers.Integral)):
        return float(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return value


def as_accuracy(value: Any, delta_stop: float) -> float:
    """``value`` as a float fraction in [0, 1], or a ``ValueError`` naming it and the fix.

    Accepts Python, numpy and 0-d/one-element torch numbers (``np.float32(0.5)``,
    ``torch.tensor(0.5)``).
    """
    value = as_number(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(
            f"val_accuracy must be a finite number in [0, 1], got {type(value).__name__}"
        )
    if not math.isfinite(value):
        raise ValueError(f"val_accuracy must be a finite number in [0, 1], got {value!r}")
    if not 0.0 <= value <= 1.0:
        hint = f" ({value} -> {value / 100:g})" if 1.0 < value <= 100.0 else ""
        raise ValueError(
            f"val_accuracy={value!r} is outside [0, 1]: pass the fraction of correct samples, "
            f"not a percentage{hint}. delta_stop={delta_stop} is in the same units "
            "(0.05 = 5 points)."
        )
    return float(value)


def check_mirrors(model: nn.Module, mirrors: Iterable[Any]) -> tuple[nn.Module, ...]:
    """The mirrors as a tuple, each checked to be a module (or ``AveragedModel``) other than
    ``model``, with the model's parameter shapes.

    Raises:
        NetsurgeonTypeError: a mirror is not a module, or ``mirrors`` is a single module.
        ValueError: a mirror is the model, or its parameters differ in name or shape.
    """
    if isinstance(mirrors, nn.Module):
        raise NetsurgeonTypeError(
            f"mirrors must be a sequence of modules, got a single {type(mirrors).__name__}; "
            "pass mirrors=[ema]"
        )
    found = tuple(mirrors)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    for index, mirror in enumerate(found):
        module = mirror_module(mirror)
        if module is model:
            raise ValueError(f"mirrors[{index}] is the model itself; pass only its copies")
        theirs = {n: tuple(p.shape) for n, p in module.named_parameters()}
        if theirs != shapes:
            differing = sorted(set(shapes.items()) ^ set(theirs.items()))[:4]
            raise ValueError(
                f"mirrors[{index}] ({type(module).__name__}) does not have the model's "
                f"parameters (name, shape); differing: {differing}. A mirror is a copy of the "
                "model with its architecture and widths (copy.deepcopy(model), "
                "AveragedModel(model))."
            )
    return found


def nothing_to_grow(graph: Any, limit: int = 4) -> str | None:
    """Why no group of ``graph`` can grow, summarised (``None`` when one can).

    One clause per distinct reason (the groups that share it named, at most ``limit``), the
    output groups last, e.g. ``"0 widenable groups of 2: 'emb' is blocked: cannot analyse the
    channels at module 'enc': 'TransformerEncoder' is not an op netsurgeon knows; 'fc' reaches
    the output"``. Opaque modules are named when the graph lists them (``opaque_modules()``).
    """
    groups = list(graph.groups)
    if any(g.widenable for g in groups):
        return None
    reasons: dict[str, list[str]] = {}
    for group in groups:
        if group.blocked is not None:
            reasons.setdefault(_first_clause(group.blocked), []).append(group.name)
    clauses = [
        f"{_names(names, limit)} {_verb(names, 'is', 'are')} blocked: {reason}"
        for reason, names in reasons.items()
    ]
    outputs = [g.name for g in groups if g.blocked is None and g.reaches_output]
    if outputs:
        clauses.append(f"{_names(outputs, limit)} {_verb(outputs, 'reaches', 'reach')} the output")
    opaque = _opaque(graph)
    if opaque:
        clauses.append(f"opaque (traced as one leaf, not analysed): {opaque}")
    head = f"0 widenable groups of {len(groups)}"
    return head + (": " + "; ".join(clauses) if clauses else "")


def _first_clause(reason: str, width: int = 160) -> str:
    """The reason without its fix and fx-node tails, on one line, at most ``width`` characters."""
    text = reason.split("\n")[0]
    text = re.split(r" \((?:fix: |at %)", text)[0]
    return text if len(text) <= width else text[: width - 3] + "..."


def _names(names: Sequence[str], limit: int) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return shown + more


def _verb(names: Sequence[str], one: str, many: str) -> str:
    return one if len(names) == 1 else many


def _opaque(graph: Any) -> str:
    """The graph's opaque modules, if it can list them (a newer ``LayerGraph``)."""
    lister = getattr(graph, "opaque_modules", None)
    if not callable(lister):
        return ""
    found = lister()
    if isinstance(found, Mapping):
        return "; ".join(f"'{name}' ({why})" for name, why in found.items())
    return ", ".join(repr(str(name)) for name in found)


def check_model(model: object) -> None:
    """Refuse wrappers (grow a DDP wrapper's ``.module``) and anything that is not a module."""
    check_plain_module(model, "Grower", instead={"DistributedDataParallel": _DDP_ROUTE})


_DDP_ROUTE = (
    "the plain module, Grower(ddp.module, optimizer, config, distributed=True), and after each "
    "growth ddp = netsurgeon.distributed.rewrap(ddp)"
)


def config_differences(saved: dict[str, Any], config: GrowthConfig) -> list[str]:
    """Fields whose saved value differs from ``config``'s.

    A field added after the checkpoint was written is missing from it and counts as its default
    (what the checkpoint was made with), so older checkpoints stay loadable.
    """
    current = dataclasses.asdict(config)
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(GrowthConfig)
        if f.default is not dataclasses.MISSING
    }
    found = []
    for name, value in current.items():
        old = saved.get(name, defaults.get(name, dataclasses.MISSING))
        if old != value:
            found.append(f"{name}: checkpoint {old!r}, this grower {value!r}")
    found.extend(
        f"{name}: unknown field in the checkpoint" for name in saved if name not in current
    )
    return found


def check_budget(
    config: GrowthConfig, model: nn.Module, example_inputs: Any, graph: LayerGraph
) -> None:
    """Refuse caps that do not fit ``model``: ``max_width`` keys that are no layers or that cap
    one channel group twice (resolved with ``graph.resolve``), ``max_flops`` without example
    inputs, a model already above ``max_params`` / ``max_flops``.

    Args:
        graph: ``netsurgeon.trace(model)`` as the grower traced it (nothing is traced again).

    Raises:
        ConfigError: naming the cap, its value and the fix.
    """
    cfg = config
    width_caps(cfg.max_width, graph, "GrowthConfig.max_width")
    if cfg.max_flops is not None and example_inputs is None:
        raise ConfigError(
            f"GrowthConfig.max_flops={cfg.max_flops} caps forward FLOPs, which are counted on "
            "example inputs: pass Grower(..., example_inputs=one_batch)."
        )
    if cfg.max_params is None and example_inputs is None:
        return
    now = Baseline(model, example_inputs, graph=graph)  # also proves FLOPs can be counted
    for cap, value in (("max_params", now.params), ("max_flops", now.flops and now.flops[0])):
        limit = getattr(cfg, cap)
        if limit is not None and value is not None and value > limit:
            raise ConfigError(
                f"GrowthConfig.{cap}={limit:,} is below what the model has already "
                f"({value:,}); raise the cap, or drop it."
            )


@contextlib.contextmanager
def training_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Every module of ``model`` in train mode inside the block; each module's own mode after.

    A growth is made for training to continue, so the grower traces, previews and widens the
    forward that training runs, whatever mode the user's validation left the model in: branches
    that only train mode takes (torchvision's GoogLeNet and Inception auxiliary heads) are then
    part of the graph and grow with the model. Tracing has no side effects in either mode
    (shapes propagate in eval mode, without gradients: :func:`netsurgeon.trace`).
    """
    modes = {module: module.training for module in model.modules()}
    try:
        yield model.train()
    finally:
        for module, training in modes.items():
            module.training = training
