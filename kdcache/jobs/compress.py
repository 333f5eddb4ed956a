"""``kdcache compress``: turn a full-logit cache into a low-rank one (kdcache.cache.lowrank), and plan a basis.

    r = compress_cache("full.h5", "small.h5")                       # rank chosen to meet the KL budget
    r = compress_cache("full.h5", "small.h5", codec=Codec(rank=64))  # a stated rank; its KL is measured and recorded
    r = compress_cache("full.h5", "small.h5", codec=Codec(rank=121, dtype="packed"))  # 5 bits a component

The basis is fitted on a deterministic sample of rows (``sample_rows``) and judged on other,
held-out rows; ``plan_basis`` is shared with ``dump-logits --codec lowrank``, which fits it on
the teacher's logits of the same sample before streaming.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from kdcache.cache import CacheLayout, CacheWriter, open_cache
from kdcache.cache.lowrank import (
    DEFAULT_KL_BUDGET,
    KL_TEMPERATURES,
    Basis,
    Codec,
    Packing,
    check_rank,
    choose_rank,
    fit_basis,
    measure_kl,
    packing_sample,
    row_code_bytes,
    sample_rows,
    with_packing,
)
from kdcache.errors import CacheError, ConfigError
from kdcache.files import check_free_space, check_writable, format_bytes

# Root attributes the writer sets itself (everything else is copied from the source cache).
_WRITER_ATTRS = {"format", "schema_version", "complete", "created_utc", "num_samples", "num_classes", "logits_dtype",
                 "targets", "topk", "num_views", "view_policy", "view_policy_json", "num_labelled", "content_sha256",
                 "config_json", "lowrank_rank", "lowrank_code_dtype", "lowrank_kl_json"}


def plan_basis(fit_logits: np.ndarray, heldout_logits: np.ndarray, codec: Codec = Codec(),
               kl_budget: float = DEFAULT_KL_BUDGET, num_classes: int | None = None) -> tuple[Basis, dict[str, Any]]:
    """The basis for these rows (n, [V,] C) and what to record of it: ``(basis, lowrank_info)``.

    ``codec.rank`` None: the smallest rank whose mean KL on ``heldout_logits`` meets ``kl_budget`` at
    every T of KL_TEMPERATURES (ConfigError naming the closest rank otherwise). A stated
    rank is checked against the classes and rows, and its KL measured and recorded. The rows are
    coded with ``codec.encoder`` (kdcache.cache.lowrank), as the writer will code them. Packed codes
    (``codec.dtype`` "packed", ``codec.bits`` a component) get a packing fitted on a sample of the fit rows.
    """
    rank, code_dtype, encoder, bits = codec.rank, codec.dtype, codec.encoder, codec.bits
    c = num_classes or fit_logits.shape[-1]
    fit = fit_logits.reshape(-1, c)
    held = heldout_logits.reshape(-1, c)
    if rank is not None:
        check_rank(rank, c, len(fit))
        basis = fit_basis(fit, rank)
        if code_dtype == "packed":
            basis = with_packing(basis, packing_sample(fit), bits, encoder)
        kl = measure_kl(held, basis, code_dtype, encoder=encoder) if len(held) else {}
    else:
        if not len(held):
            raise ConfigError("too few rows to hold any out for choosing a rank; state one: --codec lowrank:rank=R")
        full = fit_basis(fit, min(c, len(fit)))
        choice = choose_rank(full, held, kl_budget, code_dtype, encoder=encoder, fit_sample=packing_sample(fit),
                             bits=bits)
        basis, kl, encoder = choice.basis or full.truncate(choice.rank), choice.kl, choice.encoder
    info = {"kl": {f"{T:g}": v for T, v in kl.items()}, "budget": kl_budget, "rank_chosen_by": "stated" if rank
            else "budget", "fit_rows": len(fit), "heldout_rows": len(held), "temperatures": list(KL_TEMPERATURES),
            "code_dtype": code_dtype, "encoder": encoder}
    info["row_bytes"] = row_code_bytes(basis, code_dtype)
    if basis.packing is not None:
        info["bits"] = bits
    return basis, info


# What a low-rank file holds beyond a full one's besides its rows: each HDF5 dataset costs about this much of
# headers, chunk index and checksums (measured: a 421-row, 3-class cache compressed to packed codes grew by
# 9.6 KB beyond its rows and basis, over 4 more datasets; int8 codes by 6.2-6.9 KB over 3).
DATASET_OVERHEAD_BYTES = 2400


def size_change(num_rows: int, num_views: int, num_classes: int, logits_dtype: str, basis: Basis,
                code_dtype: str) -> dict[str, int]:
    """Bytes a low-rank copy of a full cache would save or add, before it is written.

    Returns ``src_row`` (a row's logits, every view) and ``code_row`` (its code and scale), ``extra``
    (basis, packing and the additional datasets' overhead, once per file) and ``saved``
    (``num_rows`` x the difference per row, minus ``extra``; <= 0: the copy would be no smaller).
    """
    src_row = num_views * num_classes * np.dtype(logits_dtype).itemsize
    code_row = num_views * (row_code_bytes(basis, code_dtype) + (4 if code_dtype == "float16" else 0))  # + scale
    packed = code_dtype == "packed" and basis.packing is not None
    datasets = 5 if packed else 4  # codes, mean, components, + bits and steps or scales; instead of /logits
    extra = (basis.mean.nbytes + basis.components.nbytes + (5 * basis.rank if packed else 0)
             + (datasets - 1) * DATASET_OVERHEAD_BYTES)
    return {"src_row": src_row, "code_row": code_row, "extra": extra,
            "saved": num_rows * (src_row - code_row) - extra}


def check_smaller(change: dict[str, int], src: Path, src_bytes: int, num_rows: int, num_classes: int, rank: int,
                  code_dtype: str) -> None:
    """Refuse (ConfigError) a low-rank copy that would be no smaller than ``src``, saying why."""
    if change["saved"] > 0:
        return
    codes = f"rank-{rank} {code_dtype} codes"
    if change["code_row"] >= change["src_row"]:
        raise ConfigError(f"compressing {src} would make it bigger, not smaller: {codes} take {change['code_row']} "
                          f"bytes a row, its {num_classes} logits {change['src_row']} (rank {rank} of "
                          f"{num_classes} classes); low-rank codes pay at many classes: keep the full cache")
    rows_saved = num_rows * (change["src_row"] - change["code_row"])
    raise ConfigError(f"compressing {src} would make it bigger, not smaller (about "
                      f"{format_bytes(src_bytes - change['saved'])} against {format_bytes(src_bytes)}): {codes} save "
                      f"{change['src_row'] - change['code_row']} bytes a row of {num_classes} classes, "
                      f"{format_bytes(rows_saved)} over {num_rows} rows, less than the basis and the low-rank "
                      f"datasets add (about {format_bytes(change['extra'])}); keep the full cache (low-rank codes "
                      "pay at many classes and rows), or pass --allow-larger to write it anyway")


def compress_cache(src: str | os.PathLike, out: str | os.PathLike, *, codec: Codec = Codec(),
                   kl_budget: float = DEFAULT_KL_BUDGET, overwrite: bool = False, seed: int = 0,
                   allow_larger: bool = False) -> dict[str, Any]:
    """Write ``out``: ``src``'s rows as low-rank codes, with its index columns, views and attributes. Returns a summary.

    Refuses a top-k source (the other logits are gone) and a low-rank one, and, unless ``allow_larger``,
    a copy that would come out no smaller than ``src`` (few classes or rows: ``size_change``), before
    writing. Written like every cache (temp file, renamed into place when complete); ``src`` is read
    block by block.
    """
    t0 = time.perf_counter()
    src, out = Path(src), Path(out)
    if out.exists() and not overwrite:
        raise CacheError(f"{out} already exists; pass --overwrite to replace it")
    if out.resolve() == src.resolve():
        raise ConfigError(f"--out {out} is the cache being compressed; write to another file")
    check_writable(out)
    with open_cache(src) as c:
        m = c.meta
        if m.targets == "topk":
            raise CacheError(f"{src} is a top-{m.topk} cache: it keeps {m.topk} of {m.num_classes} logits a row and "
                             "the others are gone, so no basis can be fitted or rows rebuilt from it; compress the "
                             "full cache (dump-logits without --top-k)")
        if m.targets == "lowrank":
            raise CacheError(f"{src} is already a low-rank cache (rank {m.lowrank_rank}); compress the full cache")
        fit_rows, held_rows = sample_rows(len(c), seed=seed)
        basis, info = plan_basis(c.read(fit_rows).astype(np.float32), c.read(held_rows).astype(np.float32), codec,
                                 kl_budget, m.num_classes)
        info["seed"] = seed
        change = size_change(len(c), m.num_views, m.num_classes, m.logits_dtype, basis, codec.dtype)
        if not allow_larger:
            check_smaller(change, src, src.stat().st_size, len(c), m.num_classes, basis.rank, codec.dtype)
        attrs = {k: v for k, v in m.attrs.items() if k not in _WRITER_ATTRS}
        attrs["class_names"] = list(c.class_names)
        if m.config.get("teacher_config") is not None:
            attrs["extra_config"] = m.config["teacher_config"]
        layout = CacheLayout(num_classes=m.num_classes, num_views=m.num_views, view_policy=m.view_policy, basis=basis,
                             code_dtype=codec.dtype, lowrank_info=info)
        writer = CacheWriter(out, layout, num_samples=len(c), attrs=attrs, overwrite=True)
        check_free_space(out, writer.estimated_bytes(), f"the cache {out}")
        with writer:
            for rows, block in c.blocks():
                w_params = c.read_view_params(rows) if m.has_views else None
                writer.write(rows.start, block, c.labels[rows], c.indices[rows], c.sample_ids[rows],
                             view_params=w_params)
        src_bytes = src.stat().st_size
    return {"cache": str(out), "source": str(src), "rows": m.num_samples, "num_classes": m.num_classes,
            "rank": basis.rank, "code_dtype": codec.dtype, "encoder": info["encoder"], "kl": info["kl"], "budget": kl_budget,
            "row_bytes": info.get("row_bytes"),
            "rank_chosen_by": info["rank_chosen_by"], "bytes": out.stat().st_size, "source_bytes": src_bytes,
            "seconds": time.perf_counter() - t0}


def describe_kl(kl: Mapping[str, float]) -> str:
    """'KL 8.2e-03 / 8.4e-03 / 2.0e-03 at T = 1 / 2 / 4'."""
    if not kl:
        return "KL not measured (no held-out rows)"
    return f"mean KL {' / '.join(f'{v:.2g}' for v in kl.values())} at T = {' / '.join(kl)}"


def basis_for_dump(logits_of_rows: Callable[[np.ndarray], np.ndarray], num_rows: int, ctx: Any, *,
                   codec: Codec, kl_budget: float) -> dict[str, Any]:
    """The CacheLayout fields of a low-rank dump: the teacher's logits of the sample rows, a basis planned on them.

    ``logits_of_rows(rows)`` runs the teacher over dataset rows ``rows`` (n,) -> (n, [V,] C). Under
    torchrun rank 0 fits and every rank receives its basis (kdcache.dist broadcast), so all shards
    are coded with one basis; a refusal on rank 0 (a budget no rank meets) stops every rank.
    """
    payload, error = None, None
    if ctx.is_main:
        try:
            fit, held = sample_rows(num_rows)
            z = logits_of_rows(np.concatenate([fit, held]))
            basis, info = plan_basis(z[:len(fit)], z[len(fit):], codec, kl_budget)
            info["seed"] = 0
            payload = {"mean": basis.mean.tolist(), "components": basis.components.tolist(), "info": info,
                       "bits": None if basis.packing is None else basis.packing.bits.tolist(),
                       "steps": None if basis.packing is None else basis.packing.steps.tolist()}
        except Exception as e:  # noqa: BLE001 - re-raised here, and heard by every other rank
            error = e
    ctx.check(error)
    payload = ctx.broadcast(payload)
    packing = None if payload["bits"] is None else Packing(np.asarray(payload["bits"], dtype=np.uint8),
                                                           np.asarray(payload["steps"], dtype=np.float32))
    basis = Basis(np.asarray(payload["mean"], dtype=np.float32), np.asarray(payload["components"], dtype=np.float32),
                  packing)
    return {"basis": basis, "code_dtype": codec.dtype, "lowrank_info": payload["info"]}
