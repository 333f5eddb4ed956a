"""One out-of-core read pass over a cache, in its own process so that its peak RSS is its own.

    python -m benchmarks.ooc PATH --order shuffled|sequential [--cold] [--epoch E] [--batch-size B]

``shuffled`` is the reader train-student uses (kdcache.cache.stream: shuffled chunk-aligned blocks,
rows shuffled in a buffer, cut into batches); ``sequential`` reads /logits once in file
order, 16 chunks per call into a reused buffer, the fastest plain way we measured. ``--cold`` first drops
the file from the OS page cache (posix_fadvise DONTNEED on this file only), so the pass
reads from disk as it would for a file bigger than RAM. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch

from benchmarks.synthetic import evict_page_cache
from kdcache import cache
from kdcache.cache.stream import LogitStream, iter_batches


def sequential_pass(path: str, chunks_per_read: int = 16) -> int:
    """The baseline: /logits in file order, 16 chunks per read call into one reused buffer
    (the reader's buffer size). Measured faster than one chunk per call or 64 per call."""
    with cache.open_cache(path, rdcc_nbytes=0) as c:
        n, step = len(c), c.chunk_rows * chunks_per_read
        buf = np.empty((step, c.num_classes), dtype=c.dtype)
        for start in range(0, n, step):
            stop = min(n, start + step)
            c.read_span(start, stop, out=buf[:stop - start])
    return n


def shuffled_pass(path: str, epoch: int, batch_size: int, workers: int) -> int:
    stream = LogitStream(path, seed=0)
    stream.set_epoch(epoch)
    n = 0
    for values, logits in iter_batches(stream, batch_size, workers):
        n += len(values)
    stream.close()
    return n


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries that over from the
    parent across fork+exec, so a child of a big benchmark process would report the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--order", choices=["shuffled", "sequential"], required=True)
    ap.add_argument("--cold", action="store_true")
    ap.add_argument("--epoch", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    base_rss = peak_rss_mb()  # python + torch + h5py imported, nothing read yet
    if args.cold:
        evict_page_cache(args.path)
    t0 = time.perf_counter()
    if args.order == "sequential":
        rows = sequential_pass(args.path)
    else:
        rows = shuffled_pass(args.path, args.epoch, args.batch_size, args.workers)
    seconds = time.perf_counter() - t0
    peak = peak_rss_mb()  # workers (--workers > 0) are separate processes: not included
    print(json.dumps({"order": args.order, "cold": args.cold, "rows": rows, "seconds": seconds,
                      "peak_rss_mb": peak, "import_rss_mb": base_rss}))


if __name__ == "__main__":
    main()
