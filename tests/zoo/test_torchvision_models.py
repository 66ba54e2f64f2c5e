"""The torchvision zoo: traced strictly, mostly widenable, and widened everywhere at once exactly.

Real architectures combine every coupling the channel groups model: residual streams (ResNet,
RegNet, MobileNet, EfficientNet, ConvNeXt), running concatenations (DenseNet), inception branches
(GoogLeNet, SqueezeNet), depthwise convs and squeeze-excitation gates (MobileNet v3, EfficientNet,
MnasNet, RegNet-Y), channel shuffles (ShuffleNet), LayerNorm and attention (ConvNeXt, ViT, Swin).
Each model must trace with ``strict=True``; in the convolutional families at least 90 % of the
Conv2d/Linear layers outside the output group must lie in widenable groups; and widening every
widenable group at once must keep the output, in float64 eval mode to

    max |y_after - y_before| <= 1e-9 * (1 + max |y_before|)

(float32 and 1e-5 for the two models whose float64 copy would be a gigabyte), and in float32
train mode (batch statistics, dropout off) for ResNet-18 and MobileNet v3 small.

Random weights, random BatchNorm running statistics (so eval mode is not an identity), one thread:
small inputs (64x64; ViT built for 32x32 images, VGG run at 32x32) keep the file near a minute.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator

import pytest
import torch
import torchvision.models as tvm
from torch import nn

import netsurgeon
from netsurgeon import UnsupportedModelError

pytestmark = pytest.mark.slow

# name: (constructor kwargs, input size, output layer, dtype of the widening check)
MODELS: dict[str, tuple[dict, int, str, torch.dtype]] = {
    "resnet18": ({}, 64, "fc", torch.float64),
    "resnet50": ({}, 64, "fc", torch.float64),
    "densenet121": ({}, 64, "classifier", torch.float64),
    "mobilenet_v2": ({}, 64, "classifier.1", torch.float64),
    "mobilenet_v3_small": ({}, 64, "classifier.3", torch.float64),
    "efficientnet_b0": ({}, 64, "classifier.1", torch.float64),
    "mnasnet0_5": ({}, 64, "classifier.1", torch.float64),
    "regnet_y_400mf": ({}, 64, "fc", torch.float64),
    "squeezenet1_0": ({}, 64, "classifier.1", torch.float64),
    "googlenet": ({"aux_logits": False, "init_weights": False}, 64, "fc", torch.float64),
    "shufflenet_v2_x0_5": ({}, 64, "fc", torch.float64),
    "convnext_tiny": ({}, 64, "classifier.2", torch.float64),
    "vit_b_16": ({"image_size": 32}, 32, "heads.head", torch.float64),
    "swin_t": ({}, 64, "head", torch.float64),
    "alexnet": ({}, 64, "classifier.6", torch.float32),
    "vgg11": ({}, 32, "classifier.6", torch.float32),
}
# The families whose layers are convolutions joined by adds, concatenations and gates.
MOSTLY_WIDENABLE = [
    "resnet18",
    "resnet50",
    "densenet121",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "mnasnet0_5",
    "regnet_y_400mf",
    "squeezenet1_0",
    "googlenet",
    "convnext_tiny",  # its LayerNorm streams tile
]
# For the lead to fill: models whose trace must raise because an op is truly unknown, with a
# pattern naming that op. Empty: every model above is expected to trace strictly.
EXPECTED_UNSUPPORTED: dict[str, str] = {}
# Widened by about a quarter of each group's width (rounded to its granularity), not by one granule.
QUARTER = {"resnet18", "mobilenet_v2"}
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-9}


@pytest.fixture(scope="module", autouse=True)
def _release_models() -> Iterator[None]:
    yield
    _pristine.cache_clear()


@functools.cache
def _pristine(name: str) -> nn.Module:
    """Built once per module run (initialising VGG's 133M weights costs seconds); never mutated."""
    kwargs = MODELS[name][0]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = getattr(tvm, name)(weights=None, **kwargs).eval()
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.running_mean.normal_(0.0, 0.1)
                    module.running_var.uniform_(0.8, 1.25)
    return model


def _build(name: str) -> nn.Module:
    return copy.deepcopy(_pristine(name))


def _input(name: str, batch: int, dtype: torch.dtype) -> torch.Tensor:
    size = MODELS[name][1]
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(dtype)


def _names(items) -> set[str]:
    return {getattr(item, "layer", getattr(item, "name", item)) for item in items}


def _trace(model: nn.Module, name: str):
    if name in EXPECTED_UNSUPPORTED:
        with pytest.raises(UnsupportedModelError, match=EXPECTED_UNSUPPORTED[name]):
            netsurgeon.trace(model, strict=True)
        return netsurgeon.trace(model, strict=False)
    return netsurgeon.trace(model, strict=True)


def _plan(name: str, graph) -> dict[str, int]:
    plan = {}
    for group in graph.groups:
        if group.widenable:
            granules = round(group.width / 4 / group.granularity) if name in QUARTER else 1
            plan[group.name] = group.granularity * max(1, granules)
    return plan


def _assert_preserved(after: torch.Tensor, before: torch.Tensor, what: str) -> None:
    assert after.shape == before.shape
    assert torch.isfinite(before).all()
    error = (after - before).abs().max().item()
    bound = TOLERANCE[before.dtype] * (1.0 + before.abs().max().item())
    assert error <= bound, f"{what}: max error {error:.3g} > {bound:.3g}"


@pytest.mark.parametrize("name", list(MODELS))
def test_torchvision_model_traces_strictly_into_consistent_groups(name: str) -> None:
    model = _pristine(name)
    graph = _trace(model, name)
    modules = dict(model.named_modules())
    names = [g.name for g in graph.groups]
    assert len(names) == len(set(names))
    for group in graph.groups:
        assert group.name == group.producers[0] and group.name in modules
        assert graph.group_of(group.name).name == group.name
        for producer in group.producers:
            module = modules[producer]
            width = getattr(module, "out_channels", getattr(module, "out_features", None))
            if width is not None:
                assert width == group.width, (producer, width, group.width)
        assert group.width % group.granularity == 0
        assert group.widenable or group.reason, group.name
    output = graph.group_of(MODELS[name][2])
    assert not output.widenable and output.reason
    assert any(g.widenable for g in graph.groups)


@pytest.mark.parametrize("name", MOSTLY_WIDENABLE)
def test_most_layers_of_convolutional_families_lie_in_widenable_groups(name: str) -> None:
    model = _pristine(name)
    graph = _trace(model, name)
    output = set(graph.group_of(MODELS[name][2]).producers)
    member = {}
    for group in graph.groups:
        for layer in _names(group.producers) | _names(group.followers):
            member[layer] = group
    layers = [
        n
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and n not in output
    ]
    blocked = [n for n in layers if n not in member or not member[n].widenable]
    reasons = {member[n].reason for n in blocked if n in member}
    assert len(blocked) <= 0.1 * len(layers), (len(blocked), len(layers), blocked[:5], reasons)


@pytest.mark.parametrize("name", list(MODELS))
def test_widening_every_group_of_a_torchvision_model_preserves_its_output(name: str) -> None:
    dtype = MODELS[name][3]
    model = _build(name).to(dtype)
    x = _input(name, 1, dtype)
    graph = _trace(model, name)
    plan = _plan(name, graph)
    widths = {g.name: g.width for g in graph.groups}
    with torch.inference_mode():
        before = model(x)
    netsurgeon.widen(model, plan, graph=graph, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        after = model(x)
    _assert_preserved(after, before, name)
    grown = {g.name: g.width for g in netsurgeon.trace(model, strict=False).groups}
    assert grown == {n: w + plan.get(n, 0) for n, w in widths.items()}


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_widening_a_torchvision_model_in_train_mode_preserves_its_output(name: str) -> None:
    model = _build(name).train()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.eval()  # a mask drawn for a wider layer would differ on the old units too
    x = _input(name, 2, torch.float32)
    graph = _trace(model, name)
    plan = _plan(name, graph)
    with torch.no_grad():
        before = model(x)
    netsurgeon.widen(model, plan, graph=graph, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        after = model(x)
    _assert_preserved(after, before, f"{name} train")
