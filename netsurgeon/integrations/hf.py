"""Hugging Face transformers models after a widening: their config kept in step with the widths.

A transformers model is rebuilt from its config by ``from_pretrained``: after ``widen`` grew its
MLPs, ``config.intermediate_size`` (GPT-2: ``n_inner``) must say the new width, or loading the
saved weights fails on their shapes. :func:`sync_config` reads the widths from the modules and
writes them into ``model.config``, so ``save_pretrained`` / ``from_pretrained`` round-trips the
grown model. A config holds one MLP width for every layer: layers grown to different widths are
refused, naming them.

Trace these models with the export front end (``docs/frontends.md``)::

    graph = netsurgeon.trace(model, (input_ids,), strict=False, frontend="export")
    netsurgeon.widen(model, {g.name: 64 for g in graph.groups if g.widenable}, graph=graph)
    sync_config(model)                     # {"intermediate_size": 576}
    model.save_pretrained(path)

transformers is never imported: the model's ``config`` and module names are read as they are.
Needs ``pip install netsurgeon[hf]`` only to build the models.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from netsurgeon.errors import ConfigError

__all__ = ["MLP_WIDTHS", "sync_config"]

#: ``config.model_type`` -> (config field, module name suffixes, width attribute): the MLP's
#: hidden width as each architecture's config spells it and where its modules hold it.
MLP_WIDTHS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "bert": ("intermediate_size", ("intermediate.dense",), "out_features"),
    "vit": ("intermediate_size", ("intermediate.dense", "mlp.fc1"), "out_features"),
    "gpt2": ("n_inner", ("mlp.c_fc",), "nf"),
    "llama": ("intermediate_size", ("mlp.gate_proj", "mlp.up_proj"), "out_features"),
}


def sync_config(model: nn.Module) -> dict[str, int]:
    """Write the widths ``model``'s modules have into ``model.config``; return what changed.

    Args:
        model: a transformers ``PreTrainedModel`` of a type in :data:`MLP_WIDTHS`.

    Returns:
        ``{config field: new value}`` for the fields that changed (empty: already in step).

    Raises:
        ConfigError: the model has no ``config``, its type is not in :data:`MLP_WIDTHS`, or its
            layers' MLP widths differ (a config holds one).

    Example:
        >>> import transformers, torch, netsurgeon
        >>> cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=1,
        ...                               num_attention_heads=2, intermediate_size=64)
        >>> bert = transformers.BertModel(cfg).eval()
        >>> graph = netsurgeon.trace(bert, (torch.ones(1, 4, dtype=torch.long),), strict=False,
        ...                          frontend="export")
        >>> _ = netsurgeon.widen(bert, {"encoder.layer.0.intermediate.dense": 8}, graph=graph)
        >>> sync_config(bert)
        {'intermediate_size': 72}
    """
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in MLP_WIDTHS:
        raise ConfigError(
            f"sync_config knows the MLP width fields of {sorted(MLP_WIDTHS)}; "
            f"{type(model).__name__} has config.model_type {kind!r}. Fix: set the config's "
            "width fields by hand before save_pretrained, or add the type to MLP_WIDTHS."
        )
    field, suffixes, attr = MLP_WIDTHS[kind]
    widths = _widths(model, suffixes, attr)
    if len(set(widths.values())) > 1:
        shown = ", ".join(f"'{name}': {width}" for name, width in widths.items())
        raise ConfigError(
            f"config.{field} holds one MLP width for every layer, but the layers differ "
            f"({shown}); from_pretrained would rebuild them all at one width. Fix: grow every "
            "layer's MLP by the same number of units."
        )
    return _set(config, {field: next(iter(widths.values()))} if widths else {})


def _widths(model: nn.Module, suffixes: tuple[str, ...], attr: str) -> dict[str, int]:
    return {
        name: int(getattr(module, attr))
        for name, module in model.named_modules()
        if name.endswith(suffixes) and hasattr(module, attr)
    }


def _set(config: Any, values: dict[str, int]) -> dict[str, int]:
    changed = {k: v for k, v in values.items() if getattr(config, k, None) != v}
    for key, value in changed.items():
        setattr(config, key, value)
    return changed
