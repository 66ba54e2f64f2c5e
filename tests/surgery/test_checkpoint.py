"""A grown model restores onto a fresh instance of the user's original class, optimizer included.

``netsurgeon.load_state_dict(fresh, sd)`` reads each layer's width from the checkpoint, widens the
fresh model to it and loads the values; the optimizer (built on the same parameter objects) then
loads its own state dict. On CPU, training then continues bit-identically to the run that never
stopped. A checkpoint that does not fit changes nothing.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netsurgeon
from netsurgeon import WidenError


class UserNet(nn.Module):
    """The user's class, constructed with its original widths; ``flat_bn``: a BatchNorm1d over
    the flattened map (its multiplicity needs ``example_inputs``)."""

    def __init__(self, c1: int = 3, c2: int = 4, hidden: int = 5, flat_bn: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, c1, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.flat_bn = nn.BatchNorm1d(c2 * 9) if flat_bn else nn.Identity()
        self.fc1 = nn.Linear(c2 * 9, hidden)
        self.fc2 = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(torch.tanh(self.conv2(x)), 2)
        x = self.flat_bn(torch.flatten(x, 1))
        return self.fc2(F.relu(self.fc1(x)))


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    return [
        (torch.randn(6, 2, 6, 6, generator=g), torch.randn(6, 2, generator=g)) for _ in range(n)
    ]


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: tuple) -> float:
    x, y = batch
    optimizer.zero_grad()
    loss = F.mse_loss(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.item()


def _roundtrip(obj: object) -> object:
    """Through bytes, as a checkpoint file would go."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


CONFIGS = {
    "adam-paper": (lambda p: torch.optim.Adam(p, lr=1e-2), "paper", False),
    "sgd-net2net-flat-batchnorm": (
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
        "net2net",
        True,
    ),
    "adamw-amsgrad-paper-flat-batchnorm": (
        lambda p: torch.optim.AdamW(p, lr=1e-2, amsgrad=True),
        "paper",
        True,
    ),
}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_training_continues_bit_identically_after_a_save_restore_round_trip(config: str) -> None:
    make_optimizer, init, flat_bn = CONFIGS[config]
    batches = _batches(8)
    x0 = batches[0][0]
    model = UserNet(flat_bn=flat_bn)
    optimizer = make_optimizer(model.parameters())
    for batch in batches[:3]:
        _step(model, optimizer, batch)
    netsurgeon.widen(
        model,
        {"conv1": 2, "conv2": 3, "fc1": 4},
        optimizer=optimizer,
        init=init,
        generator=torch.Generator().manual_seed(0),
        example_inputs=x0,
    )
    _step(model, optimizer, batches[3])
    state, optimizer_state = _roundtrip((model.state_dict(), optimizer.state_dict()))

    restored = UserNet(flat_bn=flat_bn)  # the original class with its original widths
    restored_optimizer = make_optimizer(restored.parameters())  # built before the widening
    netsurgeon.load_state_dict(restored, state, example_inputs=x0 if flat_bn else None)
    restored_optimizer.load_state_dict(optimizer_state)
    assert repr(restored) == repr(model)

    for batch in batches[4:]:
        assert _step(restored, restored_optimizer, batch) == _step(model, optimizer, batch)
    for (name, p), q in zip(model.named_parameters(), restored.parameters(), strict=True):
        assert torch.equal(p, q), name
    for (name, b), c in zip(model.named_buffers(), restored.buffers(), strict=True):
        assert torch.equal(b, c), name
    state_after = restored_optimizer.state_dict()["state"]
    for index, entry in optimizer.state_dict()["state"].items():
        for key, value in entry.items():
            assert torch.equal(torch.as_tensor(state_after[index][key]), torch.as_tensor(value))


def test_restoring_draws_no_random_numbers() -> None:
    model = UserNet()
    netsurgeon.widen(model, {"conv1": 2, "fc1": 3})
    state = model.state_dict()
    fresh = UserNet()
    rng = torch.random.get_rng_state()
    netsurgeon.load_state_dict(fresh, state)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert fresh.conv1.out_channels == 5 and fresh.fc1.out_features == 8


def test_a_flat_batchnorm_model_restores_without_example_inputs_too() -> None:
    model = UserNet(flat_bn=True)
    netsurgeon.widen(model, {"conv2": 2}, example_inputs=_batches(1)[0][0])
    fresh = netsurgeon.load_state_dict(UserNet(flat_bn=True), model.state_dict())
    assert fresh.flat_bn.num_features == 6 * 9
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def _tampered_checkpoints() -> dict[str, tuple[dict, str]]:
    grown = UserNet()
    netsurgeon.widen(grown, {"conv1": 2, "conv2": 1})
    narrow = UserNet(c1=2).state_dict()
    bad_bn = dict(grown.state_dict())
    bad_bn["bn1.weight"] = torch.ones(4)
    missing = dict(grown.state_dict())
    del missing["fc2.bias"]
    wider_output = UserNet().state_dict()
    wider_output["fc2.weight"] = torch.zeros(3, 5)
    wider_output["fc2.bias"] = torch.zeros(3)
    return {
        "narrower": (narrow, r"layer 'conv1' has 3 units but the checkpoint has 2"),
        "inconsistent-batchnorm": (bad_bn, r"'bn1\.weight' would be \(5,\) but .* \(4,\)"),
        "missing-key": (missing, r"missing keys \['fc2\.bias'\]"),
        "wider-output-layer": (wider_output, r"cannot widen layer 'fc2'"),
    }


@pytest.mark.parametrize(
    "case", ["narrower", "inconsistent-batchnorm", "missing-key", "wider-output-layer"]
)
def test_checkpoint_that_does_not_fit_raises_and_leaves_the_model_unchanged(case: str) -> None:
    checkpoint, match = _tampered_checkpoints()[case]
    model = UserNet()
    before, text = copy.deepcopy(model.state_dict()), repr(model)
    with pytest.raises(WidenError, match=match):
        netsurgeon.load_state_dict(model, checkpoint)
    assert repr(model) == text
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())
