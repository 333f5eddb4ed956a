"""End-to-end CLI runs on a small subset, and every bad input as one clean line."""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from click.testing import CliRunner
from conftest import assert_error, run_cli

from kdcache.cli import main

run = run_cli
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, data_dir):
    """A teacher trained for one epoch on 256 samples and its cache over the first 300 train samples."""
    d = tmp_path_factory.mktemp("e2e")
    teacher, cache = d / "teacher.pt", d / "train.h5"
    run("train-teacher", "--data-dir", data_dir, "--limit", 256, "--eval-limit", 200, "--epochs", 1,
        "--batch-size", 64, "--out", teacher, "-q")
    run("dump-logits", "--teacher", teacher, "--data-dir", data_dir, "--limit", 300, "--out", cache, "-q")
    test_cache = d / "test.h5"
    run("dump-logits", "--teacher", teacher, "--data-dir", data_dir, "--split", "test", "--limit", 300,
        "--out", test_cache, "-q")
    return {"dir": d, "teacher": teacher, "cache": cache, "test_cache": test_cache, "data_dir": data_dir}


def student(a, out, *extra, ok=True):
    return run("train-student", "--cache", a["cache"], "--data-dir", a["data_dir"], "--limit", 256,
               "--eval-limit", 200, "--epochs", 1, "--out", out, "-q", *extra, ok=ok)


def test_teacher_checkpoint_and_metrics(artifacts):
    import torch
    ckpt = torch.load(artifacts["teacher"], weights_only=True)
    c = ckpt["config"]
    assert c["arch"] == "teacher-cnn" and c["dataset"] == "fashion-mnist" and c["num_train_samples"] == 256
    assert c["class_names"][0] == "T-shirt/top" and c["mean"] == [0.286] and 0 <= c["test_accuracy"] <= 1
    metrics = json.loads((artifacts["dir"] / "teacher.metrics.json").read_text())
    assert len(metrics["history"]) == 1 and {"train_loss", "test_accuracy"} <= set(metrics["history"][0])


def test_cache_contents(artifacts):
    with h5py.File(artifacts["cache"], "r") as f:
        assert f["logits"].shape == (300, 10)
        assert list(f["indices"][:5]) == [0, 1, 2, 3, 4]
        assert f.attrs["split"] == "train" and f.attrs["dataset"] == "fashion-mnist"
        assert f.attrs["dataset_num_samples"] == 60000


def test_student_trains_without_the_teacher(artifacts, tmp_path):
    a = dict(artifacts)
    moved = tmp_path / "elsewhere.pt"
    shutil.move(a["teacher"], moved)  # the teacher checkpoint is gone
    try:
        for T, alpha in (("4", "0.5"), ("8", "0.9")):
            out = tmp_path / f"s{T}.pt"
            student(a, out, "--T", T, "--alpha", alpha)
            import torch
            c = torch.load(out, weights_only=True)["config"]
            assert c["temperature"] == float(T) and c["alpha"] == float(alpha)
            assert c["caches"][0]["content_sha256"] and c["caches"][0]["path"] == str(a["cache"])
        r = run("evaluate", "--model", tmp_path / "s4.pt", "--data-dir", a["data_dir"], "--limit", 200, "--json")
        metrics = json.loads(r.output)
        assert metrics["num_samples"] == 200 and len(metrics["per_class_accuracy"]) == 10
        r = run("evaluate", "--model", tmp_path / "s4.pt", "--data-dir", a["data_dir"], "--limit", 200)
        assert "accuracy" in r.stdout.splitlines()[-1] and "Sandal" in r.stdout
    finally:
        shutil.move(moved, a["teacher"])


def test_baseline_needs_no_cache(artifacts, tmp_path):
    run("train-student", "--alpha", 0, "--data-dir", artifacts["data_dir"], "--limit", 128, "--eval-limit", 100,
        "--epochs", 1, "--out", tmp_path / "b.pt", "-q")
    assert (tmp_path / "b.pt").exists() and (tmp_path / "b.metrics.json").exists()


def test_summary_line(artifacts, tmp_path):
    r = student(artifacts, tmp_path / "s.pt")
    assert r.stdout == "" and all(line.startswith("warning: ") for line in r.stderr.splitlines())  # --quiet
    r = run("train-student", "--cache", artifacts["cache"], "--data-dir", artifacts["data_dir"], "--limit", 64,
            "--eval-limit", 50, "--epochs", 1, "--out", tmp_path / "s2.pt")
    assert r.stdout.strip().splitlines()[-1].startswith("student student-cnn (T=4, alpha=0.5): test accuracy")


def bad(args, tmp_path, must_not_exist=()):
    r = CliRunner().invoke(main, [str(a) for a in args])
    lines = assert_error(r)
    for p in must_not_exist:
        assert not p.exists()
    return lines[0]


def test_bad_inputs(artifacts, tmp_path):
    a = artifacts
    out = tmp_path / "s.pt"
    common = ["--data-dir", a["data_dir"], "--limit", 256, "--epochs", 1, "--out", out, "-q"]
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    cases = [
        ("not found", ["train-student", "--cache", tmp_path / "missing.h5", *common]),
        ("not an HDF5 file", ["train-student", "--cache", junk, *common]),
        ("made from fashion-mnist/test", ["train-student", "--cache", a["test_cache"], *common]),
        ("are not in it", ["train-student", "--cache", a["cache"], *common[:2], "--limit", 400, *common[4:]]),
        ("temperature T must be", ["train-student", "--cache", a["cache"], "--T", 0, *common]),
        ("temperature T must be", ["train-student", "--cache", a["cache"], "--T", -2, *common]),
        ("alpha must be in [0, 1]", ["train-student", "--cache", a["cache"], "--alpha", 1.5, *common]),
        ("alpha must be in [0, 1]", ["train-student", "--cache", a["cache"], "--alpha", -0.1, *common]),
        ("unknown architecture 'resnet'", ["train-student", "--cache", a["cache"], "--arch", "resnet", *common]),
        ("unknown architecture 'vit'", ["train-teacher", "--arch", "vit", *common]),
        ("unknown dataset 'cifar10'; choose one of", ["train-teacher", "--dataset", "cifar10", *common]),
        ("name its cache", ["train-student", "--alpha", 0.5, *common]),
    ]
    for expected, args in cases:
        line = bad(args, tmp_path, [out])
        assert expected in line, line

    # a checkpoint of the wrong architecture
    student(a, tmp_path / "student.pt")
    target = tmp_path / "x.h5"
    line = bad(["dump-logits", "--teacher", tmp_path / "student.pt", "--arch", "teacher-cnn", "--data-dir",
                a["data_dir"], "--out", target], tmp_path, [target])
    assert "holds a 'student-cnn' model, but 'teacher-cnn'" in line
    line = bad(["evaluate", "--model", junk, "--data-dir", a["data_dir"]], tmp_path)
    assert "not a readable checkpoint" in line

    # existing outputs are kept without --overwrite
    before = a["cache"].read_bytes()
    line = bad(["dump-logits", "--teacher", a["teacher"], "--data-dir", a["data_dir"], "--limit", 10,
                "--out", a["cache"]], tmp_path)
    assert "already exists; pass --overwrite" in line and a["cache"].read_bytes() == before
    before = (tmp_path / "student.pt").read_bytes()
    line = bad(["train-student", "--cache", a["cache"], *common[:-3], "--out", tmp_path / "student.pt"], tmp_path)
    assert "already exists; pass --overwrite" in line and (tmp_path / "student.pt").read_bytes() == before


def test_huge_temperature_is_named_when_training_diverges(artifacts, tmp_path):
    """--T 1e6 ended with "training diverged (loss nan); lower --lr", as if the lr alone were to blame.

    The loss is finite at any T (tests/test_loss.py); what diverges is the optimisation: at T = 1e6
    T²·KL is logit matching, whose gradients grow with the logit gap. The message names T; with a
    lower lr the same run trains, with a finite loss.
    """
    args = ("--T", "1e6", "--alpha", "0.5", "--epochs", 3, "--batch-size", 16)  # 48 steps: enough to diverge
    r = student(artifacts, tmp_path / "hot.pt", *args, ok=False)
    assert_error(r, "training diverged (loss ", "at T=1e+06", "logit matching", "--T 20 or lower")
    student(artifacts, tmp_path / "hot.pt", *args, "--lr", "0.002")
    history = json.loads((tmp_path / "hot.metrics.json").read_text())["history"]
    assert len(history) == 3 and all(math.isfinite(h["train_loss"]) and h["train_loss"] > 0 for h in history)


def test_progress_redirected_to_a_file_stays_a_few_lines(tmp_path, data_dir):
    """Redirected to a file, progress bars wrote a line per batch; now a line every 30 s at most."""
    log = tmp_path / "log.txt"
    args = [sys.executable, "-m", "kdcache", "train-student", "--alpha", "0", "--data-dir", str(data_dir),
            "--limit", "2048", "--batch-size", "8", "--eval-limit", "100", "--epochs", "2", "--out", str(tmp_path / "b.pt")]
    with open(log, "w") as f:  # 512 batches and 2 evaluations, output to a file as in `kdcache ... > log 2>&1`
        r = subprocess.run(args, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"))
    text = log.read_text()
    assert r.returncode == 0, text
    lines = text.splitlines()
    assert "\r" not in text and 1 <= len(lines) <= 4, text
    assert lines[-1].startswith("student student-cnn (labels only): test accuracy"), text


def test_every_command_has_help():
    for name, cmd in main.commands.items():
        assert cmd.help and len(cmd.help.strip()) > 10, name
        assert run(name, "--help").output.startswith("Usage:")


def test_python_dash_m():
    r = subprocess.run([sys.executable, "-m", "kdcache", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "train-student" in r.stdout


def test_summary_line_names_the_resolved_precision(artifacts, tmp_path, monkeypatch):
    """train-teacher (auto by default) says what auto chose and why; --quiet says nothing."""
    from kdcache import device

    common = ["--data-dir", artifacts["data_dir"], "--limit", 64, "--eval-limit", 50, "--epochs", 1]
    monkeypatch.setattr(device, "bf16_native", lambda d: False)
    r = run("train-teacher", *common, "--out", tmp_path / "t.pt")
    line = r.stdout.strip().splitlines()[-1]
    assert line.startswith("teacher teacher-cnn: test accuracy") and \
        "1 epoch at fp32 (auto: this CPU has no native bf16) in " in line, line
    assert run("train-teacher", *common, "--out", tmp_path / "t.pt", "--overwrite", "-q").stdout == ""  # (warnings: stderr)
    r = run("train-student", "--alpha", 0, *common, "--precision", "auto", "--out", tmp_path / "s.pt")
    assert "1 epoch at fp32 (auto: this CPU has no native bf16) in " in r.stdout.strip().splitlines()[-1]
    monkeypatch.setattr(device, "bf16_native", lambda d: True)
    r = run("train-student", "--alpha", 0, *common, "--precision", "auto", "--out", tmp_path / "s.pt", "--overwrite")
    assert "1 epoch at bf16 (auto: this CPU runs bf16 natively) in " in r.stdout.strip().splitlines()[-1]
    r = run("dump-logits", "--teacher", tmp_path / "t.pt", "--data-dir", artifacts["data_dir"], "--limit", 50,
            "--out", tmp_path / "c.h5")
    assert "logits, teacher at fp32, in " in r.stdout  # dump-logits: fp32 unless asked otherwise


def test_precision_help_says_what_auto_means():
    for cmd in ("train-teacher", "train-student", "dump-logits", "sweep"):
        text = " ".join(run(cmd, "--help").output.split())
        assert "[auto|fp32|bf16]" in text and "only where the hardware runs bf16 natively" in text, cmd


@pytest.mark.parametrize("args, needle", [
    (["train-student", "--bogus"], "No such option '--bogus'"),
    (["train-student", "--T", "abc", "--out", "x.pt"], "'abc' is not a valid float"),
    (["train-student", "--ensemble", "median", "--out", "x.pt"], "'median' is not one of"),
    (["no-such-command"], "No such command 'no-such-command'"),
])
def test_a_command_line_click_cannot_parse_is_one_line_too(args, needle):
    """Not click's usage block + hint + error: one `Error:` line that says where the options are, exit status 2."""
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0] and "--help' lists" in lines[0]


def test_an_unwritable_output_folder_is_refused_before_any_work(artifacts, tmp_path, monkeypatch):
    """A read-only --out folder ended in HDF5's raw text after the teacher ran. Tests run as root (chmod blocks
    nothing), so the folder is a path through a file; the teacher must never be loaded."""
    import kdcache.jobs.dump

    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "c.h5"
    monkeypatch.setattr(kdcache.jobs.dump, "load_teacher", lambda *a, **k: pytest.fail("the teacher was loaded"))
    why = f"cannot write to {out.parent}: a part of the path is a file, not a folder"
    assert_error(CliRunner().invoke(main, ["dump-logits", "--teacher", str(artifacts["teacher"]), "--data-dir",
                                           str(artifacts["data_dir"]), "--limit", "10", "--out", str(out)]), why)
    assert_error(CliRunner().invoke(main, ["compress", str(artifacts["cache"]), "--out", str(out)]), why)
    for args in (["train-teacher"], ["train-student", "--alpha", "0"]):  # before the data is even looked for
        r = CliRunner().invoke(main, args + ["--data-dir", str(tmp_path / "no-data"), "--out", str(out)])
        assert_error(r, why)


def test_the_dump_summary_gives_a_small_cache_in_kb(artifacts, tmp_path):
    """A 30 KB cache was summarised as '0.0 MB'."""
    out = tmp_path / "small.h5"
    r = run("dump-logits", "--teacher", artifacts["teacher"], "--data-dir", artifacts["data_dir"], "--limit", 16,
            "--out", out)
    size = out.stat().st_size
    assert 1e3 < size < 1e6
    assert f"-> {out} ({size / 1e3:.1f} KB, teacher agrees" in r.stdout, r.stdout


def test_the_readme_runs_torchrun_from_the_setups_venv():
    """The README showed bare `torchrun`, which the set-up does not put on PATH: it installs .venv/bin/torchrun."""
    blocks = (REPO / "README.md").read_text().split("```")[1::2]  # the code blocks
    lines = [line for block in blocks for line in block.splitlines()]
    launched = [line for line in lines if line.lstrip().startswith(("torchrun ", ".venv/bin/torchrun "))]
    assert len(launched) >= 4 and all(line.startswith(".venv/bin/torchrun ") for line in launched), launched
