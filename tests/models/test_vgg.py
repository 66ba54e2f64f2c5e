"""netsurgeon.models.vgg: shapes, names, the parameter-count formula, and widths read-back."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from netsurgeon.models import PAPER_WIDTHS, VGG, vgg, vgg_num_parameters, widths_of

SPECS = [
    [[4], [4], [4]],
    [[8, 3, 8], [16, 4, 16], [32, 4, 32]],
    [[2, 2, 2], [4, 4, 4], [8, 8, 8]],
    [[5]],
]

width_specs = st.lists(st.lists(st.integers(1, 6), min_size=1, max_size=3), min_size=1, max_size=3)


@pytest.mark.parametrize("spec", SPECS)
def test_output_has_one_logit_per_class_for_each_spec(spec: list[list[int]]) -> None:
    model = vgg(spec, num_classes=7)
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 7)


def test_single_channel_small_images_are_supported() -> None:
    model = vgg([[4], [8]], num_classes=10, in_channels=1, image_size=8, hidden=(16,))
    assert model(torch.randn(5, 1, 8, 8)).shape == (5, 10)
    assert model.classifier[0].in_features == 8 * 2 * 2


def test_odd_image_size_floors_at_each_pool() -> None:
    model = vgg([[3], [3]], image_size=10)  # 10 -> 5 -> 2
    assert model.classifier[0].in_features == 3 * 2 * 2
    assert model(torch.randn(2, 3, 10, 10)).shape == (2, 10)


@given(spec=width_specs, hidden=st.lists(st.integers(1, 5), max_size=2), cin=st.integers(1, 3))
def test_parameter_count_matches_closed_form(
    spec: list[list[int]], hidden: list[int], cin: int
) -> None:
    model = vgg(spec, num_classes=4, in_channels=cin, image_size=16, hidden=hidden)
    built = sum(p.numel() for p in model.parameters())
    formula = vgg_num_parameters(spec, num_classes=4, in_channels=cin, image_size=16, hidden=hidden)
    assert built == formula


def test_parameter_count_of_smallest_paper_config_is_hand_computed() -> None:
    # conv 3->4: 108 + bn 8; conv 4->4: 144 + 8 (twice); linear (4*4*4 + 1) * 10 = 650.
    assert vgg_num_parameters([[4], [4], [4]]) == 116 + 152 + 152 + 650


def test_module_names_are_readable_and_stable() -> None:
    names = {name for name, _ in vgg([[4, 4], [8]], hidden=(12,)).named_modules()}
    expected = {
        "blocks.0.0.conv",
        "blocks.0.0.bn",
        "blocks.0.1.conv",
        "blocks.1.0.conv",
        "pool",
        "classifier.0",
        "classifier.2",
    }
    assert expected <= names


@given(spec=width_specs)
def test_widths_of_reads_back_the_spec(spec: list[list[int]]) -> None:
    assert widths_of(vgg(spec, image_size=8)) == spec


def test_widths_of_sees_in_place_widening_of_a_conv() -> None:
    model = vgg([[4], [4], [4]])
    conv = model.blocks[1][0].conv
    conv.weight = nn.Parameter(torch.zeros(6, 4, 3, 3))
    conv.out_channels = 6
    assert widths_of(model) == [[4], [6], [4]]


def test_widths_of_accepts_a_wrapping_module_and_a_graph_like_object() -> None:
    wrapper = nn.Sequential(vgg([[2, 3], [5]]))
    assert widths_of(wrapper) == [[2, 3], [5]]

    class FakeGraph:
        def widths(self) -> dict[str, int]:
            return {"blocks.0.0.conv": 2, "blocks.1.0.conv": 7, "classifier.0": 10}

    assert widths_of(FakeGraph()) == [[2], [7]]


def test_widths_of_rejects_a_model_without_vgg_blocks() -> None:
    with pytest.raises(ValueError, match=r"blocks\.\{b\}\.\{i\}\.conv"):
        widths_of(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="LayerGraph"):
        widths_of(42)


@pytest.mark.parametrize(
    ("widths", "kwargs", "message"),
    [
        ([], {}, "non-empty list of blocks"),
        ([4, 4], {}, "block 0"),
        ([[4], []], {}, "block 1"),
        ([[4, 0]], {}, "conv 1 in block 0"),
        ([[4]] * 6, {}, "at most 5 blocks"),
        ([[4]], {"num_classes": 0}, "num_classes"),
        ([[4]], {"hidden": (3, -1)}, r"hidden\[1\]"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_the_field(
    widths: object, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        vgg(widths, **kwargs)  # type: ignore[arg-type]


def test_channels_last_input_gives_the_same_logits() -> None:
    model = vgg([[4], [8]], image_size=16).eval()
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(
        model(x.contiguous(memory_format=torch.channels_last)), model(x), rtol=1e-5, atol=1e-6
    )


def test_dtype_is_passed_to_every_parameter() -> None:
    model = vgg([[4]], dtype=torch.float64)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    assert isinstance(model, VGG)


def test_all_paper_configs_build_and_run() -> None:
    assert len(PAPER_WIDTHS) == 12
    x = torch.randn(2, 3, 32, 32)
    for spec in PAPER_WIDTHS:
        assert vgg(spec)(x).shape == (2, 10)


def test_traced_layers_are_the_readable_names_and_widths_follow_widen() -> None:
    import netsurgeon

    model = vgg([[8, 3, 8], [16], [32]], hidden=(12,)).eval()
    graph = netsurgeon.trace(model)
    assert graph.layers == [
        "blocks.0.0.conv",
        "blocks.0.1.conv",
        "blocks.0.2.conv",
        "blocks.1.0.conv",
        "blocks.2.0.conv",
        "classifier.0",
        "classifier.2",
    ]
    assert widths_of(graph) == [[8, 3, 8], [16], [32]]
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    netsurgeon.widen(model, {"blocks.0.1.conv": 5, "blocks.2.0.conv": 3})
    assert widths_of(model) == [[8, 8, 8], [16], [35]]
    torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)
