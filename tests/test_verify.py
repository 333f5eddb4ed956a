"""kdcache info / verify, and the fault matrix: every damaged or mismatched cache is detected by
`verify` and refused by `train-student`, each with a one-line message saying what is wrong and what to do."""
import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import assert_error, cache_attrs

from kdcache.cache.info import cache_info, softmax_entropy
from kdcache.cli import main
from kdcache.data.datasets import load_dataset
from kdcache.jobs.verify import verify_cache

N = 200


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_error_lines(result, *needles):
    """Exit 1 and no stray exception, every line an `Error: ...` line, the needles all present."""
    return assert_error(result, *needles, lines=None)


@pytest.fixture(scope="module")
def fmnist(data_dir):
    return load_dataset("fashion-mnist", "train", data_dir, limit=N)


def make_cache(path, data, logits=None, dtype="float32", **attr_over):
    from kdcache.cache import write_cache

    if logits is None:
        logits = np.random.default_rng(0).normal(0, 4, size=(len(data), data.info.num_classes)).astype(np.float32)
    attrs = cache_attrs(data.info, **attr_over)
    return write_cache(path, logits, data.labels, data.indices, data.sample_ids, attrs, dtype=dtype)


@pytest.fixture(scope="module")
def dumped(tmp_path_factory, teacher_ckpt, data_dir):
    out = tmp_path_factory.mktemp("dump") / "c.h5"
    r = run("dump-logits", "--teacher", teacher_ckpt, "--out", out, "--limit", N, "--data-dir", data_dir, "-q")
    assert r.exit_code == 0, r.output
    return out


# ------------------------------------------------------------------------------------------ info


def test_info_reports_what_to_check(dumped):
    r = run("info", dumped, "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["dataset"] == "fashion-mnist" and info["split"] == "train" and info["num_samples"] == N
    assert info["teacher_arch"] == "student-cnn" and info["logits_dtype"] == "float32" and info["complete"]
    assert info["bytes"] == Path(dumped).stat().st_size and info["num_classes"] == 10
    assert set(info["mean_entropy_nats"]) == {"1", "4", "20"}
    text = run("info", dumped)
    assert text.exit_code == 0 and "teacher top-1 = stored label" in text.output and "T=20" in text.output


def test_info_statistics_match_a_direct_computation(tmp_path, fmnist):
    logits = np.random.default_rng(3).normal(0, 6, size=(N, 10)).astype(np.float32)
    logits[np.arange(N)[: N // 2], fmnist.labels.numpy()[: N // 2]] += 50  # first half: teacher agrees
    p = make_cache(tmp_path / "c.h5", fmnist, logits)
    info = cache_info(p)
    agree = float((logits.argmax(1) == fmnist.labels.numpy()).mean())
    assert info["teacher_label_agreement"] == pytest.approx(agree) and agree >= 0.5
    for t in (1, 4, 20):
        z = torch.from_numpy(logits).double() / t
        h = -(z.softmax(1) * z.log_softmax(1)).sum(1).mean().item()
        assert info["mean_entropy_nats"][f"{t:g}"] == pytest.approx(h, rel=1e-9)
    assert info["max_entropy_nats"] == pytest.approx(math.log(10))
    assert softmax_entropy(np.zeros((1, 10)), 1.0)[0] == pytest.approx(math.log(10))


# ---------------------------------------------------------------------------------------- verify


def test_verify_passes_a_good_cache_with_data_and_teacher(dumped, teacher_ckpt, data_dir):
    r = run("verify", dumped, "--data-dir", data_dir, "--teacher", teacher_ckpt, "--sample", 64)
    assert r.exit_code == 0, r.output
    for check in ("schema", "checksums", "values", "content", "alignment", "teacher"):
        assert f"ok    {check}:" in r.output
    assert "verified, 6 checks passed" in r.output


def test_verify_without_data_skips_alignment_and_passes(dumped):
    r = run("verify", dumped)
    assert r.exit_code == 0 and "skip  alignment" in r.output


@pytest.mark.parametrize("flags, tolerance", [(("--dtype", "float16"), "float16 tolerance"),
                                              (("--precision", "bf16"), "bf16 teacher tolerance")])
def test_verify_float16_and_bf16_dumps_within_their_tolerance(tmp_path, teacher_ckpt, data_dir, flags, tolerance):
    """A float16 cache or a bf16 dump passes the fp32 teacher re-run under its own, recorded, wider tolerance."""
    from kdcache.jobs.verify import BF16_TOLERANCE, TOLERANCE, tolerance_for

    out = tmp_path / "h.h5"
    assert run("dump-logits", "--teacher", teacher_ckpt, "--out", out, "--limit", N, "--data-dir", data_dir,
               *flags, "-q").exit_code == 0
    report = verify_cache(out, data_dir=str(data_dir), teacher=_spec(teacher_ckpt), sample=N)
    assert report.ok, [c.line() for c in report.checks]
    assert tolerance in report.checks[-1].message
    assert tolerance_for("float32", "bf16") == BF16_TOLERANCE > 5 * TOLERANCE["float32"]


def _spec(ckpt):
    from kdcache.train.teacher import TeacherSpec

    return TeacherSpec(checkpoint=str(ckpt))


def test_verify_teacher_catches_logits_moved_between_rows(tmp_path, dumped, teacher_ckpt, data_dir):
    """Rows whose logits were swapped (labels and ids intact) pass every check but the teacher re-run."""
    bad = tmp_path / "swapped.h5"
    bad.write_bytes(Path(dumped).read_bytes())
    with h5py.File(bad, "r+") as f:
        z = f["logits"][:]
        f["logits"][:] = np.roll(z, 1, axis=0)
    r = run("verify", bad, "--data-dir", data_dir, "--teacher", teacher_ckpt, "--sample", 32, "-q")
    assert_error_lines(r, "teacher:", "differ from the re-run teacher", "rows are shuffled")


# --------------------------------------------------------------------- the fault matrix


def flip_byte(name="logits"):
    def apply(path):
        with h5py.File(path, "r") as f:
            chunk = f[name].id.get_chunk_info(0)  # StoreInfo(chunk_offset, filter_mask, byte_offset, size)
        with open(path, "r+b") as fh:
            fh.seek(chunk.byte_offset + chunk.size // 2)  # inside the data, not the 4-byte checksum at the end
            b = fh.read(1)
            fh.seek(-1, 1)
            fh.write(bytes([b[0] ^ 0x01]))
    return apply


def truncate(path):
    size = Path(path).stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size * 6 // 10)


def edit(fn):
    def apply(path):
        with h5py.File(path, "r+") as f:
            fn(f)
    return apply


def shuffle_rows(path):
    """The rows were dumped from a shuffled dataset but stamped with positions 0..N-1."""
    with h5py.File(path, "r+") as f:
        perm = np.random.default_rng(1).permutation(f["labels"].shape[0])
        for name in ("logits", "labels", "sample_ids"):
            f[name][:] = f[name][:][perm]


def set_nan(f):
    z = f["logits"][:]
    z[5, 2], z[9, 0] = np.nan, np.inf
    f["logits"][:] = z


def set_huge(f):
    z = f["logits"][:]
    z[7, 1] = 3e38  # finite, but no teacher's output
    f["logits"][:] = z


# name, how to break a good cache (or how to make a mismatched one), verify args, verify needles, train needle.
# Damage that edits values in place also fails the content hash: verify then prints a second line for it.
FAULTS = [
    ("flipped-byte", flip_byte("logits"), [], "checksums: /logits rows 0:", "checksum mismatch"),
    ("flipped-byte-ids", flip_byte("sample_ids"), ["--data-dir"], "checksums: /sample_ids rows 0:", "checksum mismatch"),
    ("truncated", truncate, [], "truncated or corrupt", "truncated or corrupt"),
    ("missing-dataset", edit(lambda f: f.__delitem__("sample_ids")), [], "lacks the /sample_ids dataset",
     "lacks the /sample_ids dataset"),
    ("missing-attribute", edit(lambda f: f.attrs.__delitem__("dataset_fingerprint")), [],
     "lacks attribute(s) dataset_fingerprint", "lacks attribute(s) dataset_fingerprint"),
    ("newer-schema", edit(lambda f: f.attrs.__setitem__("schema_version", "5.0")), [],
     "schema 5.0, newer than this kdcache reads (4.0); upgrade kdcache", "upgrade kdcache"),
    ("incomplete", edit(lambda f: f.attrs.__setitem__("complete", np.int8(0))), [], "is incomplete", "is incomplete"),
    ("nan-inf", edit(set_nan), [], ("values: 2 row(s) of logits hold NaN/Inf (first: row 5)", "content: content hash"),
     "row 5 holds NaN/Inf"),
    ("implausible", edit(set_huge), [], ("values: 1 row(s) hold logits of implausible magnitude (max |z| 3e+38",
                                          "content: content hash"), "row 7 holds a logit of magnitude 3e+38"),
    ("shuffled-rows", shuffle_rows, ["--data-dir"], ("rows disagree with the data", "content: content hash"),
     "rows disagree with the data sample at their index"),
]


@pytest.fixture
def good_cache(tmp_path, fmnist):
    return make_cache(tmp_path / "cache.h5", fmnist)


def train_student_args(cache, data_dir, tmp_path):
    return ["train-student", "--cache", cache, "--limit", N, "--epochs", 1, "--eval-limit", 50, "--data-dir", data_dir,
            "--out", tmp_path / "student.pt", "-q"]


@pytest.mark.parametrize("name,damage,verify_args,verify_needle,train_needle", FAULTS, ids=[f[0] for f in FAULTS])
def test_fault_detected_by_verify_and_refused_by_train_student(name, damage, verify_args, verify_needle,
                                                               train_needle, good_cache, data_dir, tmp_path):
    damage(good_cache)
    extra = [*verify_args, data_dir] if verify_args else []  # "--data-dir" DIR: compare rows with the data
    v = run("verify", good_cache, *extra, "-q")
    needles = verify_needle if isinstance(verify_needle, tuple) else (verify_needle,)
    lines = assert_error_lines(v, *needles)
    assert len(lines) == len(needles), v.output  # exactly one precise line per failure
    assert any(w in v.output for w in ("re-create", "re-dump", "upgrade", "fetch it again")), v.output
    t = run(*train_student_args(good_cache, data_dir, tmp_path))
    tl = assert_error_lines(t, train_needle)
    assert len(tl) == 1
    assert not (tmp_path / "student.pt").exists() and not (tmp_path / "student.metrics.json").exists()


MISMATCHES = [
    # name, cache made from / for, verify args, verify needle, train needle
    ("other-split", {"split": "test"}, ["--split", "train"], "was made from fashion-mnist/test, but the data is "
     "fashion-mnist/train", "made from fashion-mnist/test, but the data is fashion-mnist/train"),
    ("other-dataset", {"dataset": "mnist"}, ["--dataset", "fashion-mnist"], "made from mnist/train",
     "made from mnist/train, but the data is fashion-mnist/train"),
    ("other-class-count", {"classes": 5}, [], "has 5 classes", "has 5 classes"),
    ("other-data", {"fingerprint": "f" * 64}, [], "(dataset fingerprint ffffffffffff... != ",
     "was made from different fashion-mnist/train data"),
]


@pytest.mark.parametrize("name,made,verify_args,verify_needle,train_needle", MISMATCHES, ids=[m[0] for m in MISMATCHES])
def test_mismatched_cache_detected_and_refused(name, made, verify_args, verify_needle, train_needle, tmp_path,
                                               fmnist, data_dir):
    data, over = fmnist, {}
    if "split" in made:
        data = load_dataset("fashion-mnist", "test", data_dir, limit=N)
    if "dataset" in made:
        over["dataset"] = made["dataset"]
    if "fingerprint" in made:
        over["dataset_fingerprint"] = made["fingerprint"]
    logits = None
    if "classes" in made:
        c = made["classes"]
        over["class_names"] = [f"k{i}" for i in range(c)]
        logits = np.zeros((N, c), dtype=np.float32)
    cache = make_cache(tmp_path / "m.h5", data, logits, **over)
    v = run("verify", cache, "--data-dir", data_dir, *verify_args, "-q")
    assert len(assert_error_lines(v, verify_needle)) == 1
    named = ["--dataset", "fashion-mnist"] if "dataset" in made else []  # unnamed, the data is the cache's
    t = run(*train_student_args(cache, data_dir, tmp_path), *named)
    assert len(assert_error_lines(t, train_needle)) == 1


def test_rows_in_another_order_with_their_own_indices_are_fine(tmp_path, fmnist, data_dir):
    """A cache is matched to the data through /indices: consistently permuted rows verify and train."""
    from kdcache.cache import write_cache

    perm = np.random.default_rng(2).permutation(N)
    logits = np.random.default_rng(0).normal(0, 4, size=(N, 10)).astype(np.float32)
    cache = write_cache(tmp_path / "p.h5", logits[perm], fmnist.labels.numpy()[perm], fmnist.indices.numpy()[perm],
                        fmnist.sample_ids[perm], cache_attrs(fmnist.info))
    assert verify_cache(cache, data_dir=str(data_dir)).ok


def test_verify_bad_inputs_are_one_line(tmp_path, dumped):
    (tmp_path / "notes.txt").write_text("not hdf5")
    cases = [
        (["verify", tmp_path / "missing.h5"], "not found"),
        (["verify", tmp_path / "notes.txt"], "not an HDF5 file"),
        (["verify", dumped, "--teacher-factory", "nomodule_xyz:build"], "--teacher-factory needs --weights"),
        (["verify", dumped, "--dataset", "cifar"], "unknown dataset 'cifar'"),
        (["verify", dumped, "--teacher", tmp_path / "nope.pt"], "not found"),
        (["info", tmp_path / "notes.txt"], "not an HDF5 file"),
    ]
    for args, needle in cases:
        assert len(assert_error_lines(run(*args), needle)) == 1


# ------------------------------------------------------------------------------------ float16


def test_float16_soft_target_error(tmp_path, fmnist):
    """float16 storage vs float32 at T = 1 and T = 20: the bounds docs/cache-format.md states."""
    g = np.random.default_rng(0)
    logits = (g.normal(0, 6, size=(N, 10)) + 12 * np.eye(10)[fmnist.labels.numpy()]).astype(np.float32)  # |z| < 32
    p32 = make_cache(tmp_path / "f32.h5", fmnist, logits)
    p16 = make_cache(tmp_path / "f16.h5", fmnist, logits, dtype="float16")
    from kdcache.cache import open_cache

    with open_cache(p32) as a, open_cache(p16) as b:
        z32, z16 = a.read(), b.read()
    assert z16.dtype == np.float16 and z32.tobytes() == logits.tobytes()
    dz = np.abs(z16.astype(np.float32) - z32)
    assert dz.max() <= 2.0 ** -11 * np.abs(z32).max() + 1e-7
    with h5py.File(p32, "r") as a, h5py.File(p16, "r") as b:
        assert b["logits"].id.get_storage_size() * 2 == pytest.approx(a["logits"].id.get_storage_size(), rel=0.01)
    for T, max_dp in ((1.0, 4e-3), (20.0, 2e-4)):
        q32 = torch.from_numpy(z32).double().div(T).softmax(1)
        q16 = torch.from_numpy(z16.astype(np.float64)).div(T).softmax(1)
        dp = (q32 - q16).abs().max().item()
        kl = (q32 * (q32.log() - q16.log())).sum(1).max().item()
        assert dp < max_dp and kl < 1e-4, (T, dp, kl)
        # the bound that explains both: |Δp| <= 2 max|Δz| / T
        assert dp <= 2 * dz.max() / T


def test_verify_json_report(good_cache, data_dir):
    set_nan_cache = edit(set_nan)
    set_nan_cache(good_cache)
    r = run("verify", good_cache, "--data-dir", data_dir, "--json")
    assert r.exit_code == 1, r.output
    report = json.loads(r.output)
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert report["ok"] is False
    assert status == {"schema": "ok", "checksums": "ok", "values": "fail", "content": "fail", "alignment": "ok"}
