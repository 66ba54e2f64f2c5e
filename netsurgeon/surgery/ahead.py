"""The paper's Kaiming rows drawn on a second thread while the staging grows the next tensors.

A CPU widening spends about a third of its staging drawing normals (PyTorch draws them serially)
and most of the rest allocating and copying. With ``init="paper"`` each layer's new rows are one
draw written into that layer's new weight, which nothing else reads before the commit; so a
layer's ``fill_rows`` can run on one worker thread while the staging goes on with the next layer.
The worker runs the draws in submission order, which is the order the serial staging draws in,
and nothing else draws meanwhile: the values are those of the serial staging, bit for bit
(``tests/surgery/test_init_fast_paths.py`` compares them with the per-channel reference).

It pays where torch leaves a core idle: with one torch thread on two cores a resnet50 widening
took 15-19% less wall time and 10-16% more CPU time; with torch on every core the wall time was
the same (``docs/widen.md``). So the worker runs only when ``torch.get_num_threads()`` is below
the core count (:data:`ENABLED` overrides).

Only a *plain* layer's rows go ahead: no weight norm (its ``g`` reads the rows), no inner axes
(their heads are drawn too), no other drawn tensor, no handler hook that rewrites new units
(``Embedding``'s ``padding_idx``), no layer scale weighting the rows, no random columns for a
padded input. Before any other layer is staged, and at the end of the layers, every pending
draw is waited for; an error on the worker is raised there, before anything is committed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from netsurgeon.graph.axes import NormOf
from netsurgeon.graph.ops.base import LayerHandler
from netsurgeon.surgery.init import PaperInit

__all__ = ["ENABLED", "DrawAhead", "ahead_for", "draws_ahead"]

#: ``None``: draw ahead when torch leaves a core idle; ``True`` / ``False``: always / never
ENABLED: bool | None = None


class DrawAhead:
    """One worker thread running fills in submission order; :meth:`drain` waits for them all."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netsurgeon-draws")
        self._pending: list[Future] = []

    def submit(self, fill: Callable[[], None]) -> None:
        self._pending.append(self._pool.submit(fill))

    def drain(self) -> None:
        """Wait for every submitted fill; re-raise the first error."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()


@contextmanager
def draws_ahead(strategy: object, model: nn.Module) -> Iterator[DrawAhead | None]:
    """A :class:`DrawAhead` for the layers' staging when the plain paper init runs on a CPU model
    of a machine with more than one core, else ``None``. Every fill is done at the exit."""
    param = next(model.parameters(), None)
    idle = torch.get_num_threads() < (os.cpu_count() or 1)
    if (
        type(strategy) is not PaperInit
        or not (idle if ENABLED is None else ENABLED)
        or param is None
        or param.device.type != "cpu"
    ):
        yield None
        return
    ahead = DrawAhead()
    try:
        yield ahead
        ahead.drain()
    finally:
        ahead._pool.shutdown(wait=True)  # a failed staging still waits for the worker


def ahead_for(
    growth: Any, handler: Any, module: nn.Module, name: str, consumer: Any, rows: tuple
) -> Any:
    """The :class:`DrawAhead` that layer ``name``'s rows may go to, or ``None`` (then every
    pending draw is waited for first, so the serial order holds). ``rows``: the handler's row
    axes of ``module``."""
    ahead = growth.ahead
    if ahead is None:
        return None
    plain = (
        not any(isinstance(a.fill, NormOf) for a in rows)
        and all(a.fill is not None for a in rows[1:])
        and not getattr(handler, "inner_axes", lambda _: ())(module)
        and type(handler).fill_new_units is LayerHandler.fill_new_units
        and name not in growth.row_scales
        and (consumer is None or not consumer.zero_input)
    )
    if not plain:
        ahead.drain()
        return None
    return ahead
