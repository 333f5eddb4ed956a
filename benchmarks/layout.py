"""Measure HDF5 layouts for /logits: chunk size, gzip on/off, chunk-cache size.

Writes a synthetic ImageNet-shaped float16 logit file per layout (rows scaled by
--rows) with cache.CacheWriter, then times one sequential pass and one pass in
shuffled chunk order (raw, one chunk per read call), and one shuffled epoch through
kdcache.cache.stream, each from a cold page cache (posix_fadvise DONTNEED on that
file only) and warm. Prints a table and writes JSON. Used to pick DEFAULT_CHUNK_BYTES;
the numbers are in docs/cache-format.md.

    .venv/bin/python -m benchmarks.layout --rows 200000 --out benchmarks/layout.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.synthetic import evict_page_cache, synthetic_attrs
from kdcache import cache
from kdcache.cache.stream import LogitStream, iter_batches


def write_file(path: Path, rows: int, classes: int, chunk_bytes: int, compression: str | None) -> int:
    chunk_rows = cache.schema.chunk_rows_for(classes * 2, rows, chunk_bytes)  # float16 rows
    g = np.random.default_rng(0)
    block = (g.standard_normal((chunk_rows * 4, classes)) * 3).astype(np.float16)
    if path.exists():
        path.unlink()
    layout = cache.CacheLayout(num_classes=classes, dtype="float16", chunk_rows=chunk_rows, compression=compression)
    w = cache.CacheWriter(path, layout, num_samples=rows, attrs=synthetic_attrs(rows, classes))
    with w:
        for start in range(0, rows, len(block)):
            stop = min(rows, start + len(block))
            n = stop - start
            w.write(start, block[:n], np.zeros(n, np.int64), np.arange(start, stop), np.zeros(n, np.uint64))
    return chunk_rows


def read_pass(path: Path, chunk_rows: int, order: np.ndarray, rdcc_nbytes: int | None) -> float:
    with cache.open_cache(path, rdcc_nbytes=rdcc_nbytes) as c:
        n = len(c)
        t0 = time.perf_counter()
        for b in order:
            c.read_span(int(b) * chunk_rows, min(n, (int(b) + 1) * chunk_rows))
        return time.perf_counter() - t0


def reader_pass(path: Path, epoch: int) -> float:
    """One shuffled epoch through kdcache.cache.stream (blocks = chunks, 16-block buffer, prefetch)."""
    stream = LogitStream(path, seed=0)
    stream.set_epoch(epoch)
    t0 = time.perf_counter()
    for _ in iter_batches(stream, 256):
        pass
    stream.close()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default="/tmp/kdcache-layout")
    ap.add_argument("--out", default="benchmarks/layout.json")
    args = ap.parse_args()
    layouts = [(256 << 10, None), (1 << 20, None), (4 << 20, None), (16 << 20, None), (1 << 20, "gzip")]
    rows_out = []
    for chunk_bytes, comp in layouts:
        path = Path(args.dir) / f"c{chunk_bytes >> 10}k-{comp or 'raw'}.h5"
        path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        chunk_rows = write_file(path, args.rows, args.classes, chunk_bytes, comp)
        write_s = time.perf_counter() - t0
        nblocks = -(-args.rows // chunk_rows)
        res = {"chunk_kib": chunk_bytes >> 10, "compression": comp or "none", "chunk_rows": chunk_rows,
               "file_mb": path.stat().st_size / 1e6, "write_s": write_s}
        for rdcc in (None, 0):
            for cold in (True, False):
                seq, shuf, reader = [], [], []
                for r in range(args.repeats):
                    order = np.random.default_rng(r).permutation(nblocks)
                    passes = [("seq", lambda: read_pass(path, chunk_rows, np.arange(nblocks), rdcc), seq),
                              ("shuf", lambda: read_pass(path, chunk_rows, order, rdcc), shuf)]
                    if rdcc == 0:  # the reader opens its files with rdcc_nbytes=0
                        passes.append(("reader", lambda: reader_pass(path, r), reader))
                    for kind, fn, acc in passes:
                        if cold:
                            evict_page_cache(path)
                        elif r == 0 and kind == "seq":
                            fn()  # warm up
                        acc.append(fn())
                tag = f"{'cold' if cold else 'warm'}_rdcc{'default' if rdcc is None else rdcc}"
                mb = args.rows * args.classes * 2 / 1e6
                res[f"{tag}_seq_MBps"] = mb / statistics.median(seq)
                res[f"{tag}_shuf_MBps"] = mb / statistics.median(shuf)
                if reader:
                    res[f"{'cold' if cold else 'warm'}_reader_MBps"] = mb / statistics.median(reader)
        rows_out.append(res)
        print(json.dumps(res), flush=True)
        path.unlink()
    Path(args.out).write_text(json.dumps({"rows": args.rows, "classes": args.classes, "results": rows_out}, indent=2) + "\n")


if __name__ == "__main__":
    main()
