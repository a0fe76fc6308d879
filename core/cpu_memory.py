"""Keep freed memory inside the process on a Linux CPU, for train.py and eval.py.

PyTorch takes every CPU tensor from malloc. glibc serves big requests (above a threshold that
adapts up to 32 MB) with fresh pages from the kernel and hands them back on free, so a step that
allocates and frees gigabytes of logits, gradients and activations page-faults on every one of
those pages, every step. Raising glibc's mmap and trim thresholds keeps such blocks in the heap to
be reused: the same numbers come out faster, and the price is resident memory that stays near its
peak plus the heap's fragments (BENCHMARKS.md has the page faults, speed-ups and memory measured).
"""

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
KEEP_BELOW = 2 ** 31 - 1  # bytes: blocks up to 2 GB come from the heap and go back to it


def keep_freed_memory():
    """Apply it to this process; True if applied, False where malloc is not glibc's (nothing
    changes there: macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, KEEP_BELOW) == 1 and mallopt(M_TRIM_THRESHOLD, KEEP_BELOW) == 1
