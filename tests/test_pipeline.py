import json

from click.testing import CliRunner

from kdcache.cli import main
from kdcache.pipeline import format_table, run_pipeline


def test_pipeline_runs_then_reuses(tmp_path, data_dir):
    kw = dict(workdir=str(tmp_path / "runs"), cache_path=str(tmp_path / "c.h5"), teacher_epochs=1, student_epochs=1,
              limit=200, eval_limit=200, data_dir=str(data_dir), device="cpu")
    first = run_pipeline(**kw)
    stages = [r["stage"] for r in first["rows"]]
    assert stages == ["teacher", "dump-logits", "student, labels only (alpha 0)", "student, KD T=4 alpha=0.5"]
    assert all(not r["reused"] for r in first["rows"])
    assert all(0 <= r["test_accuracy"] <= 1 for r in first["rows"] if r["stage"] != "dump-logits")
    second = run_pipeline(**kw)
    assert all(r["reused"] for r in second["rows"])
    assert [r["test_accuracy"] for r in second["rows"]] == [r["test_accuracy"] for r in first["rows"]]
    table = format_table(second)
    assert "teacher" in table and "(reused)" in table and "%" in table


def test_pipeline_cli_writes_json(tmp_path, data_dir):
    out = tmp_path / "result.json"
    r = CliRunner().invoke(main, ["pipeline", "--workdir", str(tmp_path / "w"), "--cache", str(tmp_path / "c.h5"),
                                  "--teacher-epochs", "1", "--student-epochs", "1", "--limit", "128",
                                  "--eval-limit", "100", "--data-dir", str(data_dir), "--json", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(out.read_text())["rows"]) == 4
    assert r.stdout.splitlines()[0].startswith("stage")


def test_pipeline_bad_temperature(tmp_path):
    r = CliRunner().invoke(main, ["pipeline", "--workdir", str(tmp_path), "--T", "-1"])
    assert r.exit_code == 1 and r.output.startswith("Error: temperature")
