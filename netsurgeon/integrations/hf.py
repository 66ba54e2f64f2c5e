"""Hugging Face transformers models after a widening: their config kept in step with the widths.

A transformers model is rebuilt from its config by ``from_pretrained``: after ``widen`` grew its
residual stream, attention heads or MLPs, the config must say the new widths, or loading the
saved weights fails on their shapes. :func:`sync_config` reads the widths from the modules and
writes them into ``model.config`` (``hidden_size``, ``num_attention_heads``,
``num_key_value_heads``, ``head_dim`` where the architecture reads one, ``intermediate_size``;
GPT-2 spells them ``n_embd``, ``n_head``, ``n_inner``), and the attributes some modules keep of
the stream's width without reading them (GPT-2's ``embed_dim``), so ``save_pretrained`` /
``from_pretrained`` round-trips the grown model. A config holds one width per field for every
layer: layers grown apart are refused, naming them; so is a head count the architecture cannot
rebuild (BERT and GPT-2 derive the head size as ``hidden_size // num_attention_heads``: grow the
stream with the heads, by whole heads).

Trace these models with the export front end (``docs/frontends.md``)::

    graph = netsurgeon.trace(model, (input_ids,), strict=False, frontend="export")
    netsurgeon.widen(model, {g.name: g.granularity for g in graph.groups if g.widenable},
                     graph=graph)
    sync_config(model)                     # {"intermediate_size": 49, ...}
    model.save_pretrained(path)

transformers is never imported: the model's ``config`` and module names are read as they are.
Needs ``pip install netsurgeon[hf]`` only to build the models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from netsurgeon.errors import ConfigError

__all__ = ["CONFIG_WIDTHS", "Width", "sync_config"]


@dataclass(frozen=True)
class Width:
    """One config field: the modules whose name ends with one of ``suffixes`` hold it, ``read``
    gives it from one of them."""

    field: str
    suffixes: tuple[str, ...]
    read: Callable[[nn.Module], float]


def _attr(name: str) -> Callable[[nn.Module], float]:
    return lambda module: getattr(module, name) + 0  # a number, or TypeError


def _heads(proj: str) -> Callable[[nn.Module], int]:
    """Heads of a Llama-style attention: its projection's outputs over ``head_dim``."""
    return lambda module: getattr(module, proj).out_features // module.head_dim


# the stream's norms: a padded stream scales their eps alike (docs/widen.md), which the
# config's one eps must say
_BERT = (
    Width("hidden_size", ("embeddings.word_embeddings",), _attr("embedding_dim")),
    Width("hidden_size", ("pooler.dense",), _attr("out_features")),
    Width("num_attention_heads", ("attention.self",), _attr("num_attention_heads")),
    Width("intermediate_size", ("intermediate.dense",), _attr("out_features")),
    Width("layer_norm_eps", ("LayerNorm",), _attr("eps")),
)
_VIT = (
    Width("hidden_size", ("embeddings.patch_embeddings.projection",), _attr("out_channels")),
    Width("num_attention_heads", ("attention",), _attr("num_attention_heads")),
    Width("head_dim", ("attention",), _attr("head_dim")),
    Width("intermediate_size", ("intermediate.dense", "mlp.fc1"), _attr("out_features")),
    Width("layer_norm_eps", ("layernorm_before", "layernorm_after", "layernorm"), _attr("eps")),
)
_GPT2 = (
    Width("n_embd", ("wte",), _attr("embedding_dim")),
    Width("n_head", ("attn",), _attr("num_heads")),
    Width("n_inner", ("mlp.c_fc",), _attr("nf")),
    Width("layer_norm_epsilon", ("ln_1", "ln_2", "ln_f"), _attr("eps")),
)
_LLAMA = (
    Width("hidden_size", ("embed_tokens",), _attr("embedding_dim")),
    Width("num_attention_heads", ("self_attn",), _heads("q_proj")),
    Width("num_key_value_heads", ("self_attn",), _heads("k_proj")),
    Width("head_dim", ("self_attn",), _attr("head_dim")),
    Width("intermediate_size", ("mlp.gate_proj", "mlp.up_proj"), _attr("out_features")),
    Width("rms_norm_eps", ("layernorm", "norm"), _attr("variance_epsilon")),
)

#: ``config.model_type`` -> its width fields (and the stream norms' eps), each with the modules
#: that hold it (a field may be held by several kinds of module: all must agree).
CONFIG_WIDTHS: dict[str, tuple[Width, ...]] = {
    "bert": _BERT,
    "vit": _VIT,
    "gpt2": _GPT2,
    "llama": _LLAMA,
}

#: ``config.model_type`` -> (hidden size field, head count field, the attention modules' head
#: size attribute): the architectures that derive the head size as hidden // heads.
_DERIVED_HEAD_SIZE = {
    "bert": ("hidden_size", "num_attention_heads", "attention.self", "attention_head_size"),
    "gpt2": ("n_embd", "n_head", "attn", "head_dim"),
}

#: ``config.model_type`` -> (module suffix, attribute, its value from the module): widths a
#: module stores without reading them in its forward, kept true after a widening.
_STORED = {
    "gpt2": (
        ("attn", "embed_dim", lambda m: int(m.c_proj.nf)),
        ("transformer", "embed_dim", lambda m: int(m.wte.embedding_dim)),
        ("", "embed_dim", lambda m: int(m.wte.embedding_dim)),
    ),
}


def sync_config(model: nn.Module) -> dict[str, float]:
    """Write the widths ``model``'s modules have into ``model.config``; return what changed.

    Args:
        model: a transformers ``PreTrainedModel`` of a type in :data:`CONFIG_WIDTHS`.

    Returns:
        ``{config field: new value}`` for the fields that changed (empty: already in step);
        the stream norms' eps is one of them when a padded stream scaled it.

    Raises:
        ConfigError: the model has no ``config`` or its type is not in :data:`CONFIG_WIDTHS`;
            its layers differ in a width (a config holds one); or its heads are not ones the
            config can rebuild. Nothing is changed then.

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
    if kind not in CONFIG_WIDTHS:
        raise ConfigError(
            f"sync_config knows the width fields of {sorted(CONFIG_WIDTHS)}; "
            f"{type(model).__name__} has config.model_type {kind!r}. Fix: set the config's "
            "width fields by hand before save_pretrained, or add the type to CONFIG_WIDTHS."
        )
    fields = dict.fromkeys(w.field for w in CONFIG_WIDTHS[kind])
    values = {
        f: _one_width(model, [w for w in CONFIG_WIDTHS[kind] if w.field == f]) for f in fields
    }
    values = {k: v for k, v in values.items() if v is not None}
    if getattr(config, "head_dim", None) is None and _derived(values) == values.get("head_dim"):
        values.pop("head_dim", None)  # ViT without one: hidden // heads is still right
    _check_head_size(model, kind, values)
    for suffix, attr, read in _STORED.get(kind, ()):
        for name, module in model.named_modules():
            if name.endswith(suffix) and (suffix or not name) and hasattr(module, attr):
                setattr(module, attr, read(module))
    return _set(config, values)


def _one_width(model: nn.Module, widths: list[Width]) -> float | None:
    """The value every module holding one of ``widths`` (one field) has (``None``: none)."""
    found = {}
    for width in widths:
        for name, module in model.named_modules():
            if name.endswith(width.suffixes) and _readable(module, width):
                found[name] = width.read(module)
    if len(set(found.values())) > 1:
        shown = ", ".join(f"'{name}': {value}" for name, value in found.items())
        raise ConfigError(
            f"config.{widths[0].field} holds one value for every layer, but the layers differ "
            f"({shown}); from_pretrained would rebuild them all alike. Fix: grow every layer's "
            "group by the same number of units."
        )
    return next(iter(found.values()), None)


def _derived(values: dict[str, int]) -> int | None:
    hidden, heads = values.get("hidden_size"), values.get("num_attention_heads")
    return hidden // heads if hidden is not None and heads and hidden % heads == 0 else None


def _readable(module: nn.Module, width: Width) -> bool:
    try:
        width.read(module)
    except (AttributeError, TypeError):
        return False
    return True


def _check_head_size(model: nn.Module, kind: str, values: dict[str, int]) -> None:
    """Refuse heads that ``hidden // heads`` (the config's only head size) would not rebuild."""
    if kind not in _DERIVED_HEAD_SIZE:
        return
    hidden_field, heads_field, suffix, size_attr = _DERIVED_HEAD_SIZE[kind]
    sizes = {
        int(getattr(m, size_attr))
        for n, m in model.named_modules()
        if n.endswith(suffix) and hasattr(m, size_attr)
    }
    hidden, heads = values.get(hidden_field), values.get(heads_field)
    if hidden is None or heads is None or (sizes == {hidden // heads} and hidden % heads == 0):
        return
    raise ConfigError(
        f"{kind}'s config rebuilds heads of {hidden_field} // {heads_field} channels, but the "
        f"model has {heads} heads of {sorted(sizes)} and a stream of {hidden}: from_pretrained "
        "would cut other heads. Fix: grow the residual stream by as many channels as the heads "
        "(one head's size per head), or keep the heads."
    )


def _set(config: Any, values: dict[str, float]) -> dict[str, float]:
    """Set the changed fields; a config whose own checks refuse them is restored."""
    changed = {k: v for k, v in values.items() if getattr(config, k, None) != v}
    old = {k: getattr(config, k, None) for k in changed}
    for key, value in changed.items():
        setattr(config, key, value)
    try:
        getattr(config, "validate", lambda: None)()
    except Exception as e:  # transformers' validators raise several types
        for key, value in old.items():
            setattr(config, key, value)
        raise ConfigError(
            f"{type(config).__name__} refuses the widths {changed}: {e}\nFix: grow the groups "
            "to widths the architecture allows (e.g. a hidden size that is a multiple of the "
            "head count)."
        ) from e
    return changed
