"""What else a widening must grow: the optimizer's parameters and the model's mirrors.

**The optimizer.** ``widen(..., optimizer=opt)`` grows ``opt``'s state of every parameter the
plan grows. If ``opt`` trains another model (or another part of this one), nothing of it grows
and its next ``step()`` fails far from the cause, so :func:`check_optimizer_holds` refuses it
before anything changes: every grown parameter that requires grad must be in one of
``opt.param_groups``.

**Mirrors.** An exponential moving average (``torch.optim.swa_utils.AveragedModel``, a
hand-rolled EMA copy, a teacher network) is a second copy of the model with the same
architecture and widths but its own values. ``widen(model, plan, mirrors=[ema])`` grows each
mirror with the model's staged insertions:

* every tensor the model grows grows the same way in the mirror: the mirror keeps its own old
  entries, and its new entries are the model's new entries, bit for bit. A unit that has never
  been trained is then equal in the model and in its average, as if the average had been
  tracking it all along;
* every size attribute (``out_channels``, ``num_features``, ...) takes the model's new value.

With the ``"paper"`` init the new consumer columns are zero, so each mirror computes exactly
what it computed before the widening, and a mirror equal to the model stays equal to it.

**Built groups and copying inits.** A normalised stream (``mean_pad``, ``zero_pad``, ``tile``)
builds its new channels from the old ones and rescales its norms' weights, and ``"net2net"``
copies units and splits their columns. Each of these is a *linear* function of the old entries
(means, copies, splits, scalings), plus fresh draws that do not depend on them. So the mirror is
widened by the same plan applied to its own entries, with the model's draws replayed
(:class:`DrawReplay`): by linearity the result is the average of what the widening would have made
of every averaged model, and the mirror computes exactly what it computed before. Such a mirror
must live on the model's device (the draws are replayed on it). One draw is scaled by the
mirror's own values: the new columns of a layer reading a padded norm (whose output there is
exactly 0) take the std of that layer's old columns, the mirror's in the mirror. Mirrors are
staged after the model and before anything is committed: a mirror of another architecture or
other widths raises and nothing changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from netsurgeon.errors import NetsurgeonTypeError, WidenError
from netsurgeon.surgery.index import grow, kept_part, place
from netsurgeon.surgery.tensors import like_format, replace_tensor_

__all__ = [
    "DrawReplay",
    "MirrorSurgery",
    "check_mirror",
    "check_optimizer_holds",
    "mirror_memo",
    "mirror_module",
    "stage_mirrors",
]


def check_optimizer_holds(
    optimizer: torch.optim.Optimizer | None, changes: Iterable[Any], model: nn.Module
) -> None:
    """Refuse an ``optimizer`` that does not hold every grown parameter that requires grad.

    Args:
        optimizer: the optimizer passed to ``widen`` (``None``: nothing to check).
        changes: the staged tensor changes (``.name``, ``.tensor``).
        model: the model being widened (for the message).

    Raises:
        WidenError: naming the missing parameters and the fix.
    """
    if optimizer is None:
        return
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [
        c.name
        for c in changes
        if isinstance(c.tensor, nn.Parameter)
        and c.tensor.requires_grad
        and id(c.tensor) not in held
    ]
    if not missing:
        return
    none_held = not any(id(p) in held for p in model.parameters())
    shown = ", ".join(repr(n) for n in missing[:8]) + (" ..." if len(missing) > 8 else "")
    what = (
        "holds none of the model's parameters (it trains another model)"
        if none_held
        else f"does not hold {len(missing)} of the parameters this plan grows: {shown}"
    )
    raise WidenError(
        f"the {type(optimizer).__name__} passed as optimizer= {what}; its state would not grow "
        "with them and "
        "its next step() would fail or skip them. Fix: pass the optimizer that trains this "
        f"model (built from {type(model).__name__}.parameters()), add the missing parameters to "
        "one of its param_groups, or widen with optimizer=None and build a new optimizer "
        "afterwards. Nothing was changed."
    )


def mirror_module(mirror: object) -> nn.Module:
    """The module whose tensors mirror the model's (``AveragedModel`` holds it in ``.module``)."""
    if isinstance(mirror, torch.optim.swa_utils.AveragedModel):
        return mirror.module
    if not isinstance(mirror, nn.Module):
        raise NetsurgeonTypeError(
            f"mirrors must be nn.Modules (an EMA copy, or a torch.optim.swa_utils.AveragedModel), "
            f"got {type(mirror).__name__}"
        )
    return mirror


@dataclass
class MirrorSurgery:
    """The staged tensors and attributes of every mirror (nothing applied yet)."""

    tensors: list[tuple[torch.Tensor, torch.Tensor, Any]] = field(default_factory=list)
    attrs: list[tuple[nn.Module, str, int]] = field(default_factory=list)
    restaged: list[Any] = field(default_factory=list)  # each mirror's own staged ``Surgery``

    def commit(self) -> None:
        """Apply the staged changes (cannot fail: in-place swaps only)."""
        for tensor, new, inserts in self.tensors:
            replace_tensor_(tensor, new, lambda g, i=inserts: grow(g, i))
        for module, attr, value in self.attrs:
            setattr(module, attr, value)
        for surgery in self.restaged:
            surgery.commit(None)


@dataclass
class DrawReplay:
    """The random state the model's staging starts from, to replay its draws for a mirror.

    With ``generator=None`` the draws come from the default generator of the model's device,
    which the replay forks (the global state afterwards is the model's staging's).
    """

    generator: torch.Generator | None
    state: torch.Tensor
    device: torch.device

    @classmethod
    def capture(cls, generator: torch.Generator | None, model: nn.Module) -> DrawReplay:
        """The state before the model's staging draws anything."""
        if generator is not None:
            return cls(generator, generator.get_state(), generator.device)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        if device.type == "cuda":
            return cls(None, torch.cuda.get_rng_state(device), device)
        return cls(None, torch.get_rng_state(), torch.device("cpu"))

    @contextmanager
    def replay(self) -> Iterator[torch.Generator | None]:
        """A generator in the captured state (or the default one, forked and reset to it)."""
        if self.generator is not None:
            twin = torch.Generator(device=self.device)
            twin.set_state(self.state)
            yield twin
            return
        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            if cuda:
                torch.cuda.set_rng_state(self.state, self.device)
            else:
                torch.set_rng_state(self.state)
            yield None


def stage_mirrors(
    model: nn.Module, surgery: Any, mirrors: Sequence[object], init_name: str
) -> MirrorSurgery:
    """Stage ``surgery`` (the model's, staged but not committed) on every mirror.

    Args:
        model: the model being widened (its tensors are still the old ones).
        surgery: the model's staged ``Surgery`` (``.tensors``: ``name``, ``tensor``, ``new``,
            ``inserts``; ``.attrs``: ``module``, ``attr``, ``value``).
        mirrors: modules of the same architecture and widths as ``model``.
        init_name: the init strategy's name, for the message when it rewrites old entries.

    Raises:
        WidenError: a mirror is the model itself or shares a tensor with it, lacks a tensor or
            module, or has another shape or width; the init rewrites old entries.
        NetsurgeonTypeError: a mirror is not a module.
    """
    staged = MirrorSurgery()
    if not mirrors:
        return staged
    modules = [mirror_module(m) for m in mirrors]
    _check_keeps_old_entries(surgery.tensors, init_name)
    names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
    for index, mirror in enumerate(modules):
        where = f"mirrors[{index}] ({type(mirror).__name__})"
        for change, theirs in zip(
            surgery.tensors, check_mirror(model, mirror, surgery, where), strict=True
        ):
            new = change.new.detach().to(device=theirs.device, dtype=theirs.dtype, copy=True)
            place(theirs.detach(), new, change.inserts)
            staged.tensors.append((theirs, like_format(new, theirs), change.inserts))
        for attr in surgery.attrs:
            path = names.get(id(attr.module))
            target = _find_module(mirror, path, where)
            if getattr(target, attr.attr, None) != getattr(attr.module, attr.attr):
                raise WidenError(
                    f"{where}: '{path}.{attr.attr}' is {getattr(target, attr.attr, None)!r}, the "
                    f"model's is {getattr(attr.module, attr.attr)!r}; a mirror must have the "
                    "model's widths"
                )
            staged.attrs.append((target, attr.attr, attr.value))
    return staged


def check_mirror(model: nn.Module, mirror: nn.Module, surgery: Any, where: str) -> list:
    """The mirror's tensor for each of ``surgery.tensors``, checked: not the model's own, and of
    the model's shape.

    Raises:
        WidenError: the mirror is the model, shares a tensor with it, lacks one or has another
            shape.
    """
    if mirror is model:
        raise WidenError(f"{where} is the model itself; pass only its copies as mirrors")
    changed = {id(c.tensor) for c in surgery.tensors}
    found = []
    for change in surgery.tensors:
        theirs = _find(mirror, change.name, where)
        if id(theirs) in changed:
            raise WidenError(
                f"{where} shares tensor '{change.name}' with the model, so it would grow "
                "twice; pass a copy (copy.deepcopy(model)) or leave it out of mirrors"
            )
        if theirs.shape != change.tensor.shape:
            raise WidenError(
                f"{where}: tensor '{change.name}' has shape {tuple(theirs.shape)}, the "
                f"model's has {tuple(change.tensor.shape)}; a mirror must have the model's "
                "architecture and widths (widen it to match first, or rebuild it from the "
                "model)"
            )
        found.append(theirs)
    return found


def mirror_memo(model: nn.Module, mirror: nn.Module, where: str) -> dict[int, Any]:
    """``copy.deepcopy`` memo mapping the model, its modules, parameters and buffers to the
    mirror's, so that a deep copy of the model's graph reads the mirror.

    Raises:
        WidenError: the mirror lacks a module or tensor, or holds one on another device.
    """
    memo: dict[int, Any] = {id(model): mirror}
    for name, module in model.named_modules(remove_duplicate=False):
        memo[id(module)] = _find_module(mirror, name, where)
    tensors = (*model.named_parameters(remove_duplicate=False), *model.named_buffers())
    for name, tensor in tensors:
        theirs = _find(mirror, name, where)
        if theirs.device != tensor.device:
            raise WidenError(
                f"{where}: '{name}' is on {theirs.device}, the model's on {tensor.device}; a "
                "mirror follows this plan's built groups or copying init by replaying the "
                "model's random draws, on the model's device: move the mirror there, or widen "
                "with init='paper' on groups that only append"
            )
        memo[id(tensor)] = theirs
    return memo


def _check_keeps_old_entries(changes: Iterable[Any], init_name: str) -> None:
    """Refuse an init that rewrote old entries of the model (no faithful mirror update)."""
    for change in changes:
        kept = kept_part(change.new.detach(), change.inserts)
        if not torch.equal(kept, change.tensor.detach()):
            raise WidenError(
                f"init={init_name!r} rewrites old entries of '{change.name}', which has no "
                "faithful update for a mirror (its own old entries would need the same "
                "rewrite); widen with init='paper' when passing mirrors="
            )


def _find(mirror: nn.Module, name: str, where: str) -> torch.Tensor:
    owner, _, attr = name.rpartition(".")
    module = _find_module(mirror, owner, where)
    tensor = getattr(module, attr, None)
    if not isinstance(tensor, torch.Tensor):
        raise WidenError(
            f"{where} has no tensor '{name}'; a mirror must have the model's architecture"
        )
    return tensor


def _find_module(mirror: nn.Module, path: str | None, where: str) -> nn.Module:
    if path is None:
        raise WidenError(f"{where}: a module the plan changes is not part of the model")
    try:
        return mirror.get_submodule(path) if path else mirror
    except AttributeError as e:
        raise WidenError(
            f"{where} has no module '{path}'; a mirror must have the model's architecture"
        ) from e
