"""Batched augmentation and normalisation on uint8 image tensors, on whatever device they live."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "Augment",
    "channel_stats",
    "draw_augment",
    "gather_crops",
    "normalize",
    "pad_and_mirror",
]


@dataclass(frozen=True)
class Augment:
    """Training augmentation of one dataset: zero padding and a random crop, horizontal flips."""

    crop_padding: int = 4  # pixels per side before the random crop (0: none); CIFAR-10's is 4
    flip: bool = True  # horizontal mirror (off for digits: a mirrored 3 is not a 3)
    flip_probability: float = 0.5  # per image

    def __post_init__(self) -> None:
        if isinstance(self.crop_padding, bool) or not isinstance(self.crop_padding, int):
            raise TypeError(f"Augment.crop_padding must be an int; found {self.crop_padding!r}.")
        if self.crop_padding < 0:
            raise ValueError(f"Augment.crop_padding must be >= 0; found {self.crop_padding}.")
        if not 0.0 <= self.flip_probability <= 1.0:
            raise ValueError(
                f"Augment.flip_probability must lie in [0, 1]; found {self.flip_probability}."
            )


def pad_and_mirror(images: torch.Tensor, padding: int, mirror: bool) -> torch.Tensor:
    """Prepare a gather source: zero-pad every image and (optionally) add its mirror image.

    Args:
        images: ``(N, C, H, W)`` tensor of any dtype.
        padding: zero padding per side.
        mirror: also store each padded image mirrored along the width.

    Returns:
        ``(N, F, H + 2p, W + 2p, C)`` contiguous (channels innermost), ``F = 2`` with ``mirror``
        (index 1 = mirrored) else 1.
    """
    nhwc = images.permute(0, 2, 3, 1)
    padded = F.pad(nhwc, (0, 0, padding, padding, padding, padding)) if padding else nhwc
    views = [padded, padded.flip(2)] if mirror else [padded]
    return torch.stack(views, dim=1).contiguous()


def gather_crops(
    source: torch.Tensor,
    index: torch.Tensor,
    offsets: torch.Tensor,
    flips: torch.Tensor,
    size: tuple[int, int],
) -> torch.Tensor:
    """Crop windows out of a :func:`pad_and_mirror` source with one ``index_select`` of rows.

    Args:
        source: ``(N, F, Hp, Wp, C)`` from :func:`pad_and_mirror`.
        index: ``(B,)`` int64 image indices into ``source``.
        offsets: ``(B, 2)`` int64 ``(dy, dx)`` in ``[0, Hp - H] x [0, Wp - W]``.
        flips: ``(B,)`` bool; needs ``F == 2`` where any is True.
        size: ``(H, W)`` of the crops.

    Returns:
        ``(B, C, H, W)`` in channels_last memory format, on ``source``'s device.
    """
    if source.dim() != 5 or not source.is_contiguous():
        raise ValueError(
            f"gather_crops: source must be the contiguous (N, F, Hp, Wp, C) tensor of "
            f"pad_and_mirror; found shape {tuple(source.shape)}, contiguous={source.is_contiguous()}."
        )
    _, n_views, hp, wp, c = source.shape
    h, w = size
    device = source.device
    index = index.to(device=device, dtype=torch.long)
    offsets = offsets.to(device=device, dtype=torch.long)
    flips = flips.to(device=device, dtype=torch.bool)
    if n_views == 1 and bool(flips.any()):
        raise ValueError("gather_crops: flips requested but the source holds no mirrored view.")
    # A row of W pixels starts at every pixel position; rows = overlapping (W*C)-byte windows.
    rows = source.view(-1).as_strided(((source.numel() - w * c) // c + 1, w * c), (c, 1))
    dx = torch.where(flips, (wp - w) - offsets[:, 1], offsets[:, 1])
    first = ((index * n_views + flips.long()) * hp + offsets[:, 0]) * wp + dx  # (B,) in pixels
    starts = first[:, None] + torch.arange(h, device=device) * wp  # (B, H)
    out = rows.index_select(0, starts.view(-1))  # (B * H, W * C)
    return out.view(-1, h, w, c).permute(0, 3, 1, 2)


def draw_augment(
    n: int, augment: Augment | None, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop offsets, then flips, for ``n`` images; zeros where ``augment`` asks for none.

    Returns:
        ``(offsets, flips)``: ``(n, 2)`` int64 ``(dy, dx)``, each uniform in ``[0, 2 * padding]``,
        and ``(n,)`` bool, each True with ``augment.flip_probability``.
    """
    offsets = torch.zeros(n, 2, dtype=torch.long)
    flips = torch.zeros(n, dtype=torch.bool)
    if augment is not None and augment.crop_padding:
        high = 2 * augment.crop_padding + 1
        offsets = torch.randint(0, high, (n, 2), generator=generator, device=generator.device)
    if augment is not None and augment.flip and augment.flip_probability > 0:
        coins = torch.rand(n, generator=generator, device=generator.device)
        flips = coins < augment.flip_probability
    return offsets, flips


def normalize(
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 ``(N, C, H, W)`` in [0, 255] -> float ``(x / 255 - mean) / std`` per channel, in
    channels_last memory format (one copy of the input first when it is not)."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise TypeError(
            f"normalize: expected uint8 (N, C, H, W) images; found {images.dtype} of shape "
            f"{tuple(images.shape)}."
        )
    n, c, h, w = images.shape
    if len(mean) != c or len(std) != c:
        raise ValueError(
            f"normalize: images have {c} channels but mean has {len(mean)} and std {len(std)} "
            "entries; pass one value per channel."
        )
    std_t = torch.tensor(std, dtype=torch.float64)
    scale = (1.0 / (255.0 * std_t)).to(dtype)
    shift = (-torch.tensor(mean, dtype=torch.float64) / std_t).to(dtype)
    device = images.device
    rows = images.permute(0, 2, 3, 1).reshape(n * h, w * c)
    # One pass, uint8 in, float out: shift + x * scale with the (C,) pattern tiled W times.
    out = torch.addcmul(shift.repeat(w).to(device), rows, scale.repeat(w).to(device))
    return out.view(n, h, w, c).permute(0, 3, 1, 2)


def channel_stats(
    images: torch.Tensor, chunk: int = 4096
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on the [0, 1] scale of a uint8 ``(N, C, H, W)`` tensor."""
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].transpose(0, 1).reshape(c, -1).to(torch.float32)
        total += x.sum(dim=1).double().cpu()  # float32 block sums, float64 total
        total_sq += (x * x).sum(dim=1).double().cpu()
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count / 255.0
    total_sq = total_sq / 255.0**2
    std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())
