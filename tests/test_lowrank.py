"""kdcache.cache.lowrank: the low-rank codec's pure functions, against hand computations and exact cases."""
import math

import numpy as np
import pytest
import torch

from kdcache.cache.lowrank import (
    Basis,
    Codec,
    Packing,
    basis_problem,
    check_basis,
    choose_rank,
    code_bytes,
    decode,
    encode,
    fit_basis,
    kl_codes,
    mean_kl,
    measure_kl,
    parse_codec,
    project,
    rank_for_bytes,
    round_trip,
    sample_rows,
    unpack,
    with_packing,
)
from kdcache.errors import CacheError, ConfigError


def low_rank_logits(n=400, c=30, r=5, noise=0.0, seed=0) -> np.ndarray:
    g = np.random.default_rng(seed)
    z = g.normal(0, 3, (n, r)) @ g.normal(0, 1, (r, c)) + g.normal(0, 2, c)
    return (z + noise * g.normal(size=(n, c))).astype(np.float32)


def test_basis_is_orthonormal_deterministic_and_sign_fixed():
    z = low_rank_logits(noise=0.5)
    a, b = fit_basis(z, 8), fit_basis(z.copy(), 8)
    assert a.mean.tobytes() == b.mean.tobytes() and a.components.tobytes() == b.components.tobytes()
    v = a.components.astype(np.float64)
    assert np.abs(v @ v.T - np.eye(8)).max() < 1e-5
    assert (a.components[np.arange(8), np.abs(a.components).argmax(1)] > 0).all()  # largest entry positive
    np.testing.assert_allclose(a.mean, z.astype(np.float64).mean(0), atol=1e-5)
    # the top direction is the one the centred rows vary most along (largest eigenvalue of their covariance)
    x = z.astype(np.float64) - z.mean(0)
    w = np.linalg.eigvalsh(x.T @ x)[::-1]
    assert float(((x @ v[0]) ** 2).sum()) == pytest.approx(w[0], rel=1e-5)
    assert basis_problem(a) is None


def test_exactly_rank_r_logits_are_recovered():
    z = low_rank_logits(r=5)
    basis = fit_basis(z[:300], 5)
    codes = project(z[300:], basis)  # unquantised: exact up to float32 rounding
    err = (decode(codes, np.ones(len(codes), np.float32), basis) - torch.from_numpy(z[300:])).abs().max()
    assert float(err) < 1e-4 * float(np.abs(z).max())
    assert max(measure_kl(z[300:], basis, "float16").values()) < 1e-6


def test_int8_error_is_within_the_quantisation_bound():
    """‖z - decode(encode(z))‖ <= ‖what the dropped directions hold‖ + √r · s / 2 for every row (s: its scale)."""
    z = low_rank_logits(r=6, noise=0.3)
    basis = fit_basis(z[:300], 6)
    held = z[300:]
    q, s = encode(held, basis, "int8", encoder="projection")
    assert q.dtype == np.int8 and s.dtype == np.float32 and np.abs(q).max() == 127
    rebuilt = decode(q, s, basis).double().numpy()
    exact = project(held, basis).astype(np.float64) @ basis.components.astype(np.float64) + basis.mean
    dropped = np.linalg.norm(held - exact, axis=1)
    err = np.linalg.norm(held - rebuilt, axis=1)
    assert (err <= dropped + math.sqrt(6) * s / 2 + 1e-4).all()
    assert (np.linalg.norm(rebuilt - exact, axis=1) <= math.sqrt(6) * s / 2 + 1e-4).all()
    f16 = round_trip(held, basis, "float16", encoder="projection").double().numpy()
    code_norm = np.linalg.norm(project(held, basis), axis=1)
    assert (np.linalg.norm(f16 - exact, axis=1) <= 2.0 ** -11 * code_norm + 1e-4).all()  # float16: half an ulp a code


def test_encode_keeps_views_axis_and_zero_rows():
    z = low_rank_logits(n=40, r=3).reshape(10, 4, 30)
    basis = fit_basis(z, 3)
    q, s = encode(z, basis)
    assert q.shape == (10, 4, 3) and s.shape == (10, 4)
    assert decode(q, s, basis).shape == (10, 4, 30)
    q0, s0 = encode(basis.mean[None], basis)  # a row at the mean: all-zero code, scale 1
    assert (q0 == 0).all() and s0[0] == 1.0


def test_mean_kl_matches_a_hand_computation():
    p_logits = np.array([[2.0, 0.0, -1.0]])
    q_logits = np.array([[1.0, 0.5, -1.0]])
    for T in (1.0, 2.0, 4.0):
        p = np.exp(p_logits[0] / T) / np.exp(p_logits[0] / T).sum()
        q = np.exp(q_logits[0] / T) / np.exp(q_logits[0] / T).sum()
        assert mean_kl(p_logits, q_logits)[T] == pytest.approx(float((p * np.log(p / q)).sum()), rel=1e-12)
    z = low_rank_logits(noise=1.0)
    basis = fit_basis(z[:300], 4)
    assert measure_kl(z[300:], basis, batch=7) == pytest.approx(mean_kl(z[300:], round_trip(z[300:], basis)), rel=1e-8)


def head_and_noisy_tail(n=300, c=40, r=4, seed=0) -> np.ndarray:
    """Rank-r logits plus noise that grows with the square of a class's distance d below the row's top (0.02 d²):
    most of the variance sits in a tail that holds little mass at T <= 4, as in a many-class teacher's logits."""
    g = np.random.default_rng(seed)
    s = g.normal(0, 2.0, (n, r)) @ g.normal(0, 1, (r, c))
    return (s + 0.02 * (s.max(1, keepdims=True) - s) ** 2 * g.normal(size=(n, c))).astype(np.float32)


def _second_order_kl(z: np.ndarray, rebuilt: np.ndarray) -> np.ndarray:
    """Σ_T eᵀ Q_T e / (2T²) per row, Q_T = diag(p_T) - p_T p_Tᵀ, e = z - rebuilt: written out, in float64."""
    out = np.zeros(len(z))
    for i, (zi, yi) in enumerate(zip(z.astype(np.float64), rebuilt.astype(np.float64))):
        e = zi - yi
        for T in (1.0, 2.0, 4.0):
            p = np.exp((zi - zi.max()) / T)
            p /= p.sum()
            out[i] += e @ (np.diag(p) - np.outer(p, p)) @ e / (2 * T * T)
    return out


def test_kl_codes_solve_the_second_order_problem_of_each_row():
    """Each row's kl code is the dense solve written out here, (V Q Vᵀ + λI) c = V Q x + λ c₀, or, where that
    code's exact KL is the higher, the projection code c₀; it beats projection on the second-order objective."""
    z = head_and_noisy_tail()
    basis = fit_basis(z[:200], 4)
    rows = z[200:260]
    c = kl_codes(rows, basis).astype(np.float64)
    mean, V = basis.mean.astype(np.float64), basis.components.astype(np.float64)
    c0 = project(rows, basis).astype(np.float64)
    solved = 0
    for i, zi in enumerate(rows.astype(np.float64)):
        Q = 0.0
        for T in (1.0, 2.0, 4.0):
            p = np.exp((zi - zi.max()) / T)
            p /= p.sum()
            Q = Q + (np.diag(p) - np.outer(p, p)) / (2 * T * T)
        G, x = V @ Q @ V.T, zi - mean
        lam = 1e-3 * np.trace(G) / len(G)
        ref = np.linalg.solve(G + lam * np.eye(len(G)), V @ Q @ x + lam * (V @ x))
        if np.allclose(c[i], ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max()):
            solved += 1
        else:
            np.testing.assert_allclose(c[i], c0[i], rtol=1e-5, atol=1e-5)
    assert solved >= 50  # the solve wins on (almost) every row of these
    best = _second_order_kl(rows, mean + c @ V)
    proj = _second_order_kl(rows, mean + c0 @ V)
    assert best.mean() < 0.5 * proj.mean()


def test_kl_codes_keep_the_softmax_where_projection_spends_the_code_on_the_tail():
    z = head_and_noisy_tail(n=600)
    basis = fit_basis(z[:400], 4)
    kl, proj = measure_kl(z[400:], basis), measure_kl(z[400:], basis, encoder="projection")
    # measured 0.067 / 0.088 / 0.064 against 0.26 / 0.17 / 0.080: the gain is largest where p_T is peaked
    assert kl[1.0] < 0.3 * proj[1.0] and kl[2.0] < 0.6 * proj[2.0] and kl[4.0] < proj[4.0], (kl, proj)
    # and where the logits are exactly low-rank both encoders rebuild them (the ridge pulls to the projection)
    exact = low_rank_logits(r=5)
    b5 = fit_basis(exact[:300], 5)
    assert max(measure_kl(exact[300:], b5, "float16").values()) < 1e-6
    np.testing.assert_allclose(kl_codes(exact[300:], b5), project(exact[300:], b5), atol=1e-3)


def test_kl_codes_are_never_worse_than_projection_row_by_row():
    """At a rank far too low the second-order model misleads; each row then keeps its projection code."""
    z = head_and_noisy_tail(n=200, r=12)
    basis = fit_basis(z, 2)
    exact = [mean_kl(z[i:i + 1], round_trip(z[i:i + 1], basis, "float16", e)) for e in ("kl", "projection")
             for i in range(len(z))]
    kl_rows, proj_rows = exact[:len(z)], exact[len(z):]
    assert all(sum(k.values()) <= sum(p.values()) + 1e-4 for k, p in zip(kl_rows, proj_rows))


def test_a_row_has_the_same_code_bytes_in_any_batch():
    """Sharded dumps code their rows in other batches than a one-process dump, and must write the same bytes."""
    z = head_and_noisy_tail(n=260)
    basis = fit_basis(z, 8)
    whole = encode(z, basis)
    for size in (1, 7, 64, 100):
        parts = [encode(z[s:s + size], basis) for s in range(0, len(z), size)]
        assert np.concatenate([q for q, _ in parts]).tobytes() == whole[0].tobytes()
        assert np.concatenate([s for _, s in parts]).tobytes() == whole[1].tobytes()


def test_choose_rank_with_kl_codes_needs_no_more_rank_than_projection():
    z = head_and_noisy_tail(n=700)
    full = fit_basis(z[:500], 40)
    proj = choose_rank(full, z[500:], 0.01, encoder="projection")
    kl = choose_rank(full, z[500:], 0.01)
    assert kl.encoder == "kl" and proj.encoder == "projection" and kl.rank < proj.rank
    assert max(kl.kl.values()) <= 0.01 < max(measure_kl(z[500:], full.truncate(kl.rank - 1)).values())


def test_choose_rank_picks_the_smallest_rank_meeting_the_budget():
    z = low_rank_logits(n=600, c=24, r=12, noise=0.05, seed=3)
    fit, held = z[:400], z[400:]
    full = fit_basis(fit, 24)
    worst = {r: max(measure_kl(held, full.truncate(r)).values()) for r in range(1, 25)}
    budget = 1e-3
    choice = choose_rank(full, held, budget)
    smallest = min(r for r, w in worst.items() if w <= budget)
    assert choice.rank == smallest and worst[smallest - 1] > budget
    assert max(choice.kl.values()) == pytest.approx(worst[smallest]) and len(choice.tried) < 24


def test_a_budget_no_rank_meets_names_the_closest_rank():
    z = low_rank_logits(noise=1.0)
    basis = fit_basis(z[:300], 10)
    with pytest.raises(ConfigError) as e:
        choose_rank(basis, z[300:], 1e-9)
    def worst(r):  # the refusal measures projected codes: cheap at every rank, and exact codes at full rank
        return max(measure_kl(z[300:], basis.truncate(r), encoder="projection").values())

    closest = min(range(1, 11), key=worst)
    msg = str(e.value)
    assert "no rank up to 10 meets the KL budget 1e-09" in msg and f"rank {closest} comes closest" in msg
    assert f"worst mean KL {worst(closest):.3g}" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("rank, rows, needle", [(31, 400, "outside 1..30 (30 classes)"),
                                                (20, 12, "outside 1..12 (12 rows to fit on)"),
                                                (0, 400, "outside 1..30 (30 classes); a basis has at most min(classes, "
                                                         "rows) components: give a rank of at least 1")])
def test_rank_beyond_classes_or_rows_is_refused(rank, rows, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        fit_basis(low_rank_logits(n=rows), rank)


def test_code_dtype_that_cannot_hold_the_codes_is_refused():
    g = np.random.default_rng(0)
    sign = g.choice([-1.0, 1.0], size=(50, 1))  # rows of all +9000 or all -9000: codes of ±9e4, beyond float16's 65504
    z = (sign * 9000.0 + g.normal(0, 1, (50, 100))).astype(np.float32)
    basis = fit_basis(z, 4)
    with pytest.raises(ConfigError, match="beyond float16's 65504: float16 cannot hold these codes"):
        encode(z, basis, "float16")
    q, s = encode(z, basis, "int8")  # a per-row scale holds any magnitude
    assert np.isfinite(s).all()
    with pytest.raises(ConfigError, match="cannot hold low-rank codes; choose one of int8, float16, packed"):
        encode(z, basis, "uint8")


def test_corrupt_bases_are_named():
    basis = fit_basis(low_rank_logits(), 4)
    nan = Basis(basis.mean.copy(), basis.components.copy())
    nan.components[1, 2] = np.nan
    assert basis_problem(nan) == "the basis holds NaN/Inf"
    scaled = Basis(basis.mean, basis.components * 1.5)
    assert "not orthonormal" in basis_problem(scaled)
    assert "do not fit" in basis_problem(Basis(basis.mean[:5], basis.components))
    with pytest.raises(CacheError, match="c.h5: the basis holds NaN/Inf: the low-rank basis is corrupt"):
        check_basis(nan, "c.h5")


def test_codec_strings_bytes_and_samples():
    assert parse_codec("lowrank") == Codec(None, "packed", "kl", 5.0) == Codec()
    assert parse_codec("lowrank:rank=64,dtype=float16,encoder=projection") == Codec(64, "float16", "projection")
    assert parse_codec("lowrank:dtype=packed,bits=4.5") == Codec(dtype="packed", bits=4.5) == parse_codec("lowrank:bits=4.5")
    for bad, needle in (("pca", "unknown codec"), ("lowrank:rank=x", "integer"), ("lowrank:dtype=int4", "int4"),
                        ("lowrank:size=3", "unknown codec option"), ("lowrank:encoder=pca", "unknown low-rank encoder"),
                        ("lowrank:dtype=int8,bits=4", "use dtype=packed .the default. or drop bits="),
                        ("lowrank:rank=8,rank=9", "'rank' given twice"), ("lowrank:dtype=packed,bits=17", r"in \(0, 16\]"),
                        ("lowrank:dtype=packed,bits=x", "must be a number")):
        with pytest.raises(ConfigError, match=needle):
            parse_codec(bad)
    assert code_bytes(64, "int8") == 68 and code_bytes(64, "float16") == 128 and rank_for_bytes(52) == 48
    assert code_bytes(121, "packed") == 76 and rank_for_bytes(76, "packed") == 121 and code_bytes(3, "packed", 3) == 2
    fit, held = sample_rows(100)
    assert len(fit) == 80 and len(held) == 20 and not set(fit) & set(held)
    fit2, held2 = sample_rows(30_000)
    assert (len(fit2), len(held2)) == (20_000, 5_000) and np.array_equal(fit2, sample_rows(30_000)[0])


# -- packed codes -------------------------------------------------------------------------------------


def test_packing_spends_bits_where_codes_vary_and_spans_them():
    z = head_and_noisy_tail(n=400, r=12)
    basis = fit_basis(z, 10)
    packed = with_packing(basis, z, bits=3.0, encoder="projection")
    bits = packed.packing.bits.astype(int)
    var = project(z, basis).var(0)
    assert bits.sum() == 30 and packed.packing.row_bytes == 4
    assert all(bits[i] >= bits[j] for i in range(10) for j in range(10) if var[i] > 4 * var[j])  # more variance, more bits
    c = np.abs(project(z, basis))
    used = bits > 0
    span = packed.packing.steps[used] * 2.0 ** bits[used] / 2  # ± span covers the 99.9th percentile of |code|
    np.testing.assert_allclose(span, np.percentile(c, 99.9, axis=0)[used], rtol=1e-5)
    with pytest.raises(ConfigError, match="give 1/10 to 16 bits a component"):
        with_packing(basis, z, bits=17.0)
    assert basis.truncate(5).packing is None and basis_problem(packed) is None
    broken = Basis(packed.mean, packed.components, Packing(packed.packing.bits, -packed.packing.steps))
    assert basis_problem(broken) == "the packing's steps are not finite and positive"


def test_projection_packed_codes_round_each_component_to_its_nearest_level():
    z = head_and_noisy_tail(n=300)
    basis = with_packing(fit_basis(z, 6), z, bits=4.0, encoder="projection")
    codes, scales = encode(z, basis, "packed", "projection")
    assert scales is None and codes.dtype == np.uint8 and codes.shape == (300, 3)
    c = project(z, basis).astype(np.float64)
    steps, bits = basis.packing.steps.astype(np.float64), basis.packing.bits.astype(np.int64)
    top = 2.0 ** bits - 1
    levels = np.clip(np.floor(c / steps + 2.0 ** (bits - 1)), 0, top)  # the cell each code falls in, clipped
    np.testing.assert_allclose(unpack(torch.from_numpy(codes), basis.packing).numpy(),
                               (levels - (2.0 ** (bits - 1) - 0.5)) * steps, rtol=1e-6)


def power_law_logits(n=1200, c=150, decay=0.8, scale=15.0, seed=0) -> np.ndarray:
    """Logits with no low rank: singular values scale · k^-decay in random directions, as a many-class teacher's decay."""
    g = np.random.default_rng(seed)
    q, _ = np.linalg.qr(g.normal(size=(c, c)))
    return ((g.normal(size=(n, c)) * scale * np.arange(1, c + 1) ** -decay) @ q.T).astype(np.float32)


def test_packed_kl_codes_beat_int8_codes_of_the_same_bytes_where_logits_are_not_low_rank():
    """The same 40 bytes a row: rank 36 int8 (+ a 4-byte scale) against rank 64 packed at 5 bits, KL-rounded."""
    z = power_law_logits()
    basis = fit_basis(z[:800], 64)
    packed = with_packing(basis, z[:800], bits=5.0)
    assert code_bytes(36, "int8") == packed.packing.row_bytes == 40
    int8 = measure_kl(z[800:], basis.truncate(36))
    pk = measure_kl(z[800:], packed, "packed")
    nearest = mean_kl(z[800:], decode(encode(z[800:], packed, "packed", "projection")[0], None, packed))
    # measured 0.017 / 0.0094 / 0.0034 against int8's 0.041 / 0.019 / 0.0062
    assert all(pk[T] < 0.7 * int8[T] for T in pk), (pk, int8)
    # projected codes rounded to the nearest level: 0.044 / 0.012 / 0.0031 (the kl encoder weighs T = 1 most)
    assert pk[1.0] < 0.5 * nearest[1.0] and pk[2.0] < nearest[2.0], (pk, nearest)


def test_a_row_has_the_same_packed_bytes_in_any_batch():
    z = head_and_noisy_tail(n=260)
    basis = with_packing(fit_basis(z, 12), z, bits=5.0)
    whole, _ = encode(z, basis, "packed")
    for size in (1, 7, 64, 100):
        parts = [encode(z[s:s + size], basis, "packed")[0] for s in range(0, len(z), size)]
        assert np.concatenate(parts).tobytes() == whole.tobytes()


def test_choose_rank_for_packed_codes_meets_the_budget_in_fewer_bytes():
    z = power_law_logits()
    full = fit_basis(z[:800], 150)
    int8 = choose_rank(full, z[800:], 0.02)
    packed = choose_rank(full, z[800:], 0.02, "packed", fit_sample=z[:800])
    assert packed.basis is not None and packed.basis.rank == packed.rank
    assert max(packed.kl.values()) <= 0.02 < packed.tried[packed.rank - 1]
    assert packed.basis.packing.row_bytes < code_bytes(int8.rank, "int8")
    with pytest.raises(ConfigError, match="packed codes at 0.5 bits a component miss the KL budget"):
        choose_rank(full, z[800:], 0.02, "packed", fit_sample=z[:800], bits=0.5)
