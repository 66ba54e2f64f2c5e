"""FrozenBatchNorm2d and SyncBatchNorm are followers: they grow with the channels they normalise.

Both act per channel: ``y_c = (x_c - m_c) * w_c / sqrt(v_c + eps) + b_c``, with ``m, v`` frozen
buffers (torchvision's ``FrozenBatchNorm2d``, every detection backbone's norm) or running/batch
statistics (``SyncBatchNorm``, the norm under DDP; without a process group it is a BatchNorm).
A new channel's entries (``w = 1, b = 0, m = 0, v = 1`` under the paper's init, copies of its
source's under net2net) touch only that channel, and its consumers read it through zero or split
columns, so the output is unchanged:

    max |y_after - y_before| <= tol * (1 + max |y_before|),  tol = 1e-5 (float32), 1e-10 (float64)
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

import netsurgeon
from netsurgeon.graph.ops.base import FollowerHandler
from netsurgeon.graph.registry import Registry, register_module

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}


def _assert_preserved(after: torch.Tensor, before: torch.Tensor, dtype: torch.dtype) -> None:
    tol = TOLERANCE[dtype] * (1 + before.abs().max().item())
    torch.testing.assert_close(after, before, atol=tol, rtol=0.0)


def _frozen_resnet18(dtype: torch.dtype) -> nn.Module:
    model = torchvision.models.resnet18(norm_layer=FrozenBatchNorm2d, num_classes=10).to(dtype)
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():  # non-trivial frozen statistics
        if isinstance(module, FrozenBatchNorm2d):
            module.weight.uniform_(0.5, 1.5, generator=generator)
            module.bias.normal_(generator=generator)
            module.running_mean.normal_(generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
    return model


@pytest.mark.parametrize("init", ["paper", "net2net"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_frozen_batchnorm_resnet18_widens_over_every_widenable_group_exactly(
    dtype: torch.dtype, init: str
) -> None:
    model = _frozen_resnet18(dtype)
    x = torch.randn(2, 3, 64, 64, dtype=dtype)
    with torch.no_grad():
        before = model(x)
    graph = netsurgeon.trace(model, x)
    plan = {g.name: 2 * g.granularity for g in graph.groups if g.widenable}
    assert len(plan) == len(graph.groups) - 1, "every group but the classifier's is widenable"
    netsurgeon.widen(model, plan, graph=graph, init=init)
    with torch.no_grad():
        after = model(x)
    _assert_preserved(after, before, dtype)
    bn = model.layer1[0].bn1
    assert all(t.shape == (66,) for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var))
    if init == "paper":
        new = torch.stack([bn.weight[64:], bn.bias[64:], bn.running_mean[64:], bn.running_var[64:]])
        expected = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=dtype)[:, None].expand(4, 2)
        torch.testing.assert_close(new, expected, atol=0.0, rtol=0.0)


@pytest.mark.parametrize("init", ["paper", "net2net"])
@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sync_batchnorm_grows_with_its_channels_and_the_output_is_kept(
    dtype: torch.dtype, train: bool, init: str
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 5, 3), nn.SyncBatchNorm(5), nn.ReLU(), nn.Conv2d(5, 2, 1)
    ).to(dtype)
    model[1].running_mean.normal_()
    model[1].running_var.uniform_(0.5, 2.0)
    model.train(train)
    x = torch.randn(4, 3, 8, 8, dtype=dtype)
    with torch.no_grad():
        before = model(x)
    netsurgeon.widen(model, {"0": 3}, init=init)
    with torch.no_grad():
        after = model(x)
    _assert_preserved(after, before, dtype)
    assert model[1].num_features == 8 and model[1].running_var.shape == (8,)
    assert netsurgeon.trace(model).followers_of("0") == ["1"]


def test_a_module_type_registered_by_name_is_handled_without_importing_it() -> None:
    """``register_module("pkg.mod.Class")`` matches by the class's module and qualified name."""
    registry = Registry()

    @register_module("netsurgeon_test_only.norms.Frozen", registry=registry)
    class Handler(FollowerHandler):
        pass

    frozen = type("Frozen", (nn.Module,), {"__module__": "netsurgeon_test_only.norms"})
    other = type("Frozen", (nn.Module,), {"__module__": "elsewhere"})
    assert isinstance(registry.for_module(frozen()), Handler)
    assert isinstance(registry.for_module(type("Sub", (frozen,), {})()), Handler), "by MRO"
    assert registry.for_module(other()) is None
