"""The kl encoder: each row's low-rank code chosen to keep its softmax at T = 1, 2, 4, not its logits.

PCA projection (c = V(z - m)) is the least-squares code of the logits, and spends it on the far
tail, whose logits vary most between rows and hold almost no probability at T <= 4. This code
minimises the row's Σ_T KL(p_T ‖ rebuilt_T) to second order instead: one r x r weighted
least-squares solve per row. On a 1,000-class teacher whose logits are not low-rank it cut the
KL at T = 1 ~90x and at T = 2 ~8x at the same rank (docs/results/lowrank.md). The solve's
Cholesky factor is the row's KL metric on codes, which packed codes round in
(kdcache.cache.packing.quantise). kdcache.cache.lowrank stores and decodes the codes.
"""
from __future__ import annotations

from typing import Any, Iterator, Protocol, Sequence

import numpy as np
import torch


class BasisLike(Protocol):
    """What the encoder needs of kdcache.cache.lowrank.Basis (which imports this module)."""

    @property
    def rank(self) -> int: ...

    def as_tensors(self) -> tuple[torch.Tensor, torch.Tensor]: ...

KL_TEMPERATURES = (1.0, 2.0, 4.0)  # the temperatures a code keeps, and a basis is judged at (info, compress, verify)
# The ridge toward the projection code, relative to the mean diagonal of a row's r x r system: small enough not to
# move the directions the weights determine, large enough to fix the ones they do not.
ENCODER_RIDGE = 1e-3
ENCODE_BLOCK = 64  # rows: a batch is padded to whole blocks (BLAS picks kernels by the row count)
ENCODE_BATCH = 256  # rows a solve: the (b, r, r) float64 systems stay in cache at rank ~100 (20% faster than 1,024)
ENCODE_CHUNK_FLOATS = 1 << 24  # the per-row systems are built from (C, chunk x r) outer products of V


def kl_codes(logits: Any, basis: BasisLike, temperatures: Sequence[float] = KL_TEMPERATURES,
             batch: int = ENCODE_BATCH) -> np.ndarray:
    """The kl encoder's float32 codes (n, [V,] r): each row's Σ_T KL(p_T ‖ rebuilt_T), minimised to second order.

    Per row: (V Q Vᵀ + λI) c = V Q (z - m) + λ c₀, Q = Σ_T (diag p_T - p_T p_Tᵀ) / (2T²),
    c₀ the projection code, λ = ENCODER_RIDGE · mean diag(V Q Vᵀ). Q is blind to a constant
    shift of the row, as softmax is. Where the rank is far too low for a row the second-order
    model fails, so each row keeps whichever of c and c₀ gives the lower exact Σ_T KL_T: the kl
    encoder is never worse than projection, row by row. A row's code is the same bits in any
    batch (sharded dumps rely on it): products run on whole blocks of ENCODE_BLOCK rows.
    """
    z = logits.detach().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
    lead = z.shape[:-1]
    out = [c[:n].float() for n, c, _ in kl_solves(z.reshape(-1, z.shape[-1]), basis, temperatures, batch)]
    codes = torch.cat(out) if out else torch.zeros(0, basis.rank)
    return codes.numpy().reshape(*lead, basis.rank)


def kl_solves(z: np.ndarray, basis: BasisLike, temperatures: Sequence[float] = KL_TEMPERATURES,
              batch: int = ENCODE_BATCH) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(n, codes (b, r), U (b, r, r))`` float64 per batch of rows of ``z`` (N, C), padded to b rows: the kl codes and
    the Cholesky factor of each row's system V Q Vᵀ + λI = Uᵀ U (the KL's second-order metric, which packed rounding uses)."""
    x_all = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))
    mean, comps = basis.as_tensors()
    r, C = comps.shape
    a = [1.0 / (2.0 * T * T) for T in temperatures]
    vt = comps.T.contiguous().double()  # (C, r); float64 where V diag(w) Vᵀ and the p pᵀ terms nearly cancel at T = 1
    step = max(1, min(r, ENCODE_CHUNK_FLOATS // max(1, C * r)))
    # V diag(w) Vᵀ's upper triangle (it is symmetric), rows k..k+step and columns k..r per chunk, in float32: its
    # rounding (~1e-7 relative) is far below the ridge, and float32 is the product's 2x on CPUs (measured: the KL of
    # the codes agrees with a float64 product to 3 digits)
    pairs = [(k, min(step, r - k), (comps.T[:, k:k + step, None] * comps.T[:, None, k:]).reshape(C, -1))
             for k in range(0, r, step)]
    eye = torch.eye(r, dtype=torch.float64)
    batch = -(-batch // ENCODE_BLOCK) * ENCODE_BLOCK
    for s in range(0, len(x_all), batch):
        zz = x_all[s:s + batch].double()
        n = len(zz)
        if n % ENCODE_BLOCK:  # every product sees whole blocks of rows, so a row's code is the same bits in any batch
            zz = torch.cat([zz, zz.new_zeros(ENCODE_BLOCK - n % ENCODE_BLOCK, C)])
        b = len(zz)
        x = zz - mean.double()
        ps = [torch.softmax(zz / T, -1) for T in temperatures]
        w = sum(aT * p for aT, p in zip(a, ps))  # (b, C)
        w32 = w.float()
        G = torch.empty(b, r, r, dtype=torch.float64)
        for k, kk, K in pairs:
            block = (w32 @ K).view(b, kk, r - k)
            G[:, k:k + kk, k:] = block
            G[:, k + kk:, k:k + kk] = block[:, :, kk:].transpose(1, 2)
        c0 = x @ vt  # (b, r): the projection code
        h = (w * x) @ vt
        vps = torch.stack([p @ vt for p in ps], 2)  # (b, r, len(T)): V p_T
        G.baddbmm_(vps * torch.tensor(a, dtype=torch.float64), vps.transpose(1, 2), alpha=-1.0)  # - Σ_T a_T Vp (Vp)ᵀ
        h -= (vps * torch.tensor(a, dtype=torch.float64) * torch.stack([(p * x).sum(-1) for p in ps], 1)[:, None]).sum(-1)
        diag = torch.diagonal(G, dim1=1, dim2=2)
        lam = ENCODER_RIDGE * diag.mean(-1).clamp_min(1e-30)  # (b,)
        diag += lam[:, None]
        h += lam[:, None] * c0
        U, info = torch.linalg.cholesky_ex(G, upper=True)
        failed = info != 0  # not positive definite (not seen): the row keeps its projection code, rounded plainly
        if failed.any():
            U[failed] = eye
        c = torch.cholesky_solve(h.unsqueeze(-1), U, upper=True).squeeze(-1)
        worse = failed | (_kl_sum(zz, c, mean, vt, temperatures) > _kl_sum(zz, c0, mean, vt, temperatures))
        yield n, torch.where(worse[:, None], c0, c), U


def _kl_sum(z: torch.Tensor, codes: torch.Tensor, mean: torch.Tensor, vt: torch.Tensor,
            temperatures: Sequence[float]) -> torch.Tensor:
    """Σ_T KL(p_T ‖ q_T) per row (b,), float64: p from logits z (b, C), q from the rebuilt m + codes Vᵀᵀ."""
    y = mean.double() + codes @ vt.T
    total = torch.zeros(len(z), dtype=torch.float64)
    for T in temperatures:
        log_p, log_q = torch.log_softmax(z / T, -1), torch.log_softmax(y / T, -1)
        total += (log_p.exp() * (log_p - log_q)).sum(-1)
    return total
