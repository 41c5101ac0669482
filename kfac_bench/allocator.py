"""Keep freed memory in the process instead of handing it back to the OS (glibc ``mallopt``).

torch's CPU tensors come from ``malloc``. glibc serves blocks above its mmap threshold (dynamic,
128 KiB at start, at most 32 MiB) with a fresh ``mmap`` and unmaps them when freed, and trims the
heap top above 128 KiB, so every large temporary of an update (a (640, 32, 20, 20) conv
activation is 32.8 MB; its gradients, the float observations, the patch rows of a layer's
statistic) is page-faulted in again on its next use: ~90 000 minor faults and ~0.2 s of kernel
time per Nature-CNN ACKTR update at B = 640 on the 2-core CI machine, where A2C's 80-row batches
stay mostly below the threshold.

:func:`keep_freed_memory` turns mmap'd blocks off (``M_MMAP_MAX`` = 0: every block comes from
the heap) and stops trimming, so freed blocks are reused without faults. Raising the threshold to
its 32 MiB ceiling instead (this module until 2026-12-07) still mapped every larger block afresh
whenever the heap held no free chunk that size, which depended on the heap's layout: the Nature
fc layer's 3137² A statistic (39.4 MB) cost 9 612 faults in some updates at B = 320 and none in
others (``tests/test_process_settings.py`` swung between 0.03 and 0.57 of glibc's defaults).
Allocations larger than a thread arena can hold (64 MiB) fall back to the main heap, and glibc
still maps memory when the heap cannot grow. Reuse is glibc's choice, not a guarantee: 2.36's
``posix_memalign`` (torch's allocation) places a lone 39 MB block freed and asked for again
higher up the heap, faulting it in again; in an update's mix of blocks the freed chunks are
reused (0–17 faults per update from the second on, Nature CNN at B = 320). The cost is resident
memory held at its peak, which a training process reaches every update anyway (+2–3 % maximum
RSS against the 32 MiB threshold). ``MALLOC_MMAP_MAX_=0`` / ``MALLOC_TRIM_THRESHOLD_`` in the
environment do the same at start-up; this is the in-process equivalent, a no-op off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: ~2 GiB of free heap top before trimming


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc's mmap count and trim threshold once per process (module docstring); True when
    glibc accepted both, False elsewhere (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
