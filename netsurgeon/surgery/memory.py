"""Memory for a widening: large new CPU tensors on transparent huge pages (Linux), and one
reused scratch buffer for the random draws.

A widening writes every grown tensor into new memory (the old tensors stay intact until the
commit, so a failure changes nothing). On CPU, new memory from the operating system costs one
page fault per 4 KiB page at its first write: for resnet50 widened by 25% that is ~37,000 faults,
about half of the whole widening (``benchmarks/bench_widen.py``). :func:`empty` asks the kernel to
back the 2 MiB-aligned inside of a large tensor with transparent huge pages (``madvise`` with
``MADV_HUGEPAGE``; 512 times fewer faults), which the kernel honours in its ``madvise`` and
``always`` modes. It is advice: the values are the same whether or not it is taken, and nothing
outside the tensor's own whole huge pages is advised. Elsewhere (other systems, other devices,
small tensors) :func:`empty` is ``torch.empty``.

The init strategies draw each layer's new rows into a temporary before placing them; inside
:func:`scratch_space` (one widening's staging) :func:`scratch` hands out views of one buffer that
grows to the largest draw, instead of a new temporary per layer whose freed memory the next grown
tensor takes, so that the next temporary faults in fresh pages again.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache

import torch

__all__ = ["HUGE_PAGE", "empty", "scratch", "scratch_space"]

HUGE_PAGE = 1 << 21  # bytes in a transparent huge page (x86-64, arm64 with 4 KiB pages)
_MIN_BYTES = HUGE_PAGE  # a smaller tensor holds no whole huge page
_MADV_HUGEPAGE = 14
_BUFFERS: ContextVar[dict[tuple[torch.dtype, torch.device], torch.Tensor] | None] = ContextVar(
    "netsurgeon_scratch", default=None
)


def empty(
    shape: Sequence[int],
    *,
    dtype: torch.dtype,
    device: torch.device,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """``torch.empty``, with a large CPU tensor's whole huge pages advised as such (Linux)."""
    new = torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)
    nbytes = new.numel() * new.element_size()
    if nbytes >= _MIN_BYTES and new.device.type == "cpu":
        _advise_huge(new.data_ptr(), nbytes)
    return new


def _advise_huge(address: int, nbytes: int) -> None:
    """``madvise(MADV_HUGEPAGE)`` on the whole huge pages inside ``[address, address + nbytes)``;
    a refusal (old kernel, THP disabled) is ignored: the memory stays as it was."""
    madvise = _madvise()
    if madvise is None:
        return
    start = -(-address // HUGE_PAGE) * HUGE_PAGE
    stop = (address + nbytes) // HUGE_PAGE * HUGE_PAGE
    if stop > start:
        madvise(start, stop - start, _MADV_HUGEPAGE)


@cache
def _madvise():
    """libc's ``madvise`` on Linux, else ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


@contextmanager
def scratch_space() -> Iterator[None]:
    """Within it, :func:`scratch` reuses one buffer per dtype and device (freed at the exit)."""
    token = _BUFFERS.set({})
    try:
        yield
    finally:
        _BUFFERS.reset(token)


def scratch(shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised contiguous tensor of ``shape`` with ``like``'s dtype and device.

    Inside :func:`scratch_space` it is a view of a shared buffer, overwritten by the next call:
    use it before asking for another. Outside, a new tensor.

    Example:
        >>> import torch
        >>> with scratch_space():
        ...     a = scratch((2, 3), torch.zeros(1))
        ...     b = scratch((3,), torch.zeros(1))
        >>> a.shape, b.data_ptr() == a.data_ptr()
        (torch.Size([2, 3]), True)
    """
    buffers = _BUFFERS.get()
    if buffers is None:
        return like.new_empty(shape)
    key = (like.dtype, like.device)
    numel = 1
    for n in shape:
        numel *= n
    buffer = buffers.get(key)
    if buffer is None or buffer.numel() < numel:
        buffer = buffers[key] = empty((numel,), dtype=like.dtype, device=like.device)
    return buffer[:numel].view(shape)
