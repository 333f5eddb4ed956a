"""Smoke test: the benchmark runs end to end at a tiny scale (no timing asserts: the numbers are noise here)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from kdcache.config import DataConfig, DumpConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ lives at the repo root, not in the package
from benchmarks.run import format_table, main  # noqa: E402


def assert_ratio_row(r: dict) -> None:
    """A speed row says what it measured: ratio = a / b in time (b / a where it is a throughput ratio), and met =
    the ratio against its stated target."""
    assert r["a_seconds"] > 0 and r["b_seconds"] > 0
    throughput = str(r.get("ratio_means", "")).startswith("throughput")
    assert r["ratio"] == pytest.approx(r["b_seconds"] / r["a_seconds"] if throughput else r["a_seconds"] / r["b_seconds"])
    target = r.get("target")
    if isinstance(target, str) and target.startswith("<= ") and target.endswith("x"):
        assert r["met"] == (r["ratio"] <= float(target[3:-1])), (target, r["ratio"], r["met"])


def test_median_pair_alternates_and_takes_medians():
    """The two sides of every speed ratio run alternately (a-b, b-a, ...), so drift on a shared machine hits both."""
    from benchmarks.run import median_pair

    calls = []

    def timed(name, values):
        return lambda r: (calls.append((name, r)), values[r])[1]
    ma, mb, ta, tb = median_pair(3, timed("a", [3.0, 1.0, 2.0]), timed("b", [10.0, 30.0, 20.0]))
    assert calls == [("a", 0), ("b", 0), ("b", 1), ("a", 1), ("a", 2), ("b", 2)]
    assert (ma, mb, ta, tb) == (2.0, 20.0, [3.0, 1.0, 2.0], [10.0, 30.0, 20.0])


def test_benchmark_runs_at_tiny_scale(tmp_path, data_dir):
    out = tmp_path / "results.json"
    result = main(["--scale", "0.002", "--repeats", "1", "--workdir", str(tmp_path / "work"), "--out", str(out),
                   "--data-dir", str(data_dir), "--teacher", "", "--fmnist-cache", "", "--quiet"])
    assert json.loads(out.read_text())["rows"] == result["rows"]
    names = [r["row"] for r in result["rows"]]
    assert [n[:2] for n in names] == ["3.", "1.", "2.", "4.", "4.", "5."]
    for r in result["rows"][:-1]:
        assert_ratio_row(r)
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
        r = result[kind]
        assert r["fp32_s"] > 0 and r["bf16_s"] > 0 and r["speedup"] == r["fp32_s"] / r["bf16_s"]


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


def test_views_file_benchmark_smoke(tmp_path):
    """benchmarks.views_file: real photographs (scikit-image's), a v3 and a v2 cache, students, speed ratios."""
    pytest.importorskip("skimage")  # installed for this benchmark only, not a kdcache dependency
    from benchmarks.views_file import main as views_file_main

    out = tmp_path / "vf"
    r = views_file_main(["all", "--smoke", "--quiet", "--out", str(out), "--json", str(tmp_path / "r.json")])
    acc, speed = r["accuracy"], r["speed"]
    assert acc["prepare"]["v3"]["version"] == 3 and acc["prepare"]["v2"]["version"] == 2
    assert {row["views"] for row in acc["rows"]} == {"v3", "v2"}
    assert all(0 <= row["val_accuracy"] <= 1 and 0 <= row["test_accuracy"] <= 1 for row in acc["rows"])
    assert speed["dump"]["ratio"] > 0 and speed["student_epoch"]["ratio"] > 0 and speed["replay_one_view"]["ratio"] > 0
    assert speed["cpu"]
    assert json.loads((tmp_path / "r.json").read_text())["speed"]["views"] == 2


def test_small_folder_benchmark_smoke(tmp_path):
    """benchmarks.small_folder: a torchvision student at the defaults on scikit-image's photographs, per seed."""
    pytest.importorskip("skimage")  # installed for this benchmark only, not a kdcache dependency
    from benchmarks.small_folder import main as small_folder_main

    r = small_folder_main(["--smoke", "--quiet", "--work", str(tmp_path / "w"), "--json", str(tmp_path / "r.json")])
    assert r["folder"] == {"train": 24, "val": 9, "test": 9, "image_size": 32} and r["cpu"]
    (row,) = r["runs"]
    assert row["model"] == "resnet18" and row["batch_size"] == 32 and row["lr"] == 0.02  # a BatchNorm student's defaults
    assert 0 <= row["val_accuracy"] <= 1 and 0 <= row["test_accuracy"] <= 1
    assert r["summary"]["resnet18"]["test_accuracy"] == {"mean": row["test_accuracy"], "std": 0.0}
    assert json.loads((tmp_path / "r.json").read_text()) == [json.loads(json.dumps(r))]
    merged = small_folder_main(["--merge", str(tmp_path / "r.json"), str(tmp_path / "r.json"), "--quiet"])
    assert merged["summary"]["resnet18"]["test_accuracy"]["mean"] == row["test_accuracy"] and len(merged["runs"]) == 2


def test_views_accuracy_benchmark_smoke(tmp_path, data_dir):
    """prepare -> accuracy (RunSpecs through run_sweep) -> table, at a few seconds' scale."""
    from benchmarks.views import CONDITIONS
    from benchmarks.views import main as views_main

    common = ["--smoke", "--out", str(tmp_path / "views"), "--data-dir", str(data_dir), "--quiet"]
    made = views_main(["prepare", *common])
    assert 0 <= made["teacher"]["test_accuracy_on_views"] <= 1 and made["views"]["bytes"] > made["plain"]["bytes"]
    r = views_main(["accuracy", *common, "--student", "student-cnn"])
    assert r["ran"] == r["total"] == 6 and "report" not in r  # smoke: no figures (kdcache report draws them)
    rows = json.loads((tmp_path / "views" / "student-cnn" / "results.json").read_text())["rows"]
    by_condition = {row["condition"]: row for row in rows}
    assert set(by_condition) == {*CONDITIONS, "(c) KD, views K=1", "(c) KD, views K=2"}
    assert by_condition["(c) KD, views K=1"]["options"]["cache_views"] == 1
    assert by_condition["(b) KD + aug, one view (inconsistent)"]["options"] == {"augment": "shift-flip",
                                                                                  "allow_inconsistent": True}
    summary = views_main(["table", *common])
    assert len(summary["cells"]) == 6 and (tmp_path / "views" / "table.md").read_text().count("\n| ") == 6
    again = views_main(["accuracy", *common, "--student", "student-cnn"])
    assert again["ran"] == 0 and again["skipped"] == 6  # resumable: nothing to redo


def test_views_speed_benchmark_smoke(tmp_path, data_dir):
    from benchmarks.views import format_speed
    from benchmarks.views import main as views_main

    r = views_main(["speed", "--scale", "0.005", "--repeats", "1", "--speed-views", "2", "--views", "4",
                    "--out", str(tmp_path / "speed.json"), "--workdir", str(tmp_path / "w"), "--data-dir",
                    str(data_dir), "--quiet"])
    assert [x["target"] for x in r["rows"]] == ["<= 1.05x", "<= 1.10x", "<= 1.10x"]
    assert all(x["a_seconds"] > 0 and x["b_seconds"] > 0 for x in r["rows"])
    sizes = r["bytes_per_image"]
    # each view adds its 10 float32 logits and 3 float32 parameters: 52 bytes
    assert sizes["K=16 views"] - sizes["K=4 views"] >= 12 * 52 and sizes["K=1 views"] > sizes["no views (schema 1.1)"]
    assert "bytes / image" in format_speed(r)


def test_bf16_error_benchmark(tmp_path, data_dir):
    import torch

    from benchmarks.bf16_error import bf16_error, compare, format_table
    from benchmarks.run import make_teacher
    from kdcache.data.datasets import load_dataset

    z = torch.randn(500, 10) * 6
    exact = compare(z, z)
    assert exact["max_abs_dz"] == 0 and all(s["max_kl"] == 0 for s in exact["softmax"])
    r = compare(z, z.bfloat16().float())
    assert 0 < r["max_rel_dz"] < 2 ** -8  # bf16 rounding: at most half an ulp of 8 bits
    assert r["softmax"][0]["max_abs"] > r["softmax"][2]["max_abs"] > 0  # shrinks with T
    teacher = make_teacher(tmp_path / "t.pt", load_dataset("fashion-mnist", "train", data_dir, limit=1), None)
    out = bf16_error(str(teacher), tmp_path / "w", data_dir=str(data_dir), limit=16, views=2, augment="shift-flip")
    assert out["rows"] == 32 and out["max_rel_dz"] < 0.1 and "| 20 |" in format_table(out)


def test_transfer_benchmark_smoke(tmp_path, data_dir):
    """The transfer measurement end to end on 150 images: both phases, the summary table, and the plan's size."""
    import torch

    from benchmarks.transfer import main as transfer_main
    from kdcache.data.datasets import load_dataset
    from kdcache.experiments.results import load_results
    from kdcache.jobs.dump import dump_logits
    from kdcache.train.checkpoint import model_config, save_checkpoint
    from kdcache.train.models import build_model
    torch.manual_seed(0)
    info = load_dataset("fashion-mnist", "train", data_dir, limit=1).info
    save_checkpoint(tmp_path / "t.pt", build_model("teacher-cnn", 1, 10, (28, 28)), model_config("teacher-cnn", info))
    dump_logits(tmp_path / "t.pt", tmp_path / "c.h5", dump=DumpConfig(device="cpu"), data_cfg=DataConfig(data_dir=str(data_dir), limit=300))
    out = tmp_path / "sweep"
    r = transfer_main(["--smoke", "--cache", str(tmp_path / "c.h5"), "--out", str(out), "--data-dir", str(data_dir),
                       "--quiet"])
    rows = load_results(out)["rows"]
    assert len(rows) == 12 and all(row["val_accuracy"] is not None for row in rows)  # 8 to choose + 4 more seeds
    transfer_rows = [row for row in rows if row["condition"] == "transfer"]
    assert {(row["num_labelled"], row["num_unlabelled"]) for row in transfer_rows} == {(50, 100)}
    kinds = [(s["condition"], s["kind"], s["seeds"]) for s in r["summary"]]
    assert kinds == [("labels only", "cross-entropy", 2), ("labels only", "distilled", 2), ("transfer", "distilled", 2),
                     ("no labels", "distilled", 2), ("all labels", "cross-entropy", 2), ("all labels", "distilled", 2)]
    assert "(c) + the other training images unlabelled, distilled" in r["table"] and "50 labels: (c) − (a) =" in r["table"]
    assert (out / "transfer.md").read_text().count("|") > 40 and (out / "report.md").exists()
    assert "50 labelled + 100 unlabelled samples" in (out / "report.md").read_text()
    plan = transfer_main(["--dry-run"])
    assert plan["runs"] == 54 and 35 * 60 < plan["seconds"] < 60 * 60  # the full measurement fits in about an hour


def test_topk_benchmark_smoke(tmp_path, data_dir):
    """Both parts end to end at a tiny scale: caches, size and KL tables, students, sweep table and report."""
    import torch

    from benchmarks.topk import main as topk_main
    from kdcache.jobs.dump import dump_logits
    from kdcache.train.checkpoint import save_checkpoint
    from kdcache.train.models import build_model

    info = __import__("kdcache.data.datasets", fromlist=["load_dataset"]).load_dataset("fashion-mnist", "train", data_dir,
                                                                              limit=1).info
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "t.pt", build_model("student-cnn"), {
        "arch": "student-cnn", "in_channels": 1, "num_classes": 10, "image_size": [28, 28], "dataset": info.name,
        "mean": list(info.mean), "std": list(info.std), "class_names": list(info.class_names)})
    full = dump_logits(ckpt, tmp_path / "fm.h5", data_cfg=DataConfig(limit=300, data_dir=str(data_dir)))["cache"]
    out = tmp_path / "out"
    r = topk_main(["--out", str(out), "--smoke", "--quiet", "--fmnist-cache", full, "--data-dir", str(data_dir)])
    syn = r["synthetic"]
    sizes = {s["cache"]: s for s in syn["sizes"]}
    assert sizes["top10-float16"]["target_bytes_per_row"] == 10 * (2 + 2) + 12  # float16 values, uint16 ids, 3 x float32
    assert sizes["full-float16"]["target_bytes_per_row"] == 2000
    kl = {(row["cache"], row["T"]): row for row in syn["kl"]}
    assert kl[("top10-float32", 1.0)]["kl_bucket"] < 1e-12  # T = 1: the tail's mass is exact
    assert kl[("top10-float16", 4.0)]["kl_dense"] >= kl[("top10-float16", 4.0)]["kl_bucket"]
    assert [s["condition"] for s in syn["students"]] == ["labels only", "full float16", "top-10",
                                                         "top-2 + 3 sampled (prototype)"]
    assert {v["condition"] for v in syn["verdict"]} == {"top-10", "top-2 + 3 sampled (prototype)"}
    assert (out / "synthetic" / "report.md").exists()
    fm = r["fmnist"]
    assert [s["condition"] for s in fm["students"]] == ["labels only", "full", "top-1", "top-3"]
    report = (out / "fmnist" / "report.md").read_text()
    assert "| top-3 | 200 |" in report and "validation" in report
    assert "(b) Fashion-MNIST" in (out / "topk.md").read_text()


def test_topk_rebuild_benchmark_smoke(tmp_path):
    """benchmarks.topk_rebuild end to end at a tiny scale: teacher and caches, runs split over two workers
    (resumable), and the summary: every condition, T picked on validation, mean ± std."""
    import json

    from benchmarks.topk_rebuild import main

    out = tmp_path / "out"
    common = ["--out", str(out), "--smoke", "--epochs", "1", "--rows", "600", "--T", "2", "4", "--seeds", "0", "1",
              "--conditions", "labels only", "top-10 bucket", "top-10 spread", "top-10 shaped (experimental)"]
    main(["prepare", *common])
    for w in ("0", "1"):
        main(["run", *common, "--worker", w, "--workers", "2"])
    before = sorted(p.name for p in (out / "runs").iterdir())
    assert len(before) == 2 + 3 * 2 * 2
    main(["run", *common])  # resumable: nothing left to run
    assert sorted(p.name for p in (out / "runs").iterdir()) == before
    main(["summarize", *common, "--result", str(tmp_path / "r.json")])
    r = json.loads((tmp_path / "r.json").read_text())
    rows = {s["condition"]: s for s in r["students"]}
    assert list(rows) == ["labels only", "top-10 bucket", "top-10 spread", "top-10 shaped (experimental)"]
    assert rows["labels only"]["picked_T"] == "None" and rows["top-10 spread"]["picked_T"] in ("2.0", "4.0")
    assert all(s["seeds"] == 2 and s["test_std"] >= 0 for s in rows.values())
    assert {row["cache"] for row in r["prepared"]["kl_5000_rows"]} == {"full-float16", "top5-float16",
                                                                        "top10-float16"}
    assert "| top-10 spread |" in (out / "rebuild.md").read_text()


def test_topk_benchmark_reuses_a_teacher_or_cache_only_when_it_is_the_one_asked_for(tmp_path, image_data):
    """A top-k cache derived from an older dump, or a teacher trained for another plan, is not this run's."""
    from dataclasses import replace

    import numpy as np
    import pytest
    from conftest import cache_attrs

    from benchmarks.topk import SMOKE_SYNTHETIC, _teacher
    from benchmarks.topk_caches import derive_topk_cache
    from benchmarks.topk_task import make_task
    from kdcache.cache import open_cache, write_cache
    from kdcache.cache.targets import TopK

    d, src, dst = image_data, tmp_path / "full.h5", tmp_path / "top3.h5"
    for teacher in ("1", "2"):  # the full cache dumped again, by another teacher
        z = np.random.default_rng(int(teacher)).normal(0, 4, size=(len(d), 10)).astype(np.float32)
        write_cache(src, z, d.labels, d.indices, d.sample_ids, cache_attrs(d.info, teacher_sha256=teacher * 64),
                    overwrite=True)
        derive_topk_cache(src, dst, 3)
        with open_cache(dst) as c:
            assert c.meta.teacher_sha256 == teacher * 64
            np.testing.assert_array_equal(c.read().classes, TopK.encode(z, 3).classes)

    full, test = make_task(SMOKE_SYNTHETIC.task)
    train, val = full.take(slice(0, len(full) - 500)), full.take(slice(len(full) - 500, len(full)))
    _teacher(SMOKE_SYNTHETIC, train, val, test, tmp_path)
    _teacher(SMOKE_SYNTHETIC, train, val, test, tmp_path)  # the same plan: reused
    for other in (replace(SMOKE_SYNTHETIC, teacher_hidden=(16,)),
                  replace(SMOKE_SYNTHETIC, teacher_train=replace(SMOKE_SYNTHETIC.teacher_train, lr=0.2))):
        with pytest.raises(SystemExit, match="trained for another plan"):
            _teacher(other, train, val, test, tmp_path)


def test_wrapper_benchmark_smoke(tmp_path, data_dir):
    from benchmarks.wrapper import main as wrapper_main

    out = tmp_path / "wrapper.json"
    r = wrapper_main(["--smoke", "--data-dir", str(data_dir), "--out", str(out)])
    assert json.loads(out.read_text()) == r
    assert r["samples"] == 512 and r["workers"] == 2 and len(r["seconds"]["wrapper"]) == 1
    assert r["wrapper_seconds"] > 0 and r["labels_only_seconds"] > 0 and isinstance(r["met"], bool)
    assert r["ratio"] == r["wrapper_seconds"] / r["labels_only_seconds"] and r["alignment_check_seconds"] > 0


def test_own_training_loop_example_matches_train_student(tmp_path, data_dir):
    """The example runs as a user runs it (its own process, 2 DataLoader workers) and trains what train-student trains.

    Same student, init, optimiser, schedule, data order and seed: the issue's bar is 0.3 pp; expected is equality.
    """
    from benchmarks.own_loop import main as own_loop_main

    out = tmp_path / "own-loop.json"
    r = own_loop_main(["--smoke", "--data-dir", str(data_dir), "--out", str(out)])
    assert json.loads(out.read_text()) == r
    (row,) = r["rows"]
    assert 0 < row["own_loop"] <= 1 and abs(row["difference_pp"]) <= 0.3 and r["within_0.3pp"]
    own = json.loads((tmp_path / "own-loop-runs" / "own-loop-s0.json").read_text())
    assert own["train_samples"] == 512 and own["test_samples"] == 500 and own["epochs"] == 1
    assert own_loop_main(["--smoke", "--data-dir", str(data_dir), "--out", str(out)])["rows"] == r["rows"]  # reused


def test_own_loop_reuses_a_run_only_for_the_same_test_samples_and_cache_content(tmp_path, image_data, monkeypatch):
    """A result measured on 500 test images (the smoke run) or on another cache's values is no full run's result."""
    import subprocess
    import types

    import numpy as np
    from conftest import cache_attrs

    import benchmarks.own_loop as own_loop_module
    from kdcache.cache import write_cache

    d = image_data
    cache = tmp_path / "c.h5"

    def dump(seed):
        z = np.random.default_rng(seed).normal(size=(len(d), 10)).astype(np.float32)
        return str(write_cache(cache, z, d.labels, d.indices, d.sample_ids, cache_attrs(d.info), overwrite=True))

    runs = []

    def fake_example(args, **kw):  # stands in for `python examples/own_training_loop.py ... --json OUT`
        runs.append(args)
        value = lambda flag: args[args.index(flag) + 1]  # noqa: E731
        Path(value("--json")).write_text(json.dumps({"test_accuracy": 0.5, "epochs": int(value("--epochs")),  # as the
                                                     "seed": int(value("--seed")), "T": 4.0, "alpha": 0.5,  # example
                                                     "train_samples": 64, "test_samples": 7}))
        return types.SimpleNamespace(returncode=0, stderr="")

    monkeypatch.setattr(subprocess, "run", fake_example)
    out = tmp_path / "own.json"
    run = lambda eval_limit: own_loop_module.own_loop(dump(0) if not runs else str(cache), "data", 0, 1, 64,  # noqa: E731
                                                      eval_limit, out)
    run(500)
    run(500)
    assert len(runs) == 1  # the same run again: reused
    run(None)
    assert len(runs) == 2  # all test images this time: measured again
    dump(1)  # other values at the same path
    run(None)
    assert len(runs) == 3


def test_dist_benchmark_runs_in_smoke_mode(tmp_path, data_dir):
    """1 rank vs a 2-rank torchrun job, each dumping and training at a tiny scale (no timing asserts)."""
    from benchmarks.dist import format_table
    from benchmarks.dist import main as dist_main

    out = tmp_path / "dist.json"
    result = dist_main(["--smoke", "--workdir", str(tmp_path / "work"), "--out", str(out), "--data-dir",
                        str(data_dir), "--quiet"])
    assert json.loads(out.read_text())["rows"][0]["speedup"] == result["rows"][0]["speedup"]
    dump, epoch, accuracy = result["rows"]
    assert dump["rows"] == 1000 and dump["speedup"] > 0 and 0 < dump["assembly_share"] < 1
    assert dump["bit_identical"]  # the 2-rank cache holds the 1-rank cache's values, bit for bit
    assert epoch["samples"] == 1000 and epoch["speedup"] > 0
    assert abs(accuracy["diff_pp"]) < 2 and 0 < accuracy["one_rank_accuracy"] <= 1
    table = format_table(result)
    assert "rows/s" in table and "samples/s" in table and "pp" in table


def test_gpu_check_comparison_applies_verifys_tolerance(tmp_path, image_data):
    import numpy as np
    from conftest import cache_attrs

    from benchmarks.gpu_check import compare_caches
    from kdcache.cache import write_cache
    from kdcache.jobs.verify import TOLERANCE

    d = image_data
    ref = np.random.default_rng(0).normal(0, 8, size=(len(d), 10)).astype(np.float32)
    bound = TOLERANCE["float32"] * np.maximum(1, np.abs(ref).max(1))  # per row

    def cache(name, z):
        return write_cache(tmp_path / name, z, d.labels, d.indices, d.sample_ids, cache_attrs(d.info))

    cpu = cache("cpu.h5", ref)
    near = ref.copy()
    near[:, 3] += 0.9 * bound  # TF32-sized differences: inside
    r = compare_caches(cache("near.h5", near), cpu)
    assert r["ok"] and r["rows_over"] == 0 and 0.85 < r["max_diff_over_bound"] < 0.91
    far = ref.copy()
    far[5, 0] += 1.5 * bound[5]  # one row outside
    r = compare_caches(cache("far.h5", far), cpu)
    assert not r["ok"] and r["rows_over"] == 1 and r["worst_row"] == 5


def test_gpu_check_runs_end_to_end_on_cpu(tmp_path, data_dir, capsys):
    from benchmarks.gpu_check import main as gpu_main

    r = gpu_main(["--device", "cpu", "--data-dir", str(data_dir), "--workdir", str(tmp_path), "--train-rows", "64",
                  "--batch-size", "16", "--warmup", "1", "--compare-rows", "64", "--out", str(tmp_path / "gpu.json")])
    assert r["comparison"]["ok"] and r["comparison"]["max_abs_diff"] == 0.0  # the same device twice: identical
    assert r["teacher_epoch"]["fp32_s"] > 0 and r["teacher_epoch"]["bf16_s"] > 0
    assert "within tolerance" in capsys.readouterr().out


def test_student_step_benchmark_times_both_batch_sizes(capsys):
    from benchmarks import student_step

    r = student_step.main(["--batch-size", "32", "--steps", "3", "--repeats", "1"])
    assert set(r) == {32, 16} and all(v > 0 for v in r.values())
    assert "ms per step at batch 32" in capsys.readouterr().out


def test_ddp_step_benchmark_runs_under_torchrun():
    from conftest import REPO, torchrun

    job = torchrun("--steps", 2, script=str(REPO / "benchmarks" / "ddp_step.py"), timeout=120)
    assert job.returncode == 0, job.stderr[-2000:]
    line = next(x for x in job.stdout.splitlines() if x.startswith("2 rank(s), 64 rows per rank:"))
    assert "DDP only" in line and "+ status check + row counts" in line


def test_folder_benchmark_smoke(tmp_path):
    """benchmarks.folder --smoke: every row and field present with plausible values (no timing thresholds)."""
    from benchmarks.folder import format_table
    from benchmarks.folder import main as folder_main

    out = tmp_path / "folder.json"
    result = folder_main(["--smoke", "--work", str(tmp_path / "work"), "--out", str(out), "--quiet"])
    assert json.loads(out.read_text()) == result
    assert result["cpu"] and result["cpu"] != "unknown" and result["torch"] == str(__import__("torch").__version__)
    assert (result["images"], result["repeats"]) == (60, 1)
    assert result["image_size"] > 0 and result["workers"] >= 0 and result["batch_size"] > 0
    dump, student, rss = result["rows"]
    for r in (dump, student):
        assert_ratio_row(r)
    assert dump["hash_seconds"] > 0 and dump["list_seconds"] > 0
    assert 0 < dump["dump_loop_seconds"] < dump["a_seconds"] and dump["ratio_loop_only"] > 0
    assert rss["a_rss_mb"] > 0 and rss["b_rss_mb"] > 0 and isinstance(rss["met"], bool)
    assert rss["a_runs"][0]["rows"] == 10 and rss["b_runs"][0]["rows"] == 60  # a quarter of each class, then all
    assert "dump-logits" in format_table(result)


def test_lowrank_benchmark_smoke(tmp_path):
    """benchmarks.lowrank end to end at a tiny scale on the 512-input teacher: caches, basis, KL table (every codec
    at its bytes), students from decoded low-rank rows and from top-k rows, and the summary."""
    import json

    from benchmarks.lowrank import main

    out = tmp_path / "out"
    common = ["--out", str(out), "--smoke", "--teacher", "b", "--epochs", "1", "--rows", "500", "--T", "2",
              "--seeds", "0", "--conditions", "lowrank-48 int8 kl", "top-10 spread", "labels only", "lowrank-96 packed kl"]
    main(["prepare", *common])
    main(["run", *common])
    main(["summarize", *common, "--result", str(tmp_path / "r.json")])
    r = json.loads((tmp_path / "r.json").read_text())["teachers"]["b"]
    assert [s["condition"] for s in r["students"]] == ["labels only", "top-10 spread", "lowrank-48 int8 kl",
                                                       "lowrank-96 packed kl"]
    kl = {row["codec"]: row for row in r["prepared"]["kl_heldout"] if "T" not in row}
    for e in ("projection", "kl"):
        assert kl[f"lowrank-48 int8 {e}"]["target_bytes"] == 52
        assert kl[f"lowrank-64 int8 {e}"]["kl_T1"] <= kl[f"lowrank-8 int8 {e}"]["kl_T1"]
    # below the tiny teacher's rank (its penultimate layer is 32 wide; at 64 both codes are exact to 4e-7 nats)
    assert kl["lowrank-16 int8 kl"]["kl_T1"] < kl["lowrank-16 int8 projection"]["kl_T1"]
    assert set(r["prepared"]["rank_for_default_budget"]["by_encoder"]) == {"projection", "kl"}
    assert r["prepared"]["teacher"]["arch"] == "mlp-512-32-1000" and r["prepared"]["sizes"]


def test_ddp_end_to_end_benchmark_smoke(tmp_path, data_dir):
    """benchmarks.ddp_e2e runs whole train-student commands (1 process, 2 torchrun ranks) and reports its ratios."""
    from benchmarks.ddp_e2e import main as e2e_main

    out = tmp_path / "e2e.json"
    r = e2e_main(["--smoke", "--data-dir", str(data_dir), "--work", str(tmp_path / "w"), "--out", str(out)])
    assert json.loads(out.read_text()) == r
    assert len(r["runs"]["1"]) == len(r["runs"]["2"]) == 1 and r["rows"] == 2048
    one, two = r["median"]["1"], r["median"]["2"]
    assert r["wall_ratio"] == two["wall"] / one["wall"] and 0 < two["loop"] < two["wall"]
    assert r["loop_vs_bare"] == r["loop_speedup"] / r["bare_step"]["speedup"]
    assert r["met"]["wall"] == (r["wall_ratio"] <= 0.9)


def test_memory_benchmark_smoke(tmp_path):
    """benchmarks.memory --smoke: dump and student peak RSS, small vs large folder, allocator off vs on (no thresholds)."""
    from benchmarks.memory import format_table
    from benchmarks.memory import main as memory_main

    out = tmp_path / "memory.json"
    result = memory_main(["--smoke", "--work", str(tmp_path / "work"), "--out", str(out), "--quiet"])
    assert json.loads(out.read_text()) == result
    assert result["cpu"] and result["cpu"] != "unknown" and (result["images"], result["fraction"]) == (160, 4)
    assert [(r["job"], r["workers"], r["mode"]) for r in result["rows"]] == [
        ("dump", 0, "off"), ("student", 0, "off"), ("dump", 0, "on"), ("student", 0, "on")]
    for r in result["rows"]:
        assert (r["small_images"], r["large_images"]) == (40, 160) and isinstance(r["met"], bool)
        assert 0 < r["small_peak_mb"] and 0 < r["large_peak_mb"] and r["growth_mb"] == r["large_peak_mb"] - r["small_peak_mb"]
    dumps = [r for r in result["runs"] if r["job"] == "dump"]
    assert sorted((r["folder"], r["rows"]) for r in dumps) == [("large", 160), ("large", 160), ("small", 40), ("small", 40)]
    glibc = __import__("platform").libc_ver()[0] == "glibc"  # off: KDCACHE_HEAP=default reached the child; on: applied
    assert {(r["mode"], r["heap_limited_in_main"]) for r in result["runs"]} == {("off", False), ("on", glibc)}
    assert "student" in format_table(result)


def test_revisions_benchmark_smoke(tmp_path, data_dir):
    """benchmarks.revisions times the same epoch in two checkouts (here this one twice) and reports new / old."""
    from benchmarks.revisions import REPO
    from benchmarks.revisions import main as revisions_main

    out = tmp_path / "rev.json"
    r = revisions_main(["--smoke", "--old", str(REPO), "--data-dir", str(data_dir), "--out", str(out)])
    assert json.loads(out.read_text()) == r and r["rows"] == 512
    assert len(r["seconds"]["old"]) == len(r["seconds"]["new"]) == 1 and all(s > 0 for s in r["seconds"]["new"])
    assert r["ratio"] == r["median"]["new"] / r["median"]["old"] and r["met"] == (r["ratio"] <= 1.03)


def test_hf_benchmark_smoke(tmp_path):
    """benchmarks.hf --smoke: the dump over hf:PATH and the plain with_transform loop both run (no timing
    thresholds)."""
    pytest.importorskip("datasets")
    from benchmarks.hf import format_table
    from benchmarks.hf import main as hf_main

    out = tmp_path / "hf.json"
    result = hf_main(["--smoke", "--work", str(tmp_path / "work"), "--out", str(out), "--quiet"])
    assert json.loads(out.read_text()) == result
    assert (result["images"], result["repeats"], result["workers"]) == (40, 1, 0)
    assert len(result["loadavg_before"]) == 3 and result["cpu"] != "unknown"
    (dump,) = result["rows"]
    assert_ratio_row(dump)
    assert dump["hash_seconds"] > 0 and 0 < dump["dump_loop_seconds"] < dump["a_seconds"]
    assert "dump-logits hf:PATH" in format_table(result)
