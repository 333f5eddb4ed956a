"""The cache file: bit-exact round trip, schema read with plain h5py, atomic writes, refusals."""
import json
from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch
from conftest import cache_attrs

from kdcache.cache import (
    DATASETS,
    FORMAT_NAME,
    PLAIN_SCHEMA_VERSION,
    ROOT_ATTRS,
    CacheLayout,
    CacheWriter,
    open_cache,
    read_meta,
    write_cache,
)
from kdcache.cache.targets import TopK
from kdcache.errors import CacheError
from kdcache.identity import UNLABELLED


def load_cache(path):
    """Open, read every row (checking values) and close: what train-student does for an in-memory cache."""
    with open_cache(path) as c:
        c.read()
        return c


def align_to_data(path, data):
    with open_cache(path) as c:
        rows = c.align(data.indices.numpy(), labels=data.labels.numpy(), sample_ids=data.sample_ids, info=data.info)
        return torch.from_numpy(np.asarray(c.read(rows), dtype=np.float32))


def logits_for(n, c=10, seed=1):
    return np.random.default_rng(seed).normal(0, 5, size=(n, c)).astype(np.float32)


@pytest.fixture
def cache(tmp_path, image_data):
    d = image_data
    logits = logits_for(len(d))
    path = write_cache(tmp_path / "c.h5", logits, d.labels, d.indices, d.sample_ids, cache_attrs(d.info))
    return path, logits, d


def test_round_trip_is_bit_exact(cache):
    path, logits, d = cache
    with open_cache(path) as c:
        assert c.read().tobytes() == logits.tobytes()
        assert np.array_equal(c.labels, d.labels.numpy())
        assert np.array_equal(c.indices, d.indices.numpy())
        assert np.array_equal(c.sample_ids, d.sample_ids)
        assert len(c) == len(d) and c.num_classes == 10 and c.kind == "logits" and c.dtype == "float32"
        rows = np.array([7, 3, 3, 60])  # any order, repeats allowed
        assert c.read(rows).tobytes() == logits[rows].tobytes()
        assert c.read(slice(5, 9)).tobytes() == logits[5:9].tobytes()
        blocks = list(c.blocks(block_rows=10))
        assert [b.start for b, _ in blocks] == list(range(0, 64, 10))
        assert np.concatenate([t for _, t in blocks]).tobytes() == logits.tobytes()
        assert "64 rows x 10 classes" in repr(c)


def test_cache_object_is_a_context_manager_and_refuses_pickling(cache):
    import pickle

    path, _, _ = cache
    with open_cache(path) as c:
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(c)
    with pytest.raises(CacheError, match="is closed"):
        c.read()


def test_content_hash_is_stored_and_recomputed(cache, tmp_path):
    path, logits, d = cache
    with open_cache(path) as c:
        stored = c.meta.content_sha256
        assert len(stored) == 64 and c.scan().content_sha256 == stored
    # The same values written again give the same hash; one changed value another.
    again = write_cache(tmp_path / "again.h5", logits, d.labels, d.indices, d.sample_ids, cache_attrs(d.info))
    assert read_meta(again).content_sha256 == stored
    logits2 = logits.copy()
    logits2[3, 3] += 1
    other = write_cache(tmp_path / "other.h5", logits2, d.labels, d.indices, d.sample_ids, cache_attrs(d.info))
    assert read_meta(other).content_sha256 != stored


def test_unlabelled_rows(tmp_path, image_data):
    d = image_data
    labels = d.labels.numpy().copy()
    labels[10:] = UNLABELLED
    p = write_cache(tmp_path / "u.h5", logits_for(len(d)), labels, d.indices, d.sample_ids, cache_attrs(d.info))
    with open_cache(p) as c:
        assert c.meta.num_labelled == 10 and (c.labels[10:] == -1).all()


def test_topk_cache_round_trip(tmp_path, image_data):
    d = image_data
    logits = logits_for(len(d))
    p = write_cache(tmp_path / "k.h5", logits, d.labels, d.indices, d.sample_ids, cache_attrs(d.info), topk=3)
    ref = TopK.encode(logits, 3)
    with open_cache(p) as c:
        assert c.kind == "topk" and c.meta.topk == 3 and c.meta.schema_version == "2.0"
        t = c.read(np.array([4, 1]))
        assert isinstance(t, TopK) and t.k == 3 and t.num_classes == 10
        assert np.array_equal(t.logits, ref.logits[[4, 1]])
        assert np.array_equal(t.classes, ref.classes[[4, 1]]) and t.classes.dtype == np.uint8
        assert np.array_equal(t.tail_logsumexp, ref.tail_logsumexp[[4, 1]])
        assert c.scan().content_sha256 == c.meta.content_sha256


def test_views_cache_reads_one_view_per_row(tmp_path, image_data):
    d = image_data
    z = np.random.default_rng(2).normal(size=(len(d), 3, 10)).astype(np.float32)
    params = np.random.default_rng(3).integers(0, 5, size=(len(d), 3, 2)).astype(np.float32)
    policy = {"name": "test-policy", "version": 1, "settings": {}, "param_names": ["a", "b"]}
    p = write_cache(tmp_path / "v.h5", z, d.labels, d.indices, d.sample_ids, cache_attrs(d.info), num_views=3,
                    view_policy=policy, view_params=params)
    with open_cache(p) as c:
        assert c.meta.num_views == 3 and c.meta.view_policy["name"] == "test-policy"
        assert np.array_equal(c.read(), z)
        rows, views = np.array([5, 0, 9]), np.array([2, 0, 1])
        assert np.array_equal(c.read(rows, views=views), z[rows, views])
        assert np.array_equal(c.read_view_params(rows), params[rows])


def test_float16_storage(tmp_path, image_data):
    d = image_data
    logits = logits_for(len(d))
    p = write_cache(tmp_path / "h.h5", logits, d.labels, d.indices, d.sample_ids, cache_attrs(d.info), dtype="float16")
    with open_cache(p) as c:
        z = c.read()
        assert z.dtype == np.float16 and c.meta.logits_dtype == "float16"
        assert np.array_equal(z, logits.astype(np.float16))


def test_schema_with_plain_h5py(cache):
    path, logits, d = cache
    with h5py.File(path, "r") as f:
        assert set(f.keys()) == {"logits", "labels", "indices", "sample_ids"}
        assert set(f.keys()) <= set(DATASETS)
        assert f["logits"].shape == (len(d), 10) and f["logits"].dtype == np.float32
        assert f["labels"].dtype == np.int64 and f["indices"].dtype == np.int64
        assert f["sample_ids"].dtype == np.uint64 and f["sample_ids"].shape == (len(d),)
        assert f["logits"].fletcher32 and f["logits"].chunks is not None and f["logits"].compression is None
        for name in ROOT_ATTRS:
            assert name in f.attrs, name
        # a plain cache is 1.1: kdcache 1.x readers (which accept any 1.x) still read it
        assert f.attrs["format"] == FORMAT_NAME and f.attrs["schema_version"] == PLAIN_SCHEMA_VERSION
        assert int(f.attrs["complete"]) == 1
        assert json.loads(f.attrs["class_names"]) == list(d.info.class_names)
        assert f.attrs["dataset_fingerprint"] == d.info.fingerprint
        assert f.attrs["num_samples"] == len(d) and f.attrs["num_classes"] == 10
        config = json.loads(f.attrs["config_json"])
        assert config["dataset"] == d.info.name and config["teacher_arch"] == "teacher-cnn"
        # libver earliest..v110: superblock version <= 2 keeps HDF5 1.10 readers happy
        assert f.id.get_create_plist().get_version()[0] <= 2


def test_meta(cache):
    path, _, d = cache
    m = read_meta(path)
    assert (m.num_samples, m.num_classes, m.dataset, m.split) == (len(d), 10, d.info.name, "train")


def test_refuses_to_overwrite_and_keeps_existing(cache):
    path, _, d = cache
    before = path.read_bytes()
    with pytest.raises(CacheError, match="--overwrite"):
        write_cache(path, logits_for(len(d), seed=9), d.labels, d.indices, d.sample_ids, cache_attrs(d.info))
    assert path.read_bytes() == before


def test_failed_write_leaves_nothing(tmp_path, image_data):
    d = image_data
    target = tmp_path / "c.h5"
    with pytest.raises(RuntimeError):
        with CacheWriter(target, CacheLayout(num_classes=10), num_samples=len(d), attrs=cache_attrs(d.info)) as w:
            w.write(0, logits_for(10), d.labels[:10], d.indices[:10], d.sample_ids[:10])
            raise RuntimeError("killed mid-way")
    assert list(tmp_path.iterdir()) == []


def test_nan_logits_refused_and_nothing_written(tmp_path, image_data):
    d = image_data
    logits = logits_for(len(d))
    logits[3, 2] = np.nan
    with pytest.raises(CacheError, match="row 3 holds NaN/Inf"):
        write_cache(tmp_path / "c.h5", logits, d.labels, d.indices, d.sample_ids, cache_attrs(d.info))
    assert list(tmp_path.iterdir()) == []
    logits[3, 2] = 3e38  # finite, but no teacher's output
    with pytest.raises(CacheError, match="row 3 holds a logit of magnitude 3e\\+38"):
        write_cache(tmp_path / "c.h5", logits, d.labels, d.indices, d.sample_ids, cache_attrs(d.info))
    assert list(tmp_path.iterdir()) == []


def test_float16_overflow_refused(tmp_path, image_data):
    d = image_data
    logits = logits_for(len(d))
    logits[0, 0] = 1e6
    with pytest.raises(CacheError, match="float16 overflows"):
        write_cache(tmp_path / "c.h5", logits, d.labels, d.indices, d.sample_ids, cache_attrs(d.info), dtype="float16")


def test_missing_and_non_hdf5(tmp_path):
    with pytest.raises(CacheError, match="not found"):
        load_cache(tmp_path / "nope.h5")
    junk = tmp_path / "junk.h5"
    junk.write_text("hello")
    with pytest.raises(CacheError, match="not an HDF5 file"):
        load_cache(junk)


def test_truncated(cache, tmp_path):
    path, _, _ = cache
    cut = tmp_path / "cut.h5"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CacheError):
        load_cache(cut)


def test_incomplete_and_newer_schema(cache):
    path, _, _ = cache
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = "5.0"
    with pytest.raises(CacheError, match="schema 5.0, newer than this kdcache reads"):
        load_cache(path)
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = "2.7"  # newer minor: still loads
    load_cache(path)
    with h5py.File(path, "r+") as f:
        del f.attrs["complete"]
    with pytest.raises(CacheError, match="incomplete"):
        load_cache(path)


def test_nan_in_file_refused(cache):
    path, _, _ = cache
    with h5py.File(path, "r+") as f:
        f["logits"][5, 1] = np.inf
    with pytest.raises(CacheError, match="row 5 holds NaN/Inf"):
        load_cache(path)


# ---------------------------------------------------------------------------- alignment with the data


def test_align_returns_rows_in_data_order(cache):
    path, logits, d = cache
    aligned = align_to_data(path, d.head(20))
    assert torch.equal(aligned, torch.from_numpy(logits[:20]))


def test_align_by_index_not_position(tmp_path, image_data):
    """A cache whose rows are stored in another order still aligns by dataset index."""
    d = image_data
    logits = logits_for(len(d))
    perm = np.random.default_rng(0).permutation(len(d))
    p = write_cache(tmp_path / "p.h5", logits[perm], d.labels.numpy()[perm], d.indices.numpy()[perm],
                    d.sample_ids[perm], cache_attrs(d.info))
    assert torch.equal(align_to_data(p, d), torch.from_numpy(logits))


def test_align_refuses_fewer_samples(tmp_path, image_data):
    d = image_data
    small = d.head(32)
    p = write_cache(tmp_path / "s.h5", logits_for(32), small.labels, small.indices, small.sample_ids,
                    cache_attrs(d.info))
    align_to_data(p, d.head(30))  # a cache covering more than used is fine
    with pytest.raises(CacheError, match="32 of the 64 asked for are not in it"):
        align_to_data(p, d)


def test_align_refuses_other_split_dataset_and_classes(cache):
    path, _, d = cache
    with pytest.raises(CacheError, match="made from synthetic/train, but the data is synthetic/test"):
        align_to_data(path, replace(d, info=replace(d.info, split="test")))
    with pytest.raises(CacheError, match="different"):
        align_to_data(path, replace(d, info=replace(d.info, fingerprint="f" * 64)))
    with pytest.raises(CacheError, match="another label set"):
        align_to_data(path, replace(d, info=replace(d.info, class_names=d.info.class_names[:5])))


def test_align_refuses_shuffled_rows(tmp_path, image_data):
    """Rows whose index no longer matches their content (reordered data) are caught by the content ids."""
    d = image_data
    ids = d.sample_ids.copy()
    ids[[0, 1]] = ids[[1, 0]]
    labels = d.labels.numpy().copy()
    labels[[0, 1]] = labels[[1, 0]]
    p = write_cache(tmp_path / "x.h5", logits_for(len(d)), labels, d.indices, ids, cache_attrs(d.info))
    with pytest.raises(CacheError, match="2 of 64 rows disagree with the data sample at their index"):
        align_to_data(p, d)


def test_align_refuses_repeated_indices(tmp_path, image_data):
    """One rule everywhere: a repeated dataset index makes rows ambiguous, for training as for verify."""
    d = image_data
    idx = d.indices.numpy().copy()
    idx[5] = idx[6]
    p = write_cache(tmp_path / "dup.h5", logits_for(len(d)), d.labels, idx, d.sample_ids, cache_attrs(d.info))
    with pytest.raises(CacheError, match="repeats dataset indices"):
        align_to_data(p, d.head(3))


def test_str_subclass_attributes_are_stored_as_plain_strings(tmp_path, image_data):
    """torch.__version__ is a TorchVersion (a str subclass) that h5py could not store."""
    d = image_data
    assert type(torch.__version__) is not str
    attrs = cache_attrs(d.info, torch_version=torch.__version__, dataset=np.str_(d.info.name))
    path = write_cache(tmp_path / "c.h5", logits_for(len(d)), d.labels, d.indices, d.sample_ids, attrs)
    with open_cache(path) as c:
        assert c.meta.attrs["torch_version"] == str(torch.__version__)
        assert type(c.meta.attrs["torch_version"]) is str and c.meta.dataset == d.info.name
        assert c.meta.config["torch_version"] == str(torch.__version__)
    with h5py.File(path, "r") as f:
        assert h5py.check_string_dtype(f.attrs.get_id("torch_version").dtype) is not None


def test_missing_or_mistyped_attributes_are_the_callers_config_error(tmp_path, image_data):
    from kdcache.errors import ConfigError

    d = image_data
    attrs = cache_attrs(d.info)
    del attrs["torch_version"]
    with pytest.raises(ConfigError) as e:
        write_cache(tmp_path / "c.h5", logits_for(len(d)), d.labels, d.indices, d.sample_ids, attrs)
    message = str(e.value)
    assert message.startswith("cache attrs lack torch_version (version of torch that ran the teacher: a string)")
    assert "internal" not in message and "\n" not in message
    with pytest.raises(ConfigError, match=r"dataset_num_samples must be an integer .* got str '64'"):
        write_cache(tmp_path / "c.h5", logits_for(len(d)), d.labels, d.indices, d.sample_ids,
                    cache_attrs(d.info, dataset_num_samples="64"))
    with pytest.raises(ConfigError, match="class_names has 3 names for 10 classes"):
        write_cache(tmp_path / "c.h5", logits_for(len(d)), d.labels, d.indices, d.sample_ids,
                    cache_attrs(d.info, class_names=["a", "b", "c"]))
    assert list(tmp_path.iterdir()) == []  # refused before anything was written
