"""Top-k targets: the encoding (a pure function of each row), the tail's mass at any T, and the invariants."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdcache.cache.targets import TopK, as_numpy


def reference_encode(row: np.ndarray, k: int) -> tuple[list[float], list[int], float, float]:
    """Plain-Python top-k of one row: by value descending, ties by lower class id; tail stats in float64."""
    order = sorted(range(len(row)), key=lambda j: (-float(row[j]), j))
    top, tail = order[:k], order[k:]
    if not tail:
        return [float(row[j]) for j in top], top, -math.inf, 0.0
    m = max(float(row[j]) for j in tail)
    lse = m + math.log(math.fsum(math.exp(float(row[j]) - m) for j in tail))
    return [float(row[j]) for j in top], top, lse, math.fsum(float(row[j]) for j in tail) / len(tail)


@pytest.fixture
def logits():
    z = np.random.default_rng(0).normal(0, 3, size=(40, 12)).astype(np.float32)
    z[:10] = np.round(z[:10])  # many exact ties, also at the k-th place
    return z


@pytest.mark.parametrize("k", [1, 3, 11, 12])
def test_encode_matches_a_plain_reference(logits, k):
    t = TopK.encode(logits, k)
    assert t.logits.shape == t.classes.shape == (40, k) and t.tail_logsumexp.shape == t.tail_mean.shape == (40,)
    assert t.logits.dtype == np.float32 and t.tail_logsumexp.dtype == np.float32 and t.tail_mean.dtype == np.float32
    for i, row in enumerate(logits):
        values, classes, lse, mean = reference_encode(row, k)
        assert t.classes[i].tolist() == classes
        assert t.logits[i].tolist() == values
        assert t.tail_logsumexp[i] == np.float32(lse) and t.tail_mean[i] == pytest.approx(mean, abs=1e-6)


def test_encode_is_a_pure_function_of_each_row(logits):
    """The same row gives the same bytes alone, in any batch, and with leading (rows, views) dims."""
    whole = TopK.encode(logits, 4)
    views = TopK.encode(logits.reshape(10, 4, 12), 4)
    assert views.logits.shape == (10, 4, 4) and views.tail_mean.shape == (10, 4)
    for i in (0, 7, 39):
        alone = TopK.encode(logits[i:i + 1], 4)
        for f in ("logits", "classes", "tail_logsumexp", "tail_mean"):
            assert getattr(alone, f).tobytes() == getattr(whole, f)[i:i + 1].tobytes()
            assert getattr(views, f).reshape(40, *getattr(whole, f).shape[1:])[i].tobytes() == getattr(whole, f)[i].tobytes()


def test_encode_keeps_the_backend_and_refuses_bad_k(logits):
    t = TopK.encode(torch.from_numpy(logits), 2)
    assert isinstance(t.logits, torch.Tensor) and np.array_equal(t.logits.numpy(), TopK.encode(logits, 2).logits)
    for k in (0, 13):
        with pytest.raises(ValueError, match="k must be in 1..12"):
            TopK.encode(logits, k)


def test_all_classes_kept_has_no_tail(logits):
    t = TopK.encode(logits, 12)
    assert np.isneginf(t.tail_logsumexp).all() and (t.tail_mean == 0).all() and not t.has_tail
    assert torch.equal(t.support_logits(4.0), torch.from_numpy(np.sort(logits, axis=1)[:, ::-1] / 4.0))


def full_tail_mass(z: np.ndarray, classes: np.ndarray, T: float) -> np.ndarray:
    """The teacher's own tail probability at T, in float64 from every logit."""
    z = z.astype(np.float64) / T
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    mask = np.ones_like(p, dtype=bool)
    np.put_along_axis(mask, classes.astype(np.int64), False, axis=1)
    return (p * mask).sum(1)


def test_rebuilt_distribution_has_exactly_the_teachers_tail_mass_at_T1():
    z = np.random.default_rng(1).normal(0, 4, size=(200, 1000)).astype(np.float32)
    z[:, 0] += 25  # peaked rows: the tail's mass is tiny, where a full log-sum-exp would cancel
    t = TopK.encode(z, 10)
    assert torch.equal(t.tail_log_mass(1.0), torch.from_numpy(t.tail_logsumexp))  # stored value, bit for bit
    dense = t.dense_probs(1.0).numpy()  # (200, 1000) float64
    mask = np.ones_like(dense, dtype=bool)
    np.put_along_axis(mask, t.classes, False, axis=1)
    want = full_tail_mass(z, t.classes, 1.0)
    assert want.min() < 1e-6  # really tiny tails are covered
    np.testing.assert_allclose((dense * mask).sum(1), want, rtol=2e-6)
    np.testing.assert_allclose(dense.sum(1), 1.0, rtol=1e-12)
    top = np.take_along_axis(dense, t.classes, axis=1)
    ref = np.exp(z.astype(np.float64) - np.logaddexp.reduce(z.astype(np.float64), axis=1, keepdims=True))
    np.testing.assert_allclose(top, np.take_along_axis(ref, t.classes, axis=1), rtol=2e-6)


def test_tail_mass_is_exact_for_a_flat_tail_at_every_T():
    """Equal tail logits: log Σ exp(z/T) = log n + z/T, which the quadratic must reproduce."""
    z = np.full((3, 50), -2.0, dtype=np.float32)
    z[:, :3] = [[5.0, 4.0, 3.0]]
    t = TopK.encode(z, 3)
    for T in (0.5, 1.0, 4.0, 20.0, 1e4):
        np.testing.assert_allclose(t.tail_log_mass(T).numpy(), math.log(47) - 2.0 / T, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("T", [1.5, 4.0, 20.0, 1e3])
def test_tail_mass_stays_within_what_the_stored_numbers_allow(T):
    """For T >= 1: between Jensen's bound log n + μ/T and the chord (1 - 1/T) log n + L/T, for any tail."""
    g = np.random.default_rng(2)
    z = np.concatenate([g.normal(0, 3, (100, 500)), g.standard_exponential((100, 500)) * 4 - 10], 0).astype(np.float32)
    t = TopK.encode(z, 20)
    n, b = 480, 1.0 / T
    f = t.tail_log_mass(T).numpy().astype(np.float64)
    lo = math.log(n) + b * t.tail_mean.astype(np.float64)
    hi = (1 - b) * math.log(n) + b * t.tail_logsumexp.astype(np.float64)
    assert (f >= lo - 1e-4).all() and (f <= hi + 1e-4).all()
    true = np.log(full_tail_mass(z, t.classes, T)) + np.logaddexp.reduce(z.astype(np.float64) / T, axis=1)
    assert ((true >= lo - 1e-4) & (true <= hi + 1e-4)).all()  # the bounds are the truth's too


def test_below_T1_the_tail_never_outweighs_its_bound():
    z = np.random.default_rng(3).normal(0, 5, size=(50, 100)).astype(np.float32)
    t = TopK.encode(z, 5)
    for T in (0.1, 0.5):
        assert (t.tail_log_mass(T).numpy() <= math.log(95) + t.logits[:, -1] / T + 1e-5).all()


def test_invalid_rows_names_each_broken_invariant(logits):
    t = as_numpy(TopK.encode(logits, 4))
    assert not any(m.any() for m in t.invalid_rows().values())
    bad = t.map(np.copy)
    bad.classes[1, 1] = bad.classes[1, 0]
    bad.classes[2, 0] = 12
    bad.logits[3] = bad.logits[3][::-1]
    bad.tail_logsumexp[4] = bad.logits[4, -1] + 10  # more tail mass than 8 logits below z_k can hold
    bad.tail_mean[5] = np.nan
    bad.tail_logsumexp_t2[6] = (math.log(8) + bad.tail_logsumexp[6]) / 2 + 0.1  # above the chord: not convex
    rows = {reason: np.flatnonzero(m).tolist() for reason, m in bad.invalid_rows().items()}
    assert rows == {"class id outside 0..C-1": [2], "a class kept twice": [1], "values not in descending order": [3],
                    "tail statistics not finite": [5], "tail inconsistent with the kept values": [4, 6]}


def test_the_format_docs_reader_code_rebuilds_what_kdcache_does():
    """docs/cache-format.md's support_probs (for readers without kdcache) against TopK.support_logits."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "cache-format.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if "def support_probs" in b)
    ns: dict = {}
    exec(code, ns)  # noqa: S102 - our own documentation
    g = np.random.default_rng(5)
    z = np.concatenate([g.normal(0, 3, (20, 300)), g.gumbel(0, 2, (20, 300))]).astype(np.float32)
    t = TopK.encode(z, 7)
    for T in (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 20.0):
        want = torch.softmax(t.support_logits(T).double(), dim=1).numpy()
        for i in range(len(z)):
            got = ns["support_probs"](t.logits[i].astype(np.float64), float(t.tail_logsumexp[i]),
                                      float(t.tail_logsumexp_t2[i]), float(t.tail_mean[i]), 300, T)
            np.testing.assert_allclose(got, want[i], rtol=1e-5, atol=1e-9)


def test_stack_joins_single_rows_with_every_array(logits):
    """What a DataLoader collate needs: per-sample TopK rows back into a batch, the T=2 statistic included."""
    from kdcache.cache.targets import stack

    t = TopK.encode(torch.from_numpy(logits), 3)
    batch = stack([t[i] for i in (4, 0, 9)])
    assert batch.logits.shape == (3, 3) and batch.tail_logsumexp_t2.shape == (3,)
    for f in ("logits", "classes", "tail_logsumexp", "tail_mean", "tail_logsumexp_t2"):
        assert torch.equal(getattr(batch, f), getattr(t, f)[[4, 0, 9]])
    assert np.array_equal(stack([logits[1], logits[2]]), logits[1:3])
    with pytest.raises(TypeError, match="tail_logsumexp_t2"):
        TopK(t.logits, t.classes, t.tail_logsumexp, t.tail_mean, 12)  # built by hand without it: loud, not worse
