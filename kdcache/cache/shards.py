"""Sharded dumps: every rank writes its rows to a shard file, then one process assembles the cache.

Nobody writes one HDF5 file from many processes: the pip wheels have no MPI-parallel HDF5, and
serial HDF5 refuses concurrent writers. So, like TinyViT's per-rank logit files, each rank
writes its own file next to the output ``OUT``::

    .OUT.shard-R-of-W.h5     rank R's contiguous rows, written by CacheWriter (temp file + rename)

in the cache's own layout but with ``format = "kdcache-shard"`` (never opened as a cache)
and attributes saying what it covers (``SHARD_ATTRS``). When every rank is done, rank 0
copies the shards, in row order, into ``OUT`` with the same CacheWriter and attributes a
one-process dump uses, re-reads the result (every chunk checksum and the content hash)
and removes the shards.

Resuming: a re-run of the same command keeps every shard that is complete and valid —
format and ``complete`` marker, same dump request, world size, rows, batch size and
device kind, every chunk checksum and the content hash — and redoes the others. A shard
that fails a checksum is redone; a valid shard made by another dump (another teacher,
data or settings) is refused, never mixed in: ``--overwrite`` discards it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from kdcache.cache import CacheLayout, CacheWriter, LogitCache, open_cache
from kdcache.cache.schema import SHARD_FORMAT
from kdcache.cache.targets import TopK
from kdcache.dist import DistContext, rank_share
from kdcache.errors import CacheError
from kdcache.files import check_free_space

# Root attributes a shard carries besides a cache's own (docs/cache-format.md, "Shards").
SHARD_ATTRS: dict[str, str] = {
    "shard_rank": "rank that wrote the shard",
    "shard_world_size": "number of ranks of the dump",
    "shard_row_start": "first row of the cache the shard holds",
    "shard_row_stop": "one past its last row",
    "shard_request": "JSON: the dump request, world size, rows, batch size and device kind",
    "shard_request_sha256": "SHA-256 of shard_request (sorted-key JSON)",
}
WriteRows = Callable[[CacheWriter, range], Any]  # writes rows ``range`` of the data at writer rows 0..len-1


@dataclass(frozen=True)
class ShardPlan:
    """How a distributed dump is cut into shards, and what their values depend on besides the ranks.

    ``num_rows`` rows are cut at ``batch_size`` boundaries (row_ranges); ``request`` (the dump's own
    request: teacher, data, settings) and ``device_type`` go into every shard's ``shard_request``, so a
    shard is reused only by the same dump on the same kind of device.
    """

    num_rows: int
    batch_size: int
    request: Mapping[str, Any]
    device_type: str


def row_ranges(num_rows: int, batch_size: int, world_size: int) -> list[range]:
    """Each rank's contiguous rows: whole batches of a one-process dump, shares differing by at most one batch.

    Cutting at batch boundaries means every rank runs the teacher on exactly the batches a
    one-process dump with the same ``batch_size`` runs, which is what makes the values equal
    bit for bit on the same hardware (see dump.py). Ranks past the last batch get no rows.
    """
    batches = range(-(-num_rows // batch_size))
    out = []
    for r in range(world_size):
        mine = rank_share(batches, r, world_size)  # the one partition rule (kdcache.dist)
        out.append(range(min(mine.start * batch_size, num_rows), min(mine.stop * batch_size, num_rows)))
    return out


def shard_path(out: str | os.PathLike, rank: int, world_size: int) -> Path:
    """Rank ``rank``'s shard of ``out``: hidden, in the same folder (same filesystem as the output)."""
    out = Path(out)
    return out.with_name(f".{out.name}.shard-{rank}-of-{world_size}.h5")


def shard_request(request: Mapping[str, Any], *, world_size: int, rows: range, batch_size: int,
                  device_type: str) -> dict[str, Any]:
    """What a shard's values depend on: the dump request, plus how it was cut and computed."""
    return {"dump": dict(request), "world_size": world_size, "rows": [rows.start, rows.stop],
            "batch_size": batch_size, "device": device_type}


def request_sha256(request: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _differences(have: Mapping[str, Any], want: Mapping[str, Any]) -> str:
    """'key there X, here Y' for the first differing entries (dump request keys first)."""
    have, want = _plain(have), _plain(want)
    flat = lambda d: {**{f"{k}": v for k, v in d.get("dump", {}).items()},  # noqa: E731
                      **{k: v for k, v in d.items() if k != "dump"}}
    h, w = flat(have), flat(want)
    diffs = [k for k in w if h.get(k) != w.get(k)] + [k for k in h if k not in w]
    show = lambda v: (v[:12] + "...") if isinstance(v, str) and len(v) > 16 else v  # noqa: E731
    return ", ".join(f"{k} {show(h.get(k))!r} there, {show(w.get(k))!r} here" for k in diffs[:2]) or "different request"


def inspect_shard(path: Path, request: Mapping[str, Any]) -> tuple[str, str]:
    """``(state, reason)``: state is "missing", "valid", "damaged" (unreadable, checksum or content) or "stale"."""
    if not path.exists():
        return "missing", ""
    try:
        with LogitCache(path, file_format=SHARD_FORMAT) as c:
            attrs = c.meta.attrs
            if attrs.get("shard_request_sha256") != request_sha256(request):
                try:
                    have = json.loads(attrs.get("shard_request", "{}"))
                except ValueError:
                    have = {}
                return "stale", _differences(have, request)
            scan = c.scan()
            if scan.content_sha256 is None or scan.content_sha256 != c.meta.content_sha256:
                return "damaged", "a chunk fails its checksum or the content hash differs"
    except CacheError as e:
        return "damaged", str(e)
    return "valid", ""


def prepare_shard(path: Path, request: Mapping[str, Any], overwrite: bool) -> bool:
    """True when ``path`` already holds this shard (skip it); else make room for writing it.

    A damaged shard is removed and redone. A valid shard of another dump is refused
    (CacheError) unless ``overwrite``, which removes it.
    """
    state, reason = inspect_shard(path, request)
    if state == "valid":
        return True
    if state == "stale" and not overwrite:
        raise CacheError(f"{path} is a shard left by another dump ({reason}); it is never mixed in: pass "
                         "--overwrite to discard it, or delete it")
    if state != "missing":
        path.unlink()
    return False


def shard_attrs(attrs: Mapping[str, Any], request: Mapping[str, Any], rank: int, world_size: int,
                rows: range) -> dict[str, Any]:
    """A cache's attributes plus SHARD_ATTRS."""
    return {**attrs, "shard_rank": rank, "shard_world_size": world_size, "shard_row_start": rows.start,
            "shard_row_stop": rows.stop, "shard_request": json.dumps(_plain(request), sort_keys=True),
            "shard_request_sha256": request_sha256(request)}


def _hits(targets: Any, labels: np.ndarray) -> int:
    """How many (row, view) top-1 classes equal the row's label (an unlabelled row's -1 never does)."""
    classes = targets.classes[..., 0] if isinstance(targets, TopK) else np.asarray(targets).argmax(-1)  # (n, [V])
    return int((classes == labels.reshape(-1, *([1] * (classes.ndim - 1)))).sum())


def assemble(out: Path, parts: list[Path], num_rows: int, layout: CacheLayout,
             attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Copy shards ``parts`` (in row order) into the cache ``out``, then re-read it whole. Returns counts and time.

    ``layout`` and ``attrs`` are those of a one-process dump, so the result has the same layout and
    attributes. Every shard chunk is checksum-verified as it is read; the finished cache is scanned
    before it counts.
    """
    t0 = time.perf_counter()
    agree = 0
    with contextlib.ExitStack() as stack:
        shards = [stack.enter_context(LogitCache(p, file_format=SHARD_FORMAT)) for p in parts]
        _check_coverage(shards, num_rows)
        with CacheWriter(out, layout, num_samples=num_rows, attrs=attrs, overwrite=True) as w:
            for c in shards:
                first, views = int(c.meta.attrs["shard_row_start"]), c.meta.has_views
                labels, indices, ids = c.labels, c.indices, c.sample_ids
                for s in range(0, len(c), c.chunk_rows):
                    e = min(s + c.chunk_rows, len(c))
                    targets = c.read_span(s, e)
                    stored = c.read_codes(s, e) if c.meta.targets == "lowrank" else targets  # codes copied as they are
                    w.write(first + s, stored, labels[s:e], indices[s:e], ids[s:e],
                            view_params=c.read_view_params(slice(s, e)) if views else None)
                    agree += _hits(targets, labels[s:e])
    with open_cache(out) as c:
        scan = c.scan()
        if scan.content_sha256 is None or scan.content_sha256 != c.meta.content_sha256:
            raise CacheError(f"{out} failed its check right after assembly (a chunk checksum or the content hash); "
                             "the disk may be failing: dump again, or write elsewhere")
        labelled = c.meta.num_labelled
    return {"agree": agree, "labelled": labelled, "seconds": time.perf_counter() - t0}


def _check_coverage(shards: list[LogitCache], num_rows: int) -> None:
    """The shards hold rows 0..num_rows-1, in order, once, all from one dump request."""
    expect = 0
    dumps = set()
    for c in shards:
        a = c.meta.attrs
        start, stop = int(a["shard_row_start"]), int(a["shard_row_stop"])
        if start != expect or stop - start != len(c):
            raise CacheError(f"{c.path} holds rows {start}:{stop} ({len(c)} rows) but rows from {expect} were "
                             "expected next; delete the .shard files and dump again")
        dumps.add(json.dumps(json.loads(a["shard_request"])["dump"], sort_keys=True))
        expect = stop
    if expect != num_rows or len(dumps) != 1:
        raise CacheError(f"the shards cover rows 0:{expect} of {num_rows} from {len(dumps)} dump request(s); "
                         "delete the .shard files and dump again")


def remove_shards(out: Path) -> None:
    """Remove every shard of ``out`` (any world size) and temp files left by killed ranks."""
    for p in [*out.parent.glob(f".{out.name}.shard-*"), *out.parent.glob(f"..{out.name}.shard-*.tmp-*")]:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def dump_sharded(out: Path, ctx: DistContext, plan: ShardPlan, *, layout: CacheLayout, attrs: Mapping[str, Any],
                 write_rows: WriteRows, overwrite: bool) -> dict[str, Any]:
    """This rank's part of a distributed dump; returns the same summary on every rank.

    ``plan`` says how the rows are cut; ``layout`` and ``attrs`` are the cache's, as a one-process
    dump writes them (each shard adds SHARD_ATTRS); ``write_rows`` writes a range of rows.

    ``seconds`` runs from the moment every rank is ready (teacher and data loaded) to the
    verified cache; ``shard_seconds`` is rank 0's own shard, ``assemble_seconds`` its assembly.

    Each rank writes (or keeps, when valid) the shard of its rows; after a collective point
    rank 0 assembles ``out``; a second one makes sure every rank returns only once the cache
    is there. A failure anywhere is reported through the collective points (kdcache.dist).
    """
    num_rows = plan.num_rows
    ranges = row_ranges(num_rows, plan.batch_size, ctx.world_size)
    mine = ranges[ctx.rank]
    path = shard_path(out, ctx.rank, ctx.world_size)
    req = shard_request(plan.request, world_size=ctx.world_size, rows=mine, batch_size=plan.batch_size,
                        device_type=plan.device_type)
    if ctx.is_main:  # before anything is written: the cache plus every shard not on disk yet
        estimate = CacheWriter(out, layout, num_samples=num_rows, attrs=attrs, overwrite=True).estimated_bytes()
        todo = sum(len(r) for i, r in enumerate(ranges) if not shard_path(out, i, ctx.world_size).exists())
        check_free_space(out, estimate + estimate * todo // num_rows, f"the cache {out} and its shards")
    reused = len(mine) > 0 and prepare_shard(path, req, overwrite)
    ctx.check()  # every rank knows what it will do (a refused stale shard stops everyone here)
    t0 = time.perf_counter()
    if len(mine) and not reused:
        mine_attrs = shard_attrs(attrs, req, ctx.rank, ctx.world_size, mine)
        with CacheWriter(path, layout, num_samples=len(mine), attrs=mine_attrs, overwrite=True,
                         file_format=SHARD_FORMAT) as w:
            write_rows(w, mine)
    shard_seconds = time.perf_counter() - t0
    ctx.check()  # every shard is on disk
    flags = ctx.sum([1.0 if reused else 0.0, 1.0 if len(mine) and not reused else 0.0])
    result = None
    if ctx.is_main:
        parts = [shard_path(out, r, ctx.world_size) for r, rows in enumerate(ranges) if len(rows)]
        assembled = assemble(out, parts, num_rows, layout, attrs)
        remove_shards(out)
        result = {"world_size": ctx.world_size, "shards_reused": int(flags[0]), "shards_written": int(flags[1]),
                  "seconds": time.perf_counter() - t0, "shard_seconds": shard_seconds,
                  "assemble_seconds": assembled["seconds"],
                  "agree": assembled["agree"]}
    ctx.check()  # rank 0's assembly worked (or everyone hears why not)
    return ctx.broadcast(result)
