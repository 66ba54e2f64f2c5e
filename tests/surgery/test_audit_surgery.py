"""Checkpoint loading pinned with hand-computed expectations.

A strict load (``netsurgeon.load_state_dict``, the default ``strict=True``) whose checkpoint has a
key the model does not have, or lacks one it has, must raise a netsurgeon error before anything
is widened or copied: the model stays bit-identical (same shapes, same values).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netsurgeon
from netsurgeon.errors import NetsurgeonError


def _make() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def _grown_checkpoint(extra: int) -> dict[str, torch.Tensor]:
    """A state dict of ``_make()`` with ``extra`` more units in layer ``0`` (values all 0.5)."""
    shapes = {
        "0.weight": (8 + extra, 4),
        "0.bias": (8 + extra,),
        "2.weight": (2, 8 + extra),
        "2.bias": (2,),
    }
    return {key: torch.full(shape, 0.5) for key, shape in shapes.items()}


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert state.keys() == snapshot.keys()
    for key, value in snapshot.items():
        assert state[key].shape == value.shape and torch.equal(state[key], value), key
    assert (model[0].out_features, model[2].in_features) == (8, 8)


@pytest.mark.parametrize("extra", [3, 0], ids=["needs-widening", "same-widths"])
def test_a_strict_load_with_an_unexpected_key_raises_before_anything_changes(extra: int) -> None:
    """Mutation killed: ``if strict and (missing or unexpected)`` -> ``if strict and missing``.

    Without the check the widening commits and torch's own ``load_state_dict`` then copies every
    matching tensor before it raises a ``RuntimeError``: the model is left widened and loaded.
    """
    model = _make()
    snapshot = _snapshot(model)
    checkpoint = {**_grown_checkpoint(extra), "head.scale": torch.ones(1)}
    with pytest.raises(NetsurgeonError, match=r"unexpected keys \['head.scale'\]"):
        netsurgeon.load_state_dict(model, checkpoint)
    _assert_unchanged(model, snapshot)


@pytest.mark.parametrize("extra", [3, 0], ids=["needs-widening", "same-widths"])
def test_a_strict_load_with_a_missing_key_raises_before_anything_changes(extra: int) -> None:
    model = _make()
    snapshot = _snapshot(model)
    checkpoint = _grown_checkpoint(extra)
    del checkpoint["2.bias"]
    with pytest.raises(NetsurgeonError, match=r"missing keys \['2.bias'\]"):
        netsurgeon.load_state_dict(model, checkpoint)
    _assert_unchanged(model, snapshot)


def test_a_non_strict_load_with_an_unexpected_key_widens_and_loads_the_rest() -> None:
    model = _make()
    checkpoint = {**_grown_checkpoint(3), "head.scale": torch.ones(1)}
    netsurgeon.load_state_dict(model, checkpoint, strict=False)
    assert (model[0].out_features, model[2].in_features) == (11, 11)
    assert torch.equal(model[0].weight, torch.full((11, 4), 0.5))
    assert torch.equal(model[2].weight, torch.full((2, 11), 0.5))
