import json

import torch
from click.testing import CliRunner

from kdcache.cli import main
from kdcache.config import DataConfig, PipelineConfig
from kdcache.experiments.pipeline import format_table, run_pipeline


def test_pipeline_runs_then_reuses(tmp_path, data_dir):
    kw = dict(workdir=str(tmp_path / "runs"), cache_path=str(tmp_path / "c.h5"), teacher_epochs=2, student_epochs=1,
              limit=200, eval_limit=200, data_dir=str(data_dir), device="cpu", scarce_labels=50, scarce_epochs=2)
    first = run_pipeline(PipelineConfig(**kw))
    stages = [r["stage"] for r in first["rows"]]
    assert stages == ["teacher", "dump-logits", "student, labels only (alpha 0)", "student, KD T=4 alpha=0.5",
                      "student, 50 labels only (alpha 0)", "student, 50 labels + 150 unlabelled, KD T=4 alpha=0.9"]
    alone, mixed = (torch.load(tmp_path / "runs" / f"student-50-labels{s}.pt", weights_only=True)["config"]
                    for s in ("", "-transfer"))
    assert (alone["num_train_samples"], alone["epochs"], alone["alpha"]) == (50, 2, 0.0)
    assert (mixed["num_labelled"], mixed["num_unlabelled"], mixed["request"]["labels_limit"]) == (50, 150, 50)
    assert all(not r["reused"] for r in first["rows"])
    # the table's accuracies are the checkpoints' own, re-evaluated from the files on the same 200 test images
    from kdcache.jobs.training import evaluate_checkpoint
    files = ["teacher", None, "student-baseline", "student-distilled", "student-50-labels", "student-50-labels-transfer"]
    for row, name in zip(first["rows"], files):
        if name is not None:
            again = evaluate_checkpoint(tmp_path / "runs" / f"{name}.pt", device="cpu",
                                        data_cfg=DataConfig(data_dir=str(data_dir), eval_limit=200))
            assert again["accuracy"] == row["test_accuracy"], (name, again["accuracy"], row["test_accuracy"])
    second = run_pipeline(PipelineConfig(**kw))
    assert all(r["reused"] for r in second["rows"])
    assert [r["test_accuracy"] for r in second["rows"]] == [r["test_accuracy"] for r in first["rows"]]
    table = format_table(second)
    assert "teacher" in table and "(reused)" in table and "%" in table
    lines = table.splitlines()
    assert len({line.index("%") for line in lines if "%" in line}) == 1  # one column, however long the stage names

    # `pipeline --T 8 --alpha 0.9` after a default run reused the T=4, alpha=0.5 student because its file existed.
    third = run_pipeline(PipelineConfig(**kw, temperature=8.0, alpha=0.9))
    assert [(r["stage"], r["reused"]) for r in third["rows"][:4]] == [
        ("teacher", True), ("dump-logits", True), ("student, labels only (alpha 0)", True),
        ("student, KD T=8 alpha=0.9", False)]
    config = torch.load(tmp_path / "runs" / "student-distilled.pt", weights_only=True)["config"]
    assert (config["temperature"], config["alpha"]) == (8.0, 0.9)
    # and a change to what the stages are made from (here the student's epochs) retrains the students only
    fourth = run_pipeline(PipelineConfig(**{**kw, "student_epochs": 2}, temperature=8.0, alpha=0.9))
    assert [r["reused"] for r in fourth["rows"][:4]] == [True, True, False, False]


def test_pipeline_cli_writes_json(tmp_path, data_dir):
    out = tmp_path / "result.json"
    r = CliRunner().invoke(main, ["pipeline", "--workdir", str(tmp_path / "w"), "--cache", str(tmp_path / "c.h5"),
                                  "--teacher-epochs", "1", "--student-epochs", "1", "--limit", "128",
                                  "--eval-limit", "100", "--data-dir", str(data_dir), "--json", str(out), "-q"])
    assert r.exit_code == 0, r.output  # --limit alone: the scarce-label pair scales down with it (128 / 12 -> 11)
    rows = json.loads(out.read_text())["rows"]
    assert [row["stage"] for row in rows[4:]] == ["student, 11 labels only (alpha 0)",
                                                  "student, 11 labels + 117 unlabelled, KD T=4 alpha=0.9"]
    assert r.stdout.splitlines()[0].startswith("stage")


def test_pipeline_bad_temperature(tmp_path):
    r = CliRunner().invoke(main, ["pipeline", "--workdir", str(tmp_path), "--T", "-1"])
    assert r.exit_code == 1 and r.output.startswith("Error: temperature")


def test_pipeline_scarce_labels_must_leave_unlabelled_images(tmp_path):
    from conftest import assert_error

    r = CliRunner().invoke(main, ["pipeline", "--workdir", str(tmp_path), "--limit", "300", "--scarce-labels", "300"])
    assert_error(r, "--scarce-labels 300 must be below the training samples (--limit 300)")
    assert not (tmp_path / "teacher.pt").exists()


def test_the_scarce_label_count_scales_with_the_data():
    """`pipeline --limit 1000`, the obvious quick try, keeps a twelfth of its labels as Fashion-MNIST keeps
    5,000 of 60,000, instead of failing on a default sized for the whole set."""
    assert PipelineConfig().scarce_rows(60_000) == 5000
    assert PipelineConfig(limit=1000).scarce_rows(1000) == 83
    assert PipelineConfig(limit=1000, scarce_labels=10).scarce_rows(1000) == 10
    assert PipelineConfig(scarce_labels=0).scarce_rows(60_000) == 0
    assert PipelineConfig(limit=6).scarce_rows(6) == 1 and PipelineConfig(limit=1).scarce_rows(1) == 0


def test_a_student_stage_that_diverges_at_the_default_lr_is_trained_again_at_half_and_says_so(monkeypatch):
    """`pipeline --limit 1000` ended in 'training diverged' at the scarce-label transfer student (lr 0.02; 0.01
    trained it to 73.6%): the stage is retried once at half the default lr, and its row carries a warning.
    A learning rate the user chose is theirs: a divergence at it still ends the run."""
    import pytest

    from kdcache.config import STUDENT_TRAIN, TrainConfig
    from kdcache.errors import Diverged
    from kdcache.experiments import pipeline

    asked = []

    def job(out, distill, *, cfg, **kw):
        asked.append(cfg.lr)
        if cfg.lr is None or cfg.lr > 0.015:
            raise Diverged("loss 66.15, 10.2x its 6.46 at the start")
        return {"test": {"accuracy": 0.7363}, "seconds": 1.0, "reused": False, "warnings": ["other"]}

    monkeypatch.setattr(pipeline, "train_student", job)
    r = pipeline._student_stage("scarce-label transfer student", "out.pt", None, cfg=TrainConfig(epochs=1))
    assert asked == [None, STUDENT_TRAIN.lr / 2] == [None, 0.01]
    assert r["warnings"] == ["diverged at the default lr 0.02 (loss 66.15, 10.2x its 6.46 at the start); "
                             "trained again at lr 0.01", "other"]
    asked.clear()
    with pytest.raises(Diverged, match=r"the scarce-label transfer student stage\); train that stage alone"):
        pipeline._student_stage("scarce-label transfer student", "out.pt", None, cfg=TrainConfig(epochs=1, lr=0.05))
    assert asked == [0.05]
