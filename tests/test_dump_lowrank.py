"""dump-logits --codec lowrank: a basis fitted on the teacher's sample rows, then streamed; sharded = one process."""
import json

import numpy as np
import pytest
import torch
from conftest import assert_error, torchrun

from kdcache.cache import open_cache
from kdcache.cache.lowrank import fit_basis, measure_kl, parse_codec, round_trip, sample_rows
from kdcache.config import DataConfig, DumpConfig
from kdcache.jobs.dump import dump_logits
from kdcache.train.teacher import TeacherSpec


def run(*args):
    from click.testing import CliRunner

    from kdcache.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def _dump(test_teacher, out, data_dir, limit=300, batch_size=64, **dump):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like each torchrun rank
    try:
        return dump_logits(TeacherSpec(factory=test_teacher["factory"], weights=test_teacher["weights"]), out,
                           data_cfg=DataConfig(data_dir=str(data_dir), limit=limit),
                           dump=DumpConfig(batch_size=batch_size, device="cpu", **dump))
    finally:
        torch.set_num_threads(threads)


def test_lowrank_dump_codes_the_teachers_rows_with_a_basis_fitted_on_its_sample(tmp_path, test_teacher, data_dir):
    full = _dump(test_teacher, tmp_path / "full.h5", data_dir)
    r = _dump(test_teacher, tmp_path / "lr.h5", data_dir, codec="lowrank:rank=6,dtype=int8")
    assert r["lowrank_rank"] == 6 and set(r["lowrank_kl"]) == {"1", "2", "4"}
    with open_cache(full["cache"]) as f, open_cache(r["cache"]) as c:
        z = f.read()
        fit, held = sample_rows(len(z))
        basis = fit_basis(z[fit], 6)  # the teacher's logits of the same sample
        np.testing.assert_allclose(c.basis.components, basis.components, atol=1e-4)
        rebuilt = c.read()
        np.testing.assert_allclose(rebuilt, round_trip(z, basis).numpy(), atol=1e-3)
        kl = measure_kl(z[held], c.basis)
        assert c.meta.lowrank_kl["kl"] == pytest.approx({f"{T:g}": v for T, v in kl.items()}, rel=1e-3)
        assert np.array_equal(c.indices, f.indices) and np.array_equal(c.sample_ids, f.sample_ids)


def test_lowrank_dump_refusals(tmp_path, test_teacher, data_dir):
    flags = ["dump-logits", "--teacher-factory", test_teacher["factory"], "--weights", test_teacher["weights"],
             "--data-dir", data_dir, "--limit", 100, "--device", "cpu", "--out", tmp_path / "x.h5"]
    assert_error(run(*flags, "--codec", "lowrank", "--top-k", 3), "leave out --top-k and --dtype")
    assert_error(run(*flags, "--codec", "lowrank:rank=50"), "rank 50 is outside 1..10 (10 classes)")
    assert_error(run(*flags, "--codec", "lowrank", "--kl-budget", "1e-12"), "no rank up to 10 meets the KL budget")
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize("codec", ["lowrank:rank=5,dtype=int8", "lowrank:rank=7,bits=3"])  # (packed: the default)
def test_sharded_lowrank_dump_equals_the_one_process_dump(tmp_path, test_teacher, data_dir, codec):
    out = tmp_path / "c.h5"
    job = torchrun("dump-logits", "--teacher-factory", test_teacher["factory"], "--weights", test_teacher["weights"],
                   "--data-dir", data_dir, "--limit", 300, "--batch-size", 64, "--device", "cpu", "--out", out,
                   "--codec", codec, pythonpath=[test_teacher["folder"]])
    assert job.returncode == 0, job.stderr
    rank = codec.split("=")[1].split(",")[0]
    assert "2 ranks: 2 shard(s) written" in job.stdout and f"rank-{rank} codes of 10" in job.stdout
    ref = _dump(test_teacher, tmp_path / "ref.h5", data_dir, codec=codec)
    with open_cache(out) as a, open_cache(ref["cache"]) as b:
        assert a.meta.content_sha256 == b.meta.content_sha256  # basis, codes and scales (packing), bit for bit
        assert a.meta.lowrank_code_dtype == parse_codec(codec).dtype
        assert json.loads(a.meta.attrs["lowrank_kl_json"]) == json.loads(b.meta.attrs["lowrank_kl_json"])
    assert list(tmp_path.glob(".*")) == []
