"""kdcache.cache.packing: the packed layout by hand, every bit width, allocation and rounding."""
import numpy as np
import torch

from kdcache.cache.packing import Packing, fit_packing, pack, quantise, unpack


def test_packed_layout_is_the_documented_one():
    """bits (3, 0, 5, 9, 0, 0): component k at bit offset Σ bits[:k], little-endian; level v is (v - 2^(b-1) + 1/2) · step.
    Components of 0 bits (the last ones too, whose offset is past the last byte) are 0."""
    packing = Packing(np.array([3, 0, 5, 9, 0, 0], np.uint8), np.array([0.5, 1.0, 0.25, 2.0, 1.0, 1.0], np.float32))
    assert packing.row_bytes == 3  # 17 bits
    levels = np.array([[5, 0, 17, 300, 0, 0], [0, 0, 31, 511, 0, 0]])
    got = pack(levels, packing)
    for row, lv in zip(got, levels):  # by hand: the row as one integer, component k shifted to its offset
        word = int(lv[0]) | int(lv[2]) << 3 | int(lv[3]) << 8
        assert row.tolist() == [word & 255, word >> 8 & 255, word >> 16 & 255]
    values = unpack(torch.from_numpy(got), packing)
    expect = [[(5 - 3.5) * 0.5, 0.0, (17 - 15.5) * 0.25, (300 - 255.5) * 2.0, 0.0, 0.0],
              [(0 - 3.5) * 0.5, 0.0, (31 - 15.5) * 0.25, (511 - 255.5) * 2.0, 0.0, 0.0]]
    assert values.tolist() == expect


def test_pack_and_unpack_round_trip_random_levels_at_every_width():
    g = np.random.default_rng(0)
    bits = np.arange(17, dtype=np.uint8)  # 0..16 bits: a level spans up to three bytes
    packing = Packing(bits, np.full(17, 0.125, np.float32))
    levels = g.integers(0, 2 ** bits.astype(np.int64), size=(50, 17))
    values = unpack(torch.from_numpy(pack(levels, packing)), packing).numpy().astype(np.float64)
    np.testing.assert_array_equal(values, (levels - (2.0 ** (bits.astype(np.int64) - 1) - 0.5)) * 0.125)


def test_fit_packing_gives_bits_by_variance_and_spans_the_percentile():
    g = np.random.default_rng(0)
    codes = g.normal(size=(4000, 4)) * np.array([8.0, 4.0, 1.0, 0.0])  # variances 64, 16, 1, 0
    p = fit_packing(codes, total_bits=12)
    bits, var = p.bits.astype(int), codes.var(0)
    assert bits.sum() == 12 and bits[3] == 0 and bits[0] >= bits[1] >= bits[2] >= 1
    # no bit could move to a better place: each component's last bit was worth at least any other's next one
    for i in np.flatnonzero(bits):
        assert all(var[i] / 4.0 ** (bits[i] - 1) >= var[j] / 4.0 ** bits[j] for j in range(4) if j != i)
    span = p.steps[:3].astype(np.float64) * 2.0 ** p.bits[:3] / 2
    np.testing.assert_allclose(span, np.percentile(np.abs(codes[:, :3]), 99.9, axis=0), rtol=1e-5)
    assert np.isfinite(p.steps).all() and (p.steps > 0).all()


def test_quantise_nearest_and_nearest_plane():
    """Nearest rounding picks each component's cell; nearest plane with U = I is the same, and with a U that couples
    two components it lowers the error in that metric (a coarse component's error paid back by a finer one)."""
    p = Packing(np.array([4, 1], np.uint8), np.array([0.5, 2.0], np.float32))
    c = torch.tensor([[0.3, 0.9], [-1.1, -3.0], [9.0, 0.1]], dtype=torch.float64)
    near = quantise(c, None, p)
    assert near.tolist() == [[8, 1], [5, 0], [15, 1]]  # floor(c / step + 2^(b-1)), clipped to 0..2^b - 1
    eye = torch.eye(2, dtype=torch.float64).expand(3, 2, 2)
    assert torch.equal(quantise(c, eye, p), near)
    g = torch.tensor([[4.0, 3.9], [3.9, 4.0]], dtype=torch.float64)  # errors along (1, -1) are cheap, (1, 1) dear
    U = torch.linalg.cholesky(g, upper=True).expand(200, 2, 2)
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1.5, 1.5, (200, 2)))

    def cost(levels):
        err = (levels.double() - torch.tensor([7.5, 0.5], dtype=torch.float64)) * torch.tensor([0.5, 2.0],
                                                                                                dtype=torch.float64) - x
        return torch.einsum("ni,ij,nj->n", err, g, err).mean()

    assert cost(quantise(x, U, p)) < 0.5 * cost(quantise(x, None, p))
