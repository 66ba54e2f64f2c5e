"""Pin the C allocator's state while timing, so both sides of a ratio meet the same memory.

A CPU tensor's memory comes from ``malloc``. Whether an operation pays page faults for it depends
on what the process freed before, not on the operation: glibc reuses freed heap memory (no
faults), but returns large freed blocks to the kernel and maps fresh ones, whose pages fault on
first touch (a few microseconds per 4 KiB page on a VM, more than the copy itself). A
``copy.deepcopy`` timed in a loop gets the pages its predecessor freed; a widening allocates while
the old tensors are alive (a failed widening must change nothing), so under glibc's defaults it
usually faults while the deepcopy beside it does not, and their ratio compares two allocator
states. :func:`pin` sets one state for every operation instead:

* ``"warm"``: nothing is returned to the kernel (no ``mmap`` for large blocks, no trimming of the
  heap), so after a warm-up repetition every operation reuses memory: the ratio compares work.
* ``"cold"``: every block of 64 KiB or more is mapped fresh and unmapped when freed, so every
  operation faults all of its new memory, as the first copy of a model does.
* ``"as-is"``: glibc's defaults, whose thresholds move with the process's history.

One process takes them in :data:`STATES_IN_ORDER` only.

Only glibc is pinned (``mallopt`` through :mod:`ctypes`); elsewhere :func:`pin` returns ``False``
and the allocator is left as it is. :func:`faults` counts the minor page faults so far (the
benchmarks print them per operation, which shows which state each timing met).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import resource

__all__ = ["STATES", "STATES_IN_ORDER", "faults", "pin"]

STATES = ("warm", "cold", "as-is")
#: The order one process can take the states in: glibc cannot turn its dynamic thresholds back
#: on, and the heap memory a warm state keeps would serve a later "cold" one without faults.
STATES_IN_ORDER = ("as-is", "cold", "warm")

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_MMAP_MAX_DEFAULT = 65536
_SETTINGS = {
    "warm": ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 1 << 40)),
    "cold": (
        (_M_MMAP_MAX, _MMAP_MAX_DEFAULT),
        (_M_MMAP_THRESHOLD, 64 << 10),
        (_M_TRIM_THRESHOLD, 128 << 10),
    ),
}


def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def pin(state: str) -> bool:
    """Put the allocator in ``state`` (one of :data:`STATES`); ``False`` where it cannot be
    pinned (not glibc), then nothing changed. Freed memory the heap still holds is returned to
    the kernel first, so a ``"cold"`` state starts cold."""
    if state not in STATES:
        raise ValueError(f"allocator state must be one of {STATES}, got {state!r}")
    if state == "as-is":
        return True
    libc = _libc()
    if libc is None:
        return False
    for param, value in _SETTINGS[state]:
        if libc.mallopt(param, ctypes.c_int(min(value, 2**31 - 1))) != 1:
            raise OSError(f"mallopt({param}, {value}) failed")
    libc.malloc_trim(0)
    return True


def faults() -> int:
    """Minor page faults of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
