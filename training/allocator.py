"""Keep freed memory in the training process instead of handing it back to the kernel after every step.

Why (docs/BENCH.md "Training step: batch 1 vs batch 2"): torch's CPU tensors come from glibc malloc. With its
default, adaptive settings, a block larger than the mmap threshold is mapped fresh and unmapped on free, and free
memory at the top of the heap is trimmed back to the kernel. A training step allocates and frees the same
multi-megabyte activations every iteration, so it can pay a page fault (a zeroed 4 KiB page) for every page of
them, every step. Measured on pointpillars_tiny: batch 1 settled at 0 minor faults per step, batch 2 (in most runs:
it depends on the heap's layout) at 2,400-5,100 per sample, and the kernels that first touch those pages (fill_,
ReLU and its backward, batch norm) ran 3-20x slower per sample: batch 2 trained fewer samples per second.

The fix is two glibc settings, made once per process (inherited by forked DataLoader workers):
  M_MMAP_THRESHOLD = 32 MiB (glibc's maximum): blocks up to that size come from the heap and are re-used;
  M_TRIM_THRESHOLD = 1 GiB: free heap memory is kept for the next step instead of being trimmed.
Setting either also turns glibc's adaptive thresholds off. The cost is that the process keeps its peak heap (what
a training loop needs again at the next step anyway). Numbers are unchanged: only where memory comes from.

Nothing is changed when the user sets MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ (their own tuning wins) or
CLEAN_ROS_DEFAULT_MALLOC=1 (glibc's adaptive behaviour as it is, e.g. for a before/after benchmark). Other C
libraries (macOS, musl) have no mallopt: nothing is changed there.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from typing import NamedTuple

# glibc's mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc refuses more on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
OPT_OUT = "CLEAN_ROS_DEFAULT_MALLOC"


class AllocatorSetting(NamedTuple):
    applied: bool
    reason: str  # what was done, or why nothing was (one line for the log)


_applied: AllocatorSetting | None = None


def retain_freed_memory() -> AllocatorSetting:
    """Apply the two glibc settings above to this process (once; later calls return the first outcome)."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> AllocatorSetting:
    if os.environ.get(OPT_OUT, "") == "1":
        return AllocatorSetting(False, f"malloc left to glibc's defaults ({OPT_OUT}=1)")
    user = [name for name in USER_SETTINGS if name in os.environ]
    if user:
        return AllocatorSetting(False, f"malloc left as set by {', '.join(user)}")
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return AllocatorSetting(False, "malloc unchanged (not glibc)")
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return AllocatorSetting(False, "malloc unchanged (mallopt not found)")
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    if not ok:
        return AllocatorSetting(False, "malloc unchanged (mallopt refused the settings)")
    return AllocatorSetting(True, f"malloc keeps freed memory (mmap threshold {MMAP_THRESHOLD_BYTES >> 20} MiB, "
                                  f"trim threshold {TRIM_THRESHOLD_BYTES >> 20} MiB)")


__all__ = ["AllocatorSetting", "retain_freed_memory"]
