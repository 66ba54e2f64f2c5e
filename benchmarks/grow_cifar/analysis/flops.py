"""Training FLOPs of a ``cifar_vgg.py`` run, from its record: a cost that machine load cannot skew."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..arch import ARCHS, Family, Widths, as_widths, family_of

__all__ = ["flop_ratio", "image_flops", "training_flops"]


@functools.lru_cache(maxsize=512)
def image_flops(family: Family, widths: Widths, num_classes: int = 10) -> tuple[int, int]:
    """``(FLOPs of one training image, parameter count)`` of ``family`` at ``widths``.

    Example:
        >>> image_flops(("vgg", 3, 32, ()), ((2,), (2,), (4,)))
        (307968, 828)
    """
    arch, channels, side, hidden = family
    build = ARCHS[arch].build
    model = build(widths, num_classes, channels, side, hidden=hidden, device="meta").train()
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, channels, side, side, device="meta")).sum().backward()
    return int(counter.get_total_flops()), sum(p.numel() for p in model.parameters())


def training_flops(run: Mapping[str, Any]) -> int:
    """FLOPs of all of ``run``'s training epochs so far (a record or a progress snapshot).

    Raises:
        ValueError: the run's model family rebuilt at a recorded width spec does not have the
            recorded parameter count (a record of another family).
    """
    family, images = family_of(run), run["data"]["train"]
    for epoch in run["epochs"]:  # every width spec the record names, with its parameter count
        found = image_flops(family, as_widths(epoch["widths"]))[1]
        if found != epoch["params"]:
            raise ValueError(
                f"{run['run_id']}: the {family[0]} rebuilt at {epoch['widths']} has {found} "
                f"parameters, the record says {epoch['params']} (epoch {epoch['epoch']}); "
                "FLOPs need the run's own model family."
            )
    # Epoch k trains with the widths recorded after epoch k - 1 (growth ends an epoch).
    trained_with = [run["widths_initial"], *(e["widths"] for e in run["epochs"][:-1])]
    return images * sum(image_flops(family, as_widths(widths))[0] for widths in trained_with)


def flop_ratio(grown: Mapping[str, Any], static: Mapping[str, Any]) -> float:
    """Training FLOPs of a grown run over those of its static baseline."""
    return training_flops(grown) / training_flops(static)
