"""The zoo: real classifiers widened in every widenable group at once keep running and stay exact.

Each model of torchvision (the list of ``test_torchvision_models.py``, plus a ResNet-18 on
``FrozenBatchNorm2d`` as in every detection backbone) and of timm (built offline with random
weights, smallest variants, small inputs) is traced with ``strict=False`` on a batch of 2, and
every group the trace reports widenable grows by two granules in one ``widen``. Then:

(a) the forward runs on a fresh input of another batch size (3), so nothing in the widened model
    still holds the traced width or batch (a reshape to a recorded size, a per-channel tensor that
    did not grow);
(b) the output on that input is the one from before, in float64 eval mode (random BatchNorm
    statistics), within

        max |y_after - y_before| <= 1e-9 * (1 + max |y_before|)

    (float32 and 1e-5 for the two torchvision models whose float64 copy would be a gigabyte);
(c) the widenable share (layers in widenable groups over layers outside the output group) is
    reported (a table at the end of the module, and as the ``widenable_share`` property of each
    test in the junit XML), and must not fall below the floor stated for the model: the share
    measured when the zoo was written, less 0.1, rounded down to a multiple of 0.05. A soundness
    rule that blocks what it should understand (timm's BatchNormAct2d, Conv2dSame, LayerNorm2d
    and Linear, which override ``forward`` without changing the maths) shows up here. Models
    whose layers standardise or normalise their weight (NF-ResNets, BiT) have no floor: blocking
    them with a reason is as sound as widening them exactly; nor have those that are mostly
    blocked today (their share is reported).

The widened model must trace again with each group's width grown by what was planned. Models that
torch.fx cannot trace (data-dependent control flow) are listed with the error they must raise.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import timm
import torch
import torchvision
from test_torchvision_models import MODELS as TORCHVISION_MODELS
from test_torchvision_models import MOSTLY_WIDENABLE
from torch import nn
from widen_or_refuse import check_widen_or_refuse

import netsurgeon
from netsurgeon import TraceError

pytestmark = pytest.mark.slow

# timm name: (input size, extra constructor kwargs, floor of the widenable share or None)
TIMM: dict[str, tuple[int, dict, float | None]] = {
    "resnet10t": (32, {}, 0.9),
    "resnet18": (32, {}, 0.9),
    "resnet26d": (32, {}, 0.9),
    "seresnext26d_32x4d": (32, {}, 0.9),
    "ecaresnet26t": (32, {}, 0.35),
    "res2net50_14w_8s": (32, {}, 0.3),
    "resnest14d": (32, {}, 0.6),
    "skresnet18": (32, {}, 0.05),
    "nf_resnet26": (32, {}, None),  # ScaledStdConv2d with a per-channel gain
    "nf_regnet_b0": (32, {}, None),  # ScaledStdConv2d with a per-channel gain
    "resnetv2_50x1_bit": (32, {}, None),  # BiT: StdConv2d and GroupNormAct
    "efficientnet_b0": (32, {}, 0.9),
    "tf_efficientnet_lite0": (32, {}, 0.9),  # Conv2dSame: size reads on spatial dims only
    "tf_mobilenetv3_small_minimal_100": (32, {}, 0.9),
    "mobilenetv3_small_050": (32, {}, 0.9),
    "mobilenetv2_050": (32, {}, 0.9),
    "mobilenetv4_conv_small": (32, {}, 0.9),
    "mnasnet_small": (32, {}, 0.9),
    "lcnet_050": (32, {}, 0.9),
    "tinynet_e": (32, {}, 0.9),
    "ghostnet_050": (32, {}, 0.05),
    "regnetx_002": (32, {}, 0.9),
    "regnety_002": (32, {}, 0.9),
    "rexnet_100": (32, {}, 0.6),
    "densenet121": (32, {}, 0.9),
    "dla34": (32, {}, 0.9),
    "dpn48b": (32, {}, 0.4),
    "hrnet_w18_small": (32, {}, 0.9),
    "cspresnet50": (32, {}, 0.55),
    "cs3darknet_s": (32, {}, 0.45),
    "selecsls42b": (32, {}, 0.9),
    "ese_vovnet19b_dw": (32, {}, 0.9),
    "hgnetv2_b0": (32, {}, 0.9),
    "gernet_s": (32, {}, 0.9),
    "repvgg_a0": (32, {}, 0.9),
    "repvit_m0_9": (64, {"img_size": 64}, 0.9),
    "convnext_atto": (64, {}, 0.3),
    "vit_tiny_patch16_224": (64, {"img_size": 64}, 0.1),
    "mixer_s16_224": (64, {"img_size": 64}, 0.75),  # the token MLPs' fc2 make the tokens
    "resmlp_12_224": (64, {"img_size": 64}, 0.65),  # linear_tokens makes the tokens
    "pit_ti_224": (64, {"img_size": 64}, 0.1),
    "pvt_v2_b0": (64, {}, 0.05),
    "starnet_s050": (32, {}, 0.9),
    "visformer_tiny": (32, {"img_size": 32}, 0.75),
    "inception_next_atto": (32, {}, 0.3),
    "semnasnet_050": (32, {}, 0.9),
    "spnasnet_100": (32, {}, 0.9),
    "hardcorenas_a": (32, {}, 0.9),
    "darknet17": (32, {}, 0.9),
    "xception41": (32, {}, 0.9),
    "mobileone_s0": (32, {}, 0.9),
    "levit_128s": (64, {"img_size": 64}, None),  # attention biases indexed by position
    "convnextv2_atto": (64, {}, None),  # global response normalisation
    "poolformerv2_s12": (64, {}, 0.9),
    "mobilevit_xxs": (64, {"img_size": 64}, None),
    "efficientvit_b0": (64, {}, None),
}
# torch.fx cannot trace these: the error each must raise, as a pattern.
EXPECTED_TRACE_ERROR: dict[str, str] = {
    "timm/mobilevit_xxs": r"MobileVitBlock.*control flow",
    "timm/efficientvit_b0": r"LiteMLA.*control flow",
}
# torchvision name: (constructor kwargs, input size, dtype, floor of the widenable share or None)
TORCHVISION: dict[str, tuple[dict, int, torch.dtype, float | None]] = {
    name: (kwargs, size, dtype, 0.9 if name in MOSTLY_WIDENABLE else None)
    for name, (kwargs, size, _, dtype) in TORCHVISION_MODELS.items()
}
TORCHVISION["resnet18_frozen_bn"] = (
    {"norm_layer": torchvision.ops.FrozenBatchNorm2d},
    64,
    torch.float64,
    0.9,
)
KEYS = [f"torchvision/{n}" for n in TORCHVISION] + [f"timm/{n}" for n in TIMM]
TRACE_BATCH, CHECK_BATCH = 2, 3


def _randomise_statistics(model: nn.Module) -> None:
    """Random running statistics (and frozen affine terms): eval-mode norms are no identity."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for module in model.modules():
            norm = (
                isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats
            )
            if norm or isinstance(module, torchvision.ops.FrozenBatchNorm2d):
                module.running_mean.normal_(0.0, 0.1, generator=g)
                module.running_var.uniform_(0.8, 1.25, generator=g)
            if isinstance(module, torchvision.ops.FrozenBatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=g)
                module.bias.normal_(0.0, 0.1, generator=g)


def _build(key: str) -> tuple[nn.Module, int, torch.dtype, float | None]:
    """The model (built afresh: the zoo holds gigabytes), its input size, dtype and floor."""
    source, name = key.split("/", 1)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        if source == "timm":
            size, kwargs, floor = TIMM[name]
            dtype = torch.float64
            model = timm.create_model(name, pretrained=False, num_classes=5, **kwargs)
        else:
            kwargs, size, dtype, floor = TORCHVISION[name]
            builder = "resnet18" if name == "resnet18_frozen_bn" else name
            model = getattr(torchvision.models, builder)(weights=None, **kwargs)
        model = model.to(dtype).eval()
        _randomise_statistics(model)
    return model, size, dtype, floor


@pytest.fixture(scope="module")
def shares(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """Collects each model's widenable share; prints them as a table when the module ends."""
    table: dict[str, str] = {}
    yield table
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not table:
        return
    with capture.global_and_fixture_disabled():  # teardown output is captured otherwise
        reporter.write_line("")
        reporter.write_sep("-", "widenable share of the zoo (layers outside the output group)")
        for key, row in table.items():
            reporter.write_line(f"{key:45s} {row}")


def _images(batch: int, size: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=g).to(dtype)


@pytest.mark.parametrize("key", KEYS)
def test_widening_every_widenable_group_keeps_the_model_running_and_its_output(
    key: str, shares: dict[str, str], record_property
) -> None:
    model, size, dtype, floor = _build(key)
    traced = _images(TRACE_BATCH, size, dtype, seed=1)
    if key in EXPECTED_TRACE_ERROR:
        with pytest.raises(TraceError, match=EXPECTED_TRACE_ERROR[key]):
            netsurgeon.trace(model, traced, strict=False)
        shares[key] = "not traced (TraceError)"
        return
    graph = netsurgeon.trace(model, traced, strict=False)
    inner = [n for n in graph.layers if n not in graph.output_layers]
    share = len(graph.widenable_layers) / max(1, len(inner))
    record_property("widenable_share", round(share, 4))
    shares[key] = f"{len(graph.widenable_layers):4d}/{len(inner):<4d} = {share:6.1%}"
    if floor is not None:
        reasons = {g.reason for g in graph.groups if g.blocked}
        assert share >= floor, f"widenable share {share:.2f} < {floor}: {sorted(reasons)[:5]}"
    plan = {g.name: 2 * g.granularity for g in graph.groups if g.widenable}
    widths = {g.name: g.width for g in graph.groups}
    checked = (_images(CHECK_BATCH, size, dtype, seed=2),)
    outcome = check_widen_or_refuse(model, plan, checked, graph=graph)
    assert not outcome.refused, f"a plan over the widenable groups was refused: {outcome.error}"
    grown = {g.name: g.width for g in netsurgeon.trace(model, traced, strict=False).groups}
    assert grown == {n: w + plan.get(n, 0) for n, w in widths.items()}
