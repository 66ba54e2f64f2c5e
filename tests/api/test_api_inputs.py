"""Values a user hands the API are accepted when they mean the same, refused clearly otherwise.

* a validation accuracy is a number in [0, 1] whatever its type: Python, ``np.float32`` (which,
  unlike ``np.float64``, is no ``float`` subclass), a 0-d numpy array or torch tensor;
* ``widen(generator=0)`` raises a ``NetsurgeonTypeError`` naming the parameter and the fix
  (not torch's raw ``TypeError`` from inside the surgery), and changes nothing;
* every ``Budget`` field is checked at construction: the error names the field, the value and
  what is allowed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netsurgeon
from netsurgeon import ConfigError, NetsurgeonTypeError
from netsurgeon.cost import Budget, fit_to_budget
from netsurgeon.models import vgg
from netsurgeon.nagn import Grower, GrowthConfig

FORCED = {"w_acc": 1, "delta_acc": 1.0, "delta_stop": -1.0, "every": 1}


def _grower() -> tuple[nn.Module, Grower]:
    torch.manual_seed(0)
    model = vgg([[4], [4]], num_classes=3, image_size=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, Grower(model, optimizer, GrowthConfig(**FORCED))


@pytest.mark.parametrize(
    "value",
    [np.float32(0.625), np.float64(0.625), np.array(0.625, dtype=np.float32), torch.tensor(0.625)],
    ids=["np.float32", "np.float64", "0-d array", "0-d tensor"],
)
def test_an_accuracy_of_any_numeric_type_is_recorded_as_the_same_float(value):
    _, grower = _grower()
    grower.step(value)
    assert grower.accuracies == [0.625] and type(grower.accuracies[0]) is float


def test_a_numpy_float32_accuracy_drives_a_growth_like_a_python_float():
    model, grower = _grower()
    x, y = torch.randn(8, 3, 8, 8), torch.arange(8) % 3
    event = None
    for _ in range(2):
        F.cross_entropy(model(x), y).backward()
        event = grower.step(np.float32(0.5))
    assert event is not None and event.window_accuracy == 0.5


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (np.float32(62.5), r"outside \[0, 1\].*62\.5 -> 0\.625"),
        (np.float32("nan"), "finite number"),
        (np.array([0.5, 0.6]), "got ndarray"),
        (np.bool_(True), "got bool"),
    ],
    ids=["percent", "nan", "two values", "bool"],
)
def test_a_bad_numpy_accuracy_is_refused_with_the_value(value, match):
    _, grower = _grower()
    with pytest.raises(ValueError, match=match):
        grower.step(value)
    assert grower.accuracies == [] and grower.epoch == 0


def test_widen_refuses_an_int_generator_naming_the_parameter_and_the_fix():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    weight = model[0].weight.clone()
    with pytest.raises(NetsurgeonTypeError) as info:
        netsurgeon.widen(model, {"0": 4}, generator=0)
    message = str(info.value)
    assert "generator must be a torch.Generator" in message and "got int" in message
    assert "torch.Generator().manual_seed(0)" in message
    assert model[0].out_features == 8 and torch.equal(model[0].weight, weight)


@pytest.mark.parametrize(
    ("fields", "error", "match"),
    [
        ({"max_params": -1}, ConfigError, r"Budget\.max_params=-1: expected a positive int"),
        ({"max_params": 0}, ConfigError, r"Budget\.max_params=0"),
        ({"max_flops": -5}, ConfigError, r"Budget\.max_flops=-5"),
        ({"max_width": 0}, ConfigError, r"Budget\.max_width=0"),
        ({"max_width": {"0": -2}}, ConfigError, r"Budget\.max_width\['0'\]=-2"),
        ({"max_width": {0: 4}}, NetsurgeonTypeError, r"max_width has the key 0 \(int\)"),
        ({"max_params": 1e6}, NetsurgeonTypeError, r"max_params=1000000\.0.*write 1000000"),
        ({"max_flops": True}, NetsurgeonTypeError, r"max_flops=True"),
        ({"max_width": "wide"}, NetsurgeonTypeError, r"max_width='wide'"),
    ],
)
def test_a_budget_field_outside_what_it_allows_is_refused_at_construction(fields, error, match):
    with pytest.raises(error, match=match):
        Budget(**fields)


def test_a_budget_copies_its_width_mapping_and_still_fits_plans():
    caps = {"0": 10}
    budget = Budget(max_width=caps)
    caps["0"] = 100  # the caller's dict changing later does not move the cap
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    fitted = fit_to_budget(net, {"0": 8}, budget)
    assert fitted.increments == {"0": 2} and fitted.limited_by == ("max_width",)


def test_ranks_agree_on_a_numpy_float32_accuracy(tmp_path):
    import torch.distributed as dist

    from netsurgeon.distributed import agree_on_accuracy

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        assert agree_on_accuracy(np.float32(0.625)) == 0.625
        assert agree_on_accuracy(torch.tensor(0.625)) == 0.625
        with pytest.raises(ValueError, match="not a finite number in"):
            agree_on_accuracy(np.float32(62.5))
    finally:
        dist.destroy_process_group()
