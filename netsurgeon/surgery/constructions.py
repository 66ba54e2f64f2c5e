"""The constructions' fills: mean-padding, zero-padding and tiling, and ``init=`` per group.

A group's :attr:`~netsurgeon.graph.groups.ChannelGroup.construction` says how its new channels
stay exact (:mod:`netsurgeon.graph.constructions`); this module fills them (``docs/widen.md``
has the proofs). ``s = C / (C + k)``.

* :class:`MeanPadInit` (``"mean_pad"``): a producer's new rows and bias entries are the mean of
  its old ones (global over the group, whatever its splits), an added free parameter's new
  entries (a position embedding, a class token) the mean of its old entries; consumer columns 0.
* :class:`ZeroPadInit` (``"zero_pad"``): new rows and entries 0.
* :class:`TileInit` (``"tile"``): net2net with deterministic sources, new channel ``i`` of a
  split copying its channel ``i mod size``; ``k`` per split must be a multiple of the split.

The norm readers of a padded group (:func:`netsurgeon.surgery.norms.stage_norm_reader`):
``weight`` old entries times ``sqrt(s)``, new entries ``sqrt(s)`` times the mean of the old
weight (a new channel as sensitive as an average old one once it moves; its gradient is 0 until
then), bias new entries 0, ``eps`` times ``s``. The weight's gradient scales by ``1 / sqrt(s)``:
its ``.grad`` and optimizer moments are rescaled with it (:func:`scaled_state`). A layer scale on
a producer's output weights that producer's new rows (:func:`weight_rows_by_scale`).

A layer reading a padded group only through a norm's output (zero new channels) gets random new
columns (the std of its old ones): exact, and the norm's new bias entries get gradient at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from netsurgeon.errors import WidenError
from netsurgeon.graph import ConsumerRef, IndexMap
from netsurgeon.graph.constructions import (
    APPEND,
    MEAN_PAD,
    TILE,
    ZERO_PAD,
    construction_under,
    granularity_under,
)
from netsurgeon.surgery.index import kept_index, slots
from netsurgeon.surgery.init import (
    InitStrategy,
    Net2NetInit,
    PaperInit,
    get_init,
    normal_,
    register_init,
)

__all__ = [
    "MeanPadInit",
    "PerGroupInit",
    "TileInit",
    "ZeroPadInit",
    "copies_heads",
    "exact_under",
    "fill_free_columns",
    "layer_scale_fill",
    "norm_scale",
    "resolve_constructions",
    "scaled_state",
    "weight_rows_by_scale",
]


@register_init(MEAN_PAD)
class MeanPadInit(PaperInit):
    """New rows, biases and additive entries: the mean of the old ones (module docstring)."""

    def fill_rows(self, weight, *, row_inserts, col_inserts, fan_in, sources, generator):
        old = weight.shape[0] - sum(i.count for i in row_inserts)
        mean = weight.index_select(0, kept_index(old, row_inserts, weight.device)).mean(0)
        for at, ins in slots(row_inserts):  # new columns of old rows are still 0 here
            weight.narrow(0, at, ins.count).copy_(mean.expand_as(weight[:1]))

    def fill_entries(self, tensor, *, dim, index_map, inserts, fill, sources, generator):
        pieces = index_map.pieces
        if not (isinstance(fill, float) and fill == 0.0) or any(
            p.multiplicity != 1 for p in pieces
        ):
            super().fill_entries(
                tensor, dim=dim, index_map=index_map, inserts=inserts, fill=fill,
                sources=sources, generator=generator,
            )  # fmt: skip
            return
        kept = kept_index(index_map.size, inserts, tensor.device)
        for group in dict.fromkeys(i.group for i in inserts):
            mean = tensor.index_select(dim, kept[_old_entries(index_map, group)]).mean(dim, True)
            for at, ins in slots(inserts):
                if ins.group == group:
                    part = tensor.narrow(dim, at, ins.count)
                    part.copy_(mean.expand_as(part))


def _old_entries(index_map: IndexMap, group: str) -> torch.Tensor:
    """Old positions of every entry of ``group`` in ``index_map``."""
    found = [torch.arange(o, o + p.entries) for o, p in index_map.offsets() if p.group == group]
    return torch.cat(found) if found else torch.zeros(0, dtype=torch.long)


@register_init(ZERO_PAD)
class ZeroPadInit(PaperInit):
    """New rows 0 (and every new entry its neutral value: 0 for a bias or an added entry)."""

    def fill_rows(self, weight, *, row_inserts, col_inserts, fan_in, sources, generator):
        pass  # new rows stay zero


@register_init(TILE)
class TileInit(Net2NetInit):
    """Copies: new channel ``i`` of a split copies old channel ``i mod size`` of the split."""

    def sources(self, width, k, blocks, generator, *, unit=1):
        size, per_block = width // blocks, k // blocks
        if per_block % size:
            raise WidenError(
                f"init='tile' copies every channel: {k} new channels over {blocks} split(s) of "
                f"{size} are not whole copies; grow by a multiple of {width}"
            )
        return torch.cat([j * size + torch.arange(per_block) % size for j in range(blocks)])


class PerGroupInit(InitStrategy):
    """Each group's own strategy (``by_group``), on tensors that several groups grow."""

    def __init__(self, by_group: Mapping[str, InitStrategy]) -> None:
        self.by_group = dict(by_group)

    def _parts(self, inserts) -> list[tuple[InitStrategy, set[str]]]:
        parts: dict[int, tuple[InitStrategy, set[str]]] = {}
        for ins in inserts:
            strategy = self.by_group[ins.group]
            parts.setdefault(id(strategy), (strategy, set()))[1].add(ins.group)
        return list(parts.values())

    def fill_rows(self, weight, *, row_inserts, col_inserts, fan_in, sources, generator):
        self.by_group[row_inserts[0].group].fill_rows(
            weight, row_inserts=row_inserts, col_inserts=col_inserts, fan_in=fan_in,
            sources=sources, generator=generator,
        )  # fmt: skip

    def fill_columns(self, weight, *, index_map, inserts, sources, widths, generator):
        for strategy, groups in self._parts(inserts):
            mine = {g: (s if g in groups else None) for g, s in sources.items()}
            strategy.fill_columns(
                weight, index_map=index_map, inserts=inserts, sources=mine, widths=widths,
                generator=generator,
            )  # fmt: skip

    def fill_entries(self, tensor, *, dim, index_map, inserts, fill, sources, generator):
        for strategy, groups in self._parts(inserts):
            mine = {g: (s if g in groups else None) for g, s in sources.items()}
            filled = tensor.clone()
            strategy.fill_entries(
                filled, dim=dim, index_map=index_map, inserts=inserts, fill=fill, sources=mine,
                generator=generator,
            )  # fmt: skip
            for at, ins in slots(inserts):
                if ins.group in groups:
                    tensor.narrow(dim, at, ins.count).copy_(filled.narrow(dim, at, ins.count))


def resolve_constructions(
    groups: Mapping[str, object], growth: Mapping[str, int], base: InitStrategy
) -> tuple[dict[str, str], dict[str, InitStrategy]]:
    """``({group: construction}, {group: strategy})`` for the planned groups, or refuse.

    ``init="paper"`` (default): each group's own construction (``append`` groups the paper's
    fill). ``"net2net"``: ``append`` groups copy units; a normalised stream is exact only tiled,
    so its ``k`` must be a multiple of its width. A construction's name (``"mean_pad"``,
    ``"zero_pad"``, ``"tile"``) applies to every planned group and must be exact for each. An
    ``InitStrategy`` of another name fills ``append`` groups only.

    Raises:
        WidenError: the choice is not exact for a group (naming it, its readers and the fix).
    """
    name = init = base.name
    chosen: dict[str, str] = {}
    for group_name, k in growth.items():
        group = groups[group_name]
        want = construction_under(group, name)
        if want not in group.constructions:
            raise WidenError(_not_exact(group, init, want))
        if want == TILE and k % group.width:
            raise WidenError(
                f"cannot widen group '{group.name}' with init={init!r}: tiling copies every "
                f"channel, so k = {k} must be a multiple of its width {group.width}"
                + _readers(group)
                + f"; use k = {group.width * max(1, round(k / group.width))}"
                + ("" if MEAN_PAD not in group.constructions else " or init='paper' (mean_pad)")
            )
        if want == APPEND and not isinstance(base, PaperInit):
            why = copies_heads(group)
            if why is not None:
                raise WidenError(
                    f"cannot widen group '{group.name}' with init={init!r}: {why}; the init "
                    "copies channels one by one, which does not copy whole heads in every part; "
                    "use init='paper'"
                )
        chosen[group_name] = want
    placeholder = getattr(base, "placeholder", False)  # fills every group (a checkpoint's)
    strategies = {
        g: (base if c == APPEND or placeholder else get_init(c)) for g, c in chosen.items()
    }
    return chosen, strategies


def copies_heads(group) -> str | None:
    """Why an init other than the paper's (one that copies or fills channels one by one) cannot
    grow ``group`` by whole heads, or ``None``: a grouped-query ``q`` projection holds ``g`` rows
    per channel, and a fused ``qkv`` cut into heads would take its ``q``, ``k`` and ``v`` parts
    from different old heads."""
    many = [p for p in group.producers if group.rows_per_channel(p) > 1]
    if many:
        return (
            f"'{many[0]}' holds {group.rows_per_channel(many[0])} rows per channel of it "
            "(grouped-query attention)"
        )
    if group.head_size and group.splits > 1:
        return (
            f"it is a fused projection of {group.splits} parts cut into heads of {group.head_size}"
        )
    return None


def exact_under(group, strategy: InitStrategy) -> str | None:
    """Why ``strategy`` cannot widen ``group`` exactly by its granularity under it, or ``None``
    (:func:`resolve_constructions` refuses exactly these)."""
    try:
        resolve_constructions(
            {group.name: group}, {group.name: granularity_under(group, strategy.name)}, strategy
        )
    except WidenError as error:
        return str(error)
    return None


def _not_exact(group, init, want: str) -> str:
    exact = ", ".join(group.constructions) or "none"
    return (
        f"cannot widen group '{group.name}' with init={init!r}: {want} is not exact for it "
        f"(exact: {exact})" + _readers(group) + "; use init='paper' to get its own construction "
        f"({group.construction})"
    )


def _readers(group) -> str:
    return f" [{'; '.join(group.requirements)}]" if group.requirements else ""


def fill_free_columns(
    view: torch.Tensor,
    col_inserts,
    consumer: ConsumerRef,
    constructions: Mapping[str, str],
    generator: torch.Generator | None,
) -> None:
    """Random new columns where ``consumer`` reads zero new entries (a padded norm's output).

    ``view`` is the weight rows first ``(out, in, *rest)``; the draw's std is the std of its old
    columns.
    """
    mine = [
        (at, i) for at, i in slots(col_inserts) if constructions.get(i.group) in consumer.zero_input
    ]
    if not mine or view.device.type == "meta":  # a meta copy (cost preview) has no values
        return
    old = view.index_select(1, kept_index(consumer.index_map.size, col_inserts, view.device))
    std = float(old.std()) if old.numel() > 1 else 0.0
    for at, ins in mine:
        normal_(view.narrow(1, at, ins.count), std or 0.02, generator)


_FIRST = frozenset({"exp_avg", "momentum_buffer", "grad_avg", "exp_inf"})
_SECOND = frozenset({"exp_avg_sq", "max_exp_avg_sq", "square_avg", "sum"})


def scaled_state(
    state: Mapping[str, torch.Tensor], factor: float, optimizer: torch.optim.Optimizer, name: str
) -> dict[str, torch.Tensor]:
    """Optimizer state of a parameter whose gradient scales by ``factor`` (a rescaled norm
    weight): first moments times ``factor``, second moments times ``factor ** 2``.

    Raises:
        WidenError: a state tensor of unknown meaning (cannot be rescaled faithfully).
    """
    out = {}
    for key, value in state.items():
        if key in _FIRST:
            out[key] = value * factor
        elif key in _SECOND:
            out[key] = value * factor**2
        else:
            raise WidenError(
                f"optimizer state '{key}' of '{name}' ({type(optimizer).__name__}) has no known "
                f"rescaling: the padding scales this norm weight by {1 / factor:.6g} and its "
                "gradient by its inverse; use init='tile' (nothing rescaled) or an optimizer "
                "among Adam, AdamW, SGD, RMSprop, Adagrad"
            )
    return out


def norm_scale(width: int, k: int) -> float:
    """``sqrt(s)``, ``s = C / (C + k)``: a padded norm's weight factor."""
    return math.sqrt(width / (width + k))


def layer_scale_fill(scale: torch.Tensor) -> torch.Tensor:
    """A layer scale's new entry: the mean of its old entries (1 where that is 0), 0-dim."""
    mean = scale.detach().mean()
    return torch.where(mean != 0, mean, torch.ones_like(mean))


def weight_rows_by_scale(
    staged: dict[str, torch.Tensor], row_axes, rows, old_out: int, scale: torch.Tensor, name: str
) -> None:
    """Mean-padding through a layer scale ``gamma``: the producer's new rows (weight and bias,
    already staged) become ``mean_c(gamma_c row_c) / gamma_new``, so ``gamma_new * row_new`` is
    the mean of the scaled old channels."""
    values = scale.detach().flatten()
    if values.numel() != old_out:
        raise WidenError(
            f"the layer scale of '{name}' holds {values.numel()} entries for its {old_out} "
            "channels; widen with init='tile'"
        )
    fill = layer_scale_fill(scale)
    kept = kept_index(old_out, rows)
    for axis in row_axes:
        if axis.tensor not in staged:
            continue
        view = staged[axis.tensor].movedim(axis.dim, 0)
        old = view.index_select(0, kept.to(view.device))
        weights = values.to(old.dtype).view(-1, *[1] * (old.dim() - 1))
        row = (old * weights).mean(0) / fill.to(old.dtype)
        for at, ins in slots(rows):
            view.narrow(0, at, ins.count).copy_(row.expand_as(view.narrow(0, at, ins.count)))
