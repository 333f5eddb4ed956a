"""Low-rank codes of teacher logits: one PCA basis per cache, a short code per row.

A row of raw logits z (C,) is stored as r numbers c = Vᵀ(z - m), where m (C,) is the mean
row and V (r, C) holds the top r principal directions of the centred logits (orthonormal
rows), fitted once per cache on a sample of rows. Decoding is z' = m + c V: 2·r·C FLOPs a
row, done on the fly in batches, so training sees float logits and re-softens them at any T.

How a row's code is chosen (the *encoder*; decoding is the same for both):

- ``kl`` (the default, kdcache.cache.kl_encoder): the code minimising the row's KL(p_T ‖
  rebuilt_T) summed over T = 1, 2, 4, to second order: a weighted least-squares solve per row.
- ``projection``: c = Vᵀ(z - m), the least squares code of the logits themselves.

Codes are stored as ``int8`` with a per-row float32 scale (c ≈ q · s, s = max|c| / 127), as
``float16``, or ``packed``: a fixed number of bits a row spread over the components by their
variance (more bits to the components that vary most, none to those that barely do), each with
its own step, bit-packed into whole bytes, and rounded in the row's KL metric (the kl encoder's
r x r system, nearest-plane rounding) so one component's rounding error is partly cancelled by
the next. At 76 bytes a row on a 1,000-class teacher whose logits are not low-rank, rank-121
packed codes measure ~6x lower KL at T = 2 and 4 than rank-72 int8 codes of the same size.

Everything here is a pure function of numpy/torch arrays; kdcache.cache.writer/reader store
and read the basis, codes and scales (docs/cache-format.md, "Low-rank caches").

    basis = fit_basis(logits[:20000], rank=64)
    codes, scales = encode(logits, basis, "int8")          # the KL-weighted code of each row
    rebuilt = decode(codes, scales, basis)                 # (n, C) float32 torch
    kl = measure_kl(heldout, basis, "int8")                # {1.0: ..., 2.0: ..., 4.0: ...}
    packed = with_packing(basis, logits[:5000], bits=5.0)  # 5 bits a component on average, spread by variance
    codes, _ = encode(logits, packed, "packed")            # (n, ceil(5r/8)) uint8
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Callable, Sequence

import numpy as np
import torch

from kdcache.cache.kl_encoder import KL_TEMPERATURES, kl_codes, kl_solves
from kdcache.cache.packing import (
    DEFAULT_PACKED_BITS,
    PACKED_MAX_BITS,
    PACKING_FIT_ROWS,
    Packing,
    fit_packing,
    pack,
    quantise,
    unpack,
)
from kdcache.errors import CacheError, ConfigError

__all__ = ["KL_TEMPERATURES", "Packing", "kl_codes", "pack", "unpack"]  # re-exported: parts of this codec

CODE_DTYPES = ("int8", "float16", "packed")
DEFAULT_CODE_DTYPE = "packed"  # what compress and dump-logits --codec lowrank write (Codec); the functions
# below default to int8, which needs no fitted packing
ENCODERS = ("kl", "projection")
DEFAULT_ENCODER = "kl"
# The stated KL budget: mean KL(p_T ‖ rebuilt_T) in nats at every T of KL_TEMPERATURES. At 1,000 classes the
# issue's PCA-64 int8 code (students within 0.3 pp of full logits) measured 8.6e-3 / 9.0e-3 / 2.1e-3.
DEFAULT_KL_BUDGET = 0.01
# `verify --teacher`: the re-run teacher's rows must be rebuilt within this many times the KL recorded at each T
# (plus VERIFY_KL_SLACK nats for the noise of a few hundred sampled rows); another teacher's rows are orders off.
VERIFY_KL_FACTOR = 2.0
VERIFY_KL_SLACK = 1e-3
FIT_ROWS = 20_000  # rows a basis is fitted on (the first ones of a deterministic sample)
HELDOUT_ROWS = 5_000  # rows the KL is measured on (none of them fitted on)
INT8_MAX = 127
CLOSEST_GRID = 16  # ranks tried, evenly spaced, to name the closest when no rank meets the budget
FLOAT16_MAX = 65504.0


@dataclass(frozen=True)
class Basis:
    """The mean row (C,) and r principal components (r, C), float32 numpy, orthonormal rows, largest first."""

    mean: np.ndarray
    components: np.ndarray
    packing: Packing | None = None  # packed codes' layout (kdcache.cache.lowrank.with_packing); None for int8/float16

    @property
    def rank(self) -> int:
        return int(self.components.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.mean.shape[0])

    def truncate(self, rank: int) -> "Basis":
        """The basis of the first ``rank`` components (PCA bases are nested: the best rank-r basis is a prefix).

        A packing belongs to one rank: the truncated basis has none (fit one with ``with_packing``).
        """
        check_rank(rank, self.num_classes, None, self.rank)
        return Basis(self.mean, self.components[:rank])

    def as_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.mean), torch.from_numpy(self.components)

    @cached_property
    def packed_decoder(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(bias (C,), W (r, C))`` with m + ((v - centre) · steps) V = bias + v W: a packed row's levels v decode
        in one matmul (the steps and centres folded in once per cache, in float64)."""
        assert self.packing is not None
        t = self.packing._tables
        v = self.components.astype(np.float64)
        steps = self.packing.steps.astype(np.float64)
        bias = self.mean.astype(np.float64) - (t["centre"].numpy() * steps) @ v
        return torch.from_numpy(bias.astype(np.float32)), torch.from_numpy((steps[:, None] * v).astype(np.float32))


ORTHONORMAL_TOLERANCE = 1e-3  # max |V Vᵀ - I| of a sound float32 basis (measured: ~1e-6 at r = 512, C = 1000)


def basis_problem(basis: Basis) -> str | None:
    """What is wrong with a basis read from a file (shapes, non-finite or implausible values, rows not orthonormal), or None."""
    mean, comps = basis.mean, basis.components
    if mean.ndim != 1 or comps.ndim != 2 or comps.shape[1] != mean.shape[0] or not 1 <= comps.shape[0] <= mean.shape[0]:
        return f"basis shapes mean {mean.shape}, components {comps.shape} do not fit (C,) and (r, C) with r <= C"
    if not (np.isfinite(mean).all() and np.isfinite(comps).all()):
        return "the basis holds NaN/Inf"
    if np.abs(mean).max() > 1e4:
        return f"the basis mean holds a logit of magnitude {float(np.abs(mean).max()):.3g} (> 1e4)"
    v = comps.astype(np.float64)
    off = float(np.abs(v @ v.T - np.eye(len(v))).max())
    if off > ORTHONORMAL_TOLERANCE:
        return f"the basis components are not orthonormal (max |V Vᵀ - I| = {off:.3g} > {ORTHONORMAL_TOLERANCE:g})"
    if basis.packing is not None:
        bits, steps = basis.packing.bits, basis.packing.steps
        if bits.shape != (len(comps),) or steps.shape != (len(comps),):
            return f"the packing's bits {bits.shape} and steps {steps.shape} do not fit a basis of rank {len(comps)}"
        if int(bits.max(initial=0)) > PACKED_MAX_BITS or int(bits.astype(np.int64).sum()) < 1:
            return f"the packing gives a component more than {PACKED_MAX_BITS} bits, or the row none"
        if not (np.isfinite(steps).all() and (steps > 0).all()):
            return "the packing's steps are not finite and positive"
    return None


def check_basis(basis: Basis, where: Any) -> None:
    """CacheError naming ``where`` if ``basis_problem`` finds anything."""
    problem = basis_problem(basis)
    if problem:
        what = "packing" if "packing" in problem else "basis"
        raise CacheError(f"{where}: {problem}: the low-rank {what} is corrupt; re-create the cache with "
                         "`kdcache compress` (or dump-logits --codec lowrank)")


def check_rank(rank: int, num_classes: int, num_rows: int | None, most: int | None = None) -> None:
    """ConfigError unless 1 <= rank <= min(C, rows[, the basis's rank])."""
    limits = [(num_classes, "classes")] + ([(num_rows, "rows to fit on")] if num_rows is not None else []) \
        + ([(most, "components in the fitted basis")] if most is not None else [])
    for limit, what in limits:
        if not 1 <= rank <= limit:
            fix = "give a smaller rank" if rank > limit else "give a rank of at least 1"
            raise ConfigError(f"rank {rank} is outside 1..{limit} ({limit} {what}); a basis has at most min(classes, "
                              f"rows) components: {fix}")


def _flat(logits: Any) -> np.ndarray:
    z = logits.detach().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
    return z.reshape(-1, z.shape[-1])


def fit_basis(logits: Any, rank: int) -> Basis:
    """PCA of the rows of ``logits`` (n, [V,] C): their mean and top ``rank`` directions. Deterministic.

    Computed in float64 from the C x C covariance (eigh), which is cheaper than an SVD of the
    rows when n > C and gives the same directions; each direction's sign is fixed so that its
    largest-magnitude entry is positive, so the same rows always give the same basis bytes.
    """
    z = _flat(logits).astype(np.float64)
    n, c = z.shape
    check_rank(rank, c, n)
    mean = z.mean(0)
    x = z - mean
    cov = x.T @ x  # (C, C)
    vals, vecs = np.linalg.eigh(cov)  # ascending
    order = np.argsort(-vals, kind="stable")[:rank]
    comps = vecs[:, order].T  # (r, C)
    lead = np.abs(comps).argmax(1)
    comps *= np.sign(comps[np.arange(rank), lead])[:, None]
    return Basis(mean.astype(np.float32), np.ascontiguousarray(comps, dtype=np.float32))


def project(logits: Any, basis: Basis) -> np.ndarray:
    """The float32 codes (n, [V,] r) of ``logits`` (n, [V,] C), before quantisation."""
    z = logits.detach().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
    lead = z.shape[:-1]
    x = z.reshape(-1, z.shape[-1]).astype(np.float32) - basis.mean
    return (x @ basis.components.T).reshape(*lead, basis.rank)


def encode(logits: Any, basis: Basis, code_dtype: str = "int8",
           encoder: str = DEFAULT_ENCODER) -> tuple[np.ndarray, np.ndarray | None]:
    """``(codes, scales)`` of ``logits`` (n, [V,] C): what a low-rank cache stores of each row.

    ``encoder``: ``kl`` (kl_codes) or ``projection`` (project). int8: codes (n, [V,] r),
    q = round(c / s), s = max|c| / 127 per row (s = 1 for an all-zero row). float16: codes c as
    float16, scales 1; a ConfigError if a code overflows float16. packed (``basis.packing``, see
    with_packing): codes (n, [V,] row_bytes) uint8 and no scales; with the kl encoder each row is
    rounded in its KL metric (nearest plane, last component first), with projection to the nearest level.
    """
    if code_dtype not in CODE_DTYPES:
        raise ConfigError(f"code dtype {code_dtype!r} cannot hold low-rank codes; choose one of {', '.join(CODE_DTYPES)}")
    check_encoder(encoder)
    z = logits.detach().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
    if not np.isfinite(z).all():
        row = int(np.flatnonzero(~np.isfinite(z.reshape(len(z), -1)).all(1))[0])
        raise ConfigError(f"row {row} of the logits holds NaN/Inf; no code represents it")
    if code_dtype == "packed":
        return _encode_packed(z, basis, encoder), None
    c = kl_codes(z, basis) if encoder == "kl" else project(z, basis)
    if not np.isfinite(c).all():
        row = int(np.flatnonzero(~np.isfinite(c.reshape(len(c), -1)).all(1))[0])
        raise ConfigError(f"row {row} of the logits holds NaN/Inf; no code represents it")
    if code_dtype == "float16":
        big = np.abs(c).reshape(len(c), -1).max(1) > FLOAT16_MAX if c.size else np.zeros(len(c), bool)
        if big.any():
            row = int(np.flatnonzero(big)[0])
            raise ConfigError(f"row {row}'s code holds {float(np.abs(c[row]).max()):.3g}, beyond float16's "
                              f"{FLOAT16_MAX:g}: float16 cannot hold these codes; use --codec lowrank:dtype=int8 "
                              "(a per-row scale holds any magnitude)")
        return c.astype(np.float16), np.ones(c.shape[:-1], dtype=np.float32)
    amax = np.abs(c).max(-1) if c.shape[-1] else np.zeros(c.shape[:-1], np.float32)  # (n, [V])
    scales = np.where(amax > 0, amax / INT8_MAX, 1.0).astype(np.float32)
    q = np.clip(np.rint(c / scales[..., None]), -INT8_MAX, INT8_MAX).astype(np.int8)
    return q, scales


def with_packing(basis: Basis, logits: Any, bits: float = DEFAULT_PACKED_BITS,
                 encoder: str = DEFAULT_ENCODER) -> Basis:
    """``basis`` with a Packing fitted (kdcache.cache.packing.fit_packing) on the ``encoder``'s codes of ``logits``
    (a sample of rows, n >= 1): round(bits · r) bits a row, spread over the components by their variance."""
    check_encoder(encoder)
    r = basis.rank
    total = int(round(bits * r))
    if not 1 <= total <= PACKED_MAX_BITS * r:
        raise ConfigError(f"packed codes of rank {r} at {bits:g} bits a component on average would take {total} bits "
                          f"a row; give 1/{r} to {PACKED_MAX_BITS} bits a component (--codec lowrank:dtype=packed,bits=B)")
    z = _flat(logits)
    if not len(z):
        raise ConfigError("no rows to fit the packed codes' bits and steps on")
    codes = kl_codes(z, basis) if encoder == "kl" else project(z, basis)
    return replace(basis, packing=fit_packing(codes, total))


def _encode_packed(z: np.ndarray, basis: Basis, encoder: str) -> np.ndarray:
    if basis.packing is None:
        raise ConfigError("internal: packed codes need a basis with a packing (kdcache.cache.lowrank.with_packing)")
    lead, flat = z.shape[:-1], z.reshape(-1, z.shape[-1])
    if encoder == "kl":
        levels = [quantise(c, U, basis.packing)[:n] for n, c, U in kl_solves(flat, basis)]
        lv = torch.cat(levels) if levels else torch.zeros(0, basis.rank, dtype=torch.long)
    else:
        lv = quantise(torch.from_numpy(project(flat, basis)).double(), None, basis.packing)
    return pack(lv.numpy(), basis.packing).reshape(*lead, basis.packing.row_bytes)


def decode(codes: Any, scales: Any, basis: Basis | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Logits (n, [V,] C) float32 torch from codes and scales (n, [V]; None for packed): m + (q · s) V, 2·r·C FLOPs a row."""
    packing = basis.packing if isinstance(basis, Basis) else None
    mean, comps = basis.as_tensors() if isinstance(basis, Basis) else basis
    q = torch.as_tensor(codes)
    if packing is not None:  # levels times one matrix with the steps and centres folded in
        mean, comps = basis.packed_decoder  # type: ignore[union-attr]
        values = packing.levels(q.reshape(-1, q.shape[-1])).float()
    else:
        values = (q.float() * torch.as_tensor(scales).float().unsqueeze(-1)).reshape(-1, q.shape[-1])
    return torch.addmm(mean, values, comps).reshape(*q.shape[:-1], -1)


def check_encoder(encoder: str) -> None:
    if encoder not in ENCODERS:
        raise ConfigError(f"unknown low-rank encoder {encoder!r}; choose one of {', '.join(ENCODERS)}")


def round_trip(logits: Any, basis: Basis, code_dtype: str = "int8",
               encoder: str = DEFAULT_ENCODER) -> torch.Tensor:
    """decode(encode(logits)): what training would see for these rows."""
    return decode(*encode(logits, basis, code_dtype, encoder), basis)


def mean_kl(logits: Any, rebuilt: Any, temperatures: Sequence[float] = KL_TEMPERATURES) -> dict[float, float]:
    """Mean KL(p_T ‖ q_T) over rows, in nats, float64, for each T: p from ``logits``, q from ``rebuilt`` (n, C)."""
    z = torch.as_tensor(_flat(logits)).double()
    y = torch.as_tensor(_flat(rebuilt)).double()
    out = {}
    for T in temperatures:
        log_p, log_q = torch.log_softmax(z / T, -1), torch.log_softmax(y / T, -1)
        out[float(T)] = float((log_p.exp() * (log_p - log_q)).sum(-1).mean()) if len(z) else 0.0
    return out


def measure_kl(logits: Any, basis: Basis, code_dtype: str = "int8",
               temperatures: Sequence[float] = KL_TEMPERATURES, batch: int = 4096,
               encoder: str = DEFAULT_ENCODER) -> dict[float, float]:
    """Mean KL(p_T ‖ rebuilt_T) of held-out rows ``logits`` through ``basis``, ``code_dtype`` and ``encoder``, by T."""
    z = _flat(logits)
    total = {float(T): 0.0 for T in temperatures}
    for s in range(0, len(z), batch):
        part = mean_kl(z[s:s + batch], round_trip(z[s:s + batch], basis, code_dtype, encoder), temperatures)
        for T, v in part.items():
            total[T] += v * len(z[s:s + batch])
    return {T: v / max(1, len(z)) for T, v in total.items()}


@dataclass(frozen=True)
class Codes:
    """Stored low-rank rows as they are, not decoded (shard assembly copies these, streams shuffle them): codes
    (n, [V,] r), or (n, [V,] row_bytes) packed, and scales (n, [V]), None for packed codes."""

    codes: np.ndarray
    scales: np.ndarray | None  # None for packed codes

    def __len__(self) -> int:
        return len(self.codes)

    def take(self, rows: np.ndarray | slice) -> "Codes":
        """These ``rows`` (positions in this block) only."""
        return Codes(self.codes[rows], None if self.scales is None else self.scales[rows])

    @staticmethod
    def concat(parts: Sequence["Codes"]) -> "Codes":
        scales = None if parts[0].scales is None else np.concatenate([p.scales for p in parts])
        return Codes(np.concatenate([p.codes for p in parts]), scales)


@dataclass(frozen=True)
class RankChoice:
    rank: int
    kl: dict[float, float]  # at the chosen rank
    tried: dict[int, float]  # rank -> worst KL over the temperatures, every rank measured with ``encoder``
    encoder: str = DEFAULT_ENCODER  # the encoder the KL was measured with (and the cache must be written with)
    basis: Basis | None = None  # packed codes: the basis at ``rank`` with the packing the KL was measured with


def choose_rank(basis: Basis, heldout: Any, budget: float = DEFAULT_KL_BUDGET,
                code_dtype: str = "int8", temperatures: Sequence[float] = KL_TEMPERATURES,
                encoder: str = DEFAULT_ENCODER, fit_sample: Any = None,
                bits: float = DEFAULT_PACKED_BITS) -> RankChoice:
    """The smallest rank r <= basis.rank whose worst mean KL over ``temperatures`` on ``heldout`` rows is <= ``budget``.

    Bisection over the nested bases (KL falls as the rank grows), first with projection codes
    (cheap at any rank); with the kl encoder, which meets a budget at a lower rank, a second
    bisection below the projection's rank. ConfigError naming the rank that comes closest, and
    its KL, when even the full basis misses the budget.

    Packed codes (``bits`` a component, each rank's packing fitted on ``fit_sample`` rows): the
    int8 rank first, then a bisection over packed ranks up to the most that fit in int8's bytes
    at that rank; a ConfigError if even those miss the budget (int8 codes are then the smaller).
    """
    if not budget > 0:
        raise ConfigError(f"KL budget must be > 0 nats, got {budget}")
    check_encoder(encoder)
    tried: dict[tuple[int, str], float] = {}
    kls: dict[tuple[int, str], dict[float, float]] = {}

    base_dtype = "int8" if code_dtype == "packed" else code_dtype

    def worst(r: int, enc: str) -> float:
        if (r, enc) not in tried:
            kls[r, enc] = measure_kl(heldout, basis.truncate(r), base_dtype, temperatures, encoder=enc)
            tried[r, enc] = max(kls[r, enc].values())
        return tried[r, enc]

    def smallest(lo: int, hi: int, worst_at: Callable[[int], float]) -> int:
        """The smallest rank in lo..hi meeting the budget (hi meets it; KL falls as the rank grows)."""
        while lo < hi:
            mid = (lo + hi) // 2
            if worst_at(mid) <= budget:
                hi = mid
            else:
                lo = mid + 1
        return lo

    hi = basis.rank
    if worst(hi, "projection") > budget:  # int8 codes of more components are coarser, so the closest may be lower
        for r in np.unique(np.linspace(1, hi, min(hi, CLOSEST_GRID)).round().astype(int)):
            worst(int(r), "projection")
        best = min(tried, key=lambda k: (tried[k], k[0]))
        raise ConfigError(f"no rank up to {basis.rank} meets the KL budget {budget:g}: rank {best[0]} comes closest "
                          f"(of {len(tried)} ranks tried, with projected codes), "
                          f"worst mean KL {tried[best]:.3g} over T = {', '.join(f'{t:g}' for t in temperatures)}; "
                          "raise --kl-budget, or keep full logits")
    rank = smallest(1, hi, lambda r: worst(r, "projection"))
    if encoder != "projection" and worst(rank, encoder) <= budget:
        rank = smallest(1, rank, lambda r: worst(r, encoder))
    else:
        encoder = "projection"  # the kl codes missed where projection met the budget (not seen): keep projection's
    worst(rank, encoder)
    if code_dtype != "packed":
        return RankChoice(rank, kls[rank, encoder], {r: v for (r, e), v in sorted(tried.items()) if e == encoder},
                          encoder)
    if fit_sample is None:
        raise ConfigError("internal: choosing a packed rank needs rows to fit each rank's packing on")
    packed: dict[int, tuple[Basis, dict[float, float]]] = {}

    def pworst(r: int) -> float:
        if r not in packed:
            pb = with_packing(basis.truncate(r), fit_sample, bits, encoder)
            packed[r] = pb, measure_kl(heldout, pb, "packed", temperatures, encoder=encoder)
        return max(packed[r][1].values())

    int8_bytes = code_bytes(rank, "int8")
    hi = min(basis.rank, rank_for_bytes(int8_bytes, "packed", bits))
    if pworst(hi) > budget:
        raise ConfigError(f"packed codes at {bits:g} bits a component miss the KL budget {budget:g} at rank {hi} "
                          f"(worst mean KL {pworst(hi):.3g}), the most that fit the {int8_bytes} bytes of int8 codes at "
                          f"rank {rank}, which meet it: use --codec lowrank:dtype=int8, or more bits")
    lo = smallest(1, hi, pworst)
    return RankChoice(lo, packed[lo][1], {r: max(k.values()) for r, (_, k) in sorted(packed.items())}, encoder,
                      packed[lo][0])


def packing_sample(rows: np.ndarray, most: int = PACKING_FIT_ROWS) -> np.ndarray:
    """At most ``most`` of ``rows`` (n, ...), evenly strided: a packing's fit sample, spread over the whole cache."""
    return rows[::max(1, -(-len(rows) // most))][:most]


def sample_rows(num_rows: int, fit_rows: int = FIT_ROWS, heldout_rows: int = HELDOUT_ROWS,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(fit, heldout)`` sorted row numbers: a deterministic sample, disjoint; fewer rows split about 4:1."""
    perm = np.random.default_rng(seed).permutation(num_rows)
    if num_rows < fit_rows + heldout_rows:
        heldout_rows = min(heldout_rows, max(1, num_rows // 5)) if num_rows > 1 else 0
        fit_rows = num_rows - heldout_rows
    return np.sort(perm[:fit_rows]), np.sort(perm[fit_rows:fit_rows + heldout_rows])


CODEC_SYNTAX = "lowrank[:rank=R][,dtype=int8|float16|packed][,bits=B][,encoder=kl|projection]"


@dataclass(frozen=True)
class Codec:
    """How to code a cache's rows: ``rank`` (None: the smallest meeting the KL budget), the code ``dtype``,
    the ``encoder``, and for packed codes the mean ``bits`` a component."""

    rank: int | None = None
    dtype: str = DEFAULT_CODE_DTYPE
    encoder: str = DEFAULT_ENCODER
    bits: float = DEFAULT_PACKED_BITS


def parse_codec(text: str) -> Codec:
    """'lowrank', 'lowrank:rank=121,dtype=packed,bits=5' -> Codec (what is not stated keeps its default)."""
    name, _, rest = text.partition(":")
    if name != "lowrank":
        raise ConfigError(f"unknown codec {name!r}; choose {CODEC_SYNTAX}")
    out: dict[str, Any] = {}
    for part in filter(None, rest.split(",")):
        key, eq, value = part.partition("=")
        if key in out:
            raise ConfigError(f"codec option {key!r} given twice in {text!r}; give each once")
        if key == "rank" and eq:
            try:
                out["rank"] = int(value)
            except ValueError:
                raise ConfigError(f"codec rank must be an integer, got {value!r}") from None
        elif key == "dtype" and eq:
            if value not in CODE_DTYPES:
                raise ConfigError(f"code dtype {value!r} cannot hold low-rank codes; choose one of "
                                  f"{', '.join(CODE_DTYPES)}")
            out["dtype"] = value
        elif key == "encoder" and eq:
            check_encoder(value)
            out["encoder"] = value
        elif key == "bits" and eq:
            try:
                out["bits"] = float(value)
            except ValueError:
                raise ConfigError(f"codec bits must be a number (mean bits a component), got {value!r}") from None
            if not 0 < out["bits"] <= PACKED_MAX_BITS:
                raise ConfigError(f"codec bits must be in (0, {PACKED_MAX_BITS}] bits a component, got {value}")
        else:
            raise ConfigError(f"unknown codec option {part!r}; use {CODEC_SYNTAX}")
    if "bits" in out and out.get("dtype", DEFAULT_CODE_DTYPE) != "packed":
        raise ConfigError("bits= sets packed codes' bits a component: use dtype=packed (the default) or drop bits= "
                          "(int8 and float16 codes take 8 and 16 bits each)")
    return Codec(**out)


def code_bytes(rank: int, code_dtype: str, bits: float = DEFAULT_PACKED_BITS) -> int:
    """Bytes of one row's (one view's) code and scale as stored (packed: round(bits · rank) bits, whole bytes)."""
    if code_dtype == "packed":
        return -(-int(round(bits * rank)) // 8)
    return rank * np.dtype(code_dtype).itemsize + (4 if code_dtype == "int8" else 0)


def row_code_bytes(basis: Basis, code_dtype: str) -> int:
    """Bytes one row's (one view's) code takes in a cache coded with ``basis`` (and its packing) as ``code_dtype``."""
    return basis.packing.row_bytes if code_dtype == "packed" and basis.packing is not None \
        else code_bytes(basis.rank, code_dtype)


def describe_bytes(n: int) -> str:
    """'1 byte a row', '76 bytes a row'."""
    return f"{n} byte{'' if n == 1 else 's'} a row"


def rank_for_bytes(target_bytes: float, code_dtype: str = "int8", bits: float = DEFAULT_PACKED_BITS) -> int:
    """The largest rank whose code fits ``target_bytes`` a row."""
    if code_dtype == "packed":
        return max(1, int(math.floor(8 * target_bytes / bits)))
    return max(1, int(math.floor((target_bytes - (4 if code_dtype == "int8" else 0)) / np.dtype(code_dtype).itemsize)))
