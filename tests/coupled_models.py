"""Small DAG models whose channels are coupled: residual joins, concatenations, chunks, grouped and
depthwise convolutions, squeeze-excitation gates, layer scales and a sequence tail.

A model is described by a :class:`DagSpec` (plain tuples, so hypothesis can draw and shrink it)
and built deterministically from a seed. Every block is its own module with a hand-written
``forward``, so tracing sees the functional ops (``+``, ``*``, ``torch.cat``, ``chunk``,
``mean``, ``flatten``, ``transpose``) exactly as user code writes them.

Block kinds (``(kind, *args)``; ``c`` is the block's input width):

* ``("residual", act, mid, out)``: ``act(bn2(conv2(act(bn1(conv1(x))))) + shortcut(x))``;
  the shortcut is the identity when ``out == 0`` (then the output width is ``c``), else a 1x1
  conv + BatchNorm projection to ``out``.
* ``("branches", act, widths)``: ``torch.cat`` of 2-3 ``conv -> BN -> act`` branches.
* ``("dense", act, growth)``: ``torch.cat([x, conv(act(bn(x)))], 1)`` (DenseNet's running
  features).
* ``("chunked", act, n, part, widths)``: ``pre(x).chunk(n, 1)`` (a 1x1 conv to ``n * part``,
  or ``x`` itself when ``part == 0``), one conv per chunk, ``torch.cat``.
* ``("dwsep", act, out)``: depthwise 3x3 (``groups == c``) -> BN -> act -> pointwise 1x1.
* ``("se", act, hidden)``: ``x * sigmoid(conv2(act(conv1(x.mean((2, 3), keepdim=True)))))``.
* ``("grouped", act, groups, part, part_out)``: 1x1 conv to ``groups * part`` -> BN -> act ->
  3x3 conv with ``groups`` groups to ``groups * part_out`` -> BN -> act.
* ``("layerscale", act)``: ``x + gamma * act(conv(x))`` with a free ``(c, 1, 1)`` parameter.
* ``("transition", act, out)``: 1x1 conv -> BN -> act.

Heads: ``("mlp", act, hidden, classes)`` pools and runs ``Linear -> act -> Linear`` on ``(B, C)``;
``("sequence", act, dim, dim2, classes)`` runs ``flatten(2).transpose(1, 2) -> Linear -> GELU ->
Linear -> mean(1) -> Linear`` on ``(B, T, C)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}
# Activations whose value and derivative are nonzero almost everywhere: no unit is ever dead.
SMOOTH = {**ACTIVATIONS, "relu": lambda: nn.LeakyReLU(0.1)}

__all__ = ["ACTIVATIONS", "DagModel", "DagSpec", "block_width", "randomise_"]


def _bn_act(width: int, act: str, smooth: bool) -> list[nn.Module]:
    return [nn.BatchNorm2d(width), (SMOOTH if smooth else ACTIVATIONS)[act]()]


def _act(act: str, smooth: bool) -> nn.Module:
    return (SMOOTH if smooth else ACTIVATIONS)[act]()


class Residual(nn.Module):
    def __init__(self, c: int, act: str, mid: int, out: int, smooth: bool) -> None:
        super().__init__()
        out = out or c
        self.conv1 = nn.Conv2d(c, mid, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.act = _act(act, smooth)
        self.shortcut = (
            nn.Identity()
            if out == c
            else nn.Sequential(nn.Conv2d(c, out, 1, bias=False), nn.BatchNorm2d(out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))
        return self.act(y + self.shortcut(x))


class Branches(nn.Module):
    def __init__(self, c: int, act: str, widths: tuple[int, ...], smooth: bool) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, w, 1 + 2 * (i % 2), padding=i % 2), *_bn_act(w, act, smooth))
            for i, w in enumerate(widths)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], 1)


class Dense(nn.Module):
    def __init__(self, c: int, act: str, growth: int, smooth: bool) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.act = _act(act, smooth)
        self.conv = nn.Conv2d(c, growth, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(self.act(self.bn(x)))], 1)


class Chunked(nn.Module):
    def __init__(
        self, c: int, act: str, n: int, part: int, widths: tuple[int, ...], smooth: bool
    ) -> None:
        super().__init__()
        self.n = n
        self.pre = nn.Conv2d(c, n * part, 1) if part else nn.Identity()
        part = part or c // n
        self.convs = nn.ModuleList(nn.Conv2d(part, w, 3, padding=1) for w in widths)
        self.act = _act(act, smooth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = self.pre(x).chunk(self.n, 1)  # a traced tuple: indexed, not iterated
        return torch.cat([self.act(conv(parts[i])) for i, conv in enumerate(self.convs)], 1)


class DepthwiseSeparable(nn.Module):
    def __init__(self, c: int, act: str, out: int, smooth: bool) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.act = _act(act, smooth)
        self.pw = nn.Conv2d(c, out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.act(self.bn(self.dw(x))))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, act: str, hidden: int, smooth: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, hidden, 1)
        self.act = _act(act, smooth)
        self.conv2 = nn.Conv2d(hidden, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.conv1(torch.mean(x, (2, 3), keepdim=True))
        return x * torch.sigmoid(self.conv2(self.act(s)))


class Grouped(nn.Module):
    def __init__(
        self, c: int, act: str, groups: int, part: int, part_out: int, smooth: bool
    ) -> None:
        super().__init__()
        self.pre = nn.Conv2d(c, groups * part, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(groups * part)
        self.conv = nn.Conv2d(groups * part, groups * part_out, 3, padding=1, groups=groups)
        self.bn2 = nn.BatchNorm2d(groups * part_out)
        self.act = _act(act, smooth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn2(self.conv(self.act(self.bn1(self.pre(x))))))


class LayerScale(nn.Module):
    def __init__(self, c: int, act: str, smooth: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.act = _act(act, smooth)
        self.gamma = nn.Parameter(torch.full((c, 1, 1), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma * self.act(self.conv(x))


class Transition(nn.Sequential):
    def __init__(self, c: int, act: str, out: int, smooth: bool) -> None:
        super().__init__(nn.Conv2d(c, out, 1, bias=False), *_bn_act(out, act, smooth))


BLOCKS = {
    "residual": Residual,
    "branches": Branches,
    "dense": Dense,
    "chunked": Chunked,
    "dwsep": DepthwiseSeparable,
    "se": SqueezeExcite,
    "grouped": Grouped,
    "layerscale": LayerScale,
    "transition": Transition,
}


def block_width(block: tuple, c: int) -> int:
    """The output width of ``block`` on a ``c``-wide input."""
    kind, _, *args = block
    if kind == "residual":
        return args[1] or c
    if kind in ("branches", "chunked"):
        return sum(args[-1])
    if kind == "dense":
        return c + args[0]
    if kind in ("dwsep", "transition"):
        return args[0]
    if kind == "grouped":
        return args[0] * args[2]
    return c  # se, layerscale


class MlpHead(nn.Module):
    def __init__(self, c: int, act: str, hidden: int, classes: int, smooth: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(c, hidden)
        self.act = _act(act, smooth)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x.mean((2, 3)))))


class SequenceHead(nn.Module):
    def __init__(self, c: int, act: str, dim: int, dim2: int, classes: int, smooth: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(c, dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim, dim2)
        self.out = nn.Linear(dim2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)  # (B, T, C): channels are the last dim
        return self.out(self.fc2(self.act(self.fc1(tokens))).mean(1))


HEADS = {"mlp": MlpHead, "sequence": SequenceHead}


class DagModel(nn.Module):
    """``stem (conv -> BN -> act) -> blocks -> head``, traced through plain Python loops."""

    def __init__(self, spec: DagSpec, smooth: bool) -> None:
        super().__init__()
        self.stem = nn.Conv2d(spec.in_channels, spec.stem_width, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(spec.stem_width)
        self.stem_act = _act(spec.stem_act, smooth)
        blocks, c = [], spec.stem_width
        for kind, act, *args in spec.blocks:
            blocks.append(BLOCKS[kind](c, act, *args, smooth=smooth))
            c = block_width((kind, act, *args), c)
        self.blocks = nn.ModuleList(blocks)
        kind, act, *args = spec.head
        self.head = HEADS[kind](c, act, *args, smooth=smooth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem_bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(x)


@dataclass(frozen=True)
class DagSpec:
    """A :class:`DagModel`: input channels, stem, ``(kind, act, *args)`` blocks and head."""

    in_channels: int
    stem_width: int
    stem_act: str
    blocks: tuple[tuple, ...]
    head: tuple
    size: int = 6  # input height and width

    def input_shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, self.in_channels, self.size, self.size)

    def build(self, seed: int, dtype: torch.dtype, *, smooth: bool = False) -> DagModel:
        """The model, with every parameter and BatchNorm statistic drawn from ``seed``.

        ``smooth`` swaps ReLU for LeakyReLU, for tests that need every new unit to carry a
        gradient. Parameters and running statistics are random and continuous, so no old value
        equals a fill value of the init (0 or 1) and old entries can be found inside grown ones.
        """
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = DagModel(self, smooth)
            randomise_(model)
        return model.to(dtype)


def randomise_(model: nn.Module) -> None:
    """Random BatchNorm statistics (so eval mode is a real test), affine entries and scales."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0.0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.2)
            elif isinstance(module, LayerScale):
                module.gamma.uniform_(0.2, 1.2)
