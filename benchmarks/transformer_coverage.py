"""How much of a transformer netsurgeon widens exactly: the bar of the transformers issue.

For each model: the share of its non-output Linear/Conv layers whose channel group is widenable,
the construction of each widenable group (``append``, ``mean_pad``, ``zero_pad``, ``tile``),
and the largest relative output change after widening every widenable group at once by one
granularity (float64, eval mode, random weights; ``nan`` where the output is identically 0 at
initialisation, a zero-initialised head, unless ``--redraw-zeros`` draws every all-zero parameter
from ``N(0, 0.02)`` first). The first blocked reason is printed for each model that is not fully
widenable.

    python benchmarks/transformer_coverage.py [--models timm.vit_tiny_patch16_224 tv.swin_t ...]
        [--redraw-zeros]

Names: ``tv.NAME`` (torchvision), ``timm.NAME`` (timm, no weights), ``encoder_prenorm`` /
``encoder_postnorm`` (``nn.TransformerEncoderLayer``), and the tests' plain-PyTorch decoders
``GPT2`` and ``Llama`` (``tests/transformer_models.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this checkout's netsurgeon and test models

import netsurgeon  # noqa: E402

DEFAULT = (
    "GPT2",
    "Llama",
    "encoder_prenorm",
    "encoder_postnorm",
    "timm.vit_tiny_patch16_224",
    "timm.deit_tiny_patch16_224",
    "timm.convnext_nano",
    "timm.swin_tiny_patch4_window7_224",
    "timm.mixer_b16_224",
    "timm.resmlp_12_224",
    "timm.poolformer_s12",
    "tv.vit_b_16",
    "tv.swin_t",
    "tv.convnext_tiny",
)
LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    """The model called ``name`` and one input batch for it."""
    if name.startswith("tv."):
        import torchvision

        return getattr(torchvision.models, name[3:])(), torch.randn(2, 3, 224, 224)
    if name.startswith("timm."):
        import timm

        return timm.create_model(name[5:], pretrained=False), torch.randn(2, 3, 224, 224)
    if name in ("encoder_prenorm", "encoder_postnorm"):
        layer = nn.TransformerEncoderLayer(
            32, 4, 64, dropout=0.0, batch_first=True, norm_first=name == "encoder_prenorm"
        )
        return nn.Sequential(nn.Linear(8, 32), layer, nn.Linear(32, 5)), torch.randn(2, 6, 8)
    import transformer_models

    return getattr(transformer_models, name)(), torch.randint(0, 50, (2, 12))


def coverage(name: str, redraw_zeros: bool = False) -> str:
    """One line: widenable share, the error of widening everything, constructions, a reason."""
    torch.manual_seed(0)
    model, x = build(name)
    model = model.double().eval()
    if redraw_zeros:  # a zero-initialised head makes the output 0 and the error unmeasurable
        with torch.no_grad():
            for parameter in model.parameters():
                if not parameter.any():
                    parameter.normal_(0, 0.02)
    x = x.double() if x.is_floating_point() else x
    graph = netsurgeon.trace(model, example_inputs=(x,), strict=False)
    layers = [
        layer
        for layer in graph.layers
        if isinstance(graph.module(layer), LAYERS) and not graph.group_of(layer).reaches_output
    ]
    widenable = [layer for layer in layers if graph.group_of(layer).widenable]
    plan = {g.name: g.granularity for g in graph.groups if g.widenable}
    with torch.no_grad():
        before = model(x)
        netsurgeon.widen(model, plan, graph=graph)
        error = ((model(x) - before).abs().max() / before.abs().max()).item()
    built = sorted({g.construction for g in graph.groups if g.widenable})
    blocked = [g.reason for g in graph.groups if not g.widenable and not g.reaches_output]
    line = f"{name}: {len(widenable)}/{len(layers)} widenable, relative error {error:.1e}, {built}"
    return line + (f"; first block: {blocked[0][:160]}" if blocked else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT))
    parser.add_argument("--redraw-zeros", action="store_true", help="redraw all-zero parameters")
    args = parser.parse_args()
    for name in args.models:
        print(coverage(name, args.redraw_zeros), flush=True)


if __name__ == "__main__":
    main()
