"""``widen(..., mirrors=[ema])``: EMA / ``AveragedModel`` copies grow with the model.

An exponential moving average of the weights is a second copy of the model. Before mirrors, a
growth left it at the old widths: ``AveragedModel.update_parameters`` then failed on the shape
mismatch. Invariants (``"paper"`` init, whose new consumer columns are zero):

* each mirror gets the model's insertions: its own old entries bit for bit, and new entries
  equal to the model's new entries bit for bit, size attributes as the model's;
* so a mirror computes exactly what it computed before the widening (float64, eval and train
  mode), and a mirror equal to the model stays equal to it;
* the average keeps averaging after a growth;
* an init that copies units (``"net2net"``) widens each mirror by copying its own units with
  the model's sources (the same draws, replayed): the mirror keeps its function;
* a mirror of another architecture or widths raises before anything changes (model, optimizer
  and every mirror bit-identical).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import netsurgeon
from netsurgeon import NetsurgeonTypeError, WidenError
from netsurgeon.models import vgg
from netsurgeon.nagn import Grower, GrowthConfig

PLAN = {"0": 4, "3": 2}
TOL = {"rtol": 1e-12, "atol": 1e-12}


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 5 * 5, 3),
    ).double()


def _x(seed: int = 1) -> torch.Tensor:
    return torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(seed)).double()


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, ema: AveragedModel, steps: int):
    model.train()
    for step in range(steps):
        loss = F.cross_entropy(model(_x(10 + step)), torch.arange(4) % 3)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.update_parameters(model)


def _trained_pair() -> tuple[nn.Module, torch.optim.Optimizer, AveragedModel]:
    model = _net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    _train(model, optimizer, ema, 3)
    return model, optimizer, ema


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_a_mirror_keeps_its_own_old_entries_and_gets_the_models_new_entries():
    model, optimizer, ema = _trained_pair()
    old_model, old_ema = _state(model), _state(ema.module)
    assert not torch.equal(old_model["0.weight"], old_ema["0.weight"])  # a real average
    netsurgeon.widen(model, PLAN, optimizer=optimizer, mirrors=[ema])
    new_model, new_ema = model.state_dict(), ema.module.state_dict()
    kept = {0: torch.arange(8), 1: torch.arange(8)}  # "0" grows at the end: old rows 0..7
    assert torch.equal(new_ema["0.weight"][kept[0]], old_ema["0.weight"])
    assert torch.equal(new_ema["0.weight"][8:], new_model["0.weight"][8:])
    assert torch.equal(new_ema["3.weight"][:6, :8], old_ema["3.weight"])
    assert torch.equal(new_ema["3.weight"][6:], new_model["3.weight"][6:])
    assert torch.equal(new_ema["3.weight"][:, 8:], new_model["3.weight"][:, 8:])
    for key in ("1.running_mean", "1.running_var", "1.weight", "1.bias"):
        assert torch.equal(new_ema[key][:8], old_ema[key])
        assert torch.equal(new_ema[key][8:], new_model[key][8:])
    assert ema.module[0].out_channels == 12 and ema.module[1].num_features == 12
    assert ema.module[3].in_channels == 12 and ema.module[7].in_features == 8 * 25


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_a_mirror_computes_what_it_computed_before_the_widening(train):
    model, optimizer, ema = _trained_pair()
    ema_before = copy.deepcopy(ema.module).train(train)
    netsurgeon.widen(model, PLAN, optimizer=optimizer, mirrors=[ema])
    ema.module.train(train)
    torch.testing.assert_close(ema.module(_x()), ema_before(_x()), **TOL)


def test_an_averaged_model_equal_to_the_model_stays_equal_and_keeps_averaging():
    model = _net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    model.eval(), ema.eval()
    torch.testing.assert_close(ema(_x()), model(_x()), rtol=0, atol=0)
    netsurgeon.widen(model, PLAN, optimizer=optimizer, mirrors=[ema])
    torch.testing.assert_close(ema(_x()), model(_x()), rtol=0, atol=0)
    before = {n: p.clone() for n, p in ema.module.named_parameters()}
    _train(model, optimizer, ema, 2)  # update_parameters on the grown shapes
    assert int(ema.n_averaged) == 2
    for name, param in ema.module.named_parameters():
        live = model.get_parameter(name)
        if torch.equal(before[name], live):  # untouched by training: nothing to average
            continue
        assert not torch.equal(param, before[name]), name  # it moved towards the model
        assert not torch.equal(param, live), name  # but is an average, not a copy


# The zero columns add exact zeros, so only a kernel that sums in another order for the wider
# input can move the result: by a few ulps of the largest activation. Measured on CPU: exactly 0
# over 120 float32 cases (60 seeds, eval and train).
PROPERTY_TOL = {
    torch.float64: {"rtol": 1e-12, "atol": 1e-12},
    torch.float32: {"rtol": 1e-5, "atol": 1e-5},
}


@given(
    k0=st.integers(1, 6),
    k3=st.integers(1, 6),
    dtype=st.sampled_from((torch.float32, torch.float64)),
    train=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_any_plan_keeps_a_perturbed_mirrors_function_and_its_old_entries(
    k0, k3, dtype, train, seed
):
    model = _net().to(dtype)
    mirror = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # an average that has drifted from the model: other values everywhere
        for tensor in (*mirror.parameters(), mirror[1].running_mean, mirror[4].running_mean):
            tensor.add_(0.1 * torch.randn(tensor.shape, generator=g, dtype=dtype))
    old = _state(mirror)
    reference = copy.deepcopy(mirror).train(train)
    netsurgeon.widen(model, {"0": k0, "3": k3}, mirrors=[mirror])
    x = _x(seed).to(dtype)
    torch.testing.assert_close(mirror.train(train)(x), reference(x), **PROPERTY_TOL[dtype])
    new = mirror.state_dict()
    assert torch.equal(new["0.weight"][:8], old["0.weight"])
    assert torch.equal(new["3.weight"][:6, :8], old["3.weight"])
    assert torch.equal(new["7.weight"][:, : 6 * 25], old["7.weight"])
    assert torch.equal(new["0.weight"][8:], model.state_dict()["0.weight"][8:])


def test_a_mirror_with_other_widths_raises_before_anything_changes():
    model, optimizer, ema = _trained_pair()
    narrow = copy.deepcopy(ema)
    netsurgeon.widen(narrow.module, {"0": 2})
    states = [_state(model), _state(ema.module), _state(narrow.module)]
    momentum = optimizer.state[model[0].weight]["momentum_buffer"].clone()
    with pytest.raises(WidenError, match=r"mirrors\[1\].*'0\.weight' has shape \(10, 3, 3, 3\)"):
        netsurgeon.widen(model, PLAN, optimizer=optimizer, mirrors=[ema, narrow])
    for module, state in zip((model, ema.module, narrow.module), states, strict=True):
        after = module.state_dict()
        assert all(torch.equal(after[k], v) for k, v in state.items())
    assert model[0].out_channels == 8 and ema.module[0].out_channels == 8
    assert torch.equal(optimizer.state[model[0].weight]["momentum_buffer"], momentum)


def test_a_mirror_of_another_architecture_or_type_is_refused():
    model = _net()
    with pytest.raises(WidenError, match=r"mirrors\[0\].*has no module"):
        netsurgeon.widen(model, PLAN, mirrors=[nn.Sequential(nn.Conv2d(3, 8, 3))])
    with pytest.raises(NetsurgeonTypeError, match=r"mirrors must be nn\.Modules"):
        netsurgeon.widen(model, PLAN, mirrors=[{"0.weight": torch.zeros(1)}])
    with pytest.raises(WidenError, match="is the model itself"):
        netsurgeon.widen(model, PLAN, mirrors=[model])
    assert model[0].out_channels == 8


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_net2net_widens_each_mirror_by_copying_its_own_units(train):
    """net2net copies units and splits their columns: linear in the old entries, so the mirror
    copies *its own* units with the model's sources, and keeps its function."""
    model, optimizer, ema = _trained_pair()
    reference = copy.deepcopy(ema.module).train(train)
    twin = copy.deepcopy(ema.module)  # the mirror widened on its own with the same draws
    g = torch.Generator().manual_seed(5)
    netsurgeon.widen(model, PLAN, optimizer=optimizer, mirrors=[ema], init="net2net", generator=g)
    netsurgeon.widen(twin, PLAN, init="net2net", generator=torch.Generator().manual_seed(5))
    for key, value in twin.state_dict().items():
        assert torch.equal(ema.module.state_dict()[key], value), key
    torch.testing.assert_close(ema.module.train(train)(_x()), reference(_x()), **TOL)


def test_net2net_with_the_global_rng_replays_the_models_draws_and_leaves_the_rng_as_one_widening():
    model, _, ema = _trained_pair()
    twin_model, twin_ema = copy.deepcopy((model, ema.module))
    torch.manual_seed(11)
    netsurgeon.widen(model, PLAN, mirrors=[ema], init="net2net")
    after_with_mirror = torch.rand(3)
    torch.manual_seed(11)
    netsurgeon.widen(twin_model, PLAN, init="net2net")
    after_without = torch.rand(3)
    torch.manual_seed(11)
    netsurgeon.widen(twin_ema, PLAN, init="net2net")
    assert torch.equal(after_with_mirror, after_without)  # the mirror drew nothing new
    for key, value in twin_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    for key, value in twin_ema.state_dict().items():
        assert torch.equal(ema.module.state_dict()[key], value), key


def test_a_grower_grows_its_mirrors_with_the_model():
    torch.manual_seed(0)
    model = vgg([[4], [4]], num_classes=3, image_size=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    config = GrowthConfig(w_acc=1, delta_acc=1.0, delta_stop=-1.0, every=1)
    grower = Grower(model, optimizer, config, mirrors=[ema])
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    y = torch.arange(8) % 3
    event = None
    for _ in range(2):
        model.train()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.update_parameters(model)
        event = grower.step(0.5)
    assert event is not None and event.increments
    shapes = {n: p.shape for n, p in model.named_parameters()}
    assert {n: p.shape for n, p in ema.module.named_parameters()} == shapes
    ema.update_parameters(model)  # still averaging


def test_a_grower_refuses_a_mirror_of_other_shapes_at_construction():
    torch.manual_seed(0)
    model = vgg([[4], [4]], num_classes=3, image_size=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"mirrors\[0\].*does not have the model's parameters"):
        Grower(model, optimizer, mirrors=[vgg([[4], [6]], num_classes=3, image_size=8)])
    with pytest.raises(NetsurgeonTypeError, match="pass mirrors=\\[ema\\]"):
        Grower(model, optimizer, mirrors=copy.deepcopy(model))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_mirror_on_the_cpu_grows_with_a_model_on_the_gpu():
    model = _net().cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ema = AveragedModel(model, device=torch.device("cpu"))
    ema_before = copy.deepcopy(ema.module).eval()
    netsurgeon.widen(model, PLAN, optimizer=optimizer, mirrors=[ema])
    assert ema.module[0].weight.device.type == "cpu"
    assert torch.equal(ema.module[0].weight[8:], model[0].weight[8:].cpu())
    ema.module.eval()
    torch.testing.assert_close(ema.module(_x()), ema_before(_x()), **TOL)
