"""Training continues across ``widen``: gradients, live autograd graphs, parameters, optimizers.

The paper's scheme (section 2) makes the loss gradient w.r.t. the consumers' new zero columns
nonzero while the output is unchanged; the new incoming rows get exactly zero gradient until those
columns move. Parameters stay the same objects, so an optimizer built before the widening keeps
working, and its per-parameter state is padded with zeros: old slices bit-identical, ``step``
untouched. Hence one identical step on the old coordinates updates them exactly as it updates a
twin model that was never widened.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

import netsurgeon

PLAN = {"0": 2, "5": 3}  # the conv (read through a flatten, x9) and the hidden Linear


def _net(dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """conv -> BN -> tanh -> pool -> flatten -> fc -> tanh -> fc; tanh: no unit is ever dead."""
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3 * 3 * 3, 5),
        nn.Tanh(),
        nn.Linear(5, 2),
    ).to(dtype)


def _batches(n: int, dtype: torch.dtype = torch.float32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(4, 2, 6, 6, generator=g, dtype=dtype),
            torch.randn(4, 2, generator=g, dtype=dtype),
        )
        for _ in range(n)
    ]


def _loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return (model(x) - y).pow(2).mean()


def _corner(shape: torch.Size) -> tuple[slice, ...]:
    """Where the old tensor sits inside the grown one (growth always appends)."""
    return tuple(slice(0, n) for n in shape)


def _outside(grown: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The grown region of ``grown`` as a flat tensor (everything outside the old corner)."""
    mask = torch.ones_like(grown, dtype=torch.bool)
    mask[_corner(shape)] = False
    return grown[mask]


# -- gradients --------------------------------------------------------------------------------


@pytest.mark.parametrize("init", ["paper", "net2net"])
def test_one_backward_after_widening_gives_every_parameter_a_finite_gradient(init: str) -> None:
    model = _net()
    netsurgeon.widen(model, PLAN, init=init, generator=torch.Generator().manual_seed(0))
    _loss(model, _batches(1)[0]).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name
        assert torch.isfinite(p.grad).all(), name


def test_new_columns_get_gradient_and_new_rows_start_learning_after_one_step() -> None:
    model = _net()
    netsurgeon.widen(model, PLAN, generator=torch.Generator().manual_seed(0))
    conv, bn, fc1, fc2 = model[0], model[1], model[5], model[7]
    batch = _batches(1)[0]
    _loss(model, batch).backward()
    # Outgoing: every new unit's consumer columns (9 per conv channel after the flatten).
    conv_cols = fc1.weight.grad[:, 27:].reshape(fc1.out_features, 2, 9)
    assert (conv_cols.abs().sum(dim=(0, 2)) > 0).all()
    assert (fc2.weight.grad[:, 5:].abs().sum(dim=0) > 0).all()
    # Incoming: exactly zero while the columns are zero (BatchNorm's new affine entries too).
    for grad in (conv.weight.grad[3:], conv.bias.grad[3:], bn.weight.grad[3:], bn.bias.grad[3:]):
        assert torch.equal(grad, torch.zeros_like(grad))
    for grad in (fc1.weight.grad[5:], fc1.bias.grad[5:]):
        assert torch.equal(grad, torch.zeros_like(grad))
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.zero_grad()
    _loss(model, batch).backward()
    assert (conv.weight.grad[3:].flatten(1).abs().sum(dim=1) > 0).all()
    assert (fc1.weight.grad[5:].abs().sum(dim=1) > 0).all()


def test_training_continues_while_last_steps_loss_and_its_graph_are_alive() -> None:
    model = _net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    first, second = _batches(2)
    loss = _loss(model, first)  # held, like a training loop's `loss` variable
    loss.backward()
    optimizer.step()
    netsurgeon.widen(model, PLAN, optimizer=optimizer)
    optimizer.zero_grad()
    new_loss = _loss(model, second)
    new_loss.backward()
    optimizer.step()
    assert loss.grad_fn is not None  # the old graph really was alive throughout
    assert model[5].weight.grad.shape == (8, 45)
    assert torch.isfinite(model[5].weight).all()


def test_naive_data_assignment_breaks_the_next_backward_while_a_graph_is_alive() -> None:
    """The failure the previous test guards against, reproduced with ``param.data = bigger``."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(3, 4)
    loss = model(x).sum()
    loss.backward()
    model[2].weight.data = torch.cat([model[2].weight.data, torch.zeros(2, 2)], dim=1)
    model[0].weight.data = torch.cat([model[0].weight.data, torch.zeros(2, 4)])
    model[0].bias.data = torch.cat([model[0].bias.data, torch.zeros(2)])
    with pytest.raises(RuntimeError, match="invalid gradient"):
        model(x).sum().backward()
    assert loss.grad_fn is not None


# -- parameters and modules -------------------------------------------------------------------


def test_parameters_stay_the_same_objects_with_their_dtype_and_requires_grad() -> None:
    model = _net(torch.float64)
    model[0].bias.requires_grad_(False)  # a frozen parameter of a layer that grows
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    before = {
        name: (id(p), p.dtype, p.device, p.requires_grad) for name, p in model.named_parameters()
    }
    group_ids = [id(p) for p in optimizer.param_groups[0]["params"]]
    netsurgeon.widen(model, PLAN, optimizer=optimizer)
    after = {
        name: (id(p), p.dtype, p.device, p.requires_grad) for name, p in model.named_parameters()
    }
    assert after == before
    assert [id(p) for p in optimizer.param_groups[0]["params"]] == group_ids
    assert model[0].bias.shape == (5,)
    _loss(model, _batches(1, torch.float64)[0]).backward()
    assert model[0].bias.grad is None  # still frozen after growing


@pytest.mark.parametrize(
    ("dims", "memory_format"),
    [(2, torch.channels_last), (3, torch.channels_last_3d)],
    ids=["channels_last", "channels_last_3d"],
)
def test_conv_weights_keep_the_channels_last_memory_format(
    dims: int, memory_format: torch.memory_format
) -> None:
    conv, bn = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv3d, nn.BatchNorm3d)
    model = nn.Sequential(conv(3, 4, 3), bn(4), nn.ReLU(), conv(4, 5, 3), nn.ReLU(), conv(5, 2, 2))
    model = model.to(memory_format=memory_format)
    x = torch.randn(2, 3, *[6] * dims).contiguous(memory_format=memory_format)
    y = model(x)
    netsurgeon.widen(model, {"0": 2, "3": 3})
    for layer in (model[0], model[3], model[5]):
        assert layer.weight.is_contiguous(memory_format=memory_format)
        assert not layer.weight.is_contiguous()
    torch.testing.assert_close(model(x), y, rtol=1e-5, atol=1e-5)


def test_module_attributes_repr_and_state_dict_agree_after_widening() -> None:
    model = _net()
    netsurgeon.widen(model, PLAN)
    conv, bn, fc1, fc2 = model[0], model[1], model[5], model[7]
    assert (conv.out_channels, bn.num_features, fc1.in_features) == (5, 5, 45)
    assert (fc1.out_features, fc2.in_features) == (8, 8)
    text = repr(model)
    assert "Conv2d(2, 5," in text and "BatchNorm2d(5," in text
    assert "in_features=45, out_features=8" in text and "in_features=8, out_features=2" in text
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["0.weight"] == (conv.out_channels, conv.in_channels, *conv.kernel_size)
    for key in ("weight", "bias", "running_mean", "running_var"):
        assert shapes[f"1.{key}"] == (bn.num_features,)
    assert shapes["5.weight"] == (fc1.out_features, fc1.in_features)
    assert shapes["7.weight"] == (fc2.out_features, fc2.in_features)
    # A module built from the updated attributes has exactly these shapes.
    fresh = nn.Linear(fc1.in_features, fc1.out_features)
    assert fresh.weight.shape == fc1.weight.shape


def test_existing_gradients_grow_with_zeros_and_keep_their_old_entries() -> None:
    model = _net()
    _loss(model, _batches(1)[0]).backward()
    old = {name: p.grad.clone() for name, p in model.named_parameters()}
    netsurgeon.widen(model, PLAN)
    for name, p in model.named_parameters():
        assert p.grad.shape == p.shape, name
        assert torch.equal(p.grad[_corner(old[name].shape)], old[name]), name
        grown = _outside(p.grad, old[name].shape)
        assert torch.equal(grown, torch.zeros_like(grown)), name


# -- optimizers -------------------------------------------------------------------------------

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
OPTIMIZERS: dict[str, OptimizerFactory] = {
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
    "sgd-nesterov-foreach": lambda p: torch.optim.SGD(
        p, lr=0.1, momentum=0.9, nesterov=True, foreach=True
    ),
    "adam-foreach": lambda p: torch.optim.Adam(p, lr=1e-2, foreach=True),
    "adam-loop": lambda p: torch.optim.Adam(p, lr=1e-2, foreach=False),
    "adam-amsgrad": lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True),
    "adamw-foreach": lambda p: torch.optim.AdamW(p, lr=1e-2, foreach=True),
    "adamw-loop": lambda p: torch.optim.AdamW(p, lr=1e-2, foreach=False),
    "rmsprop-centered-momentum": lambda p: torch.optim.RMSprop(
        p, lr=1e-2, momentum=0.9, centered=True
    ),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.1),
    "adam-fused": lambda p: torch.optim.Adam(p, lr=1e-2, fused=True),
    "adamw-fused": lambda p: torch.optim.AdamW(p, lr=1e-2, fused=True),
    "sgd-fused": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, fused=True),
    "adagrad-fused": lambda p: torch.optim.Adagrad(p, lr=0.1, fused=True),
    "rprop": lambda p: torch.optim.Rprop(p, lr=0.01),
}
GROWN_FILL = {("rprop", "step_size"): 0.01}  # a fresh Rprop starts its step sizes at lr


def _make_optimizer(name: str, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """Build ``OPTIMIZERS[name]``; skip when this torch has no such (fused) implementation."""
    if "fused" in name:
        probe = nn.Parameter(torch.zeros(2))
        try:
            optimizer = OPTIMIZERS[name]([probe])
            probe.grad = torch.ones(2)
            optimizer.step()
        except (RuntimeError, TypeError, ValueError) as e:
            pytest.skip(f"{name} is not available on CPU in torch {torch.__version__}: {e}")
    return OPTIMIZERS[name](params)


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, batches: list) -> None:
    for batch in batches:
        optimizer.zero_grad()
        _loss(model, batch).backward()
        optimizer.step()


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_widening_pads_optimizer_state_and_the_next_step_matches_an_unwidened_twin(
    name: str,
) -> None:
    model = _net()
    twin = copy.deepcopy(model)
    optimizer = _make_optimizer(name, list(model.parameters()))
    twin_optimizer = _make_optimizer(name, list(twin.parameters()))
    batches = _batches(4)
    _train(model, optimizer, batches[:3])
    _train(twin, twin_optimizer, batches[:3])
    params = list(model.parameters())
    old_shapes = [p.shape for p in params]
    saved = copy.deepcopy(optimizer.state_dict()["state"])
    netsurgeon.widen(model, PLAN, optimizer=optimizer, generator=torch.Generator().manual_seed(0))

    grown_any = False
    for i, (p, shape) in enumerate(zip(params, old_shapes, strict=True)):
        state, old = optimizer.state[p], saved[i]
        assert state.keys() == old.keys()
        for key, value in state.items():
            if not isinstance(value, torch.Tensor) or value.dim() == 0:
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(old[key])), key
                continue
            assert value.shape == p.shape, (i, key)
            assert torch.equal(value[_corner(shape)], old[key]), (i, key)
            grown = _outside(value, shape)
            fill = GROWN_FILL.get((name, key), 0.0)
            assert torch.equal(grown, torch.full_like(grown, fill)), (i, key)
            grown_any |= p.shape != shape
    assert grown_any

    # One identical step on the old coordinates: identical updates to the twin's.
    optimizer.zero_grad()
    twin_optimizer.zero_grad()
    _loss(model, batches[3]).backward()
    _loss(twin, batches[3]).backward()
    for p, q in zip(params, twin.parameters(), strict=True):
        old = _corner(q.shape)
        # The new columns are zero, so the old coordinates' gradients agree (to rounding: the
        # wider matmuls may sum in another order); make them bit-identical for the comparison.
        torch.testing.assert_close(p.grad[old], q.grad, rtol=1e-5, atol=1e-6)
        p.grad[old] = q.grad
    start = {q: (q.detach().clone(), _tensor_state(twin_optimizer, q)) for q in twin.parameters()}
    optimizer.step()
    twin_optimizer.step()
    # Bit-identical, except for fused CPU kernels: see _fused_tolerance.
    fused = "fused" in name
    lr = optimizer.param_groups[0]["lr"]
    for p, q in zip(params, twin.parameters(), strict=True):
        old = _corner(q.shape)
        q_before, state_before = start[q]
        state_after = _tensor_state(twin_optimizer, q)
        for key, value in state_after.items():
            actual, bound = optimizer.state[p][key][old], _fused_tolerance(state_before[key], value)
            _assert_same(actual, value, bound if fused else None, key)
        carried = sum(
            (_fused_tolerance(state_before[k], v) for k, v in state_after.items()),
            torch.zeros_like(q),
        )
        bound = _fused_tolerance(q_before, q.detach()) + lr * carried
        _assert_same(p.detach()[old], q.detach(), bound if fused else None, "param")


def _tensor_state(optimizer: torch.optim.Optimizer, p: nn.Parameter) -> dict[str, torch.Tensor]:
    """The per-coordinate state tensors of ``p`` (``step`` and other scalars left out), copied."""
    return {
        k: v.clone()
        for k, v in optimizer.state[p].items()
        if isinstance(v, torch.Tensor) and v.dim() > 0
    }


#: Roundings in one coordinate's update by the fused CPU kernels (Adam: lerp, mul, addcmul,
#: the two bias corrections, sqrt, add, div, mul, sub; SGD and Adagrad need fewer).
FUSED_ROUNDINGS = 10


def _fused_tolerance(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """How far two evaluations of one fused optimizer update may differ, per coordinate.

    A fused CPU kernel updates the vectorised body of each flat tensor and its scalar tail (the
    last ``numel % vector width`` coordinates) with different code: the body contracts
    ``a * b + c`` into one fused multiply-add (one rounding), the tail rounds the product and the
    sum separately; the vector width is 8 float32 lanes with AVX2 and 16 with AVX-512. Widening a
    tensor moves its old coordinates in the flat layout, so a coordinate computed in the body of
    the twin may be computed in the tail of the widened model, or the other way round.

    Each update is a short expression ``y' = f(y, g, ...)`` of at most ``r = FUSED_ROUNDINGS``
    roundings whose terms are bounded by the two ends of the update: with coefficients of at
    most 1 (momentum, betas, ``1 - beta``, ``lr``), a term ``a y`` is at most ``|y|`` and the rest
    ``y' - a y`` at most ``|y| + |y'|``. Each evaluation is within ``g_r sum |terms|`` of the exact
    value (``g_r = r u / (1 - r u)``, ``u = eps / 2``; Higham, *Accuracy and Stability*, 3.1), so
    two evaluations differ by at most ``2 g_r (2 |y| + |y'|) <= 2 r eps (|y| + |y'|)`` (to first
    order in ``u``). A parameter's update reads its state: the state's own difference enters
    multiplied by at most ``lr`` (added by the caller). Before the compared step the twin's
    state and the widened model's old slices are bit-identical, so one step's bound is the bound.
    """
    eps = torch.finfo(after.dtype).eps
    return 2 * FUSED_ROUNDINGS * eps * (before.abs() + after.abs())


def _assert_same(
    actual: torch.Tensor, expected: torch.Tensor, bound: torch.Tensor | None, what: str
) -> None:
    """Bit-identical when ``bound`` is None, else within ``bound`` coordinate by coordinate."""
    if bound is None:
        assert torch.equal(actual, expected), what
        return
    excess = (actual - expected).abs() - bound
    assert (excess <= 0).all(), f"{what}: exceeds its bound by up to {excess.max().item():.3g}"


FRESH_STATE: dict[str, tuple[OptimizerFactory, str, float]] = {
    "rprop": (lambda p: torch.optim.Rprop(p, lr=0.01), "step_size", 0.01),
    "adagrad-initial-accumulator": (
        lambda p: torch.optim.Adagrad(p, lr=0.1, initial_accumulator_value=0.5),
        "sum",
        0.5,
    ),
}


@pytest.mark.parametrize("name", list(FRESH_STATE))
def test_new_coordinates_start_from_the_state_of_a_fresh_optimizer(name: str) -> None:
    """Rprop's step size starts at lr, Adagrad's sum at initial_accumulator_value, not at 0."""
    factory, key, initial = FRESH_STATE[name]
    model = _net()
    optimizer = factory(list(model.parameters()))
    batches = _batches(4)
    _train(model, optimizer, batches[:3])
    consumer = model[7].weight
    saved = optimizer.state[consumer][key].clone()
    netsurgeon.widen(model, PLAN, optimizer=optimizer)
    state = optimizer.state[consumer][key]
    assert torch.equal(state[:, :5], saved)
    assert torch.equal(state[:, 5:], torch.full_like(state[:, 5:], initial))
    # The first update of the new columns is the one a fresh optimizer makes from that gradient.
    optimizer.zero_grad()
    _loss(model, batches[3]).backward()
    fresh = nn.Parameter(consumer.detach().clone())
    fresh.grad = consumer.grad.clone()
    factory([fresh]).step()
    optimizer.step()
    assert torch.equal(consumer.detach()[:, 5:], fresh.detach()[:, 5:])
    assert not torch.equal(consumer.detach()[:, 5:], torch.zeros(2, 3))


def test_optimizer_with_factored_state_is_refused_and_nothing_changes() -> None:
    model = _net()
    optimizer = torch.optim.Adafactor(model.parameters(), lr=1e-2)
    _train(model, optimizer, _batches(1))
    state = copy.deepcopy(model.state_dict())
    optimizer_state = copy.deepcopy(optimizer.state_dict())
    with pytest.raises(netsurgeon.WidenError, match="factored state"):
        netsurgeon.widen(model, PLAN, optimizer=optimizer)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    after = optimizer.state_dict()
    for index, entry in optimizer_state["state"].items():
        for key, value in entry.items():
            assert torch.equal(torch.as_tensor(after["state"][index][key]), torch.as_tensor(value))
    assert model[0].out_channels == 3 and model[0].weight.shape == (3, 2, 3, 3)


def test_lr_scheduler_keeps_stepping_after_widening() -> None:
    model = _net()
    twin = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    twin_optimizer = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=6)
    twin_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(twin_optimizer, T_max=6)
    lrs, twin_lrs = [], []
    for step, batch in enumerate(_batches(6)):
        if step == 3:
            netsurgeon.widen(model, PLAN, optimizer=optimizer)
        _train(model, optimizer, [batch])
        _train(twin, twin_optimizer, [batch])
        scheduler.step()
        twin_scheduler.step()
        lrs.append(scheduler.get_last_lr()[0])
        twin_lrs.append(twin_scheduler.get_last_lr()[0])
    assert lrs == twin_lrs
    assert lrs[2] > lrs[3] > lrs[4] > lrs[5]
    assert scheduler.optimizer is optimizer and model[0].out_channels == 5
