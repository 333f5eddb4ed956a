"""docs/cache-format.md and kdcache/cache.py agree: every name the code writes is documented, and back."""
import re
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import cache_attrs, make_image_data

from kdcache.cache import (
    DATASETS,
    FORMAT_NAME,
    LOGIT_DTYPES,
    LOWRANK_SCHEMA_VERSION,
    PLAIN_SCHEMA_VERSION,
    ROOT_ATTRS,
    SCHEMA_VERSION,
    VIEWS_SCHEMA_VERSION,
    read_meta,
    write_cache,
)
from kdcache.errors import CacheError

DOC = Path(__file__).resolve().parents[1] / "docs" / "cache-format.md"


def table_rows(text: str, first_header: str) -> dict[str, list[str]]:
    """Rows of the markdown table whose first header cell is ``first_header``: name -> cells."""
    rows, inside = {}, False
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells and cells[0] == first_header:
            inside = True
        elif inside and cells and not set(cells[0]) <= set("-"):
            rows[cells[0].strip("`/")] = cells[1:]
        elif inside and not cells:
            inside = False
    return rows


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text()


@pytest.fixture
def written(tmp_path):
    d = make_image_data(n=20)
    logits = np.random.default_rng(0).normal(size=(20, 10)).astype(np.float32)
    return write_cache(tmp_path / "c.h5", logits, d.labels, d.indices, d.sample_ids, cache_attrs(d.info))


def test_every_dataset_is_documented_with_its_dtype_and_shape(doc):
    rows = table_rows(doc, "dataset")
    assert set(rows) == set(DATASETS), "dataset table and cache.DATASETS differ"
    for name, spec in DATASETS.items():
        dtype_cell, shape_cell = rows[name][0], rows[name][1]
        wanted = {"logits": list(LOGIT_DTYPES), "classes": ["uint8", "uint16", "int32"],
                  "codes": ["int8", "float16", "uint8"]}.get(spec.dtype, [spec.dtype])
        for d in wanted:
            assert f"`{d}`" in dtype_cell, (name, d)
        assert shape_cell == spec.shape, (name, shape_cell)


@pytest.mark.parametrize("kind", ["plain", "topk-views", "lowrank-views", "packed-views"])
def test_written_shapes_and_dtypes_are_the_documented_ones(tmp_path, kind):
    d = make_image_data(n=20)
    z = np.random.default_rng(0).normal(size=(20, 3, 10)).astype(np.float32)
    kw = {} if kind == "plain" else dict(topk=4, num_views=3, view_params=np.zeros((20, 3, 2), np.float32),
                                         view_policy={"name": "p", "version": 1, "settings": {}, "param_names": ["a", "b"]})
    if kind in ("lowrank-views", "packed-views"):
        from kdcache.cache.lowrank import fit_basis, with_packing

        kw.update(topk=0, basis=fit_basis(z, 5))
    if kind == "packed-views":  # 5 components at 3.2 bits: 16 bits, B = 2 bytes
        kw.update(basis=with_packing(kw["basis"], z, bits=3.2), code_dtype="packed")
    path = write_cache(tmp_path / "c.h5", z[:, 0] if kind == "plain" else z, d.labels, d.indices, d.sample_ids,
                       cache_attrs(d.info), **kw)
    dims = {"N": 20, "V": 3, "C": 10, "k": 4, "P": 2, "r": 5, "B": 2}
    with h5py.File(path, "r") as f:
        for name in f.keys():
            shape = DATASETS[name].shape.replace("[V, ] ", "V, " if kind != "plain" else "")
            shape = shape.replace("[V]", "V" if kind != "plain" else "").replace(", )", ")")
            shape = shape.replace("r or B", "B" if kind == "packed-views" else "r")
            want = tuple(dims[x.strip()] for x in shape.strip("()").split(",") if x.strip())
            assert f[name].shape == want, (name, f[name].shape, want)
            spec = DATASETS[name].dtype
            codes = "uint8" if kind == "packed-views" else "int8"
            assert str(f[name].dtype) == {"logits": "float32", "classes": "uint8", "codes": codes}.get(spec, spec)
        assert f.attrs["schema_version"] == {"plain": PLAIN_SCHEMA_VERSION, "topk-views": VIEWS_SCHEMA_VERSION,
                                             "lowrank-views": LOWRANK_SCHEMA_VERSION, "packed-views": SCHEMA_VERSION}[kind]
        names = set(f.keys()) | set(f.attrs.keys())
    doc = DOC.read_text()
    for name in names:  # every name a low-rank cache adds is documented too
        assert f"`{name}`" in doc or f"`/{name}`" in doc, name


def test_every_root_attribute_is_documented(doc):
    rows = table_rows(doc, "attribute")
    assert set(rows) == set(ROOT_ATTRS), f"undocumented: {set(ROOT_ATTRS) - set(rows)}, stale: {set(rows) - set(ROOT_ATTRS)}"


def test_every_name_in_a_written_file_is_documented(doc, written):
    with h5py.File(written, "r") as f:
        names = set(f.keys()) | set(f.attrs.keys())
        logits_dtype = f["logits"].dtype
    for name in names:
        assert f"`{name}`" in doc or f"`/{name}`" in doc, name
    assert str(logits_dtype) in LOGIT_DTYPES


def test_format_name_and_version_are_the_documented_ones(doc):
    assert f"`{FORMAT_NAME}`" in doc
    assert re.search(rf"currently `{re.escape(SCHEMA_VERSION)}` \(`{re.escape(LOWRANK_SCHEMA_VERSION)}` for a low-rank cache "
                     rf"of int8 or float16 codes, `{re.escape(VIEWS_SCHEMA_VERSION)}` for a top-k cache or "
                     rf"one with views, `{re.escape(PLAIN_SCHEMA_VERSION)}` for", doc)


def _set_version(path, version):
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = version


def test_compat_rule_newer_major_refused_any_minor_loads(written):
    major, minor = (int(x) for x in SCHEMA_VERSION.split("."))
    for ok in (f"{major}.{minor + 7}", f"{major}.0", "1.0", "1.9"):
        _set_version(written, ok)
        assert read_meta(written).schema_version == ok
    _set_version(written, f"{major + 1}.0")
    with pytest.raises(CacheError) as e:
        read_meta(written)
    assert f"{major + 1}.0" in str(e.value) and SCHEMA_VERSION in str(e.value) and "upgrade kdcache" in str(e.value)


@pytest.mark.skipif(shutil.which("h5ls") is None, reason="hdf5-tools not installed (apt-get install hdf5-tools)")
def test_hdf5_command_line_tools_read_the_layout(written):
    listing = subprocess.run(["h5ls", "-r", str(written)], capture_output=True, text=True, check=True).stdout
    for name in ("logits", "labels", "indices", "sample_ids"):
        assert f"/{name}" in listing
    header = subprocess.run(["h5dump", "-H", str(written)], capture_output=True, text=True, check=True).stdout
    for name in ROOT_ATTRS:
        assert f'ATTRIBUTE "{name}"' in header


def test_every_shard_attribute_is_documented(doc):
    from kdcache.cache.shards import SHARD_ATTRS

    rows = table_rows(doc, "shard attribute")
    assert set(rows) == set(SHARD_ATTRS)
    assert "`kdcache-shard`" in doc and ".OUT.shard-R-of-W.h5" in doc


@pytest.mark.parametrize("kind", ["plain", "int8", "packed"])
def test_reading_without_kdcache_snippet_gives_the_readers_logits(tmp_path, monkeypatch, kind):
    """The format document's h5py + numpy snippet, run as written on a full, an int8 and a packed low-rank cache."""
    from kdcache.cache import open_cache
    from kdcache.cache.lowrank import fit_basis, with_packing

    block = re.search(r"## Reading a cache without kdcache\n\n```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert block, "docs/cache-format.md lacks the reading snippet"
    d = make_image_data(n=60)
    z = np.random.default_rng(1).normal(0, 3, (60, 10)).astype(np.float32)
    kw = {}
    if kind != "plain":
        basis = fit_basis(z, 6)
        kw = dict(basis=basis, code_dtype="int8") if kind == "int8" else \
            dict(basis=with_packing(basis, z, bits=4.0), code_dtype="packed")
    path = write_cache(tmp_path / "fmnist-train.h5", z, d.labels, d.indices, d.sample_ids, cache_attrs(d.info), **kw)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block.group(1), "cache-format.md", "exec"), namespace)
    with open_cache(path) as c:
        np.testing.assert_allclose(namespace["logits"], c.read(), rtol=0, atol=1e-4)
    assert namespace["p"].shape == (60, 10)
