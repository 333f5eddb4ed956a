"""Packed low-rank codes: a fixed number of bits a row, spread over the components by their variance.

int8 codes give every component 8 bits; on a teacher whose logits are not low-rank, the bits
bought precision that did not matter where more components would have (docs/results/lowrank.md).
A ``Packing`` fixes, once per cache, each component's bit width (0..16) and step; a row's code
is its components' levels bit-packed into whole bytes. This module is the bit layer only: the
allocation from sample codes (``fit_packing``), rounding to levels (``quantise``, plainly or in a
row's KL metric), and ``pack``/``unpack``. kdcache.cache.lowrank chooses the codes.

    packing = fit_packing(codes_of_a_sample, total_bits=605)   # (r,) bits and steps
    levels = quantise(codes, None, packing)                     # nearest level of each component
    row_bytes = pack(levels.numpy(), packing)                   # (n, ceil(605 / 8)) uint8
    values = unpack(row_bytes, packing)                         # (n, r) float32 code values
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

# Mean bits a component (rank 121 at 5 bits fills int8 rank-72's 76 bytes, and measured ~6x lower KL at T = 2, 4 on
# teacher c of docs/results/lowrank.md than rank 96 at 6.3 bits or rank 160 at 3.8), the most bits one component
# gets, and the |code| percentile a component's levels span (its rare larger values are clipped).
DEFAULT_PACKED_BITS = 5.0
PACKED_MAX_BITS = 16
PACKED_CLIP_PERCENTILE = 99.9
PACKING_FIT_ROWS = 5_000  # rows whose codes a packing (bits and steps) is fitted on




@dataclass(frozen=True)
class Packing:
    """How a packed code lays out its components, the same for every row of a cache.

    Component k takes ``bits[k]`` bits (0..16) at bit offset sum(bits[:k]) of the row's bytes,
    little-endian (bit i of a row is bit i % 8 of its byte i // 8). Its unsigned level v stands
    for (v - 2^(b-1) + 1/2) · steps[k]: 2^b cells of width steps[k] centred on 0 (a component of
    0 bits is 0).
    """

    bits: np.ndarray  # (r,) uint8
    steps: np.ndarray  # (r,) float32 > 0

    @property
    def row_bytes(self) -> int:
        return -(-int(self.bits.astype(np.int64).sum()) // 8)

    @cached_property
    def _tables(self) -> dict[str, Any]:
        bits = torch.from_numpy(self.bits.astype(np.int64))
        offsets = torch.cumsum(bits, 0) - bits
        byte = torch.where(bits > 0, offsets // 8, 0)  # (a 0-bit component past the last byte reads byte 0, masked)
        width = 2 if int(bits.max()) <= 9 else 3  # bytes a level can span: shift (< 8) + bits
        return {"shift": (offsets % 8).int(), "mask": ((1 << bits) - 1).int(), "bits": bits, "width": width,
                "gather": (byte[:, None] + torch.arange(width)).reshape(-1),  # each component's bytes, in order
                "centre": torch.exp2(bits.double() - 1) - 0.5, "steps": torch.from_numpy(self.steps.astype(np.float32))}

    def levels(self, codes: torch.Tensor) -> torch.Tensor:
        """(n, row_bytes) uint8 -> (n, r) int32 levels: one gather of each component's 2 or 3 bytes, a shift, a mask."""
        t = self._tables
        n, width = len(codes), t["width"]
        g = torch.nn.functional.pad(codes, (0, width - 1))[:, t["gather"]].view(n, -1, width).to(torch.int32)
        word = g[..., 0] | (g[..., 1] << 8)
        if width == 3:
            word = word | (g[..., 2] << 16)
        return (word >> t["shift"]) & t["mask"]


def fit_packing(codes: np.ndarray, total_bits: int) -> Packing:
    """The Packing of ``total_bits`` a row for codes like these (n, r), n >= 1.

    Bits go one at a time to the component whose code variance, divided by 4 per bit it already
    has, is largest (each bit quarters a uniform quantiser's squared error): the classic
    allocation for the least total squared error. A component's 2^b levels span ± its
    PACKED_CLIP_PERCENTILE-th |code| percentile; rarer larger codes are clipped.
    """
    c = np.asarray(codes, dtype=np.float64).reshape(-1, np.shape(codes)[-1])
    r = c.shape[1]
    var = c.var(0)
    nbits = np.zeros(r, dtype=np.int64)
    for _ in range(total_bits):
        gain = np.where(nbits < PACKED_MAX_BITS, var * 4.0 ** -nbits, -1.0)
        nbits[int(np.argmax(gain))] += 1
    span = np.percentile(np.abs(c), PACKED_CLIP_PERCENTILE, axis=0)
    span = np.where(span > 0, span, np.abs(c).max(0, initial=0.0))
    span = np.where(span > 0, span, 1.0)
    steps = (2.0 * span / 2.0 ** nbits).astype(np.float32)
    return Packing(nbits.astype(np.uint8), np.maximum(steps, np.finfo(np.float32).tiny))


def quantise(c: torch.Tensor, U: torch.Tensor | None, packing: Packing) -> torch.Tensor:
    """Levels (b, r) int64 of float64 codes ``c`` (b, r): nearest (U None) or nearest-plane in each row's metric Uᵀ U.

    Nearest plane (Babai): with G = Uᵀ U, component k (last first) is rounded after moving its
    target by the error already made on the later ones, weighted as the row's KL weighs them,
    so a coarse component's error is partly paid back by finer ones.
    """
    t = packing._tables
    steps, centre, top = t["steps"].double(), t["centre"], t["mask"].double()

    def level(k: Any, target: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.floor(target / steps[k] + centre[k] + 0.5).clamp_min(0), top[k]).long()

    if U is None:
        return level(slice(None), c)
    levels = torch.zeros(c.shape, dtype=torch.long)
    err = torch.zeros_like(c)
    for k in range(c.shape[1] - 1, -1, -1):
        target = c[:, k] - (U[:, k, k + 1:] * err[:, k + 1:]).sum(-1) / U[:, k, k]
        levels[:, k] = level(k, target)
        err[:, k] = (levels[:, k] - centre[k]) * steps[k] - c[:, k]
    return levels


def pack(levels: np.ndarray, packing: Packing) -> np.ndarray:
    """(n, r) unsigned levels -> (n, row_bytes) uint8, each level in its component's bits (Packing's layout)."""
    bits = packing.bits.astype(np.int64)
    comp = np.repeat(np.arange(len(bits)), bits)
    pos = np.arange(int(bits.sum())) - np.repeat(np.cumsum(bits) - bits, bits)  # the bit of its level each bit is
    bitmat = ((levels[:, comp] >> pos) & 1).astype(np.uint8)
    return np.packbits(bitmat, axis=1, bitorder="little").reshape(len(levels), packing.row_bytes)


def unpack(codes: Any, packing: Packing) -> torch.Tensor:
    """(n, row_bytes) uint8 packed codes -> (n, r) float32 code values (v - 2^(b-1) + 1/2) · step."""
    t = packing._tables
    return (packing.levels(torch.as_tensor(codes)).float() - t["centre"].float()) * t["steps"]
