"""Model builders used by the benchmarks and examples."""

from __future__ import annotations

from netsurgeon.models.cifar_resnet import BasicBlock, ResNet, resnet, resnet_widths_of
from netsurgeon.models.vggnet import (
    FIG1_WIDTHS,
    PAPER_WIDTHS,
    VGG,
    ConvBNReLU,
    vgg,
    vgg_num_parameters,
    widths_of,
)
from netsurgeon.models.vision_transformer import ViT, vit, vit_widths_of

__all__ = [
    "FIG1_WIDTHS",
    "PAPER_WIDTHS",
    "VGG",
    "BasicBlock",
    "ConvBNReLU",
    "ResNet",
    "ViT",
    "resnet",
    "resnet_widths_of",
    "vgg",
    "vgg_num_parameters",
    "vit",
    "vit_widths_of",
    "widths_of",
]
