"""CIFAR ResNets (He et al. 2016, section 4.2) built from a width per stage.

Three stages of basic blocks at 32x32, 16x16 and 8x8 maps (the first block of stages 2 and 3
has stride 2), a global average pool and a Linear classifier. ``resnet((16, 32, 64), blocks=3)``
is ResNet-20 (0.27M parameters); ``blocks=n`` gives ResNet-(6n+2). Where a block changes the shape
(stride 2 or another width) its shortcut is a projection (1x1 conv + BatchNorm, option B of the
paper); elsewhere it is the identity. Every conv is 3x3 (1x1 for projections), padding 1, no
bias: BatchNorm supplies the shift.

Module names (what ``named_modules()`` and ``netsurgeon.trace(model).layers`` show)::

    conv, bn                          the stem: Conv3x3(in_channels -> widths[0]) + BatchNorm2d
    stages.{s}.{b}.conv1, .bn1        block b of stage s: the block interior
    stages.{s}.{b}.conv2, .bn2        the block's output, added to the shortcut
    stages.{s}.{b}.shortcut.0, .1     the projection (conv, BatchNorm) where the shape changes
    fc                                Linear(widths[-1] -> num_classes)

Channel groups (``netsurgeon.trace(model).groups``): one residual stream per stage (stem or
projection, and every ``conv2`` of the stage, named after its first producer: ``conv`` for stage
0, ``stages.{s}.0.conv2`` after), one interior per block (``stages.{s}.{b}.conv1``), and the
output ``fc``. ``widths_of`` reads the stream and interior widths back from the modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BasicBlock", "ResNet", "resnet", "resnet_widths_of"]


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    Shapes: ``(N, in_channels, H, W) -> (N, out_channels, H / stride, W / stride)``.
    """

    def __init__(
        self,
        in_channels: int,
        inner: int,
        out_channels: int,
        stride: int = 1,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.conv1 = nn.Conv2d(in_channels, inner, 3, stride, 1, bias=False, **factory)
        self.bn1 = nn.BatchNorm2d(inner, **factory)
        self.conv2 = nn.Conv2d(inner, out_channels, 3, 1, 1, bias=False, **factory)
        self.bn2 = nn.BatchNorm2d(out_channels, **factory)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False, **factory),
                nn.BatchNorm2d(out_channels, **factory),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """A CIFAR ResNet; build it with :func:`resnet`.

    Attributes:
        conv, bn: the stem.
        stages: ``ModuleList`` of ``Sequential`` stages of :class:`BasicBlock`.
        fc: the classifier.
    """

    def __init__(
        self, conv: nn.Conv2d, bn: nn.BatchNorm2d, stages: nn.ModuleList, fc: nn.Linear
    ) -> None:
        super().__init__()
        self.conv = conv
        self.bn = bn
        self.stages = stages
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, num_classes)`` logits."""
        x = F.relu(self.bn(self.conv(x)))
        for stage in self.stages:
            x = stage(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"resnet: {name} must be a positive int; found {value!r}.")
    return value


def resnet(
    widths: Sequence[int] = (16, 32, 64),
    blocks: int | Sequence[int] = 3,
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    inner: Sequence[Sequence[int]] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> ResNet:
    """Build a CIFAR ResNet of basic blocks (module docstring).

    Args:
        widths: the residual stream's width per stage, e.g. ``(16, 32, 64)``; one stage per
            entry, each after the first halving the map.
        blocks: blocks per stage: one int for every stage (3: ResNet-20), or one per stage.
        num_classes: output logits.
        in_channels: channels of the input images.
        inner: each block's interior width (``conv1``), ``inner[s][b]``; default: the stage's
            width, as in the paper. A grown model's widths come back through
            :func:`resnet_widths_of`.
        device: where parameters are created.
        dtype: floating dtype of the parameters.

    Returns:
        The model; input ``(N, in_channels, H, W)`` with ``H, W >= 4``, output ``(N, num_classes)``.

    Example:
        >>> model = resnet((4, 8, 16), blocks=1)
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
        >>> resnet_widths_of(model)
        ((4, 8, 16), ((4,), (8,), (16,)))
    """
    stream, interiors = _checked_widths(widths, blocks, inner)
    _positive("num_classes", num_classes)
    _positive("in_channels", in_channels)
    factory: dict[str, Any] = {"device": device, "dtype": dtype}
    conv = nn.Conv2d(in_channels, stream[0], 3, 1, 1, bias=False, **factory)
    bn = nn.BatchNorm2d(stream[0], **factory)
    stages = nn.ModuleList()
    cin = stream[0]
    for s, (width, row) in enumerate(zip(stream, interiors, strict=True)):
        units = []
        for b, mid in enumerate(row):
            stride = 2 if s > 0 and b == 0 else 1
            units.append(BasicBlock(cin, mid, width, stride, **factory))
            cin = width
        stages.append(nn.Sequential(*units))
    return ResNet(conv, bn, stages, nn.Linear(cin, num_classes, **factory))


def _checked_widths(
    widths: Sequence[int], blocks: int | Sequence[int], inner: Sequence[Sequence[int]] | None
) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """``(stream width per stage, interior width per block)``, each checked to be positive."""
    if isinstance(widths, str | bytes) or not isinstance(widths, Sequence) or not widths:
        raise ValueError(
            f"resnet: widths must be a non-empty list of stream widths per stage, e.g. "
            f"(16, 32, 64); found {widths!r}."
        )
    stream = tuple(_positive(f"widths[{s}]", w) for s, w in enumerate(widths))
    if isinstance(blocks, int) and not isinstance(blocks, bool):
        counts = (_positive("blocks", blocks),) * len(stream)
    elif isinstance(blocks, Sequence) and len(blocks) == len(stream):
        counts = tuple(_positive(f"blocks[{s}]", b) for s, b in enumerate(blocks))
    else:
        raise ValueError(
            f"resnet: blocks must be a positive int or one per stage ({len(stream)} stages); "
            f"found {blocks!r}."
        )
    if inner is None:
        interiors = tuple((w,) * n for w, n in zip(stream, counts, strict=True))
    else:
        if len(inner) != len(stream) or any(
            len(row) != n for row, n in zip(inner, counts, strict=True)
        ):
            raise ValueError(
                f"resnet: inner must give one width per block of each stage, shaped like "
                f"blocks={counts}; found {inner!r}."
            )
        interiors = tuple(
            tuple(_positive(f"inner[{s}][{b}]", w) for b, w in enumerate(row))
            for s, row in enumerate(inner)
        )
    return stream, interiors


def resnet_widths_of(model: nn.Module) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """``(stream widths per stage, interior widths per block)`` of a (possibly grown) ResNet.

    Read from the modules: a stage's stream width is its last block's ``conv2.out_channels``;
    the interiors are each block's ``conv1.out_channels``.
    """
    stages = getattr(model, "stages", None)
    if not isinstance(stages, nn.ModuleList):
        raise TypeError(
            f"resnet_widths_of: expected a ResNet built by netsurgeon.models.resnet; found "
            f"{type(model).__name__}."
        )
    stream = tuple(int(stage[-1].conv2.out_channels) for stage in stages)
    interiors = tuple(tuple(int(block.conv1.out_channels) for block in stage) for stage in stages)
    return stream, interiors
