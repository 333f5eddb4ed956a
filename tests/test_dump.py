"""dump-logits --top-k end to end: the documented datasets and dtypes, refusals before the teacher runs,
and a top-k cache through info, verify --teacher, train-student and ensembles."""
from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
import torch
from conftest import assert_error, run_cli

from kdcache.cache import open_cache
from kdcache.cache.targets import TopK
from kdcache.config import DataConfig, DumpConfig, RunOptions
from kdcache.jobs.verify import verify_cache
from kdcache.train.teacher import TeacherSpec

N = 200


@pytest.fixture(scope="module")
def caches(tmp_path_factory, teacher_ckpt, data_dir):
    """A full float32 cache and a top-3 cache (default dtype) of the same teacher and rows."""
    d = tmp_path_factory.mktemp("dump")
    full, top3 = d / "full.h5", d / "top3.h5"
    common = ["--teacher", teacher_ckpt, "--limit", N, "--data-dir", data_dir, "-q"]
    run_cli("dump-logits", "--out", full, *common)
    r = run_cli("dump-logits", "--out", top3, "--top-k", 3, *common[:-1])
    assert f"cached {N} x top-3 of 10 float16 logits" in r.output
    return full, top3


def test_topk_cache_holds_the_documented_datasets(caches):
    full, top3 = caches
    with h5py.File(top3, "r") as f:
        assert sorted(f.keys()) == ["indices", "labels", "sample_ids", "tail_logsumexp", "tail_logsumexp_t2",
                                    "tail_mean", "topk_classes", "topk_logits"]
        assert f["topk_logits"].dtype == np.float16 and f["topk_logits"].shape == (N, 3)
        assert f["topk_classes"].dtype == np.uint8 and f["topk_classes"].shape == (N, 3)
        for name in ("tail_logsumexp", "tail_logsumexp_t2", "tail_mean"):
            assert f[name].dtype == np.float32 and f[name].shape == (N,)
        assert f.attrs["targets"] == "topk" and f.attrs["topk"] == 3 and f.attrs["logits_dtype"] == "float16"
        stored = TopK(f["topk_logits"][:], f["topk_classes"][:], f["tail_logsumexp"][:], f["tail_mean"][:], 10,
                      f["tail_logsumexp_t2"][:])
    with open_cache(full) as c:
        want = TopK.encode(c.read(), 3)  # the same teacher's full logits, encoded here
    assert np.array_equal(stored.classes, want.classes)
    assert np.array_equal(stored.logits, want.logits.astype(np.float16))
    for name in ("tail_logsumexp", "tail_logsumexp_t2", "tail_mean"):
        assert np.array_equal(getattr(stored, name), getattr(want, name))


@pytest.mark.parametrize("k, needle", [(0, "--top-k 0: keep at least 1 logit"), (-2, "--top-k -2: keep at least 1"),
                                       (11, "--top-k 11 is more than the 10 classes")])
def test_bad_k_is_refused_in_one_line_before_the_teacher_runs(tmp_path, data_dir, k, needle):
    # The teacher file does not exist: a refusal that came after loading it would name the teacher instead.
    out = tmp_path / "c.h5"
    r = run_cli("dump-logits", "--teacher", tmp_path / "missing.pt", "--dataset", "fashion-mnist", "--out", out,
                "--top-k", k, "--limit", 10, "--data-dir", data_dir, ok=False)
    assert_error(r, needle)
    assert not out.exists()


def test_info_describes_a_topk_cache(caches):
    info = json.loads(run_cli("info", caches[1], "--json").output)
    assert info["targets"] == "topk" and info["topk"] == 3 and info["logits_dtype"] == "float16"
    with open_cache(caches[0]) as c:
        z = torch.from_numpy(c.read()).double()
    for T in (1, 4, 20):
        p = torch.softmax(z / T, 1)
        top = p.topk(3, dim=1).values
        tail = 1 - top.sum(1)
        assert info["mean_tail_mass"][str(T)] == pytest.approx(tail.mean().item(), rel=1e-2 if T > 1 else 1e-3)
        h = -(top * top.log()).sum(1) - tail * torch.log(tail / 7)  # tail spread evenly over its 7 classes
        assert info["mean_entropy_nats"][str(T)] == pytest.approx(h.mean().item(), rel=1e-2 if T > 1 else 1e-3)
    text = run_cli("info", caches[1]).output
    assert "top-3 of 10 raw logits" in text and "classes not kept hold on average" in text


def test_verify_passes_a_topk_cache_against_its_teacher(caches, teacher_ckpt, data_dir):
    r = run_cli("verify", caches[1], "--data-dir", data_dir, "--teacher", teacher_ckpt, "--sample", 64)
    assert "every top-3 row is a valid encoding" in r.output
    assert "top-3 logits, their classes and the tail's statistics match" in r.output
    assert "verified, 7 checks passed" in r.output


def _copy(src, dst):
    dst.write_bytes(src.read_bytes())
    return dst


def test_verify_catches_a_topk_cache_that_is_not_the_top(caches, teacher_ckpt, data_dir, tmp_path):
    """Bottom-k classes with their true logits and a consistent tail: every value matches, the choice does not."""
    bad = _copy(caches[1], tmp_path / "bottom.h5")
    with open_cache(caches[0]) as c:
        z = c.read()
    enc = TopK.encode(-z, 3)
    with h5py.File(bad, "r+") as f:
        f["topk_classes"][:] = enc.classes
        f["topk_logits"][:] = -enc.logits.astype(np.float16)
        for name, ref in (("tail_logsumexp", 1.0), ("tail_logsumexp_t2", 2.0)):
            mask = np.ones_like(z, dtype=bool)
            np.put_along_axis(mask, enc.classes, False, axis=1)
            zz = np.where(mask, z.astype(np.float64) / ref, -np.inf)
            f[name][:] = np.log(np.exp(zz - zz.max(1, keepdims=True)).sum(1)) + zz.max(1)
        f["tail_mean"][:] = np.where(mask, z, 0).sum(1) / 7
    report = verify_cache(bad, data_dir=str(data_dir), teacher=TeacherSpec(checkpoint=str(teacher_ckpt)), sample=32)
    lines = [c.line() for c in report.failures]
    assert any("not the re-run teacher's top 3" in line for line in lines), lines
    assert any("values not in descending order" in line for line in lines), lines


def test_verify_names_a_corrupt_class_id(caches, tmp_path):
    bad = _copy(caches[1], tmp_path / "ids.h5")
    with h5py.File(bad, "r+") as f:
        f["topk_classes"][17, 1] = 200
    report = verify_cache(bad)
    assert any("/topk_classes row 17 holds a class id outside 0..9" in c.line() for c in report.failures)


def test_train_student_from_a_topk_cache(caches, data_dir, tmp_path):
    r = run_cli("train-student", "--cache", caches[1], "--limit", N, "--epochs", 1, "--eval-limit", 50,
                "--data-dir", data_dir, "--out", tmp_path / "s.pt", "--T", 20)
    assert "student student-cnn (T=20" in r.output
    ckpt = torch.load(tmp_path / "s.pt", weights_only=True)
    assert ckpt["config"]["caches"][0]["targets"] == "topk" and ckpt["config"]["caches"][0]["topk"] == 3


@pytest.mark.parametrize("order, needle", [((0, 1), "cannot mix full cache"), ((1, 1), "cannot combine top-k caches")])
def test_ensembles_with_topk_members_are_refused_in_one_line(caches, data_dir, tmp_path, order, needle):
    args = ["train-student", "--limit", N, "--epochs", 1, "--data-dir", data_dir, "--out", tmp_path / "e.pt"]
    for i in order:
        args += ["--cache", caches[i]]
    assert_error(run_cli(*args, ok=False), needle, "dump every teacher with all its logits (no --top-k)")
    assert not (tmp_path / "e.pt").exists()


def test_dump_reuses_only_the_same_topk(caches, teacher_ckpt, data_dir, tmp_path):
    from kdcache.jobs.dump import dump_logits

    out = _copy(caches[1], tmp_path / "again.h5")
    kw = dict(data_cfg=DataConfig(data_dir=str(data_dir), limit=N), run=RunOptions(reuse=True))
    assert dump_logits(teacher_ckpt, out, **kw, dump=DumpConfig(topk=3))["reused"]
    r = dump_logits(teacher_ckpt, out, **kw, dump=DumpConfig(topk=4))
    assert not r["reused"] and r["topk"] == 4 and r["request"]["targets"] == "topk"
    assert not dump_logits(teacher_ckpt, out, **kw)["reused"]  # full logits asked for: dumped again
    with open_cache(out) as c:
        assert c.kind == "logits" and c.dtype == "float32"


def test_tail_mass_of_the_dumped_cache_is_exact_at_T1(caches):
    with open_cache(caches[0]) as c:
        z = c.read().astype(np.float64)
    with open_cache(caches[1]) as c:
        t = c.read()
    mask = np.ones_like(z, dtype=bool)
    np.put_along_axis(mask, t.classes.astype(np.int64), False, axis=1)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    rebuilt = torch.softmax(t.support_logits(1.0).double(), dim=1)[:, -1].numpy()
    # exact up to the float16 rounding of the kept logits (2^-11 relative) in the normaliser
    np.testing.assert_allclose(rebuilt, (p * mask).sum(1), rtol=2 * 2.0 ** -11 * np.abs(z).max() + 1e-6)
    assert math.isclose(float(t.tail_logsumexp[0]), float(np.log(np.exp(z[0][mask[0]]).sum())), rel_tol=1e-6)


def test_topk_cache_with_views_verifies_against_its_teacher(teacher_ckpt, data_dir, tmp_path):
    out = tmp_path / "views.h5"
    run_cli("dump-logits", "--teacher", teacher_ckpt, "--out", out, "--limit", 40, "--data-dir", data_dir, "--top-k", 2,
            "--views", 2, "--augment", "shift-flip", "-q")
    with open_cache(out) as c:
        t = c.read()
        assert t.logits.shape == (40, 2, 2) and t.tail_logsumexp_t2.shape == (40, 2)
    report = verify_cache(out, data_dir=str(data_dir), teacher=TeacherSpec(checkpoint=str(teacher_ckpt)), sample=10)
    assert report.ok, [c.line() for c in report.checks]
    assert "20 views of 10 random rows re-computed; top-2 logits" in report.checks[-1].message


@pytest.mark.parametrize("native, expect", [(False, "fp32"), (True, "bf16")])
def test_dump_records_the_resolved_precision(tmp_path, teacher_ckpt, data_dir, monkeypatch, native, expect):
    """--precision auto runs bf16 only where native; the cache and its reuse request say which, never auto."""
    from kdcache import device
    from kdcache.cache import read_meta
    from kdcache.jobs.dump import dump_logits

    monkeypatch.setattr(device, "bf16_native", lambda d: native)
    r = dump_logits(teacher_ckpt, tmp_path / "c.h5", dump=DumpConfig(device="cpu", precision="auto"), data_cfg=DataConfig(data_dir=data_dir, limit=50))
    assert r["request"]["teacher_precision"] == expect and read_meta(tmp_path / "c.h5").teacher_precision == expect
    again = dump_logits(teacher_ckpt, tmp_path / "c.h5", dump=DumpConfig(device="cpu", precision=expect), data_cfg=DataConfig(data_dir=data_dir, limit=50), run=RunOptions(reuse=True))
    assert again["reused"]  # auto and the value it resolved to are one request
    assert dump_logits(teacher_ckpt, tmp_path / "d.h5", dump=DumpConfig(device="cpu"), data_cfg=DataConfig(data_dir=data_dir, limit=50))["request"]["teacher_precision"] == "fp32"  # the default: fp32 everywhere
