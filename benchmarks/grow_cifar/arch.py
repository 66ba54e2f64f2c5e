"""The model families ``benchmarks/cifar_vgg.py`` grows: one width spec format for all of them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from netsurgeon.models import resnet, resnet_widths_of, vgg, vit, vit_widths_of, widths_of

__all__ = ["ARCHS", "Arch", "Family", "as_widths", "build_recorded", "family_of"]

Widths = tuple[tuple[int, ...], ...]


def as_widths(widths: Sequence[Sequence[int]]) -> Widths:
    """Nested lists (JSON) as the hashable widths tuple."""
    return tuple(tuple(int(w) for w in block) for block in widths)


@dataclass(frozen=True)
class Arch:
    """How to build, read back and complete the width spec of one model family."""

    name: str  # the --arch value
    make: Callable[..., nn.Module]  # (widths, classes, channels, size, *, device[, hidden])
    widths_of: Callable[[nn.Module], Widths]  # a (grown) model's current widths as a spec
    expand: Callable[[Widths, int], Widths]  # a short spec completed with ``blocks``
    # channels_last on CPUs is faster for VGGs (bench_pipeline). Not for ResNets: with torch
    # 2.14.1 the CPU backward of a 1x1 stride-2 conv (the projection) in channels_last corrupts
    # the heap at narrow widths (Conv2d(4, 8, 1, 2)): oneDNN's 1x1 nhwc backward-weights writes
    # past its workspace when in-channels < its block (uxlfoundation/oneDNN#6035).
    cpu_channels_last: bool = True
    hidden_layers: bool = False  # whether ``make`` takes hidden dense widths (a VGG's does)

    def build(
        self, widths: Widths, *shape: int, hidden: tuple[int, ...] = (), device: Any = None
    ) -> nn.Module:
        """The family at ``widths``; ``shape`` is (classes, channels, image size). Refuses hidden
        dense layers where the classifier is one Linear after pooling."""
        if hidden and not self.hidden_layers:
            raise ValueError(
                f"--arch {self.name} has no hidden dense layers (its classifier is one Linear "
                f"after pooling); found hidden={hidden}. Drop --hidden."
            )
        extra = {"hidden": hidden} if self.hidden_layers else {}
        return self.make(widths, *shape, device=device, **extra)

    def memory_format(self, device: torch.device) -> torch.memory_format:
        """The memory format of the model and its batches on ``device``."""
        if device.type == "cpu" and not self.cpu_channels_last:
            return torch.contiguous_format
        return torch.channels_last


def _vgg_widths(model: nn.Module) -> Widths:
    return tuple(tuple(block) for block in widths_of(model))


def _resnet(
    widths: Widths, num_classes: int, in_channels: int, image_size: int, *, device: Any = None
) -> nn.Module:
    if any(len(row) < 2 for row in widths):
        raise ValueError(
            f"resnet width spec {widths} needs (stream, interior per block) per stage; expand "
            "short rows with the blocks count first."
        )
    return resnet(
        tuple(row[0] for row in widths),
        tuple(len(row) - 1 for row in widths),
        num_classes,
        in_channels,
        inner=tuple(row[1:] for row in widths),
        device=device,
    )


def _resnet_widths(model: nn.Module) -> Widths:
    streams, interiors = resnet_widths_of(model)
    return tuple((s, *row) for s, row in zip(streams, interiors, strict=True))


def _resnet_expand(widths: Widths, blocks: int) -> Widths:
    return tuple(row * (blocks + 1) if len(row) == 1 else row for row in widths)


def _vit_expand(widths: Widths, blocks: int) -> Widths:
    return widths * blocks if len(widths) == 1 else widths


def _same(widths: Widths, blocks: int) -> Widths:
    return widths


ARCHS: dict[str, Arch] = {
    "vgg": Arch("vgg", vgg, _vgg_widths, _same, hidden_layers=True),
    "resnet": Arch("resnet", _resnet, _resnet_widths, _resnet_expand, cpu_channels_last=False),
    "vit": Arch("vit", vit, vit_widths_of, _vit_expand, cpu_channels_last=False),
}


Family = tuple[str, int, int, tuple[int, ...]]  # (arch, in_channels, image_size, hidden)


def family_of(run: Mapping[str, Any]) -> Family:
    """What besides the widths fixes a run's model, read from its record (``config``, ``data``);
    the image size (a VGG's classifier needs it) is 32 but for the synthetic and digits data."""
    config = run["config"]
    in_channels = len(run.get("data", {}).get("mean", (0, 0, 0)))
    sizes = {"synthetic": config.get("synthetic_image_size", 32), "digits": 16}
    image_size = sizes.get(config.get("dataset", "cifar10"), 32)
    return config.get("arch", "vgg"), in_channels, image_size, tuple(config.get("hidden", ()))


def build_recorded(
    run: Mapping[str, Any], widths: Any, num_classes: int = 10, device: str = "cpu"
) -> nn.Module:
    """The model family of a run record built at ``widths`` (random init; for replays and
    cost counts the structure matters, not the weights)."""
    arch, in_channels, image_size, hidden = family_of(run)
    return ARCHS[arch].build(
        as_widths(widths), num_classes, in_channels, image_size, hidden=hidden, device=device
    )
