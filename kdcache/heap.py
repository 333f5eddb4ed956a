"""Keep the C heap from growing with the number of images decoded (glibc only; a no-op elsewhere).

Why: decoding a folder of variable-size JPEGs makes Pillow/libjpeg malloc and free a buffer of a
different size for every file (57 KB to 400 KB here). glibc serves a buffer above its mmap
threshold (128 KB) with mmap, but raises that threshold to the size of each such buffer freed
(the "dynamic" threshold, up to 32 MB), so after the first few images every decode buffer comes
from the main heap. Freed there, between small long-lived allocations, the holes are rarely the
right size for the next file and the heap is never trimmed: peak RSS of a dump grew by about
25 KB per image (944 MB at 1,600 images, 1,062 MB at 6,400; tracemalloc saw no Python growth),
and with ``MALLOC_MMAP_THRESHOLD_=65536`` it stayed flat. ``limit_heap_growth`` sets the same
threshold from inside the process (``mallopt(M_MMAP_THRESHOLD)``, which also turns the dynamic
threshold off), so every decode buffer is mmapped and returned to the OS when freed, whatever
the environment. A threshold the user set with ``MALLOC_MMAP_THRESHOLD_`` is left alone, as is
any libc without glibc's ``mallopt`` (macOS, musl): there it does nothing and returns False.

``KDCACHE_HEAP=default`` turns it off (for A/B measurements: benchmarks/memory.py).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import Any

M_MMAP_THRESHOLD = -3  # glibc malloc.h
MMAP_THRESHOLD = 64 * 1024  # bytes: what fixed the measured growth (MALLOC_MMAP_THRESHOLD_=65536)
ENV_OFF = "KDCACHE_HEAP"  # "default": leave the allocator as it is

_applied: bool | None = None  # this process's result; a forked worker inherits it with the allocator's settings


def _glibc() -> Any:
    """The process's glibc as a ctypes library with ``mallopt`` and ``malloc_trim``, or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the libc this process already uses
        if not hasattr(libc, "gnu_get_libc_version"):  # musl and others: not glibc's allocator
            return None
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
        return libc
    except (OSError, AttributeError):
        return None


def limit_heap_growth() -> bool:
    """Serve allocations above 64 KB with mmap in this process, so freed decode buffers go back to the OS.

    Idempotent and cheap after the first call, so it can sit on the decode path: a process applies
    it once; a forked DataLoader worker inherits both the setting and the answer, a spawned one
    applies it on its own first call. Returns whether the threshold is set: False without glibc,
    when ``KDCACHE_HEAP=default``, when the user set ``MALLOC_MMAP_THRESHOLD_`` themselves, or when
    mallopt refuses.
    """
    global _applied
    if _applied is not None:
        return _applied
    ok = False
    if os.environ.get(ENV_OFF, "") != "default" and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        libc = _glibc()
        if libc is not None:
            try:
                ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            except (OSError, AttributeError, ctypes.ArgumentError):
                ok = False
    _applied = ok
    return ok


def trim_heap() -> bool:
    """Return the heap's free pages to the OS now (glibc ``malloc_trim(0)``); False where there is none."""
    libc = _glibc()
    if libc is None:
        return False
    try:
        return libc.malloc_trim(0) == 1
    except (OSError, AttributeError, ctypes.ArgumentError):
        return False
