"""The sweep report from a hand-made results table: statistics, gap closed, Markdown, PNGs."""
import json

import matplotlib.image
import pytest
from click.testing import CliRunner

from kdcache.cli import main
from kdcache.errors import ConfigError
from kdcache.experiments.report import gap_closed, summarize, write_report
from kdcache.experiments.results import RESULTS_FORMAT
from kdcache.experiments.sweep import RunSpec


def row(limit, t, alpha, seed, acc, epochs=2):
    spec = RunSpec(limit, t, alpha, seed, epochs)
    history = [{"epoch": e, "train_loss": 1.0 / e, "train_accuracy": acc - 0.1 / e, "test_loss": 0.5 / e,
                "test_accuracy": acc - 0.05 * (epochs - e)} for e in range(1, epochs + 1)]
    return {"key": spec.key, "limit": limit, "temperature": t, "alpha": alpha, "seed": seed, "epochs": epochs,
            "test_accuracy": acc, "test_loss": 0.4, "train_seconds": 1.0, "eval_samples": 1000, "history": history}


def results(rows):
    return {"format": RESULTS_FORMAT, "version": 1, "cache": "c.h5", "rows": rows,
            "teacher": {"arch": "teacher-cnn", "test_accuracy": 0.90},
            "settings": {"arch": "student-cnn", "train": {"optimizer": "sgd", "schedule": "onecycle", "lr": 0.05,
                                                          "batch_size": 128, "weight_decay": 5e-4}}}


ROWS = [
    row(500, None, 0.0, 0, 0.70), row(500, None, 0.0, 1, 0.72),
    row(500, 1.0, 0.9, 0, 0.74), row(500, 1.0, 0.9, 1, 0.76),
    row(500, 4.0, 0.9, 0, 0.80), row(500, 4.0, 0.9, 1, 0.82),  # best at 500: 0.81 -> gap (0.81-0.71)/(0.90-0.71)
    row(500, 4.0, 1.0, 0, 0.78),
    row(6000, None, 0.0, 0, 0.85), row(6000, 4.0, 0.9, 0, 0.84),
]


def test_summarize_means_spreads_and_best():
    g500, g6000 = summarize(ROWS)
    assert (g500.limit, g500.epochs, g6000.limit) == (500, 2, 6000)
    assert g500.baseline.mean == pytest.approx(0.71) and g500.baseline.std == pytest.approx(0.01414, abs=1e-4)
    assert [(s.alpha, s.temperature) for s in g500.configs] == [(0.9, 1.0), (0.9, 4.0), (1.0, 4.0)]
    assert (g500.best.alpha, g500.best.temperature) == (0.9, 4.0) and g500.best.mean == pytest.approx(0.81)
    assert g500.alphas() == [0.9, 1.0]
    assert g6000.best.mean < g6000.baseline.mean  # distillation can lose; the report shows it


def test_gap_closed():
    assert gap_closed(0.71, 0.81, 0.90) == pytest.approx(0.10 / 0.19)
    assert gap_closed(0.85, 0.84, 0.90) == pytest.approx(-0.2)
    assert gap_closed(0.91, 0.92, 0.90) is None and gap_closed(0.8, 0.85, None) is None


def test_report_files(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(results(ROWS)))
    r = CliRunner().invoke(main, ["report", str(tmp_path)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    for name in ("accuracy_vs_T.png", "training_curves.png"):
        img = matplotlib.image.imread(tmp_path / name)
        assert img.ndim == 3 and img.shape[1] > 800  # two panels side by side
    md = (tmp_path / "report.md").read_text()
    assert "| - | 500 | 2 | 90.00% | 71.00 ± 1.41% | 81.00 ± 1.41% | T=4, alpha=0.9 | test | +10.00 pp | 53% |" in md
    assert "| - | 6,000 | 2 | 90.00% | 85.00% | 84.00% | T=4, alpha=0.9 | test | -1.00 pp | -20% |" in md  # no ±
    assert "| 1 | 4 | 1 | - | 78.00% | +7.00 pp |" in md  # the soft-targets-only row


def test_report_refuses_a_folder_without_a_table(tmp_path):
    with pytest.raises(ConfigError, match="run `kdcache sweep"):
        write_report(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps(results([])))
    with pytest.raises(ConfigError, match="no finished runs"):
        write_report(tmp_path)
    r = CliRunner().invoke(main, ["report", str(tmp_path / "nowhere")])
    assert r.exit_code == 1 and r.output.startswith("Error: ")


def test_diverged_runs_are_listed_not_averaged(tmp_path):
    diverged = dict(row(500, 16.0, 0.9, 1, 0.0), test_accuracy=None, test_loss=None, history=[],
                    error="training diverged (loss nan); lower --lr")
    only_failed = dict(diverged, key="x", temperature=8.0)
    rows = ROWS + [row(500, 16.0, 0.9, 0, 0.79), diverged, only_failed]
    g500 = summarize(rows)[0]
    t16 = next(s for s in g500.configs if s.temperature == 16.0)
    assert t16.values == [0.79] and t16.failed == 1 and t16.seeds_text() == "1 (+1 diverged)"
    assert all(s.temperature != 8.0 for s in g500.configs)
    (tmp_path / "results.json").write_text(json.dumps(results(rows)))
    write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "## Runs that diverged" in md and "training diverged (loss nan)" in md


def test_best_is_picked_on_validation_when_every_run_has_one():
    """With a validation split, the pick follows validation accuracy even where test accuracy disagrees."""
    rows = [dict(r) for r in ROWS[:6]]
    for r in rows:  # T=1 looks best on validation, T=4 on test
        r["val_accuracy"] = 0.9 if r["temperature"] == 1.0 else 0.5
        r["condition"] = "views K=4"
    (g,) = summarize(rows)
    assert g.picked_on == "validation" and g.condition == "views K=4"
    assert (g.best.alpha, g.best.temperature) == (0.9, 1.0) and g.best.mean == pytest.approx(0.75)
    assert g.best.val_mean == pytest.approx(0.9)
    rows[2]["val_accuracy"] = None  # one run without validation: fall back to test, and say so
    (g,) = summarize(rows)
    assert g.picked_on == "test" and g.best.temperature == 4.0


def test_conditions_are_separate_groups_in_order_of_appearance():
    rows = [dict(r, condition=c) for c in ("labels only", "transfer") for r in ROWS[:2]]
    groups = summarize(rows)
    assert [g.condition for g in groups] == ["labels only", "transfer"]


def test_labelled_counts_are_an_axis_and_named_in_tables_and_titles(tmp_path):
    """Runs that differ only in labels_limit are separate groups; tables and titles say labelled + unlabelled."""
    def transfer(labels, t, seed, acc, **extra):
        r = row(6000, t, 0.9, seed, acc or 0.0)
        spec = RunSpec.make(6000, t, 0.9, seed, 2, "transfer", labels_limit=labels)
        return {**r, **spec.to_row(), "test_accuracy": acc, "num_labelled": labels, "num_unlabelled": 6000 - labels,
                **extra}

    rows = [row(500, None, 0.0, 0, 0.70), transfer(500, 4.0, 0, 0.80), transfer(500, 2.0, 0, 0.79),
            transfer(1000, 4.0, 0, 0.83),
            {**transfer(1000, 2.0, 0, None), "num_labelled": None, "error": "training diverged (loss nan)"}]
    groups = summarize(rows)
    assert [(g.condition, g.num_labelled, g.unlabelled) for g in groups] == [("", 500, 0), ("transfer", 500, 5500),
                                                                              ("transfer", 1000, 5000)]
    assert len(groups[1].configs) == 2 and groups[2].best.mean == pytest.approx(0.83)  # the diverged run joins its group
    (tmp_path / "results.json").write_text(json.dumps(results(rows)))
    write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "| labelled samples | unlabelled samples |" in md and "| transfer | 1,000 | 5,000 | 2 |" in md
    assert "## transfer: 500 labelled + 5,500 unlabelled samples, 2 epochs" in md
    plain = (tmp_path / "plain")
    plain.mkdir()
    (plain / "results.json").write_text(json.dumps(results(ROWS)))
    write_report(plain)
    assert "unlabelled" not in (plain / "report.md").read_text()  # a plain sweep's table is unchanged


def test_a_transfer_group_is_compared_with_the_labels_only_baseline_of_its_labelled_count(tmp_path):
    def transfer(labels, acc):
        spec = RunSpec.make(6000, 4.0, 0.9, 0, 2, "transfer", labels_limit=labels)
        return {**row(6000, 4.0, 0.9, 0, acc), **spec.to_row(), "num_labelled": labels, "num_unlabelled": 6000 - labels}

    base = [dict(row(n, None, 0.0, 0, acc), condition="labels only") for n, acc in ((500, 0.70), (1000, 0.75))]
    groups = summarize([*base, transfer(500, 0.80), transfer(1000, 0.83)])
    shared = {g.num_labelled: g for g in groups if g.condition == "transfer"}
    assert shared[500].baseline.mean == pytest.approx(0.70) and shared[1000].baseline.mean == pytest.approx(0.75)
    assert shared[500].baseline_of == "labels only" and groups[0].baseline_of is None
    (tmp_path / "results.json").write_text(json.dumps(results([*base, transfer(500, 0.80), transfer(1000, 0.83)])))
    write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "| transfer | 500 | 5,500 | 2 | 90.00% | 70.00% (labels only) | 80.00% |" in md and "+10.00 pp" in md
    assert summarize([transfer(500, 0.80)])[0].baseline is None  # no baseline of that labelled count: none


def test_best_is_picked_over_the_seeds_every_configuration_has():
    """Picked on seed 0, then seeds 1-2 of the winner: a one-seed rival must not win on its single lucky seed."""
    def r(t, seed, val, acc):
        return {**row(500, t, 0.9, seed, acc), "val_accuracy": val}

    rows = [r(4.0, 0, 0.90, 0.88), r(4.0, 1, 0.85, 0.86), r(4.0, 2, 0.86, 0.87), r(2.0, 0, 0.89, 0.89)]
    (g,) = summarize(rows)
    assert g.picked_on == "validation" and g.best.temperature == 4.0  # seed 0: 0.90 > 0.89 (all-seed mean: 0.87)
    assert len(g.best.values) == 3
