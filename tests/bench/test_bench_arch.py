"""``benchmarks/grow_cifar/arch.py``: every family builds from its spec and reads the same spec back."""

from __future__ import annotations

import pytest
import torch

import netsurgeon
from benchmarks.grow_cifar.arch import ARCHS

pytestmark = pytest.mark.bench


@pytest.mark.parametrize(
    ("arch", "spec", "blocks", "full"),
    [
        ("vgg", ((4,), (4, 2), (8,)), 3, ((4,), (4, 2), (8,))),
        ("resnet", ((4,), (8,), (16,)), 3, ((4, 4, 4, 4), (8, 8, 8, 8), (16, 16, 16, 16))),
        ("resnet", ((4, 2), (8, 3, 5)), 3, ((4, 2), (8, 3, 5))),
        ("vit", ((16, 16, 32),), 2, ((16, 16, 32), (16, 16, 32))),
        ("vit", ((16, 16, 32), (16, 32, 8)), 2, ((16, 16, 32), (16, 32, 8))),
    ],
)
def test_a_spec_expands_builds_and_reads_back(arch, spec, blocks, full) -> None:
    family = ARCHS[arch]
    assert family.expand(spec, blocks) == full
    model = family.build(full, 10, 3, 16)
    assert family.widths_of(model) == full
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 10)


def test_a_grown_resnet_reads_back_and_rebuilds_at_its_final_widths() -> None:
    family = ARCHS["resnet"]
    model = family.build(((4, 4), (8, 8)), 10, 3, 16)
    netsurgeon.widen(model, {"conv": 2, "stages.1.0.conv1": 3})
    grown = family.widths_of(model)
    assert grown == ((6, 4), (8, 11))
    static = family.build(grown, 10, 3, 16)
    assert sum(p.numel() for p in static.parameters()) == sum(p.numel() for p in model.parameters())


def test_resnet_refuses_hidden_layers_and_short_rows() -> None:
    with pytest.raises(ValueError, match="no hidden dense layers"):
        ARCHS["resnet"].build(((4, 4),), 10, 3, 16, hidden=(8,))
    with pytest.raises(ValueError, match="expand short rows"):
        ARCHS["resnet"].build(((4,),), 10, 3, 16)


def test_vit_refuses_hidden_layers() -> None:
    with pytest.raises(ValueError, match="no hidden dense layers"):
        ARCHS["vit"].build(((16, 16, 32),), 10, 3, 16, hidden=(8,))


def test_resnets_train_in_contiguous_format_on_cpu_and_vggs_in_channels_last() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert ARCHS["resnet"].memory_format(cpu) == torch.contiguous_format
    assert ARCHS["resnet"].memory_format(cuda) == torch.channels_last
    assert ARCHS["vgg"].memory_format(cpu) == torch.channels_last
