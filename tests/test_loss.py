"""kd_loss against a hand-written reference, at the edges, and its gradients."""
import math

import pytest
import torch
import torch.nn.functional as F

from kdcache.errors import ConfigError
from kdcache.train.loss import kd_loss


def reference_kd(s, t, y, T, alpha):
    """Plain-Python (1-a)·CE + a·T²·KL(p_t ‖ p_s), with explicit softmax sums, mean over the batch."""
    total = 0.0
    for srow, trow, label in zip(s.tolist(), t.tolist(), y.tolist()):
        zs = sum(math.exp(v) for v in srow)
        ce = -(srow[label] - math.log(zs))
        es = [math.exp(v / T) for v in srow]
        et = [math.exp(v / T) for v in trow]
        ps = [v / sum(es) for v in es]
        pt = [v / sum(et) for v in et]
        kl = sum(p * (math.log(p) - math.log(q)) for p, q in zip(pt, ps))
        total += (1 - alpha) * ce + alpha * T * T * kl
    return total / len(y)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(8, 10, generator=g, dtype=torch.float64) * 3
    t = torch.randn(8, 10, generator=g, dtype=torch.float64) * 5
    y = torch.randint(0, 10, (8,), generator=g)
    return s, t, y


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 20.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_matches_reference(batch, T, alpha):
    s, t, y = batch
    got = kd_loss(s, t, y, temperature=T, alpha=alpha).item()
    assert got == pytest.approx(reference_kd(s, t, y, T, alpha), rel=1e-5, abs=1e-6)


def test_alpha_zero_is_cross_entropy_and_needs_no_teacher(batch):
    s, _, y = batch
    assert kd_loss(s.float(), None, y, 4.0, 0.0).item() == pytest.approx(F.cross_entropy(s.float(), y).item())


def test_alpha_one_ignores_labels(batch):
    s, t, y = batch
    assert kd_loss(s, t, y, 4.0, 1.0).item() == pytest.approx(kd_loss(s, t, (y + 1) % 10, 4.0, 1.0).item())


def test_zero_when_student_equals_teacher():
    z = torch.randn(4, 10)
    assert kd_loss(z, z, torch.zeros(4, dtype=torch.long), 4.0, 1.0).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.filterwarnings("ignore:reduction")
def test_batchmean_not_mean_over_classes(batch):
    """nn.KLDivLoss()'s default also divides by the number of classes: that is 10x too small here."""
    s, t, y = batch
    T = 2.0
    wrong = torch.nn.KLDivLoss()(F.log_softmax(s / T, 1), F.softmax(t / T, 1)) * T * T
    right = kd_loss(s, t, y, T, 1.0)
    assert right.item() == pytest.approx(wrong.item() * 10, rel=1e-6)


def seed_sketch_loss(student_logits, teacher_logits, labels, T, alpha):
    """The original sketch's bug: log_softmax of the *teacher* as input -> no soft gradient for the student."""
    hard = F.cross_entropy(student_logits, labels)
    soft = torch.nn.KLDivLoss()(F.log_softmax(teacher_logits / T, 1), F.softmax(teacher_logits / T, 1)) * T * T
    return (1 - alpha) * hard + alpha * soft


def soft_gradient(loss_fn, s, t, y):
    s = s.clone().requires_grad_(True)
    loss_fn(s, t, y, 4.0, 1.0 - 1e-9).backward()  # (almost) only the soft term
    return s.grad


@pytest.mark.filterwarnings("ignore:reduction")
def test_soft_gradient_reaches_student(batch):
    s, t, y = batch
    g = soft_gradient(kd_loss, s, t, y)
    # d/ds of T²·KL at temperature T is T·(softmax(s/T) - softmax(t/T)) / B
    expected = 4.0 * (F.softmax(s / 4.0, 1) - F.softmax(t / 4.0, 1)) / s.shape[0]
    torch.testing.assert_close(g, expected, rtol=1e-5, atol=1e-7)
    # The seed sketch's loss gives the student no soft gradient: the same check fails for it.
    assert not torch.allclose(soft_gradient(seed_sketch_loss, s, t, y), expected, atol=1e-4)


def test_teacher_gets_no_gradient(batch):
    s, t, y = batch
    s, t = s.clone().requires_grad_(True), t.clone().requires_grad_(True)
    kd_loss(s, t, y, 4.0, 0.5).backward()
    assert t.grad is None and s.grad is not None


def test_stable_for_large_logits_and_temperatures():
    s = torch.tensor([[1000.0, -1000.0, 0.0]])
    t = torch.tensor([[-1000.0, 1000.0, 0.0]])
    y = torch.tensor([0])
    for T in (0.05, 1.0, 20.0, 1e4):
        assert torch.isfinite(kd_loss(s, t, y, T, 0.5))


def test_float16_inputs_are_computed_in_float32(batch):
    s, t, y = batch
    ref = kd_loss(s.float(), t.float(), y, 20.0, 0.5)
    half = kd_loss(s.half(), t.half(), y, 20.0, 0.5)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(ref.item(), rel=1e-2)


@pytest.mark.parametrize("T", [0.0, -1.0, float("nan"), float("inf")])
def test_rejects_bad_temperature(batch, T):
    s, t, y = batch
    with pytest.raises(ConfigError, match="temperature"):
        kd_loss(s, t, y, T, 0.5)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_rejects_bad_alpha(batch, alpha):
    s, t, y = batch
    with pytest.raises(ConfigError, match="alpha"):
        kd_loss(s, t, y, 4.0, alpha)


# ----------------------------------------------------------------------------------------- top-k targets

def reference_tail(L: float, mu: float, L2: float, n: int, zk: float, T: float) -> float:
    """The tail's log-mass at T from its stored statistics, written out again (docs/cache-format.md)."""
    if T == 1.0:
        return L
    if T == 2.0:
        return L2
    b, ln = 1.0 / T, math.log(n)
    mu = min(mu, L - ln)
    r1, r2 = L - ln - mu, L2 - ln - mu / 2
    f = ln + mu * b + (8 * r2 - r1) * b ** 2 + (2 * r1 - 8 * r2) * b ** 3
    tangent, near, far = ln + mu * b, ln + 2 * b * (L2 - ln), L2 + (2 * b - 1) * (L - L2)
    lower, upper = ((max(tangent, far), near) if b <= 0.5 else (max(tangent, near), far) if b <= 1
                    else (max(tangent, far), ln + b * zk))
    return min(max(f, lower), upper)


def reference_topk_kd(s, teacher, y, T, alpha):
    """Plain-Python loss over [k kept classes, one tail bucket], both sides normalised over that support."""
    total = 0.0
    C, k = teacher.num_classes, teacher.k
    for i, (srow, label) in enumerate(zip(s.tolist(), y.tolist())):
        kept = [int(c) for c in teacher.classes[i]]
        ce = -(srow[label] - math.log(sum(math.exp(v) for v in srow)))
        t_top = [float(v) / T for v in teacher.logits[i]]
        tail = reference_tail(float(teacher.tail_logsumexp[i]), float(teacher.tail_mean[i]),
                              float(teacher.tail_logsumexp_t2[i]), C - k, float(teacher.logits[i][-1]), T)
        zt = sum(math.exp(v) for v in t_top) + math.exp(tail)
        p = [math.exp(v) / zt for v in t_top] + [math.exp(tail) / zt]
        es = [math.exp(v / T) for v in srow]
        q_all = [v / sum(es) for v in es]
        q = [q_all[c] for c in kept] + [sum(q_all[c] for c in range(C) if c not in kept)]
        kl = sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
        total += (1 - alpha) * ce + alpha * T * T * kl
    return total / len(y)


@pytest.fixture
def topk_batch():
    from kdcache.cache.targets import TopK

    g = torch.Generator().manual_seed(1)
    s = torch.randn(6, 40, generator=g, dtype=torch.float64) * 3
    z = torch.randn(6, 40, generator=g) * 4
    z[:, 3] += 12  # a peaked teacher
    y = torch.randint(0, 40, (6,), generator=g)
    return s, TopK.encode(z.numpy(), 5), y


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 20.0])
@pytest.mark.parametrize("alpha", [0.5, 1.0])
@pytest.mark.parametrize("rebuild", ["bucket", "spread"])
def test_topk_loss_matches_its_hand_written_reference(topk_batch, T, alpha, rebuild):
    """Each rebuild of top-k rows against its reference: the bucket KL, or KL to the evenly spread dense target."""
    s, teacher, y = topk_batch
    reference = reference_topk_kd if rebuild == "bucket" else reference_spread_kd
    got = kd_loss(s, teacher, y, temperature=T, alpha=alpha, topk_rebuild=rebuild).item()
    assert got == pytest.approx(reference(s, teacher, y, T, alpha), rel=2e-5, abs=1e-7)


def test_topk_loss_and_gradients_at_k_equal_c_are_the_full_ones(batch):
    from kdcache.cache.targets import TopK

    s, t, y = batch
    teacher = TopK.encode(t.float().numpy(), 10)
    for T in (1.0, 4.0, 20.0):
        s1, s2 = s.clone().float().requires_grad_(True), s.clone().float().requires_grad_(True)
        full = kd_loss(s1, t.float(), y, temperature=T, alpha=0.7)
        top = kd_loss(s2, teacher, y, temperature=T, alpha=0.7, topk_rebuild="bucket")
        full.backward()
        top.backward()
        assert top.item() == pytest.approx(full.item(), rel=1e-5)
        torch.testing.assert_close(s2.grad, s1.grad, rtol=1e-5, atol=1e-7)


def test_topk_soft_gradient_moves_tail_mass_only_as_a_whole(topk_batch):
    """The bucket loss constrains the student's tail total, never how the tail splits it."""
    s, teacher, y = topk_batch
    s = s.float().requires_grad_(True)
    kd_loss(s, teacher, y, temperature=4.0, alpha=1.0, topk_rebuild="bucket").backward()
    q = torch.softmax(s.detach() / 4.0, dim=1)
    kept = torch.zeros_like(q, dtype=torch.bool).scatter(1, torch.as_tensor(teacher.classes).long(), True)
    ratio = s.grad / q  # on tail classes: the same multiple of q_j throughout a row
    for r, m in zip(ratio, kept):
        assert (r[~m].max() - r[~m].min()).abs() < 1e-4 * r[~m].abs().max().clamp_min(1e-3)


@pytest.mark.parametrize("T", [1e3, 1e6])
def test_float32_soft_loss_is_accurate_at_huge_T(batch, T):
    """At large T, T²·KL tends to logit matching: ½ · mean over classes of ((s - t) - mean(s - t))², per row.

    kdcache 0.1 computed it as a difference of two nearly equal log-softmaxes in float32 and
    was off by orders of magnitude at T = 1e6 (noise times T² = 1e12).
    """
    s, t, y = batch
    d = s - t
    limit = (0.5 * ((d - d.mean(1, keepdim=True)) ** 2).mean(1)).mean()  # float64, the T -> inf limit
    got = kd_loss(s.float(), t.float(), y, T, 1.0)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(float(limit), rel=2e-2)


def test_counts_make_data_parallel_ranks_average_like_one_process():
    """Two ranks with different numbers of labelled rows: averaging their gradients (what DDP does) gives
    exactly one process's gradient when each averages over the global batch's counts (kd_loss's counts)."""
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g) * 3
    labels = torch.tensor([1, 2, -1, -1, 3, -1, -1, -1])  # rank 0 holds rows 0-3 (2 labelled), rank 1 rows 4-7 (1)
    whole = s.clone().requires_grad_()
    kd_loss(whole, t, labels, 4.0, 0.5).backward()
    counts = (8 / 2, 3 / 2)  # global rows and labelled rows, each divided by the 2 ranks
    grads = []
    for rows in (slice(0, 4), slice(4, 8)):
        part = s[rows].clone().requires_grad_()
        kd_loss(part, t[rows], labels[rows], 4.0, 0.5, counts=counts).backward()
        grads.append(part.grad)
    torch.testing.assert_close(torch.cat(grads) / 2, whole.grad, rtol=1e-5, atol=1e-7)
    local = []  # without counts each rank averages over its own rows: rank 1's one label weighs twice as much
    for rows in (slice(0, 4), slice(4, 8)):
        part = s[rows].clone().requires_grad_()
        kd_loss(part, t[rows], labels[rows], 4.0, 0.5).backward()
        local.append(part.grad)
    assert not torch.allclose(torch.cat(local) / 2, whole.grad, rtol=1e-3)
    only_soft = s[2:4].clone().requires_grad_()  # a rank whose rows are all unlabelled still takes its step
    assert torch.isfinite(kd_loss(only_soft, t[2:4], labels[2:4], 4.0, 0.5, counts=counts))


# ----------------------------------------------------------------------- top-k: the "spread" rebuild


def reference_spread_kd(s, teacher, y, T, alpha):
    """Plain-Python loss over all C classes: kept classes exact, the tail's mass at T spread evenly over the other
    C - k, full-C KL against softmax(s/T)."""
    total = 0.0
    C, k = teacher.num_classes, teacher.k
    for i, (srow, label) in enumerate(zip(s.tolist(), y.tolist())):
        kept = [int(c) for c in teacher.classes[i]]
        ce = -(srow[label] - math.log(sum(math.exp(v) for v in srow)))
        t_top = [float(v) / T for v in teacher.logits[i]]
        tail = reference_tail(float(teacher.tail_logsumexp[i]), float(teacher.tail_mean[i]),
                              float(teacher.tail_logsumexp_t2[i]), C - k, float(teacher.logits[i][-1]), T)
        zt = sum(math.exp(v) for v in t_top) + math.exp(tail)
        p = [math.exp(tail) / zt / (C - k)] * C  # every class a tail class, then the kept ones overwritten
        for c, v in zip(kept, t_top):
            p[c] = math.exp(v) / zt
        es = [math.exp(v / T) for v in srow]
        q = [v / sum(es) for v in es]
        kl = sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
        total += (1 - alpha) * ce + alpha * T * T * kl
    return total / len(y)


def test_spread_exact_value_on_a_hand_made_row():
    """Teacher p = (0.5, 0.3, 0.15, 0.05) at T = 1, top-2: the rebuilt target is (0.5, 0.3, 0.1, 0.1); a uniform
    student q = 1/4 gives KL = 0.5 ln 2 + 0.3 ln 1.2 + 0.2 ln 0.4."""
    from kdcache.cache.targets import TopK

    z = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    teacher = TopK.encode(z, 2)
    s, y = torch.zeros(1, 4), torch.zeros(1, dtype=torch.long)
    want = 0.5 * math.log(2) + 0.3 * math.log(1.2) + 0.2 * math.log(0.4)
    assert kd_loss(s, teacher, y, 1.0, 1.0, topk_rebuild="spread").item() == pytest.approx(want, rel=1e-6)
    # the bucket loss sees (0.5, 0.3, 0.2) against (0.25, 0.25, 0.5): the tail's shape is not in it
    bucket = 0.5 * math.log(2) + 0.3 * math.log(1.2) + 0.2 * math.log(0.4)
    assert kd_loss(s, teacher, y, 1.0, 1.0, topk_rebuild="bucket").item() == pytest.approx(bucket, rel=1e-6)
    # a student whose tail is uneven, q = (1/4, 1/4, 3/8, 1/8), its total unchanged: bucket is blind to it
    s2 = torch.tensor([[0.0, 0.0, math.log(1.5), math.log(0.5)]])
    q = torch.softmax(s2, 1)[0].tolist()
    want2 = 0.5 * math.log(0.5 / q[0]) + 0.3 * math.log(0.3 / q[1]) + 0.1 * math.log(0.1 / q[2]) + \
        0.1 * math.log(0.1 / q[3])
    assert kd_loss(s2, teacher, y, 1.0, 1.0, topk_rebuild="spread").item() == pytest.approx(want2, rel=1e-6)
    assert kd_loss(s2, teacher, y, 1.0, 1.0, topk_rebuild="bucket").item() == pytest.approx(bucket, rel=1e-6)




def test_spread_matches_dense_probs(topk_batch):
    """The loss's target is TopK.dense_probs: KL(dense_probs ‖ q), computed in float64 by hand."""
    from kdcache.train.loss import spread_logits

    s, teacher, y = topk_batch
    for T in (1.0, 3.0):
        p = teacher.dense_probs(T)
        torch.testing.assert_close(torch.softmax(spread_logits(teacher, T).double(), -1), p, rtol=1e-5, atol=1e-9)
        q = torch.log_softmax(s / T, 1)
        want = (p * (p.log() - q)).sum(1).mean() * T * T
        got = kd_loss(s, teacher, y, T, 1.0, topk_rebuild="spread")
        assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_spread_at_k_equal_c_is_the_full_loss_and_gradient(batch):
    from kdcache.cache.targets import TopK

    s, t, y = batch
    teacher = TopK.encode(t.float().numpy(), 10)
    for T in (1.0, 4.0, 20.0, 1e6):
        s1, s2 = s.clone().float().requires_grad_(True), s.clone().float().requires_grad_(True)
        full = kd_loss(s1, t.float(), y, temperature=T, alpha=0.7)
        top = kd_loss(s2, teacher, y, temperature=T, alpha=0.7, topk_rebuild="spread")
        full.backward()
        top.backward()
        assert top.item() == full.item()
        torch.testing.assert_close(s2.grad, s1.grad, rtol=0, atol=0)


def test_spread_is_bucket_plus_the_tail_shape_term(topk_batch):
    """spread = bucket + P_tail · (log mean_tail q - mean_tail log q) >= bucket (Jensen): what the spread adds is a
    penalty on how unevenly the student spreads its own tail, weighted by the teacher's tail mass."""
    s, teacher, y = topk_batch
    t = teacher.float()
    kept = torch.zeros(s.shape, dtype=torch.bool).scatter(1, t.classes, True)
    for T in (1.0, 2.0, 4.0):
        p_tail = torch.softmax(t.support_logits(T).double(), -1)[:, -1]
        log_q = torch.log_softmax(s / T, 1).masked_fill(kept, math.nan)
        n = teacher.num_classes - teacher.k
        shape = torch.logsumexp(log_q.nan_to_num(-math.inf), 1) - math.log(n) - log_q.nansum(1) / n
        extra = (p_tail * shape).mean() * T * T
        spread = kd_loss(s, teacher, y, T, 1.0, topk_rebuild="spread").item()
        bucket = kd_loss(s, teacher, y, T, 1.0, topk_rebuild="bucket").item()
        assert spread >= bucket
        assert spread - bucket == pytest.approx(extra.item(), rel=1e-4)


@pytest.mark.parametrize("T", [1e-3, 0.3, 7.0, 1e3, 1e6])
def test_spread_finite_at_any_T_with_a_gradient(topk_batch, T):
    s, teacher, y = topk_batch
    s = (s.float() * 10).requires_grad_(True)
    loss = kd_loss(s, teacher, y, T, 0.9, topk_rebuild="spread")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_spread_large_T_tends_to_matching_the_tail_mean(topk_batch):
    """As T -> inf the spread target's tail logits tend to μ/T each: T²·KL -> logit matching against the kept
    logits and, on every tail class, the tail's mean logit."""
    s, teacher, y = topk_batch
    t = teacher.float()
    target = t.tail_mean[:, None].expand(-1, s.shape[1]).scatter(1, t.classes, t.logits).double()
    d = s - target
    limit = (0.5 * ((d - d.mean(1, keepdim=True)) ** 2).mean(1)).mean()
    got = kd_loss(s.float(), teacher, y, 1e6, 1.0, topk_rebuild="spread")
    assert float(got) == pytest.approx(float(limit), rel=2e-2)


def test_spread_is_the_default(topk_batch):
    s, teacher, y = topk_batch
    assert kd_loss(s, teacher, y, 2.0, 0.9).item() == kd_loss(s, teacher, y, 2.0, 0.9, topk_rebuild="spread").item()


def test_rejects_unknown_topk_rebuild(topk_batch):
    s, teacher, y = topk_batch
    with pytest.raises(ConfigError, match="topk_rebuild"):
        kd_loss(s, teacher, y, 2.0, 0.5, topk_rebuild="uniform")
