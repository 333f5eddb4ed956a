"""The streaming reader: every row once per epoch, seeded orders, right logits for the right images."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import cache_attrs, make_image_data

from benchmarks import train_batches
from kdcache import cache
from kdcache.cache.stream import LogitStream, iter_batches
from kdcache.cache.streamed_targets import StreamedTargets
from kdcache.config import CacheIO, DistillConfig, RunOptions
from kdcache.errors import CacheError


def write_index_cache(path, data, chunk_rows=7, order=None):
    """A cache of ``data`` whose logits say which sample they belong to: column 0 = dataset index."""
    n, c = len(data), data.info.num_classes
    order = np.arange(n) if order is None else order  # cache row r holds dataset index order[r]
    logits = np.zeros((n, c), dtype=np.float32)
    logits[:, 0] = order
    logits[np.arange(n), 1 + data.labels.numpy()[order] % (c - 1)] = -1.0
    with cache.CacheWriter(path, cache.CacheLayout(num_classes=c, chunk_rows=chunk_rows), num_samples=n,
                           attrs=cache_attrs(data.info)) as w:
        w.write(0, logits, data.labels.numpy()[order], order, data.sample_ids[order])
    return path


def epoch_rows(stream, epoch, batch_size=5, workers=0):
    stream.set_epoch(epoch)
    return np.concatenate([v.numpy() for v, _ in iter_batches(stream, batch_size, workers)])


@pytest.fixture
def data():
    return make_image_data(n=103)


@pytest.fixture
def path(tmp_path, data):
    return write_index_cache(tmp_path / "c.h5", data)


def test_epoch_covers_every_row_once_and_logits_match(path):
    stream = LogitStream(path, buffer_blocks=3, seed=1)
    seen = []
    for values, logits in iter_batches(stream, 8):
        assert len(values) <= 8
        assert torch.equal(logits[:, 0].long(), values)  # each row's logits came with it
        seen.append(values.numpy())
    seen = np.concatenate(seen)
    assert sorted(seen.tolist()) == list(range(103))
    assert not np.array_equal(seen, np.arange(103))  # shuffled


def test_batches_have_exact_size_but_the_last(path):
    sizes = [len(v) for v, _ in iter_batches(LogitStream(path, buffer_blocks=2), 10)]
    assert sizes == [10] * 10 + [3]


def test_seed_and_epoch_fix_the_order(path):
    a, b, c = LogitStream(path, seed=0), LogitStream(path, seed=0), LogitStream(path, seed=1)
    assert np.array_equal(epoch_rows(a, 0), epoch_rows(b, 0))
    assert not np.array_equal(epoch_rows(a, 0), epoch_rows(c, 0))
    assert not np.array_equal(epoch_rows(a, 0), epoch_rows(a, 1))


def test_sequential_pass_is_file_order(path):
    assert np.array_equal(epoch_rows(LogitStream(path, shuffle=False), 0), np.arange(103))


def test_subset_of_rows_with_values(path):
    rows = np.array([5, 6, 7, 50, 90, 91])
    stream = LogitStream(path, rows=rows, values=rows * 10, buffer_blocks=1)
    out = {int(v): float(lg[0]) for vs, lgs in iter_batches(stream, 4) for v, lg in zip(vs, lgs)}
    assert out == {int(r) * 10: float(r) for r in rows}


def test_worker_processes_cover_every_row_once(path):
    stream = LogitStream(path, buffer_blocks=2, seed=0)
    stream._open()  # a handle opened in the parent must not be used by the forked workers
    rows = epoch_rows(stream, 0, batch_size=6, workers=2)
    assert sorted(rows.tolist()) == list(range(103))
    assert np.array_equal(rows, epoch_rows(stream, 0, batch_size=6, workers=2))  # deterministic
    assert np.array_equal(rows, epoch_rows(stream, 0, batch_size=6, workers=0))  # whoever reads it
    assert np.array_equal(rows, epoch_rows(stream, 0, batch_size=6, workers=1))
    stream.close()


def test_streamed_targets_pair_logits_with_their_images(tmp_path, data):
    # Cache rows in another order than the data, and data a subset (--limit) of the cache.
    order = np.random.default_rng(0).permutation(len(data))
    path = write_index_cache(tmp_path / "r.h5", data, order=order)
    sub = data.head(60)
    with cache.open_cache(path) as c:
        rows = c.align(sub.indices.numpy(), labels=sub.labels.numpy(), sample_ids=sub.sample_ids, info=sub.info)
    src = train_batches(sub, 16, targets=StreamedTargets([(path, rows)]))
    assert len(src) == 4 and src.dataset.streamed
    for epoch in range(2):
        src.set_epoch(epoch)
        seen = []
        for batch in src:
            idx = batch.teacher_logits[:, 0].long()  # dataset index the logits were made for
            assert batch.teacher_logits.dtype == torch.float32
            assert torch.equal(batch.labels, sub.labels[idx])
            mean, std = sub.info.mean[0], sub.info.std[0]
            assert torch.allclose(batch.images, (sub.images[idx].float() / 255 - mean) / std)
            seen.append(idx)
        assert sorted(torch.cat(seen).tolist()) == list(range(60))


def test_corrupt_logits_are_refused(tmp_path, data):
    path = write_index_cache(tmp_path / "c.h5", data)
    from kdcache.cache.schema import values_ok
    assert values_ok(np.ones((2, 3), np.float16)) and not values_ok(np.array([[np.inf]], np.float16))
    assert not values_ok(np.array([np.nan], np.float32)) and not values_ok(np.array([3e38], np.float32))
    assert not values_ok(np.array([-2e4], np.float16)) and values_ok(np.array([-9e3, 9e3], np.float32))
    import h5py  # the test pokes the file directly, as a corrupting tool would
    with h5py.File(path, "r+") as f:
        f["logits"][40, 2] = np.nan
    with pytest.raises(CacheError, match="row 40"):
        list(iter_batches(LogitStream(path), 8))


def test_train_student_streams_a_cache_over_the_memory_limit(tmp_path, data_dir):
    from kdcache.config import DataConfig, TrainConfig
    from kdcache.data.datasets import load_dataset
    from kdcache.jobs.training import train_student

    fm = load_dataset("fashion-mnist", "train", data_dir, limit=300)
    logits = np.random.default_rng(0).standard_normal((300, 10)).astype(np.float32)
    path = tmp_path / "fm.h5"
    with cache.CacheWriter(path, cache.CacheLayout(num_classes=10, dtype="float16", chunk_rows=4), num_samples=300,
                           attrs=cache_attrs(fm.info)) as w:  # many small blocks, so that workers split them
        w.write(0, logits, fm.labels, fm.indices, fm.sample_ids)
    kw = dict(data_cfg=DataConfig(data_dir=str(data_dir), limit=200, eval_limit=100),
              cfg=TrainConfig(epochs=2, batch_size=64, device="cpu"))
    streamed = train_student(tmp_path / "s.pt", DistillConfig([path]), **kw, io=CacheIO(memory_limit_mb=0))
    in_workers = train_student(tmp_path / "w.pt", DistillConfig([path]), **kw, io=CacheIO(memory_limit_mb=0, workers=2))
    in_memory = train_student(tmp_path / "m.pt", DistillConfig([path]), **kw)
    assert streamed["config"]["cache_streamed"] and in_workers["config"]["cache_streamed"]
    assert not in_memory["config"]["cache_streamed"]
    for r in (streamed, in_workers):
        assert len(r["history"]) == 2 and np.isfinite(r["history"][-1]["train_loss"])
    # Same seed, same order (so the same training) whether the cache is read in the trainer or in workers.
    assert streamed["history"][-1]["train_loss"] == pytest.approx(in_workers["history"][-1]["train_loss"], rel=1e-5)


def test_cli_exposes_the_memory_limit():
    from click.testing import CliRunner

    from kdcache.cli import main

    out = CliRunner().invoke(main, ["train-student", "--help"]).output
    assert "--cache-memory-limit" in out and "--cache-workers" in out


def test_concat_stream_serves_every_row_of_every_cache_once_mixed_in_its_buffers(tmp_path):
    """Two caches (a labelled one and a float16 transfer one) as one stream: each row once, with its own
    logits, blocks of both in the same buffers, and the same order for any number of DataLoader workers."""
    from kdcache.cache.stream import ConcatStream

    a, b = make_image_data(n=40, seed=0), make_image_data(n=61, seed=1, name="other")
    pa = write_index_cache(tmp_path / "a.h5", a, chunk_rows=6)
    pb = tmp_path / "b.h5"  # column 0 = 100 + dataset index, float16
    logits = np.zeros((61, 10), dtype=np.float32)
    logits[:, 0] = 100 + np.arange(61)
    cache.write_cache(pb, logits, np.full(61, -1), np.arange(61), b.sample_ids, cache_attrs(b.info), dtype="float16",
                      chunk_rows=5)

    def make():
        parts = [LogitStream(pa, values=np.arange(40)), LogitStream(pb, values=100 + np.arange(61))]
        return ConcatStream(parts, buffer_blocks=4, seed=3)

    stream = make()
    assert stream.dtype == np.float32 and len(stream.blocks) == 7 + 13
    buffers = list(stream)
    assert all(torch.equal(t[:, 0].long(), v) for v, t in buffers)  # right logits, converted from float16
    seen = np.concatenate([v.numpy() for v, _ in buffers])
    assert sorted(seen.tolist()) == list(range(40)) + list(range(100, 161))
    mixed = [((v < 100).any() and (v >= 100).any()).item() for v, _ in buffers]
    assert sum(mixed) >= len(buffers) // 2, mixed  # most buffers hold rows of both caches
    assert np.array_equal(epoch_rows(make(), 0, workers=0), epoch_rows(make(), 0, workers=2))
    assert not np.array_equal(epoch_rows(make(), 0), epoch_rows(make(), 1))
    stream.close()


def test_concat_stream_of_topk_caches_keeps_each_rows_encoding(tmp_path):
    """Top-k caches (float16 and float32 values) in one stream: every row once, with its own classes and tail."""
    from kdcache.cache.stream import ConcatStream
    from kdcache.cache.targets import TopK

    a, b = make_image_data(n=30, seed=0), make_image_data(n=25, seed=1, name="other")
    za = np.random.default_rng(0).normal(0, 3, (30, 10)).astype(np.float32)
    zb = np.random.default_rng(1).normal(0, 3, (25, 10)).astype(np.float32)
    pa, pb = tmp_path / "a.h5", tmp_path / "b.h5"
    cache.write_cache(pa, za, a.labels, a.indices, a.sample_ids, cache_attrs(a.info), topk=3, chunk_rows=4)
    cache.write_cache(pb, zb, np.full(25, -1), np.arange(25), b.sample_ids, cache_attrs(b.info), topk=3,
                      dtype="float32", chunk_rows=6)
    stream = ConcatStream([LogitStream(pa, values=np.arange(30)), LogitStream(pb, values=100 + np.arange(25))],
                          buffer_blocks=3, seed=1)
    want = {**{i: TopK.encode(za[i], 3) for i in range(30)}, **{100 + i: TopK.encode(zb[i], 3) for i in range(25)}}
    seen = []
    for values, t in stream:
        assert isinstance(t, TopK) and t.tail_logsumexp_t2 is not None
        for j, v in enumerate(values.tolist()):
            ref = want[v]
            assert np.array_equal(np.asarray(t.classes[j]), ref.classes)
            assert np.allclose(np.asarray(t.logits[j], dtype=np.float32), ref.logits, rtol=1e-3)
            assert float(t.tail_logsumexp_t2[j]) == float(ref.tail_logsumexp_t2)
            seen.append(v)
    assert sorted(seen) == list(range(30)) + list(range(100, 125))
    stream.close()
    pc = tmp_path / "c.h5"  # another k: its rows cannot share a buffer, refused up front (not a numpy error mid-epoch)
    cache.write_cache(pc, zb, np.full(25, -1), np.arange(25), b.sample_ids, cache_attrs(b.info), topk=2)
    with pytest.raises(CacheError, match="hold different kinds of targets"):
        ConcatStream([LogitStream(pa), LogitStream(pc)])


def open_fds() -> set[str]:
    import os

    return {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")}


def test_repeated_streamed_runs_leave_no_file_open(tmp_path, data_dir):
    """A sweep of streamed runs leaked one descriptor of the cache per run (LogitStream's os.open was never closed)."""
    from kdcache.config import DataConfig, TrainConfig
    from kdcache.data.datasets import load_dataset
    from kdcache.jobs.training import train_student

    fm = load_dataset("fashion-mnist", "train", data_dir, limit=64)
    path = tmp_path / "fm.h5"
    logits = np.random.default_rng(0).standard_normal((64, 10)).astype(np.float32)
    cache.write_cache(path, logits, fm.labels, fm.indices, fm.sample_ids, cache_attrs(fm.info), chunk_rows=8)
    kw = dict(distill=DistillConfig([path]), data_cfg=DataConfig(data_dir=str(data_dir), limit=64, eval_limit=50),
              cfg=TrainConfig(epochs=1, batch_size=32, device="cpu"), io=CacheIO(memory_limit_mb=0),
              run=RunOptions(overwrite=True))
    train_student(tmp_path / "s.pt", **kw)  # warm-up: whatever the first run opens for good (libraries, data)
    before = open_fds()
    for _ in range(3):
        assert train_student(tmp_path / "s.pt", **kw)["config"]["cache_streamed"]
    assert sorted(f for f in open_fds() - before if "fm.h5" in f or f.startswith(str(tmp_path))) == []
    assert not any(str(path) in f for f in open_fds())


def test_a_stream_closes_its_handles_and_reopens_when_iterated_again(path):
    with LogitStream(path, buffer_blocks=2) as stream:
        assert len(epoch_rows(stream, 0)) == 103
        assert any(str(path) in f for f in open_fds())
    assert not any(str(path) in f for f in open_fds())
    assert len(epoch_rows(stream, 1)) == 103  # reopened on demand
    stream.close()
    assert not any(str(path) in f for f in open_fds())


def test_read_ahead_keeps_order_raises_where_the_producer_failed_and_stops_with_the_consumer():
    import threading

    from kdcache.cache.stream import read_ahead

    assert list(read_ahead(iter(range(50)))) == list(range(50))

    def failing():
        yield from range(3)
        raise CacheError("x.h5: chunk 3 is corrupt")

    got = []
    with pytest.raises(CacheError, match="chunk 3 is corrupt"):
        for i in read_ahead(failing()):
            got.append(i)
    assert got == [0, 1, 2]
    produced = []

    def counting():
        for i in range(1000):
            produced.append(i)
            yield i

    it = read_ahead(counting(), depth=1)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()  # the consumer stops: the producer is stopped and joined, at most depth + 2 items ahead
    assert len(produced) <= 3 + 3 and not any(t.name == "kdcache-read-ahead" for t in threading.enumerate())
