"""The soundness property of ``widen``, as a test helper: refuse with nothing changed, or be exact.

For a model, a plan and an optimizer, exactly one of these must hold:

* ``widen`` raises a :class:`~netsurgeon.NetsurgeonError`, and the model (its parameters, buffers,
  gradients, the identity of every ``Parameter``, its module attributes) and the optimizer (its
  state and param groups) are bit-identical to before;
* ``widen`` returns, the forward runs on a fresh input of another batch size than the one traced,
  and its output is the one from before the widening, within

      max |y_after - y_before| <= tol * (1 + max |y_before|)      (tol = 1e-9 in float64).

Anything else (a raw exception from ``widen``, a forward that crashes, an output that moved) is a
broken model that ``widen`` accepted, which is what the checks here are for.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import netsurgeon
from netsurgeon import LayerGraph, NetsurgeonError

__all__ = [
    "Outcome",
    "Snapshot",
    "adam_with_state",
    "assert_bit_identical",
    "check_every_plan",
    "check_widen_or_refuse",
    "group_plans",
    "groups_touching",
    "max_relative_error",
    "snapshot",
]

TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-5}


@dataclass(frozen=True)
class Snapshot:
    """Deep copies of everything a failed ``widen`` must leave alone."""

    state: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor | None]
    param_ids: dict[str, int]
    module_repr: str
    optimizer: dict[str, Any] | None


@dataclass(frozen=True)
class Outcome:
    """What ``widen`` did with one plan: refused with ``error``, or widened with ``max_error``."""

    plan: dict[str, int]
    error: NetsurgeonError | None = None
    max_error: float | None = None

    @property
    def refused(self) -> bool:
        return self.error is not None


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> Snapshot:
    """Copy parameters, buffers (``state_dict`` plus non-persistent ones), grads and state."""
    state = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    for name, buffer in model.named_buffers():
        state.setdefault(name, buffer.detach().clone())
    return Snapshot(
        state=state,
        grads={n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        param_ids={n: id(p) for n, p in model.named_parameters()},
        module_repr=repr(model),
        optimizer=None if optimizer is None else copy.deepcopy(optimizer.state_dict()),
    )


def _equal(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)


def assert_bit_identical(
    before: Snapshot, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> None:
    """Fail naming the first tensor, gradient or optimizer entry that differs from ``before``."""
    after = snapshot(model, optimizer)
    assert after.module_repr == before.module_repr, "module attributes changed"
    assert after.param_ids == before.param_ids, "Parameter objects were replaced"
    assert after.state.keys() == before.state.keys(), "parameter/buffer names changed"
    for key, value in before.state.items():
        assert _equal(after.state[key], value), f"tensor {key!r} changed"
    for key, value in before.grads.items():
        assert _equal(after.grads[key], value), f"gradient of {key!r} changed"
    if before.optimizer is not None:
        assert after.optimizer is not None
        assert after.optimizer["param_groups"] == before.optimizer["param_groups"]
        old, new = before.optimizer["state"], after.optimizer["state"]
        assert new.keys() == old.keys(), "optimizer state entries changed"
        for index, entry in old.items():
            assert new[index].keys() == entry.keys(), f"optimizer state {index} changed keys"
            for key, value in entry.items():
                assert _equal(new[index][key], value), f"optimizer state {index}[{key!r}] changed"


def adam_with_state(model: nn.Module, inputs: tuple[Any, ...]) -> torch.optim.Adam:
    """An Adam after one step on ``inputs`` (nonzero moments); grads left in place."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    training = model.training
    model.eval()
    output = model(*inputs)
    output.float().pow(2).mean().backward()
    optimizer.step()
    model.train(training)
    return optimizer


def max_relative_error(after: torch.Tensor, before: torch.Tensor) -> float:
    """``max |after - before| / (1 + max |before|)``: the quantity the tolerances bound."""
    return ((after - before).abs().max() / (1.0 + before.abs().max())).item()


def _leaves(output: Any) -> list[torch.Tensor]:
    """The tensors of a forward's output (a tensor, or tuples, named tuples, dicts of them)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, Mapping):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _leaves(item)]
    return []


def _forward(model: nn.Module, inputs: tuple[Any, ...]) -> torch.Tensor:
    """The output's tensors, flattened and concatenated (one tensor to compare)."""
    with torch.no_grad():
        leaves = _leaves(model(*inputs))
    assert leaves, "the model's output holds no tensor"
    return torch.cat([t.reshape(-1) for t in leaves]) if len(leaves) > 1 else leaves[0]


def check_widen_or_refuse(
    model: nn.Module,
    plan: Mapping[str, int],
    check_inputs: tuple[Any, ...],
    *,
    optimizer: torch.optim.Optimizer | None = None,
    graph: LayerGraph | None = None,
    tol: float | None = None,
) -> Outcome:
    """Widen ``model`` in place by ``plan``; assert the soundness property (module docstring).

    Args:
        model: in the mode to check (eval for exactness in float64); modified on success.
        plan: ``{group: k}``.
        check_inputs: forward arguments, with another batch size than the traced ones.
        optimizer: checked bit-identical on refusal (its state is grown on success).
        graph: passed to ``widen``.
        tol: the relative bound; by default 1e-9 for float64 outputs, 1e-5 for float32.

    Returns:
        The :class:`Outcome`.
    """
    before = _forward(model, check_inputs)
    assert torch.isfinite(before).all(), "the reference output is not finite"
    state = snapshot(model, optimizer)
    try:
        netsurgeon.widen(
            model,
            dict(plan),
            optimizer=optimizer,
            graph=graph,
            generator=torch.Generator().manual_seed(0),
        )
    except NetsurgeonError as error:
        assert_bit_identical(state, model, optimizer)
        return Outcome(dict(plan), error=error)
    try:
        after = _forward(model, check_inputs)
    except Exception as error:
        raise AssertionError(
            f"widen({dict(plan)}) succeeded, then the forward crashed: "
            f"{type(error).__name__}: {error}"
        ) from error
    assert after.shape == before.shape, f"output shape {tuple(after.shape)} != {before.shape}"
    error = max_relative_error(after, before)
    bound = TOLERANCE[before.dtype] if tol is None else tol
    assert error <= bound, (
        f"widen({dict(plan)}) succeeded and changed the output: relative error {error:.3g} > "
        f"{bound:.0e}"
    )
    return Outcome(dict(plan), max_error=error)


def group_plans(graph: LayerGraph, exhaustive_up_to: int = 4) -> Iterator[dict[str, int]]:
    """Plans over the widenable groups: every non-empty subset (by one granule each) when there
    are at most ``exhaustive_up_to`` of them, else each group alone; then all at once by two
    granules."""
    groups = [g for g in graph.groups if g.widenable]
    if not groups:
        return
    if len(groups) <= exhaustive_up_to:
        subsets = itertools.chain.from_iterable(
            itertools.combinations(groups, r) for r in range(1, len(groups) + 1)
        )
    else:
        subsets = ((g,) for g in groups)
    for subset in subsets:
        yield {g.name: g.granularity for g in subset}
    yield {g.name: 2 * g.granularity for g in groups}


def check_every_plan(
    build: Callable[[], nn.Module],
    trace_inputs: tuple[Any, ...],
    check_inputs: tuple[Any, ...],
    *,
    exhaustive_up_to: int = 4,
    with_optimizer: bool = True,
) -> list[Outcome]:
    """Trace ``build()`` (non-strict, with example inputs) and check every plan of
    :func:`group_plans` on a fresh copy of the model, with an Adam that has state."""
    pristine = build()
    graph = netsurgeon.trace(pristine, trace_inputs, strict=False)
    outcomes = []
    for plan in group_plans(graph, exhaustive_up_to):
        model = copy.deepcopy(pristine)
        optimizer = adam_with_state(model, check_inputs) if with_optimizer else None
        outcomes.append(check_widen_or_refuse(model, plan, check_inputs, optimizer=optimizer))
    return outcomes


def groups_touching(graph: LayerGraph, module: str) -> list[netsurgeon.graph.ChannelGroup]:
    """The groups in which ``module`` (a module path) is a producer, consumer or follower."""
    found = []
    for group in graph.groups:
        names = (
            set(group.producers)
            | {c.layer for c in group.consumers}
            | {f.name for f in group.followers}
        )
        if module in names or any(n.startswith(module + ".") for n in names):
            found.append(group)
    return found
