"""Smoke test: the benchmark runs end to end at a tiny scale (no timing asserts: the numbers are noise here)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ lives at the repo root, not in the package
from benchmarks.run import format_table, main  # noqa: E402


def test_benchmark_runs_at_tiny_scale(tmp_path, data_dir):
    out = tmp_path / "results.json"
    result = main(["--scale", "0.002", "--repeats", "1", "--workdir", str(tmp_path / "work"), "--out", str(out),
                   "--data-dir", str(data_dir), "--teacher", "", "--fmnist-cache", "", "--quiet"])
    assert json.loads(out.read_text())["rows"] == result["rows"]
    names = [r["row"] for r in result["rows"]]
    assert [n[:2] for n in names] == ["3.", "1.", "2.", "4.", "4.", "5."]
    for r in result["rows"][:-1]:
        assert r["a_seconds"] > 0 and r["b_seconds"] > 0 and r["ratio"] > 0 and isinstance(r["met"], bool)
    ooc = result["rows"][3]
    assert ooc["rows"] == 4096 and 0 < ooc["peak_rss_mb"] < 4096
    sizes = result["rows"][-1]["sizes"]
    assert sizes["fmnist float32 (256 rows)"] > 40 and sizes["fmnist float16"] > 20  # at least the raw logit bytes
    assert sizes["synthetic-imagenet float16"] > 2000
    table = format_table(result)
    assert "cached KD" in table and "bytes / sample" in table


def test_precision_benchmark_runs():
    from benchmarks.precision import main as precision_main

    result = precision_main(["--batch-size", "4", "--steps", "1", "--repeats", "1"])
    for kind in ("train step", "inference"):
        assert result[kind]["fp32_s"] > 0 and result[kind]["bf16_s"] > 0 and result[kind]["speedup"] > 0


def test_float16_error_is_small_and_shrinks_with_T(tmp_path, image_data):
    import numpy as np

    from conftest import cache_attrs
    from benchmarks.float16_error import float16_error
    from kdcache.cache import write_cache

    logits = np.random.default_rng(0).normal(0, 8, size=(len(image_data), 10)).astype(np.float32)
    d = image_data
    p = write_cache(tmp_path / "c.h5", logits, d.labels, d.indices, d.sample_ids, cache_attrs(d.info))
    rows = float16_error(str(p))
    assert [r["T"] for r in rows] == [1.0, 4.0, 20.0]
    assert 0 < rows[0]["max_abs"] < 5e-3 and rows[2]["max_abs"] < rows[0]["max_abs"]
