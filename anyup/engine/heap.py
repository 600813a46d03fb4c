"""Returning freed heap memory to the operating system between the engine's stages.

glibc's ``malloc`` keeps freed blocks below its (dynamic) ``mmap`` threshold in the heap, and a
freed block can only serve an allocation that fits in it. A plan at a small cap allocates the
same sizes in every stage, but one stage's freed blocks are not always reused by the next: at
448² with a 64 MiB cap, 2 of 7 runs of the same call peaked 21 MB higher (1.41x the cap against
1.10x), and 1 of 6 with one worker. ``malloc_trim(0)`` hands the free pages of every arena back
(``madvise``), so the resident set follows the live tensors again; the engine calls it where one
stage's temporaries are dead and the next's not yet made. On other C libraries (macOS, musl,
Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

import torch


@functools.cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_memory(device: torch.device | None = None) -> bool:
    """Return the heap's free pages to the OS (glibc ``malloc_trim(0)``). True if it ran.

    ``device``: the device of the call's tensors; only a CPU call's temporaries live in the heap,
    so for any other device nothing is done.
    """
    trim = _malloc_trim()
    if trim is None or (device is not None and device.type != "cpu"):
        return False
    trim(0)
    return True
