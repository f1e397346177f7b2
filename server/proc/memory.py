"""Keep freed memory in the process: the workers move large buffers every turn.

The connect and logic processes allocate and free the same large objects
over and over: a read of a client (up to 256 KiB), a code popped from a
queue (up to a quarter of it), a client's output.  glibc's defaults serve
a block over 128 KiB with its own ``mmap`` and give it back at ``free``,
and give the top of the heap back (``brk``) once 128 KiB of it are free.
Either way the next allocation takes fresh pages from the kernel, which
faults and zeroes every one: measured here, 64 faults per 192 KiB
allocated and freed, and the connect process spent most of a 16 KiB
echo's time in them (``tools.bench_server``, 10x4x16KiB: 37k requests/s
before, 106k after).

``keep_freed_memory`` raises both thresholds, so that a worker keeps up to
``TRIM_THRESHOLD`` bytes of freed heap for its next allocations and maps
only blocks over ``MMAP_THRESHOLD`` on their own.  The price is memory
that stays with the process after a peak, bounded by those figures.
Only glibc has ``mallopt``; elsewhere this does nothing and says so.
"""

from __future__ import annotations

import ctypes
import logging
import platform

log = logging.getLogger("server")

# glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 64 << 20  # freed heap a worker keeps (its queues' size is the scale)
MMAP_THRESHOLD = 8 << 20  # larger blocks are mapped on their own (and given back at once)


def keep_freed_memory() -> bool:
    """Set this process's malloc thresholds (see the module docstring);
    False where that is not possible (not glibc, or it refused)."""
    if platform.libc_ver()[0] != "glibc":
        log.debug("not glibc: the malloc thresholds stay as they are")
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and ok
    if not ok:
        log.warning("glibc refused the malloc thresholds: large buffers will cost page faults")
    return ok
