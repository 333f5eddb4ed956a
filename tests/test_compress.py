"""Low-rank caches: the format (writer, reader), `kdcache compress`, info, verify, training from one, refusals."""
import json

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import assert_error, cache_attrs, make_image_data

from kdcache.cache import open_cache, write_cache
from kdcache.cache.lowrank import (
    DEFAULT_KL_BUDGET,
    Codec,
    Packing,
    choose_rank,
    decode,
    encode,
    fit_basis,
    measure_kl,
    packing_sample,
    round_trip,
    sample_rows,
    unpack,
    with_packing,
)
from kdcache.cli import main
from kdcache.data.datasets import load_dataset
from kdcache.jobs.compress import compress_cache
from kdcache.train.loss import kd_loss

N = 200


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def fmnist(data_dir):
    return load_dataset("fashion-mnist", "train", data_dir, limit=N)


def teacher_logits(n=N, c=10, r=4, noise=0.05, seed=0) -> np.ndarray:
    """Logits near rank r (what a trained teacher's look like at many classes), scaled like a teacher's."""
    g = np.random.default_rng(seed)
    return (g.normal(0, 3, (n, r)) @ g.normal(0, 1, (r, c)) + noise * g.normal(size=(n, c))).astype(np.float32)


@pytest.fixture
def full_cache(tmp_path, fmnist):
    z = teacher_logits()
    return write_cache(tmp_path / "full.h5", z, fmnist.labels, fmnist.indices, fmnist.sample_ids,
                       cache_attrs(fmnist.info)), z


def test_compress_round_trips_a_tiny_cache(tmp_path, full_cache):
    src, z = full_cache
    r = compress_cache(src, tmp_path / "small.h5", codec=Codec(rank=4, dtype="int8"), allow_larger=True)
    fit, held = sample_rows(N)
    basis = fit_basis(z[fit], 4)  # what compress fits: the same sample, the same bytes
    with open_cache(tmp_path / "small.h5") as c, open_cache(src) as s:
        m = c.meta
        assert (m.targets, c.kind, m.lowrank_rank, m.lowrank_code_dtype, m.schema_version) == \
            ("lowrank", "logits", 4, "int8", "3.0")
        assert np.array_equal(c.basis.components, basis.components) and np.array_equal(c.basis.mean, basis.mean)
        rows = np.array([5, 0, 199, 17])
        np.testing.assert_array_equal(c.read(rows), round_trip(z[rows], basis).numpy())
        np.testing.assert_array_equal(c.read(), round_trip(z, basis).numpy())
        for name in ("labels", "indices", "sample_ids"):
            assert np.array_equal(getattr(c, name), getattr(s, name))
        for key in ("teacher_sha256", "dataset", "dataset_fingerprint", "class_names", "teacher_arch"):
            assert m.attrs[key] == s.meta.attrs[key]
        assert m.lowrank_kl["kl"] == pytest.approx({f"{T:g}": v for T, v in measure_kl(z[held], basis).items()})
        assert c.target_bytes(as_float32=False) == N * (4 + 4)
        out = np.empty((10, 10), np.float32)
        assert c.read_span(3, 13, out=out) is out and np.array_equal(out, round_trip(z[3:13], basis).numpy())
        assert c.scan().content_sha256 == m.content_sha256
    assert r["rank"] == 4 and r["rank_chosen_by"] == "stated" and r["encoder"] == m.lowrank_kl["encoder"] == "kl"
    # projection codes rebuild the logits themselves within the noise off rank 4; kl codes keep the softmax closer
    assert np.abs(round_trip(z, basis, encoder="projection").numpy() - z).max() < 0.2
    kl, proj = measure_kl(z, basis), measure_kl(z, basis, encoder="projection")
    assert all(kl[T] < proj[T] for T in kl), (kl, proj)


def test_a_packed_cache_stores_bit_packed_codes_and_trains(tmp_path, full_cache, data_dir):
    src, z = full_cache
    r = run("compress", src, "--codec", "lowrank:rank=6,dtype=packed,bits=5", "--out", tmp_path / "p.h5",
            "--allow-larger")  # 200 rows: the basis outweighs what the codes save
    assert r.exit_code == 0, r.output
    assert "to rank 6 packed codes of 4 bytes a row (as stated" in r.output  # 30 bits
    fit, held = sample_rows(N)
    basis = with_packing(fit_basis(z[fit], 6), packing_sample(z[fit]), 5.0)  # what compress fits
    with open_cache(tmp_path / "p.h5") as c:
        m = c.meta
        assert (m.lowrank_code_dtype, m.lowrank_bits, m.schema_version) == ("packed", 5.0, "4.0")
        assert m.target_datasets == ("lowrank_codes",) and "lowrank_scales" not in c.file
        assert c.file["lowrank_codes"].shape == (N, 4) and c.file["lowrank_codes"].dtype == np.uint8
        assert np.array_equal(c.basis.packing.bits, basis.packing.bits)
        assert np.array_equal(c.basis.packing.steps, basis.packing.steps)
        np.testing.assert_array_equal(c.read(), round_trip(z, basis, "packed").numpy())
        assert c.target_bytes(as_float32=False) == N * 4 and c.scan().content_sha256 == m.content_sha256
        assert m.lowrank_kl["kl"] == pytest.approx({f"{T:g}": v for T, v in measure_kl(z[held], basis, "packed")
                                                    .items()})
    with h5py.File(tmp_path / "p.h5") as f:  # decoded with numpy alone, as docs/cache-format.md shows
        b = f["lowrank_bits"][:].astype(int)
        bits = np.unpackbits(f["lowrank_codes"][:], axis=-1, bitorder="little")
        starts = np.cumsum(b) - b
        levels = [bits[..., s:s + k] @ (1 << np.arange(k)) for s, k in zip(starts, b)]
        codes = (np.stack(levels, -1) - (2.0 ** (b - 1) - 0.5)) * f["lowrank_steps"][:]
        by_hand = f["lowrank_mean"][:] + codes @ f["lowrank_components"][:]
        packing = Packing(f["lowrank_bits"][:], f["lowrank_steps"][:])
        assert np.array_equal(codes.astype(np.float32), unpack(torch.from_numpy(f["lowrank_codes"][:]), packing).numpy())
    with open_cache(tmp_path / "p.h5") as c:
        np.testing.assert_allclose(c.read(), by_hand, atol=1e-5)
    info = run("info", tmp_path / "p.h5")
    assert "lowrank, rank 6, packed codes of 4 bytes a row (5 bits a component on average), kl encoder;" in info.output
    v = run("verify", tmp_path / "p.h5")
    assert v.exit_code == 0 and "packing of 30 bits a row" in v.output, v.output
    t = run("train-student", "--cache", tmp_path / "p.h5", "--limit", N, "--epochs", 1, "--eval-limit", 50,
            "--data-dir", data_dir, "--out", tmp_path / "s.pt", "-q", "--T", 2)
    assert t.exit_code == 0, t.output
    for edit, needle in ((lambda f: f["lowrank_bits"].__setitem__(0, 17), "/lowrank_bits gives a component 17 bits"),
                         (lambda f: f.attrs.__setitem__("lowrank_code_dtype", "int4"),
                          "lowrank_code_dtype 'int4' is not one of int8, float16, packed")):
        broken = tmp_path / "broken.h5"
        broken.write_bytes((tmp_path / "p.h5").read_bytes())
        with h5py.File(broken, "r+") as f:
            edit(f)
        assert_error(run("info", broken), needle, "re-create it (kdcache compress, or dump-logits --codec lowrank)")
    with h5py.File(tmp_path / "p.h5", "r+") as f:
        f["lowrank_steps"][2] = np.nan
    lines = assert_error(run("verify", tmp_path / "p.h5", "-q"), "the packing's steps are not finite and positive",
                         "the low-rank packing is corrupt", lines=None)
    assert len(lines) == 2  # the packing, and the content hash it no longer matches
    assert_error(run("train-student", "--cache", tmp_path / "p.h5", "--limit", N, "--epochs", 1, "--data-dir",
                     data_dir, "--out", tmp_path / "s2.pt", "-q"), "the packing's steps are not finite")


def test_compress_picks_a_packed_rank_for_the_budget_by_default(tmp_path, full_cache):
    src, z = full_cache
    fit, held = sample_rows(N)
    want = choose_rank(fit_basis(z[fit], 10), z[held], DEFAULT_KL_BUDGET, "packed", fit_sample=packing_sample(z[fit]))
    r = compress_cache(src, tmp_path / "p.h5", allow_larger=True)
    assert r["code_dtype"] == "packed"
    assert r["rank"] == want.rank and r["rank_chosen_by"] == "budget" and r["row_bytes"] == want.basis.packing.row_bytes
    assert max(r["kl"].values()) <= DEFAULT_KL_BUDGET
    with open_cache(tmp_path / "p.h5") as c:
        assert np.array_equal(c.basis.packing.steps, want.basis.packing.steps)


def test_compress_codes_rows_with_the_encoder_named_and_records_it(tmp_path, full_cache):
    src, z = full_cache
    fit, _ = sample_rows(N)
    basis = fit_basis(z[fit], 3)
    for encoder in ("projection", "kl"):
        r = run("compress", src, "--allow-larger", "--codec", f"lowrank:rank=3,dtype=int8,encoder={encoder}",
                "--out",
                tmp_path / f"{encoder}.h5")
        assert r.exit_code == 0, r.output
        with open_cache(tmp_path / f"{encoder}.h5") as c:
            q, s = encode(z, basis, "int8", encoder)
            assert c.meta.lowrank_kl["encoder"] == encoder
            np.testing.assert_array_equal(c.read(), decode(q, s, basis).numpy())
    bad = run("compress", src, "--codec", "lowrank:encoder=pca", "--out", tmp_path / "x.h5")
    assert_error(bad, "unknown low-rank encoder 'pca'; choose one of kl, projection")
    assert not (tmp_path / "x.h5").exists()


def test_compress_picks_the_smallest_rank_for_the_budget(tmp_path, full_cache):
    src, z = full_cache
    fit, held = sample_rows(N)
    want = choose_rank(fit_basis(z[fit], 10), z[held], DEFAULT_KL_BUDGET)
    r = run("compress", src, "--codec", "lowrank:dtype=int8", "--out", tmp_path / "s.h5", "--allow-larger")
    assert r.exit_code == 0, r.output
    assert f"to rank {want.rank} int8 codes of {want.rank + 4} bytes a row (for KL budget 0.01" in r.output
    with open_cache(tmp_path / "s.h5") as c:
        assert c.meta.lowrank_rank == want.rank and c.meta.lowrank_kl["rank_chosen_by"] == "budget"
    info = run("info", tmp_path / "s.h5")
    assert info.exit_code == 0
    assert f"lowrank, rank {want.rank}, int8 codes of {want.rank + 4} bytes a row, kl encoder; mean KL(p_T || " \
        "rebuilt_T) on " in info.output
    assert "T=1:" in info.output and "T=2:" in info.output and "T=4:" in info.output
    j = json.loads(run("info", tmp_path / "s.h5", "--json").output)
    assert j["codec"] == "lowrank" and j["lowrank_rank"] == want.rank and set(j["lowrank_kl"]["kl"]) == {"1", "2", "4"}


def test_kd_from_a_lowrank_cache_is_kd_on_the_decoded_logits(tmp_path, full_cache, fmnist):
    from kdcache.data.cached_dataset import CachedDataset

    src, _ = full_cache
    compress_cache(src, tmp_path / "s.h5", codec=Codec(rank=3, dtype="int8"), allow_larger=True)
    with h5py.File(tmp_path / "s.h5", "r") as f:  # decoded by hand from the stored arrays
        mean, comps = f["lowrank_mean"][:], f["lowrank_components"][:]
        z = mean + (f["lowrank_codes"][:].astype(np.float32) * f["lowrank_scales"][:][:, None]) @ comps
    ds = CachedDataset(torch.utils.data.TensorDataset(fmnist.images, fmnist.labels), tmp_path / "s.h5")
    items = [ds[i] for i in range(16)]
    targets = torch.stack([torch.as_tensor(t) for _, _, t in items])
    np.testing.assert_allclose(targets.numpy(), z[:16], rtol=0, atol=1e-5)
    student = torch.randn(16, 10)
    labels = torch.stack([torch.as_tensor(y) for _, y, _ in items])
    for T in (1.0, 2.0, 4.0):
        got = kd_loss(student, targets, labels, T, 0.9)
        assert float(got) == pytest.approx(float(kd_loss(student, torch.from_numpy(z[:16]), labels, T, 0.9)), abs=1e-5)


def test_a_lowrank_cache_streams_decoded_rows_block_by_block(tmp_path, full_cache):
    from kdcache.cache.stream import LogitStream, iter_batches

    src, z = full_cache
    compress_cache(src, tmp_path / "s.h5", codec=Codec(rank=4), allow_larger=True)
    with open_cache(tmp_path / "s.h5") as c:
        whole = c.read()
    stream = LogitStream(tmp_path / "s.h5", block_rows=16, buffer_blocks=2, seed=1)
    seen = 0
    for values, logits in iter_batches(stream, 8):
        np.testing.assert_array_equal(logits.numpy(), whole[values.numpy()])  # each row decoded, in any order
        seen += len(values)
    assert seen == N
    some = np.arange(0, N, 3)  # blocks with rows nobody asked for: only the wanted rows are decoded
    part = LogitStream(tmp_path / "s.h5", rows=some, values=some, block_rows=16, buffer_blocks=2, seed=1)
    got = {int(v): row.copy() for values, logits in iter_batches(part, 8) for v, row in zip(values, logits.numpy())}
    assert sorted(got) == some.tolist()  # the same rows, decoded in other batches: equal to float32 rounding
    assert max(float(np.abs(got[i] - whole[i]).max()) for i in some) < 1e-5


@pytest.mark.parametrize("dtype", ["int8", "packed"])
def test_streamed_targets_of_a_lowrank_cache_decode_only_the_rows_asked_for(tmp_path, full_cache, dtype):
    """What training reads from a low-rank cache over the memory limit: any rows, in any order, decoded as read()
    decodes them (packed and int8 codes alike), each block's codes read once."""
    from kdcache.cache.streamed_targets import StreamedTargets

    src, _ = full_cache
    compress_cache(src, tmp_path / "s.h5", codec=Codec(rank=4, dtype=dtype), allow_larger=True)
    with open_cache(tmp_path / "s.h5") as c:
        whole, chunk = c.read(), c.chunk_rows
    rows = np.random.default_rng(0).permutation(N)[: N // 2]
    with_transfer = StreamedTargets([(tmp_path / "s.h5", rows), (src, np.arange(5))])  # a low-rank part, then a full one
    pos = np.random.default_rng(1).permutation(len(with_transfer))
    got = with_transfer[torch.from_numpy(pos)].numpy()
    first = pos < len(rows)
    np.testing.assert_allclose(got[first], whole[rows[pos[first]]], rtol=0, atol=1e-5)
    with open_cache(src) as c:
        np.testing.assert_array_equal(got[~first], c.read(np.arange(5))[pos[~first] - len(rows)])
    assert with_transfer.reads <= -(-N // chunk) + 1  # every block of each file read once at most
    with pytest.raises(IndexError):
        with_transfer[[len(with_transfer)]]
    with_transfer.close()


def test_train_student_and_ensemble_from_lowrank_caches(tmp_path, full_cache, fmnist, data_dir):
    from kdcache.cache.ensemble import check_members, combine_logits

    src, z = full_cache
    compress_cache(src, tmp_path / "a.h5", codec=Codec(rank=3, dtype="int8"), allow_larger=True)
    other = write_cache(tmp_path / "full2.h5", teacher_logits(seed=1), fmnist.labels, fmnist.indices,
                        fmnist.sample_ids, cache_attrs(fmnist.info))
    compress_cache(other, tmp_path / "b.h5", codec=Codec(rank=5, dtype="int8"), allow_larger=True)
    with open_cache(tmp_path / "a.h5") as a, open_cache(tmp_path / "b.h5") as b:
        check_members([a, b])  # different bases: each decoded, then combined
        mean = combine_logits([torch.from_numpy(a.read()), torch.from_numpy(b.read())], "mean-logits", 2.0)
        by_hand = (decode(*_codes(tmp_path / "a.h5"), a.basis) + decode(*_codes(tmp_path / "b.h5"), b.basis)) / 2
        assert torch.allclose(mean, by_hand, atol=1e-5)
    r = run("train-student", "--cache", tmp_path / "a.h5", "--cache", tmp_path / "b.h5", "--limit", N, "--epochs", 1,
            "--eval-limit", 50, "--data-dir", data_dir, "--out", tmp_path / "s.pt", "-q", "--T", 2)
    assert r.exit_code == 0, r.output


def _codes(path):
    with h5py.File(path, "r") as f:
        return f["lowrank_codes"][:], f["lowrank_scales"][:]


def test_compress_keeps_views(tmp_path, fmnist):
    z = teacher_logits(n=N * 3).reshape(N, 3, 10)
    policy = {"name": "p", "version": 1, "settings": {}, "param_names": ["a"]}
    params = np.random.default_rng(0).random((N, 3, 1)).astype(np.float32)
    src = write_cache(tmp_path / "v.h5", z, fmnist.labels, fmnist.indices, fmnist.sample_ids, cache_attrs(fmnist.info),
                      num_views=3, view_policy=policy, view_params=params)
    compress_cache(src, tmp_path / "s.h5", codec=Codec(rank=4), allow_larger=True)  # packed codes of every view
    fit, _ = sample_rows(N)
    flat = z[fit].reshape(-1, 10)
    basis = with_packing(fit_basis(flat, 4), packing_sample(flat))
    with open_cache(tmp_path / "s.h5") as c:
        assert c.meta.num_views == 3 and np.array_equal(c.read_view_params(), params)
        assert c.file["lowrank_codes"].shape == (N, 3, basis.packing.row_bytes)
        np.testing.assert_array_equal(c.read(), round_trip(z, basis, "packed").numpy())
        np.testing.assert_array_equal(c.read(np.arange(4), views=np.array([2, 0, 1, 2])),
                                      round_trip(z[np.arange(4), [2, 0, 1, 2]], basis, "packed").numpy())


# ---------------------------------------------------------------------------------------- bad input


def test_compress_refusals_are_one_line(tmp_path, full_cache, fmnist):
    src, z = full_cache
    assert_error(run("compress", src, "--codec", "lowrank:rank=11", "--out", tmp_path / "a.h5"),
                 "rank 11 is outside 1..10 (10 classes)")
    tiny = write_cache(tmp_path / "tiny.h5", z[:6], fmnist.labels[:6], fmnist.indices[:6], fmnist.sample_ids[:6],
                       cache_attrs(fmnist.info))
    assert_error(run("compress", tiny, "--codec", "lowrank:rank=8", "--out", tmp_path / "a.h5"),
                 "rank 8 is outside 1..5 (5 rows to fit on)")
    assert_error(run("compress", src, "--kl-budget", "1e-12", "--out", tmp_path / "a.h5"),
                 "no rank up to 10 meets the KL budget 1e-12: rank", "comes closest", "worst mean KL")
    topk = write_cache(tmp_path / "top.h5", z, fmnist.labels, fmnist.indices, fmnist.sample_ids,
                       cache_attrs(fmnist.info), dtype="float16", topk=3)
    assert_error(run("compress", topk, "--out", tmp_path / "a.h5"),
                 "is a top-3 cache: it keeps 3 of 10 logits a row and the others are gone")
    many = make_image_data(n=50, classes=100)  # rows of all ±9000 over 100 classes: codes of ±9e4
    big = np.full((50, 100), 9000.0, np.float32) * np.random.default_rng(0).choice([-1.0, 1.0], (50, 1))
    huge = write_cache(tmp_path / "huge.h5", big + teacher_logits(n=50, c=100), many.labels, many.indices,
                       many.sample_ids, cache_attrs(many.info))
    assert_error(run("compress", huge, "--codec", "lowrank:rank=2,dtype=float16", "--out", tmp_path / "a.h5"),
                 "float16 cannot hold these codes")
    assert_error(run("compress", src, "--codec", "lowrank:dtype=uint8", "--out", tmp_path / "a.h5"),
                 "code dtype 'uint8' cannot hold low-rank codes")
    assert not (tmp_path / "a.h5").exists() and not list(tmp_path.glob(".*tmp*"))


def _corrupt_basis(path, how):
    with h5py.File(path, "r+") as f:
        comps = f["lowrank_components"][:]
        if how == "nan":
            comps[0, 3] = np.nan
        else:
            comps *= 2.0
        f["lowrank_components"][:] = comps


@pytest.mark.parametrize("how, needle", [("nan", "the basis holds NaN/Inf"), ("scaled", "not orthonormal")])
def test_a_corrupt_basis_is_caught_by_verify_and_train_student(tmp_path, full_cache, data_dir, how, needle):
    src, _ = full_cache
    small = compress_cache(src, tmp_path / "s.h5", codec=Codec(rank=4), allow_larger=True)["cache"]
    ok = run("verify", small)
    assert ok.exit_code == 0 and "ok    basis:" in ok.output and "ok    values:" in ok.output, ok.output
    _corrupt_basis(small, how)
    v = run("verify", small, "-q")
    lines = assert_error(v, needle, "content hash", lines=None)
    assert len(lines) == 2  # the basis, and the content hash it no longer matches
    t = run("train-student", "--cache", small, "--limit", N, "--epochs", 1, "--eval-limit", 50, "--data-dir", data_dir,
            "--out", tmp_path / "st.pt", "-q")
    assert_error(t, needle, "the low-rank basis is corrupt")
    assert not (tmp_path / "st.pt").exists()


def test_verify_with_the_teacher_checks_rebuilt_rows_within_the_stated_error(tmp_path, teacher_ckpt, data_dir):
    full = tmp_path / "full.h5"
    assert run("dump-logits", "--teacher", teacher_ckpt, "--out", full, "--limit", N, "--data-dir", data_dir,
               "-q").exit_code == 0
    compress_cache(full, tmp_path / "s.h5", codec=Codec(rank=9), allow_larger=True)
    r = run("verify", tmp_path / "s.h5", "--data-dir", data_dir, "--teacher", teacher_ckpt, "--sample", 64)
    assert r.exit_code == 0, r.output
    assert "ok    teacher: 64 random rows re-computed; rebuilt from the codes within the stated error: mean KL T=1:" \
        in r.output
    with h5py.File(tmp_path / "s.h5", "r+") as f:  # rows moved: each code now describes another sample's logits
        for name in ("lowrank_codes", "lowrank_scales"):  # (packed codes, the default, have no scales)
            if name in f:
                f[name][:] = np.roll(f[name][:], 1, axis=0)
    bad = run("verify", tmp_path / "s.h5", "--data-dir", data_dir, "--teacher", teacher_ckpt, "--sample", 64, "-q")
    assert_error(bad, "are further from the re-run teacher than the cache states", lines=None)


def test_the_summary_says_larger_when_codes_outweigh_the_logits():
    """At a few classes the basis and codes take more room than the logits: say so, never '0.7x smaller'."""
    from kdcache.cli.cache_commands import _size_change

    assert _size_change(2024, 92) == "22.0x smaller"
    assert _size_change(1000, 1500).startswith("1.5x larger")


def test_compress_refuses_a_copy_that_would_not_be_smaller(tmp_path):
    """A 3-class cache of 421 rows compressed to a file 1.3x larger, exit 0. Now refused in one line before
    anything is written, saying why: what the codes save a row, over how many rows, against what the basis
    and the low-rank datasets add; and where a code row is no smaller than the logits row at all."""
    data = make_image_data(421, classes=3)
    z = np.random.default_rng(0).normal(0, 3, (421, 3)).astype(np.float32)
    src = write_cache(tmp_path / "three.h5", z, data.labels, data.indices, data.sample_ids, cache_attrs(data.info))
    out = tmp_path / "small.h5"
    r = run("compress", src, "--out", out)
    assert_error(r, f"compressing {src} would make it bigger, not smaller (about 40.0 KB against",
                 "rank-3 packed codes save 10 bytes a row of 3 classes, 4.2 KB over 421 rows, less than the basis "
                 "and the low-rank datasets add (about 9.7 KB)", "--allow-larger")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["three.h5"]  # nothing written, no temp file
    half = write_cache(tmp_path / "half.h5", z, data.labels, data.indices, data.sample_ids, cache_attrs(data.info),
                       dtype="float16")
    r = run("compress", half, "--codec", "lowrank:rank=3,dtype=int8", "--out", out)
    assert_error(r, "rank-3 int8 codes take 7 bytes a row, its 3 logits 6 (rank 3 of 3 classes)")
    assert not out.exists()
    r = compress_cache(src, out, allow_larger=True)  # asked for: written, and the summary says larger
    assert r["bytes"] > r["source_bytes"] and out.exists()
    big = make_image_data(2000, classes=10)  # enough rows and classes: smaller, not refused
    full = write_cache(tmp_path / "big.h5", teacher_logits(2000), big.labels, big.indices, big.sample_ids,
                       cache_attrs(big.info))
    r = compress_cache(full, tmp_path / "big-small.h5")
    assert r["bytes"] < 0.7 * r["source_bytes"]
