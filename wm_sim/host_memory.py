"""Keep the memory torch frees inside the process, so imagined steps stop faulting it in again.

A batched imagined step on CPU allocates and frees its activations every step (about 100 MB at
batch 256 on reacher). With glibc's defaults, malloc serves large blocks with fresh mappings and
hands free memory at the top of its heap back to the OS, so a step faults its activations in
again, page by page: usually about 10,000 page faults per step at batch 256, 10-15 ms of a
110-ms step on the 2-core CPU the benchmarks run on (not always: glibc's adaptive thresholds
sometimes settle where it stops). Raising glibc's two thresholds keeps that memory mapped.
The price: the process keeps up to `RETAIN_BYTES` of freed memory instead of returning it.

This is a process-wide setting of the C allocator, so it is applied once, only where glibc is
the allocator, and not at all when the user tuned malloc themselves (the `MALLOC_*_` variables,
`GLIBC_TUNABLES`) or set `WM_SIM_RETAIN_MEMORY=0`.
"""

from __future__ import annotations

import ctypes
import functools
import os

RETAIN_BYTES = 256 * 2**20
OPT_OUT = "WM_SIM_RETAIN_MEMORY"
USER_TUNING = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


@functools.cache
def retain_freed_memory() -> bool:
    """Ask glibc to keep up to RETAIN_BYTES of freed memory mapped; True if it now does.

    Both thresholds are set together: setting either one alone turns off glibc's adaptive
    thresholds, and with the other left at its 128 KiB default every step faults even more.
    """
    if os.environ.get(OPT_OUT, "1") == "0" or any(name in os.environ for name in USER_TUNING):
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process runs on
    except OSError:
        return False
    # only glibc has gnu_get_libc_version: elsewhere mallopt is absent, or takes other parameters
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, RETAIN_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, RETAIN_BYTES))
