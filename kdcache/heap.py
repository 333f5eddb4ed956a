"""Optionally keep the C heap from growing with the number of images decoded (glibc only; a no-op elsewhere).

Why it exists: decoding a folder of variable-size JPEGs makes Pillow and libjpeg malloc and free
buffers of a different size for every file, next to torch's tensors. glibc serves a request above
its mmap threshold (128 KB at start) with mmap, but raises the threshold to the size of every
mmapped chunk freed (up to 32 MB), so soon every decode buffer comes from the heap, where freed
holes may not be returned to the OS. Issue 23 saw a dump's peak RSS grow ~25 KB an image (944 MB
at 1,600 images, 1,062 MB at 6,400) and stay flat with ``MALLOC_MMAP_THRESHOLD_=65536``.

Why it is off by default: it costs more than the speed budget (1.05x) allows. benchmarks/memory-tiny.json
(the issue's setting: a tiny teacher, 120-320 px JPEGs, S=160, B=100, 1,600 vs 6,400 images, 3
runs each): with 0 workers the default allocator's peak did not grow (1,087-1,156 vs 1,115-1,189
MB), and 64 KB lowered it to 1,030/1,034 MB but made the decode-bound dump 1.50x as slow (256 KB
and 1 MB: 1.35x; every large tensor becomes a fresh mapping whose pages fault in again). With 2
workers the default's main process, which decodes nothing, does vary and grow (1,094-1,270 vs
1,225-1,635 MB); a threshold in every process holds it at ~1,030 MB, at 1.33-1.44x. A student
epoch at 0 workers (benchmarks/memory-student.json, 400 vs 1,600 images) grew +60 MB by default and
+1 MB with 64 KB: the memory target is not met by default there either; the trade-off is open.
So it is opt-in: ``KDCACHE_HEAP=limit`` sets 64 KB in each process that decodes or
lists a folder (``mallopt(M_MMAP_THRESHOLD)``, which also stops the threshold from rising). A
threshold the user set with ``MALLOC_MMAP_THRESHOLD_`` (the same thing, from process start) is left
alone, as is any libc without glibc's ``mallopt`` (macOS, musl).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import Any

M_MMAP_THRESHOLD = -3  # glibc malloc.h
MMAP_THRESHOLD = 64 * 1024  # bytes: what fixed the measured growth (MALLOC_MMAP_THRESHOLD_=65536)
ENV = "KDCACHE_HEAP"  # "limit": set the threshold; unset or anything else ("default"): leave the allocator as it is
ENV_ON = "limit"

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
    """With ``KDCACHE_HEAP=limit``: serve allocations above 64 KB with mmap in this process, so freed
    decode buffers go back to the OS (the module docstring says why this is not the default).

    Idempotent and cheap after the first call, so it can sit on the decode path: a process applies
    it once; a forked DataLoader worker inherits both the setting and the answer, a spawned one
    applies it on its own first call. Returns whether the threshold is set: False unless
    ``KDCACHE_HEAP=limit``, without glibc, when the user set ``MALLOC_MMAP_THRESHOLD_`` themselves,
    or when mallopt refuses.
    """
    global _applied
    if _applied is not None:
        return _applied
    ok = False
    if os.environ.get(ENV, "") == ENV_ON and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
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
