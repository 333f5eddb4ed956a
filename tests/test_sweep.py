"""Sweeps: a tiny one end to end through the CLI, resume, partial tables, and bad lists."""
import csv
import json

import matplotlib.image
import pytest
from conftest import run_cli

from kdcache.cache import read_meta
from kdcache.errors import ConfigError
from kdcache.experiments.results import load_results
from kdcache.experiments.sweep import RunSpec, SweepGrid, parse_numbers

run = run_cli


@pytest.fixture(scope="module")
def cache(tmp_path_factory, data_dir):
    """A one-epoch teacher on 256 samples and its cache over the first 300 training samples."""
    d = tmp_path_factory.mktemp("sweep-cache")
    run("train-teacher", "--data-dir", data_dir, "--limit", 256, "--eval-limit", 200, "--epochs", 1,
        "--batch-size", 64, "--out", d / "teacher.pt", "-q")
    run("dump-logits", "--teacher", d / "teacher.pt", "--data-dir", data_dir, "--limit", 300,
        "--out", d / "train.h5", "-q")
    return d / "train.h5"


def sweep(cache, data_dir, out, *extra, ok=True):
    return run("sweep", "--cache", cache, "--data-dir", data_dir, "--T", "1,4", "--alpha", "0.9", "--seeds", 1,
               "--limit", 200, "--epochs", 1, "--eval-limit", 200, "--batch-size", 64, "--out", out, "-q", *extra, ok=ok)


@pytest.fixture(scope="module")
def finished(cache, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "s1"
    sweep(cache, data_dir, out)
    return out


def test_tiny_sweep_writes_table_and_report(finished):
    results = load_results(finished)
    rows = results["rows"]
    # baseline + 2 temperatures x 1 alpha x 1 seed, in plan order
    assert [(r["temperature"], r["alpha"]) for r in rows] == [(None, 0.0), (1.0, 0.9), (4.0, 0.9)]
    for r in rows:
        assert (r["limit"], r["seed"], r["epochs"], r["eval_samples"]) == (200, 0, 1, 200)
        assert 0.0 <= r["test_accuracy"] <= 1.0 and r["test_loss"] > 0 and r["train_seconds"] > 0
        assert len(r["history"]) == 1 and "test_accuracy" in r["history"][0]
    assert results["teacher"]["test_accuracy"] is not None  # read from the cache's attributes
    assert results["settings"]["train"]["precision"] == "fp32"  # the student default, recorded resolved
    with open(finished / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["key"] for t in table] == [r["key"] for r in rows]
    assert table[0]["temperature"] == "" and float(table[2]["temperature"]) == 4.0
    for name in ("accuracy_vs_T.png", "training_curves.png"):
        img = matplotlib.image.imread(finished / name)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
    md = (finished / "report.md").read_text()
    assert "| 200 | 1 |" in md and "accuracy_vs_T.png" in md
    assert not list(finished.glob(".*tmp*"))


def test_resuming_a_finished_sweep_runs_nothing(finished, cache, data_dir):
    before = (finished / "results.json").read_text()
    r = run("sweep", "--cache", cache, "--data-dir", data_dir, "--T", "1,4", "--alpha", "0.9", "--seeds", 1,
            "--limit", 200, "--epochs", 1, "--eval-limit", 200, "--batch-size", 64, "--out", finished, "--no-report")
    assert "0 runs trained, 3 already done, 3 in all" in r.output
    assert (finished / "results.json").read_text() == before


def test_interrupted_sweep_resumes_only_missing_runs(finished, cache, data_dir, tmp_path):
    out = tmp_path / "partial"
    out.mkdir()
    results = json.loads((finished / "results.json").read_text())
    results["rows"] = results["rows"][:2]  # as if killed during the third run
    (out / "results.json").write_text(json.dumps(results))
    r = sweep(cache, data_dir, out, "--no-report")
    assert r.exit_code == 0
    rows = load_results(out)["rows"]
    assert [row["key"] for row in rows] == [row["key"] for row in load_results(finished)["rows"]]
    assert rows[:2] == results["rows"]  # untouched


def test_resume_with_other_settings_is_refused(finished, cache, data_dir):
    r = sweep(cache, data_dir, finished, "--lr", "0.01", ok=False)
    assert r.exit_code == 1 and "different train" in r.output and "new --out" in r.output


@pytest.mark.parametrize("option,value,message", [
    ("--T", "0", "--T: temperature T must be a finite number > 0"),
    ("--T", "-2,4", "--T: temperature T must be a finite number > 0"),
    ("--T", "", "--T: empty list"),
    ("--T", "1,x", "--T: 'x' is not a number"),
    ("--alpha", "1.5", "--alpha: alpha must be in [0, 1]"),
    ("--alpha", "nan", "--alpha: alpha must be in [0, 1]"),
    ("--alpha", " , ", "--alpha: empty list"),
    ("--limit", "100,abc", "--limit: 'abc' is not a whole number"),
    ("--limit", "0", "--limit: every limit must be a whole number >= 1"),
    ("--limit", "100000", "--limit 100000 is more than the 300 training rows"),
    ("--labels-limit", "0", "--labels-limit: every count must be a whole number >= 1"),
    ("--labels-limit", "400", "--labels-limit 400 is more than the 300 training rows"),
])
def test_bad_lists_are_refused_before_anything_is_written(cache, data_dir, tmp_path, option, value, message):
    out = tmp_path / "bad"
    args = ["sweep", "--cache", cache, "--data-dir", data_dir, "--out", out, "-q", option, value]
    r = run(*args, ok=False)
    assert r.exit_code == 1
    assert r.output.startswith("Error: ") and message in r.output and len(r.output.strip().splitlines()) == 1
    assert not out.exists()


def test_missing_cache_is_one_line(tmp_path):
    r = run("sweep", "--cache", tmp_path / "nope.h5", "--out", tmp_path / "o", ok=False)
    assert r.exit_code == 1 and r.output.startswith("Error: ") and not (tmp_path / "o").exists()


def test_parse_numbers():
    assert parse_numbers("1, 2,4,2", "--T") == (1.0, 2.0, 4.0)
    assert parse_numbers("5000,60000", "--limit", int) == (5000, 60000)
    with pytest.raises(ConfigError, match="not a whole number"):
        parse_numbers("5e3", "--limit", int)


def test_grid_plan_and_keys():
    grid = SweepGrid(temperatures=(1.0, 4.0), alphas=(0.5, 1.0), seeds=(0, 1), limits=(100,))
    runs = grid.runs((100, 200), epochs=3)
    assert len(runs) == 2 * 2 * (1 + 2 * 2)  # limits x seeds x (baseline + alphas x T)
    assert runs[0] == RunSpec(100, None, 0.0, 0, 3) and runs[0].key == "n100_T-_a0_s0_e3"
    assert runs[1].key == "n100_T1_a0.5_s0_e3"
    assert len({r.key for r in runs}) == len(runs)


def test_transfer_grid_plan():
    """--labels-limit: per N and seed, CE on the first N alone, then every (alpha, T) on all rows with N labelled."""
    grid = SweepGrid(temperatures=(2.0, 4.0), alphas=(0.9,), seeds=(0,), labels_limits=(5000, 1000))
    runs = grid.runs((55_000,), epochs=10)
    assert [r.key for r in runs] == [
        "labels-only_n1000_T-_a0_s0_e10", "transfer_n55000_l1000_T2_a0.9_s0_e10", "transfer_n55000_l1000_T4_a0.9_s0_e10",
        "labels-only_n5000_T-_a0_s0_e10", "transfer_n55000_l5000_T2_a0.9_s0_e10", "transfer_n55000_l5000_T4_a0.9_s0_e10"]
    assert runs[1].options_dict == {"labels_limit": 1000} and runs[0].options_dict == {}
    with pytest.raises(ConfigError, match="at most one --limit"):
        SweepGrid(temperatures=(4.0,), alphas=(0.9,), limits=(100, 200), labels_limits=(50,))


def test_transfer_sweep_through_the_cli(cache, data_dir, tmp_path):
    out = tmp_path / "t"
    run("sweep", "--cache", cache, "--data-dir", data_dir, "--T", "4", "--alpha", "0.9", "--seeds", 1, "--limit", 200,
        "--labels-limit", 50, "--epochs", 1, "--eval-limit", 100, "--batch-size", 64, "--out", out, "-q")
    rows = load_results(out)["rows"]
    assert [(r["condition"], r["limit"], r["options"]) for r in rows] == [
        ("labels only", 50, {}), ("transfer", 200, {"labels_limit": 50})]
    assert (rows[0]["num_labelled"], rows[1]["num_labelled"], rows[1]["num_unlabelled"]) == (50, 50, 150)
    md = (out / "report.md").read_text()
    transfer_row = next(line for line in md.splitlines() if line.startswith("| transfer | 50 | 150 | 1 |"))
    assert "(labels only)" in transfer_row  # compared with the CE baseline on the same 50 labels


def test_runspec_conditions_and_options_make_distinct_keys():
    a = RunSpec.make(5000, 4.0, 0.9, 0, 10, "transfer", labels_limit=5000, caches=["a.h5"])
    b = RunSpec.make(5000, 4.0, 0.9, 0, 10)
    assert a.key == "transfer_n5000_l5000_T4_a0.9_s0_e10" and b.key == "n5000_T4_a0.9_s0_e10"
    # the labelled count is an axis: runs differing only in labels_limit get their own keys
    assert RunSpec.make(5000, 4.0, 0.9, 0, 10, "transfer", labels_limit=1000, caches=["a.h5"]).key != a.key
    assert a.options_dict == {"caches": ["a.h5"], "labels_limit": 5000} and hash(a)  # frozen, hashable
    assert a.to_row()["options"] == {"caches": ["a.h5"], "labels_limit": 5000}


def test_explicit_runs_with_options_and_a_validation_split(cache, data_dir, tmp_path):
    from kdcache.config import DataConfig, TrainConfig
    from kdcache.experiments.sweep import run_sweep

    specs = [RunSpec.make(200, None, 0.0, 0, 1, "plain"), RunSpec.make(200, 4.0, 0.9, 0, 1, "ensemble",
                                                                       caches=[str(cache), str(cache)])]
    data_cfg = DataConfig(data_dir=str(data_dir), eval_limit=100, val_size=50)
    r = run_sweep(tmp_path / "x", cache, specs, data_cfg=data_cfg, cfg=TrainConfig(epochs=1, batch_size=64), report=False)
    assert (r["ran"], r["total"]) == (2, 2)
    rows = load_results(tmp_path / "x")["rows"]
    assert [row["condition"] for row in rows] == ["plain", "ensemble"]
    assert all(0 <= row["val_accuracy"] <= 1 for row in rows)
    import torch
    config = torch.load(rows[1]["checkpoint"], weights_only=True)["config"]
    assert config["ensemble"] == "mean-probs" and len(config["caches"]) == 2
    with pytest.raises(ConfigError, match="made with other options"):
        other = [specs[0], RunSpec.make(200, 4.0, 0.9, 0, 1, "ensemble", caches=[str(cache)])]
        run_sweep(tmp_path / "x", cache, other, data_cfg=data_cfg, cfg=TrainConfig(epochs=1, batch_size=64),
                  report=False)


def test_resume_refuses_runs_whose_option_caches_were_dumped_again(cache, data_dir, tmp_path):
    """A run's own --cache (a RunSpec option) is named by path: dumped again there, its old rows are not resumed."""
    import shutil

    from kdcache.config import DataConfig, TrainConfig
    from kdcache.experiments.sweep import run_sweep

    mine = tmp_path / "mine.h5"
    shutil.copy(cache, mine)
    specs = [RunSpec.make(200, 4.0, 0.9, 0, 1, "own cache", caches=[str(mine)])]
    kw = dict(data_cfg=DataConfig(data_dir=str(data_dir), eval_limit=100), cfg=TrainConfig(epochs=1, batch_size=64),
              report=False)
    run_sweep(tmp_path / "x", cache, specs, **kw)
    assert load_results(tmp_path / "x")["rows"][0]["cache_contents"] == [read_meta(mine).content_sha256]
    assert run_sweep(tmp_path / "x", cache, specs, **kw)["ran"] == 0  # the same values: resumed
    run("dump-logits", "--teacher", cache.parent / "teacher.pt", "--data-dir", data_dir, "--limit", 300,
        "--dtype", "float16", "--out", mine, "--overwrite", "-q")  # other values, same path
    with pytest.raises(ConfigError, match="trained from other values of"):
        run_sweep(tmp_path / "x", cache, specs, **kw)


def test_sweep_records_auto_precision_resolved(cache, data_dir, tmp_path, monkeypatch):
    """A table made with auto records what ran: resumable with that value, refused where auto means the other."""
    from kdcache import device
    from kdcache.config import DataConfig, TrainConfig
    from kdcache.experiments.sweep import run_sweep

    specs = [RunSpec.make(200, None, 0.0, 0, 1, "plain")]
    kw = dict(data_cfg=DataConfig(data_dir=str(data_dir), eval_limit=100), report=False)
    monkeypatch.setattr(device, "bf16_native", lambda d: False)
    assert run_sweep(tmp_path / "x", cache, specs, cfg=TrainConfig(epochs=1, precision="auto"), **kw)["ran"] == 1
    assert load_results(tmp_path / "x")["settings"]["train"]["precision"] == "fp32"
    assert run_sweep(tmp_path / "x", cache, specs, cfg=TrainConfig(epochs=1, precision="fp32"), **kw)["ran"] == 0
    monkeypatch.setattr(device, "bf16_native", lambda d: True)  # the same command on a bf16-native machine
    with pytest.raises(ConfigError, match=r"different train \(was \[\{.*'precision': 'fp32'.*now \[\{.*'bf16'"):
        run_sweep(tmp_path / "x", cache, specs, cfg=TrainConfig(epochs=1, precision="auto"), **kw)
