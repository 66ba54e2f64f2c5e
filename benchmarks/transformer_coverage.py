"""How much of a transformer netsurgeon widens exactly: the bar of the transformers issue.

For each model: the share of its non-output Linear/Conv layers whose channel group is widenable
(those inside a layer the graph reads whole, ``nn.MultiheadAttention``'s ``out_proj`` and Swin's
``qkv``/``proj``, count with that layer's group),
the construction of each widenable group (``append``, ``mean_pad``, ``zero_pad``, ``tile``),
and the largest relative output change after widening every widenable group at once by one
granularity (float64, eval mode, random weights; a zero-initialised layer, torchvision ViT's
head, is drawn at random first, as after training, so the output is not identically 0). The
first blocked reason is printed for each model that is not fully widenable.

    python benchmarks/transformer_coverage.py [--models timm.vit_tiny_patch16_224 tv.swin_t ...]

Names: ``tv.NAME`` (torchvision), ``timm.NAME`` (timm, no weights), ``encoder_prenorm`` /
``encoder_postnorm`` (``nn.TransformerEncoderLayer``), the tests' plain-PyTorch decoders
``GPT2`` and ``Llama`` (``tests/transformer_models.py``), and Hugging Face transformers' tiny
configs built offline (``tests/hf_models.py``), traced with the export front end: ``hf.bert``,
``hf.gpt2``, ``hf.llama``, ``hf.vit`` (base models: the stream is their output) and
``hf.bert+head``, ... (a classifier, Llama's language-model head: the stream is inside).
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
    "hf.bert",
    "hf.gpt2",
    "hf.llama",
    "hf.vit",
    "hf.bert+head",
    "hf.gpt2+head",
    "hf.llama+head",
    "hf.vit+head",
)
LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _is_layer(module: nn.Module) -> bool:
    """A linear or conv layer (transformers' ``Conv1D`` by name: it is never imported here)."""
    return isinstance(module, LAYERS) or type(module).__qualname__ == "Conv1D"


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    """The model called ``name`` and one input batch for it."""
    if name.startswith("tv."):
        import torchvision

        return getattr(torchvision.models, name[3:])(), torch.randn(2, 3, 224, 224)
    if name.startswith("timm."):
        import timm

        return timm.create_model(name[5:], pretrained=False), torch.randn(2, 3, 224, 224)
    if name.startswith("hf."):
        import hf_models

        base, _, head = name[3:].partition("+")
        model = (hf_models.HEADED if head else hf_models.MODELS)[base]()
        return model, hf_models.inputs(base, 2, 0)[0]
    if name in ("encoder_prenorm", "encoder_postnorm"):
        layer = nn.TransformerEncoderLayer(
            32, 4, 64, dropout=0.0, batch_first=True, norm_first=name == "encoder_prenorm"
        )
        return nn.Sequential(nn.Linear(8, 32), layer, nn.Linear(32, 5)), torch.randn(2, 6, 8)
    import transformer_models

    return getattr(transformer_models, name)(), torch.randint(0, 50, (2, 12))


def _draw_zero_layers(model: nn.Module) -> None:
    """Give each layer whose weight is all zero (a zero-initialised head) random weights."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LAYERS) and not module.weight.any():
                module.weight.normal_(std=module.weight.shape[1] ** -0.5)


def counted_layers(graph) -> list[tuple[str, object]]:
    """``(name, group)`` of the non-output Linear/Conv layers: the graph's, and those inside a
    layer the graph reads whole (``nn.MultiheadAttention``'s ``out_proj``, torchvision Swin's
    ``qkv`` and ``proj``), which grow with that layer's group."""
    found = []
    for layer in graph.layers:
        module, group = graph.module(layer), graph.group_of(layer)
        if group.reaches_output:
            continue
        if _is_layer(module):
            found.append((layer, group))
        else:
            inner = module.named_modules(prefix=layer)
            found += [(n, group) for n, m in inner if n != layer and _is_layer(m)]
    return found


def coverage(name: str) -> str:
    """One line: widenable share, the error of widening everything, constructions, a reason."""
    torch.manual_seed(0)
    model, x = build(name)
    model = model.double().eval()
    _draw_zero_layers(model)
    x = x.double() if x.is_floating_point() else x
    frontend = "export" if name.startswith("hf.") else "symbolic"
    graph = netsurgeon.trace(model, example_inputs=(x,), strict=False, frontend=frontend)
    layers = counted_layers(graph)
    widenable = [name for name, group in layers if group.widenable]
    plan = {g.name: g.granularity for g in graph.groups if g.widenable}
    with torch.no_grad():
        before = _tensor(model(x))
        netsurgeon.widen(model, plan, graph=graph)
        error = ((_tensor(model(x)) - before).abs().max() / before.abs().max()).item()
    built = sorted({g.construction for g in graph.groups if g.widenable})
    blocked = [g.reason for g in graph.groups if not g.widenable and not g.reaches_output]
    line = f"{name}: {len(widenable)}/{len(layers)} widenable, relative error {error:.1e}, {built}"
    return line + (f"; first block: {blocked[0][:160]}" if blocked else "")


def _tensor(out: object) -> torch.Tensor:
    """A model's output tensor (transformers: ``logits``, else ``last_hidden_state``)."""
    if isinstance(out, torch.Tensor):
        return out
    found = getattr(out, "logits", None)
    return found if found is not None else out.last_hidden_state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT))
    args = parser.parse_args()
    for name in args.models:
        print(coverage(name), flush=True)


if __name__ == "__main__":
    main()
