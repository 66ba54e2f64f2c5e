"""``netsurgeon.models.resnet``: shapes, parameter count, groups, validation and widths read back."""

from __future__ import annotations

import pytest
import torch

import netsurgeon
from netsurgeon.models import resnet, resnet_widths_of


def test_resnet20_has_the_papers_size_and_shapes() -> None:
    model = resnet((16, 32, 64), blocks=3)
    params = sum(p.numel() for p in model.parameters())
    assert 0.26e6 < params < 0.28e6, params  # the paper's 0.27M (plus two projections)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert len(model.stages) == 3 and all(len(stage) == 3 for stage in model.stages)


def test_resnet_groups_are_three_streams_nine_interiors_and_the_output() -> None:
    graph = netsurgeon.trace(resnet((16, 32, 64), blocks=3))
    names = [g.name for g in graph.groups]
    streams = ["conv", "stages.1.0.conv2", "stages.2.0.conv2"]
    interiors = [f"stages.{s}.{b}.conv1" for s in range(3) for b in range(3)]
    assert sorted(names) == sorted([*streams, *interiors, "fc"])
    assert graph.resolve("conv").producers == (
        "conv",
        "stages.0.0.conv2",
        "stages.0.1.conv2",
        "stages.0.2.conv2",
    )
    assert "stages.1.0.shortcut.0" in graph.resolve("stages.1.0.conv2").producers
    assert all(g.widenable for g in graph.groups if g.name != "fc")
    assert not graph.resolve("fc").widenable


def test_resnet_takes_per_stage_blocks_inner_widths_device_and_dtype() -> None:
    model = resnet(
        (4, 8),
        blocks=(1, 2),
        num_classes=3,
        in_channels=1,
        inner=((2,), (5, 6)),
        dtype=torch.float64,
    )
    assert resnet_widths_of(model) == ((4, 8), ((2,), (5, 6)))
    assert model(torch.zeros(1, 1, 8, 8, dtype=torch.float64)).shape == (1, 3)
    assert model.stages[0][0].shortcut.__class__.__name__ == "Identity"  # same shape: identity


def test_resnet_widths_of_reads_a_grown_model() -> None:
    model = resnet((4, 8, 8), blocks=1)
    netsurgeon.widen(model, {"stages.1.0.shortcut.0": 2, "stages.0.0.conv1": 3})
    assert resnet_widths_of(model) == ((4, 10, 8), ((7,), (8,), (8,)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"widths": ()}, "widths must be a non-empty list"),
        ({"widths": (4, 0)}, r"widths\[1\] must be a positive int; found 0"),
        ({"blocks": (1, 2)}, "one per stage"),
        ({"blocks": 0}, "blocks must be a positive int"),
        ({"inner": ((4,),)}, "inner must give one width per block"),
        ({"num_classes": 0}, "num_classes must be a positive int"),
    ],
)
def test_resnet_refuses_bad_specs_with_what_was_found(kwargs: dict, match: str) -> None:
    args = {"widths": (4, 8, 8), "blocks": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        resnet(**args)


def test_resnet_widths_of_refuses_other_models() -> None:
    with pytest.raises(TypeError, match=r"built by netsurgeon\.models\.resnet"):
        resnet_widths_of(torch.nn.Linear(2, 2))
