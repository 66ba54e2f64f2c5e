"""Which dims of a module's tensors hold units: the records a handler gives the surgery.

A layer handler says, per module, which ``(tensor, dim)`` pairs are its **rows** (one entry per
output unit) and its **columns** (one entry per input unit), and what a new entry holds; a
follower handler says which ``(tensor, dim)`` pairs hold one entry per channel. The surgery
(:mod:`netsurgeon.surgery.layers`), the init strategies and the checkpoint loader only read these
records, so a weight stored ``(out, in, *k)`` (``Conv``, ``Linear``), ``(in, out, *k)``
(``ConvTranspose``) or ``(vocabulary, out)`` (``Embedding``) needs no layout knowledge outside its
handler.

Weight normalisation (``nn.utils.parametrizations.weight_norm`` and the legacy
``nn.utils.weight_norm``) stores ``weight = g * v / ||v||`` with the norm over every dim but one.
When that dim is the rows' dim, the rows are ``v`` and ``g`` (and ``g``'s new entries are the
norms of ``v``'s new rows: :class:`NormOf`), the columns are ``v``'s; see ``docs/widen.md``.

Example, ``nn.ConvTranspose2d(4, 8, 3)`` (weight ``(4, 8, 3, 3)``)::

    rows    = (Axis("weight", 1), Axis("bias", 0, fill=0.0))
    columns = (Axis("weight", 0, fill=0.0),)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import _WeightNorm
from torch.nn.utils.weight_norm import WeightNorm

from netsurgeon.graph.module_attrs import parametrizations_of

__all__ = ["Axis", "NormOf", "WeightNames", "module_tensor", "weight_names", "weight_norm_dim"]


@dataclass(frozen=True)
class NormOf:
    """A new entry is the norm of ``tensor``'s new unit over its other dims (weight norm's ``g``).

    Old entries are rescaled by ``||v_new|| / ||v_old||`` on the units whose ``v`` an init
    changed (a net2net column split), so ``g * v / ||v||`` is what the init meant.
    """

    tensor: str


@dataclass(frozen=True)
class Axis:
    """One dim of one tensor of a module, indexed by units.

    Attributes:
        tensor: the tensor's path below the module, as in its ``state_dict`` (``"weight"``,
            ``"bias"``, ``"parametrizations.weight.original1"``, ``"running_var"``).
        dim: the dim that holds one entry per unit.
        fill: what a new entry holds under the paper's init: a number, ``None`` (random: the
            init strategy draws the new rows of a weight, or Kaiming over the rest of a
            per-channel entry) or :class:`NormOf`.
        per_group: the dim holds one conv group's share of the units (a grouped conv's input
            columns), so it grows by one block's insertions.
    """

    tensor: str
    dim: int
    fill: float | NormOf | None = None
    per_group: bool = False


@dataclass(frozen=True)
class WeightNames:
    """Where a layer's weight lives: ``v`` (the stored weight or direction) and ``g`` (its norms)."""

    v: str
    g: str | None = None
    dim: int | None = None  # the dim weight norm keeps (``g``'s non-singleton dim)


_PLAIN_WEIGHT = WeightNames("weight")  # frozen: every plain layer's answer


def weight_norm_dim(module: nn.Module) -> int | None:
    """The dim that a weight norm on ``module.weight`` keeps, or ``None`` when there is none.

    A whole-tensor norm (``dim=None``) is ``-1``, as torch stores it. A parametrization list that
    is not exactly one weight norm is ``None`` too (the soundness check refuses it).
    """
    parametrizations = parametrizations_of(module)
    if parametrizations is not None and "weight" in parametrizations:
        return _parametrized_norm_dim(parametrizations["weight"])
    hook = legacy_weight_norm(module)
    return hook.dim if hook is not None else None


def _parametrized_norm_dim(plist: nn.Module) -> int | None:
    """The dim a parametrization list that is exactly one weight norm keeps, else ``None``."""
    if len(plist) == 1 and isinstance(plist[0], _WeightNorm):
        return plist[0].dim
    return None


def legacy_weight_norm(module: nn.Module) -> object | None:
    """The legacy ``nn.utils.weight_norm`` pre-hook on ``module.weight``, if any."""
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, WeightNorm) and hook.name == "weight":
            return hook
    return None


def weight_names(module: nn.Module) -> WeightNames:
    """Which tensors hold ``module``'s weight (plain, or weight-normalised either way).

    A parametrization list on the weight that is not exactly one weight norm leaves the legacy
    hook's answer, as :func:`weight_norm_dim` gives ``None`` for it (the soundness check refuses
    such a list)."""
    parametrizations = parametrizations_of(module)
    if parametrizations is not None and "weight" in parametrizations:
        dim = _parametrized_norm_dim(parametrizations["weight"])
        if dim is not None:
            return WeightNames(
                "parametrizations.weight.original1", "parametrizations.weight.original0", dim
            )
    hook = legacy_weight_norm(module)
    if hook is not None:
        return WeightNames("weight_v", "weight_g", hook.dim)
    return _PLAIN_WEIGHT


def module_tensor(module: nn.Module, path: str) -> torch.Tensor:
    """The parameter or buffer at ``path`` below ``module`` (``"parametrizations.weight.original0"``)."""
    owner, _, name = path.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, name)
