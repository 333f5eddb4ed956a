"""Sharded dumps: row ranges, shard validation (valid / stale / damaged), assembly, and torchrun end to end."""
from __future__ import annotations

import json

import h5py  # the test corrupts a chunk on purpose; kdcache itself reads HDF5 only in kdcache.cache
import numpy as np
import pytest
import torch
from conftest import (
    cache_attrs,
    error_lines,
    finish_job,
    free_port,
    make_image_data,
    torchrun,
)

from kdcache.cache import CacheLayout, CacheWriter, LogitCache, open_cache, write_cache
from kdcache.cache.schema import SHARD_FORMAT
from kdcache.cache.shards import (
    SHARD_ATTRS,
    assemble,
    prepare_shard,
    remove_shards,
    row_ranges,
    shard_attrs,
    shard_path,
    shard_request,
)
from kdcache.config import DataConfig, DumpConfig, ViewConfig
from kdcache.errors import CacheError
from kdcache.jobs.dump import dump_logits
from kdcache.train.teacher import TeacherSpec

REQUEST = {"teacher_sha256": "a" * 64, "dataset": "synthetic", "num_samples": 40, "topk": 0}


# -- row ranges --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,batch,world", [(2000, 256, 2), (1000, 100, 3), (999, 1000, 2), (60000, 1000, 7),
                                           (10, 4, 8)])
def test_row_ranges_are_contiguous_whole_batches_covering_every_row(n, batch, world):
    ranges = row_ranges(n, batch, world)
    assert len(ranges) == world and ranges[0].start == 0 and ranges[-1].stop == n
    assert all(a.stop == b.start for a, b in zip(ranges, ranges[1:]))  # contiguous, disjoint, in rank order
    assert all(r.start % batch == 0 for r in ranges if len(r))  # cut on the one-process dump's batch boundaries
    batches = [-(-len(r) // batch) for r in ranges]
    assert max(batches) - min(batches) <= 1  # shares differ by at most one batch


def test_row_ranges_worked_example():
    assert row_ranges(2000, 256, 2) == [range(0, 1024), range(1024, 2000)]  # 4 + 4 of the 8 batches
    assert row_ranges(10, 4, 8)[3:] == [range(10, 10)] * 5  # 3 batches for 8 ranks: the rest get no rows


# -- shard files ---------------------------------------------------------------------------------------


def _write_shard(out, data, logits, rank, world, rows, request=REQUEST, **kw):
    req = shard_request(request, world_size=world, rows=rows, batch_size=10, device_type="cpu")
    path = shard_path(out, rank, world)
    attrs = shard_attrs(cache_attrs(data.info), req, rank, world, rows)
    view_params = kw.pop("view_params", None)
    with CacheWriter(path, CacheLayout(num_classes=10, **kw), num_samples=len(rows), attrs=attrs,
                     file_format=SHARD_FORMAT, overwrite=True) as w:
        s = slice(rows.start, rows.stop)
        w.write(0, logits[s], data.labels[s], data.indices[s], data.sample_ids[s],
                view_params=None if view_params is None else view_params[s])
    return path, req


@pytest.fixture
def shard_data(tmp_path):
    data = make_image_data(n=40)
    logits = np.random.default_rng(0).normal(0, 3, size=(40, 10)).astype(np.float32)
    return tmp_path / "out.h5", data, logits


def test_a_shard_records_what_it_covers_and_is_never_opened_as_a_cache(shard_data):
    out, data, logits = shard_data
    path, req = _write_shard(out, data, logits, 1, 2, range(20, 40))
    assert path.name == ".out.h5.shard-1-of-2.h5"
    with LogitCache(path, file_format=SHARD_FORMAT) as c:
        a = c.meta.attrs
        assert set(SHARD_ATTRS) <= set(a)
        assert (a["shard_rank"], a["shard_world_size"], a["shard_row_start"], a["shard_row_stop"]) == (1, 2, 20, 40)
        assert np.array_equal(c.read(), logits[20:40]) and np.array_equal(c.indices, np.arange(20, 40))
    with pytest.raises(CacheError, match="a kdcache shard, not a cache"):
        open_cache(path)


def test_prepare_shard_keeps_a_valid_shard_and_redoes_a_missing_or_damaged_one(shard_data):
    out, data, logits = shard_data
    path, req = _write_shard(out, data, logits, 0, 2, range(0, 20))
    assert prepare_shard(path, req, overwrite=False) is True and path.exists()
    with h5py.File(path, "r+") as f:  # flip bits inside the stored logits: the fletcher32 checksum fails
        offset = f["logits"].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset + 8)
        fh.write(b"\xff\xff\xff\xff")
    assert prepare_shard(path, req, overwrite=False) is False and not path.exists()  # damaged: removed, redone
    assert prepare_shard(path, req, overwrite=False) is False  # missing


def test_a_shard_of_another_dump_is_refused_and_overwrite_discards_it(shard_data):
    out, data, logits = shard_data
    other = {**REQUEST, "teacher_sha256": "b" * 64}
    path, _ = _write_shard(out, data, logits, 0, 2, range(0, 20), request=other)
    want = shard_request(REQUEST, world_size=2, rows=range(0, 20), batch_size=10, device_type="cpu")
    with pytest.raises(CacheError) as e:
        prepare_shard(path, want, overwrite=False)
    msg = str(e.value)
    assert "shard left by another dump" in msg and "teacher_sha256 'bbbbbbbbbbbb...' there" in msg
    assert "--overwrite" in msg and path.exists()  # refused, never touched
    assert prepare_shard(path, want, overwrite=True) is False and not path.exists()
    # the same dump cut another way (batch size) is "another dump" too: never mixed in
    _write_shard(out, data, logits, 0, 2, range(0, 20))
    with pytest.raises(CacheError, match="batch_size 10 there, 20 here"):
        prepare_shard(path, {**want, "batch_size": 20}, overwrite=False)


@pytest.mark.parametrize("kind", ["logits", "topk", "views"])
def test_assemble_equals_a_one_process_write_for_every_cache_kind(shard_data, kind):
    out, data, logits = shard_data
    kw: dict = {}
    z = logits
    if kind == "topk":
        kw = {"topk": 3}
    elif kind == "views":  # what issue 10's dumps write: (n, V, C) logits and (n, V, P) view parameters
        z = np.random.default_rng(1).normal(size=(40, 2, 10)).astype(np.float32)
        kw = {"num_views": 2, "view_policy": {"name": "p", "version": 1, "settings": {}, "param_names": ["a"]},
              "view_params": np.random.default_rng(2).random((40, 2, 1)).astype(np.float32)}
    parts = [_write_shard(out, data, z, r, 3, rows, **dict(kw))[0] for r, rows in
             enumerate([range(0, 10), range(10, 30), range(30, 40)])]
    opts = {k: v for k, v in kw.items() if k != "view_params"}
    result = assemble(out, parts, 40, CacheLayout(num_classes=10, dtype="float32", **opts), cache_attrs(data.info))
    ref = write_cache(out.with_name("ref.h5"), z, data.labels, data.indices, data.sample_ids, cache_attrs(data.info),
                      **kw)
    with open_cache(out) as a, open_cache(ref) as b:
        assert a.meta.content_sha256 == b.meta.content_sha256  # every stored value identical, in order
        assert _attrs(a.meta.attrs) == _attrs(b.meta.attrs)  # two writes a second apart differ only in the time
    assert result["labelled"] == 40 and 0 <= result["agree"] <= 40


def test_assemble_refuses_shards_that_do_not_cover_the_rows(shard_data):
    out, data, logits = shard_data
    parts = [_write_shard(out, data, logits, 0, 2, range(0, 20))[0]]
    with pytest.raises(CacheError, match="cover rows 0:20 of 40"):
        assemble(out, parts, 40, CacheLayout(num_classes=10, dtype="float32"), cache_attrs(data.info))
    assert not out.exists()
    remove_shards(out)
    assert list(out.parent.glob(".out.h5*")) == []


# -- torchrun end to end -------------------------------------------------------------------------------


def _one_process_dump(test_teacher, out, data_dir, limit, batch_size, views=ViewConfig(), topk=None):
    """The reference: the same dump in this process, with 1 torch thread like each rank."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return dump_logits(TeacherSpec(factory=test_teacher["factory"], weights=test_teacher["weights"]), out,
                           dump=DumpConfig(batch_size=batch_size, device="cpu", topk=topk), views=views,
                           data_cfg=DataConfig(data_dir=str(data_dir), limit=limit))
    finally:
        torch.set_num_threads(threads)


def _attrs(attrs: dict) -> dict:
    """Attributes without the write time (also inside config_json)."""
    config = {k: v for k, v in json.loads(attrs["config_json"]).items() if k != "created_utc"}
    return {**{k: v for k, v in attrs.items() if k != "created_utc"}, "config_json": config}


def _logits(path):
    with open_cache(path) as c:
        return c.read(), c.meta.content_sha256, c.meta.attrs


def test_killed_rank_then_rerun_gives_the_one_process_cache_bit_for_bit(tmp_path, test_teacher, data_dir):
    out = tmp_path / "c.h5"
    flags = ["dump-logits", "--teacher-factory", test_teacher["factory"], "--weights", test_teacher["weights"],
             "--data-dir", data_dir, "--limit", 600, "--batch-size", 100, "--device", "cpu", "--out", out]
    shard0, shard1 = shard_path(out, 0, 2), shard_path(out, 1, 2)
    # 1. rank 0 is SIGKILLed mid-dump, once rank 1's shard is finished: rank 1's shard stays, rank 0's is lost
    first = torchrun(*flags, env={"KDT_KILL_RANK": "0", "KDT_KILL_AFTER": str(shard1)},
                     pythonpath=[test_teacher["folder"]])
    assert first.returncode != 0, first.stderr
    assert not out.exists() and shard1.exists() and not shard0.exists()
    # 2. the same output with another teacher: rank 1's shard is refused, in one line naming rank 1
    stale = torchrun(*[f if f != test_teacher["weights"] else test_teacher["other_weights"] for f in flags],
                     pythonpath=[test_teacher["folder"]])
    assert stale.returncode != 0
    lines = error_lines(stale)
    assert len(lines) == 1 and lines[0].startswith("Error: rank 1: ") and "shard left by another dump" in lines[0], \
        stale.stderr
    assert not out.exists() and shard1.exists() and not shard0.exists()
    # 3. the same command again: rank 1's shard is kept, rank 0's redone; the cache equals a one-process dump
    again = torchrun(*flags, pythonpath=[test_teacher["folder"]])
    assert again.returncode == 0, again.stderr
    assert "2 ranks: 1 shard(s) written, 1 reused" in again.stdout
    assert list(tmp_path.glob(".*c.h5*")) == []  # shards and the killed rank's temp file are gone
    ref = _one_process_dump(test_teacher, tmp_path / "ref.h5", data_dir, 600, 100)
    got, want = _logits(out), _logits(ref["cache"])
    assert np.array_equal(got[0].view(np.uint32), want[0].view(np.uint32))  # bit for bit
    assert got[1] == want[1]
    assert _attrs(got[2]) == _attrs(want[2])  # the same attributes as a one-process dump


def test_two_nodes_on_one_machine_assemble_the_one_process_cache(tmp_path, test_teacher, data_dir):
    """Two torchrun launches (one process each) against one rendezvous; the cache is a top-3 cache of 2 augmented
    views per image, so issue 10's views and issue 11's top-k go through the shards too."""
    out = tmp_path / "c.h5"
    port = free_port()
    flags = ["dump-logits", "--teacher-factory", test_teacher["factory"], "--weights", test_teacher["weights"],
             "--data-dir", data_dir, "--limit", 300, "--batch-size", 64, "--device", "cpu", "--out", out,
             "--views", 2, "--augment", "shift-flip", "--top-k", 3]
    nodes = [torchrun(*flags, nproc=1, node=(2, i, port), pythonpath=[test_teacher["folder"]], background=True)
             for i in (0, 1)]
    done = [finish_job(p) for p in nodes]
    assert [p.returncode for p in done] == [0, 0], [p.stderr for p in done]
    assert "2 ranks: 2 shard(s) written" in done[0].stdout and done[1].stdout == ""  # rank 0 speaks for the job
    ref = _one_process_dump(test_teacher, tmp_path / "ref.h5", data_dir, 300, 64,
                            views=ViewConfig(views=2, augment="shift-flip"), topk=3)
    got, want = _logits(out), _logits(ref["cache"])
    assert got[0].classes.shape == (300, 2, 3) and got[1] == want[1]  # every stored value, bit for bit
    assert _attrs(got[2]) == _attrs(want[2])
    assert list(tmp_path.glob(".*")) == []
