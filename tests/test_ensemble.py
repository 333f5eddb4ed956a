"""Distilling from several caches: the mean-probs identity, mean-logits, row checks, the CLI."""
import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import assert_error, cache_attrs

from kdcache.cache import open_cache, write_cache
from kdcache.cache.ensemble import check_members, combine_logits
from kdcache.cli import main
from kdcache.data.datasets import load_dataset
from kdcache.errors import CacheError, ConfigError
from kdcache.train.checkpoint import read_checkpoint

N = 150


def members(e=3, n=64, c=10, scale=8.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, c, generator=g) * scale for _ in range(e)]


@pytest.mark.parametrize("T", [1.0, 4.0, 20.0])
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_mean_probs_pseudo_logits_reproduce_the_mean_of_probabilities(T, scale):
    zs = members(scale=scale)
    target = combine_logits(zs, "mean-probs", T)
    assert target.dtype == torch.float32 and target.shape == (64, 10) and torch.isfinite(target).all()
    mean_p = torch.stack([(z.double() / T).softmax(1) for z in zs]).mean(0)  # hand-written reference
    got = (target.double() / T).softmax(1)
    assert torch.allclose(got, mean_p, rtol=1e-5, atol=1e-7)
    # the target is what kd_loss sees: KL against it equals KL against the mean distribution
    s = torch.randn(64, 10)
    from kdcache.train.loss import soft_loss
    ref = (mean_p * (mean_p.log() - (s.double() / T).log_softmax(1))).sum(1).mean() * T * T
    assert soft_loss(s, target, T).item() == pytest.approx(ref.item(), rel=1e-4, abs=1e-6)


def test_mean_logits_and_single_member():
    zs = members()
    assert torch.allclose(combine_logits(zs, "mean-logits", 4.0), torch.stack(zs).mean(0))
    one = combine_logits(zs[:1], "mean-probs", 4.0)
    assert torch.allclose((one / 4).softmax(1), (zs[0] / 4).softmax(1), atol=1e-6)
    with pytest.raises(ConfigError, match="mean-probs, mean-logits"):
        combine_logits(zs, "median", 4.0)


@pytest.fixture(scope="module")
def fmnist(data_dir):
    return load_dataset("fashion-mnist", "train", data_dir, limit=N)


def cache_for(path, data, seed, **over):
    logits = np.random.default_rng(seed).normal(0, 4, size=(len(data), 10)).astype(np.float32)
    return write_cache(path, logits, data.labels, data.indices, data.sample_ids, cache_attrs(data.info, **over))


def test_check_members_refuses_another_order_or_size(tmp_path, fmnist):
    a = open_cache(cache_for(tmp_path / "a.h5", fmnist, 0))
    check_members([a, open_cache(cache_for(tmp_path / "b.h5", fmnist, 1))])
    short = open_cache(cache_for(tmp_path / "s.h5", fmnist.head(100), 2))
    with pytest.raises(CacheError, match="differ in size"):
        check_members([a, short])
    p = cache_for(tmp_path / "p.h5", fmnist, 3)
    with h5py.File(p, "r+") as f:  # valid on its own (rows carry their indices), but in another order
        perm = np.random.default_rng(0).permutation(N)
        for name in ("logits", "labels", "indices", "sample_ids"):
            f[name][:] = f[name][:][perm]
    with pytest.raises(CacheError, match="same samples in the same order"):
        check_members([a, open_cache(p)])


def test_topk_members_are_refused(tmp_path, fmnist):
    a = open_cache(cache_for(tmp_path / "a.h5", fmnist, 0))
    logits = np.random.default_rng(5).normal(0, 4, size=(len(fmnist), 10)).astype(np.float32)
    k = open_cache(write_cache(tmp_path / "k.h5", logits, fmnist.labels, fmnist.indices, fmnist.sample_ids,
                               cache_attrs(fmnist.info), topk=3))
    with pytest.raises(CacheError, match="cannot mix full cache .* with top-3 cache"):
        check_members([a, k])
    with pytest.raises(CacheError, match="cannot combine top-k caches"):
        check_members([k, k])


def run(*args):
    return CliRunner().invoke(main, [str(x) for x in args])


def student_args(tmp_path, data_dir, *caches, out="s.pt"):
    args = ["train-student", "--limit", N, "--epochs", 1, "--eval-limit", 50, "--data-dir", data_dir,
            "--out", tmp_path / out, "-q", "--T", 4]
    for c in caches:
        args += ["--cache", c]
    return args


@pytest.mark.parametrize("method", ["mean-probs", "mean-logits"])
def test_train_student_from_two_caches(tmp_path, fmnist, data_dir, method):
    a, b = cache_for(tmp_path / "a.h5", fmnist, 0), cache_for(tmp_path / "b.h5", fmnist, 1)
    r = run(*student_args(tmp_path, data_dir, a, b), "--ensemble", method)
    assert r.exit_code == 0, r.output
    config = read_checkpoint(tmp_path / "s.pt")["config"]
    assert config["ensemble"] == method and [c["path"] for c in config["caches"]] == [str(a), str(b)]


def test_ensemble_refusals_are_one_line(tmp_path, fmnist, data_dir):
    a = cache_for(tmp_path / "a.h5", fmnist, 0)
    short = cache_for(tmp_path / "short.h5", fmnist.head(100), 1)
    test_split = load_dataset("fashion-mnist", "test", data_dir, limit=N)
    other_split = cache_for(tmp_path / "t.h5", test_split, 2)
    cases = [
        ([a, short], "ensemble caches differ in size"),
        ([a, other_split], "differ at row 0"),
    ]
    for caches, needle in cases:
        assert_error(run(*student_args(tmp_path, data_dir, *caches)), needle)
        assert not (tmp_path / "s.pt").exists()
    r = run(*student_args(tmp_path, data_dir, a, a), "--ensemble", "median")
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit) and "mean-probs" in r.output  # click's usage error
