"""VGG-style ConvNets built from a width spec, as in Section 4 of the paper.

A width spec is a list of blocks, each a list of conv widths: ``[[8, 3, 8], [16, 4, 16], [32, 4, 32]]``
is three blocks of three ``Conv3x3(pad 1) -> BatchNorm2d -> ReLU`` units, each block followed by
a 2x2 max-pool, then ``torch.flatten(x, 1)`` and a dense classifier.

Module names (what ``named_modules()`` and ``netsurgeon.trace(model).layers`` show)::

    blocks.{b}.{i}.conv   Conv2d of unit i of block b (k=3, padding=1, bias=False: BN supplies the shift)
    blocks.{b}.{i}.bn     its BatchNorm2d
    blocks.{b}.{i}.relu   its ReLU
    pool                  the shared MaxPool2d(2) applied after every block
    classifier.{k}        Linear layers at even k, ReLU at odd k (``hidden`` widths, then num_classes)

``widths_of`` reads the block widths back from the conv modules, so it reports the current widths
of a network that was widened in place.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "FIG1_WIDTHS",
    "PAPER_WIDTHS",
    "VGG",
    "ConvBNReLU",
    "vgg",
    "vgg_num_parameters",
    "widths_of",
]

#: The Fig. 1 network of the paper (three blocks of three conv layers).
FIG1_WIDTHS: tuple[tuple[int, ...], ...] = ((8, 3, 8), (16, 4, 16), (32, 4, 32))

#: The twelve initial configurations of the paper's Fig. 2b, in the paper's order.
PAPER_WIDTHS: tuple[tuple[tuple[int, ...], ...], ...] = (
    ((2, 2, 2), (4, 4, 4), (8, 8, 8)),
    ((4, 4, 4), (4, 4, 4), (4, 4, 4)),
    ((4, 4), (4, 4), (4, 4)),
    ((4, 4), (8, 8), (8, 8)),
    ((8, 8), (8, 8), (8, 8)),
    ((8,), (16,), (16,)),
    ((4,), (4,), (16,)),
    ((4,), (4,), (4,)),
    ((4,), (4,), (8,)),
    ((4,), (8,), (16,)),
    ((8,), (8,), (16,)),
    ((8,), (8,), (8,)),
)

_CONV_NAME = re.compile(r"(?:^|\.)blocks\.(\d+)\.(\d+)\.conv$")


class ConvBNReLU(nn.Module):
    """One VGG unit: ``Conv2d(k=3, padding=1, bias=False) -> BatchNorm2d -> ReLU``.

    Shapes: ``(N, in_channels, H, W) -> (N, out_channels, H, W)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False, **factory)
        self.bn = nn.BatchNorm2d(out_channels, **factory)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class VGG(nn.Module):
    """A VGG-style ConvNet; build it with :func:`vgg`.

    Attributes:
        blocks: ``ModuleList`` of ``Sequential`` blocks of :class:`ConvBNReLU` units.
        pool: the ``MaxPool2d(2)`` applied after every block.
        classifier: ``Sequential`` of ``Linear`` (and ``ReLU`` between hidden layers).
    """

    def __init__(self, blocks: nn.ModuleList, classifier: nn.Sequential) -> None:
        super().__init__()
        self.blocks = blocks
        self.pool = nn.MaxPool2d(2)
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, num_classes)`` logits."""
        for block in self.blocks:
            x = self.pool(block(x))
        return self.classifier(torch.flatten(x, 1))


def _check_widths(widths: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    if isinstance(widths, str | bytes) or not isinstance(widths, Sequence) or len(widths) == 0:
        raise ValueError(
            f"vgg: widths must be a non-empty list of blocks, each a list of conv widths, "
            f"e.g. [[4], [4], [8]]; found {widths!r}."
        )
    out = []
    for b, block in enumerate(widths):
        if isinstance(block, str | bytes) or not isinstance(block, Sequence) or len(block) == 0:
            raise ValueError(
                f"vgg: block {b} must be a non-empty list of conv widths, e.g. [4, 4]; "
                f"found {block!r}. Write a single-conv block as [4], not 4."
            )
        for i, w in enumerate(block):
            if isinstance(w, bool) or not isinstance(w, int) or w < 1:
                raise ValueError(
                    f"vgg: width of conv {i} in block {b} must be a positive int; found {w!r}."
                )
        out.append(tuple(int(w) for w in block))
    return tuple(out)


def _spatial_after(image_size: int, num_blocks: int) -> int:
    size = image_size
    for _ in range(num_blocks):
        size //= 2
    return size


def vgg(
    widths: Sequence[Sequence[int]],
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    *,
    hidden: Sequence[int] = (),
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> VGG:
    """Build a VGG-style ConvNet from a width spec.

    Each entry of each block is ``Conv3x3(padding 1) + BatchNorm2d + ReLU``; a 2x2 max-pool follows
    every block; then ``flatten`` and Linear layers of widths ``hidden`` (with ReLU between) and a
    final Linear to ``num_classes``. Parameters use PyTorch's default initialisation.

    Args:
        widths: conv widths per block, e.g. ``[[8, 3, 8], [16, 4, 16], [32, 4, 32]]``.
        num_classes: output logits.
        in_channels: channels of the input images (3 for CIFAR-10, 1 for digits).
        image_size: input height = width; each block halves it (floor), so it must stay >= 1.
        hidden: widths of hidden dense layers between the flatten and the output layer.
        device: where parameters are created.
        dtype: floating dtype of the parameters.

    Returns:
        The model; input ``(N, in_channels, image_size, image_size)``, output ``(N, num_classes)``.

    Example:
        >>> model = vgg([[4], [4], [8]])
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
        >>> widths_of(model)
        [[4], [4], [8]]
    """
    spec = _check_widths(widths)
    hidden_t = _check_sizes(num_classes, in_channels, image_size, hidden)
    spatial = _spatial_after(image_size, len(spec))
    if spatial < 1:
        raise ValueError(
            f"vgg: {len(spec)} blocks halve image_size={image_size} to 0 pixels; "
            f"use at most {image_size.bit_length() - 1} blocks or a larger image_size."
        )
    factory: dict[str, Any] = {"device": device, "dtype": dtype}
    blocks = nn.ModuleList()
    cin = in_channels
    for block in spec:
        units = []
        for w in block:
            units.append(ConvBNReLU(cin, w, **factory))
            cin = w
        blocks.append(nn.Sequential(*units))
    layers: list[nn.Module] = []
    fan_in = cin * spatial * spatial
    for h in hidden_t:
        layers += [nn.Linear(fan_in, h, **factory), nn.ReLU()]
        fan_in = h
    layers.append(nn.Linear(fan_in, num_classes, **factory))
    return VGG(blocks, nn.Sequential(*layers))


def _check_sizes(
    num_classes: int, in_channels: int, image_size: int, hidden: Sequence[int]
) -> tuple[int, ...]:
    """Check that every size is a positive int; ``hidden`` as a tuple."""
    named = [("num_classes", num_classes), ("in_channels", in_channels), ("image_size", image_size)]
    named += [(f"hidden[{k}]", h) for k, h in enumerate(hidden)]
    for name, value in named:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"vgg: {name} must be a positive int; found {value!r}.")
    return tuple(hidden)


def vgg_num_parameters(
    widths: Sequence[Sequence[int]],
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    *,
    hidden: Sequence[int] = (),
) -> int:
    """Closed-form parameter count of ``vgg(widths, ...)`` without building it.

    Conv: ``9 * c_in * c_out`` (no bias); BN: ``2 * c_out``; Linear: ``(fan_in + 1) * fan_out``
    with ``fan_in = last_width * (image_size // 2**blocks)**2`` for the first one.

    Example:
        >>> vgg_num_parameters([[4], [4], [4]])
        1070
    """
    spec = _check_widths(widths)
    total, cin = 0, in_channels
    for block in spec:
        for w in block:
            total += 9 * cin * w + 2 * w
            cin = w
    fan_in = cin * _spatial_after(image_size, len(spec)) ** 2
    for out in (*hidden, num_classes):
        total += (fan_in + 1) * out
        fan_in = out
    return total


def widths_of(model_or_graph: nn.Module | Any) -> list[list[int]]:
    """Current block widths of a (possibly grown) VGG, read from its conv layers.

    Accepts a :class:`VGG`, any module that contains one (names ending in
    ``blocks.{b}.{i}.conv``, e.g. a ``torch.compile`` wrapper), or a ``LayerGraph`` from
    ``netsurgeon.trace`` (anything with ``.widths() -> dict[str, int]``).

    Example:
        >>> widths_of(vgg([[8, 3, 8], [16, 4, 16], [32, 4, 32]]))
        [[8, 3, 8], [16, 4, 16], [32, 4, 32]]
    """
    if isinstance(model_or_graph, nn.Module):
        items = [
            (name, m.out_channels)
            for name, m in model_or_graph.named_modules()
            if isinstance(m, nn.Conv2d)
        ]
    elif callable(getattr(model_or_graph, "widths", None)):
        items = list(model_or_graph.widths().items())
    else:
        raise TypeError(
            f"widths_of: expected an nn.Module (a VGG) or a LayerGraph; "
            f"found {type(model_or_graph).__name__}."
        )
    found: dict[int, dict[int, int]] = {}
    for name, width in items:
        match = _CONV_NAME.search(name)
        if match:
            found.setdefault(int(match.group(1)), {})[int(match.group(2))] = int(width)
    if not found:
        raise ValueError(
            "widths_of: found no conv layer named like 'blocks.{b}.{i}.conv'; "
            "was this model built by netsurgeon.models.vgg?"
        )
    return [[found[b][i] for i in sorted(found[b])] for b in sorted(found)]
