"""Keep the C heap from growing with the number of images decoded (glibc only; a no-op elsewhere).

Why: decoding a folder of variable-size JPEGs makes Pillow and libjpeg malloc and free buffers of a
different size for every file, next to torch's tensors. glibc serves a request above its mmap
threshold (128 KB at start) with mmap, but raises the threshold to the size of every mmapped chunk
freed (up to 32 MB), so soon every decode buffer comes from the heap; freed there, among live
allocations, the holes rarely fit the next file's buffers and are not returned to the OS. Issue 23
measured a dump's peak RSS growing by ~25 KB an image (944 MB at 1,600 images, 1,062 MB at 6,400;
tracemalloc: no Python growth) and staying flat with ``MALLOC_MMAP_THRESHOLD_=65536``.
``limit_heap_growth`` sets that threshold from inside the process (``mallopt(M_MMAP_THRESHOLD)``,
which also stops the threshold from rising), so buffers above 64 KB are mmapped and unmapped when
freed. The cost: every such allocation in the process (torch's too) is a fresh mapping, more
system time per image (benchmarks/memory.json). A threshold the user set with
``MALLOC_MMAP_THRESHOLD_`` is left alone, as is any libc without glibc's ``mallopt`` (macOS, musl).

``KDCACHE_HEAP=default`` turns it off (the A/B of benchmarks/memory.py).
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
