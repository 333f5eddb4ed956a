"""The report of a sweep: a Markdown summary and two PNG figures, from ``<out>/results.json``.

- ``accuracy_vs_T.png``: test accuracy against T (log axis), one line per alpha with the
  spread over seeds, the labels-only baseline and the teacher as horizontal lines, one
  panel per number of labelled samples.
- ``training_curves.png``: accuracy and loss per epoch (on the validation split when the runs
  have one, else on the test split) of the best distilled configuration and of the baseline
  (mean over seeds, band = spread).
- ``report.md``: the tables behind both, and the fraction of the baseline-to-teacher gap
  that distillation closed.

"Spread" is the sample standard deviation over seeds (0 with one seed). The best
configuration is chosen by mean accuracy on the validation split when every run of a group
has one (``--val-size``), and its test accuracy is reported; without one it is chosen by mean
test accuracy, so its number is slightly optimistic, by the usual max-over-noisy-means amount
(the report says which).
"""
from __future__ import annotations

import os
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdcache.errors import ConfigError
from kdcache.experiments.results import load_results
from kdcache.files import replace_durably, temp_path_for, write_text_atomic

ACCURACY_FIGURE = "accuracy_vs_T.png"
CURVES_FIGURE = "training_curves.png"
REPORT_MD = "report.md"


@dataclass
class Stat:
    """Mean and spread of one configuration over seeds."""

    alpha: float
    temperature: float | None  # None = baseline
    values: list[float]  # test accuracy of each finished seed
    rows: list[dict[str, Any]] = field(repr=False)  # the finished runs
    failed: int = 0  # runs that diverged

    @property
    def val_values(self) -> list[float] | None:
        """Validation accuracy of each finished seed, or None when a run had no validation split."""
        vals = [r.get("val_accuracy") for r in self.rows]
        return None if any(v is None for v in vals) else vals

    @property
    def val_mean(self) -> float | None:
        vals = self.val_values
        return None if vals is None else statistics.fmean(vals)

    def val_mean_over(self, seeds: set[int]) -> float | None:
        """Mean validation accuracy over the runs of ``seeds`` only (None without a validation split)."""
        vals = [r.get("val_accuracy") for r in self.rows if r.get("seed") in seeds]
        return None if not vals or any(v is None for v in vals) else statistics.fmean(vals)

    def seeds_text(self) -> str:
        return f"{len(self.values)}" + (f" (+{self.failed} diverged)" if self.failed else "")

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    @property
    def spread(self) -> float | None:
        """The std for tables: None (not shown) with a single seed."""
        return self.std if len(self.values) > 1 else None

    @property
    def label(self) -> str:
        return "baseline (alpha 0)" if self.temperature is None else f"T={self.temperature:g}, alpha={self.alpha:g}"


@dataclass
class Group:
    """All configurations of one condition trained on the same samples (labelled and not) for the same epochs."""

    limit: int
    epochs: int
    baseline: Stat | None
    configs: list[Stat]  # distilled (alpha > 0), sorted by alpha then T
    condition: str = ""
    labelled: int | None = None  # labelled training rows (None: all ``limit`` samples, as in a plain sweep)
    unlabelled: int = 0  # rows without a label: --labels-limit's rest and transfer sets
    baseline_of: str | None = None  # the condition whose baseline this group shares (None: its own)

    @property
    def num_labelled(self) -> int:
        return self.limit if self.labelled is None else self.labelled

    @property
    def picked_on(self) -> str:
        """'validation' when every run has a validation accuracy, else 'test' (optimistic)."""
        return "validation" if all(s.val_mean is not None for s in self.configs) else "test"

    @property
    def best(self) -> Stat | None:
        """The distilled configuration with the best mean accuracy on the validation split (test without one).

        Compared over the seeds every configuration has, so that a design that picks on seed 0 and
        then runs more seeds of the winner (benchmarks.transfer) is judged as it was picked, not
        by a one-seed configuration against the winner's three-seed mean.
        """
        if self.picked_on == "validation":
            seeds = [{r.get("seed") for r in s.rows} for s in self.configs]
            common = set.intersection(*seeds) if seeds else set()
            if common:
                return max(self.configs, key=lambda s: s.val_mean_over(common), default=None)
            return max(self.configs, key=lambda s: s.val_mean, default=None)
        return max(self.configs, key=lambda s: s.mean, default=None)

    def alphas(self) -> list[float]:
        return sorted({s.alpha for s in self.configs})


def labelled_counts(rows: list[dict[str, Any]]) -> tuple[int, int]:
    """(labelled, unlabelled) training rows of a group's runs: as a finished run recorded them, else from
    ``labels_limit`` (a run that diverged or predates the record), else all ``limit`` samples labelled."""
    for row in rows:
        if row.get("num_labelled") is not None:
            return int(row["num_labelled"]), int(row.get("num_unlabelled") or 0)
    row = rows[0]
    labels_limit = (row.get("options") or {}).get("labels_limit")
    if labels_limit is not None:
        return int(labels_limit), int(row["limit"]) - int(labels_limit)
    return int(row["limit"]), 0


def summarize(rows: list[dict[str, Any]]) -> list[Group]:
    """Group the table's rows by (condition, limit, labels_limit, epochs), then by (alpha, T) over seeds.

    Runs that differ in their labelled count (``labels_limit``) are separate groups, and a
    group says how many of its rows were labelled and unlabelled (transfer sets included).
    Groups are ordered by labelled count, then by the order in which their conditions first appear.
    """
    by_group: dict[tuple, dict[tuple[float, float | None], list[dict]]] = defaultdict(lambda: defaultdict(list))
    first_seen: dict[str, int] = {}
    for row in rows:
        cond = row.get("condition", "")
        first_seen.setdefault(cond, len(first_seen))
        key = (cond, row["limit"], (row.get("options") or {}).get("labels_limit"), row["epochs"])
        by_group[key][(row["alpha"], row["temperature"])].append(row)
    counts = {key: labelled_counts([r for rs in configs.values() for r in rs]) for key, configs in by_group.items()}
    groups = []
    order = sorted(by_group, key=lambda k: (counts[k][0], first_seen[k[0]], k[1], counts[k][1], k[3]))
    for key in order:
        (cond, limit, _, epochs), configs, (labelled, unlabelled) = key, by_group[key], counts[key]
        stats = []
        for (a, t), rs in configs.items():
            ok = [r for r in rs if r.get("test_accuracy") is not None]
            if ok:  # a configuration whose every seed diverged has no mean; it is listed in failures()
                stats.append(Stat(a, t, [r["test_accuracy"] for r in ok], ok, failed=len(rs) - len(ok)))
        baseline = next((s for s in stats if s.temperature is None), None)
        distilled = sorted((s for s in stats if s.temperature is not None), key=lambda s: (s.alpha, s.temperature))
        groups.append(Group(limit, epochs, baseline, distilled, cond, labelled, unlabelled))
    return _shared_baselines(groups)


def _shared_baselines(groups: list[Group]) -> list[Group]:
    """A group without alpha-0 runs (a transfer set's distilled runs) is compared with the labels-only baseline
    trained on the same labelled samples alone, when the table has exactly one such baseline."""
    own = [g for g in groups if g.baseline is not None and g.unlabelled == 0]
    for g in groups:
        if g.baseline is None:
            same = [o for o in own if o.num_labelled == g.num_labelled]
            if len(same) == 1:
                g.baseline, g.baseline_of = same[0].baseline, same[0].condition or "baseline"
    return groups


def gap_closed(baseline: float, best: float, teacher: float | None) -> float | None:
    """(best - baseline) / (teacher - baseline): 1 = the student matches the teacher; None if undefined."""
    if teacher is None or teacher <= baseline:
        return None
    return (best - baseline) / (teacher - baseline)


def _pct(x: float | None, std: float | None = None) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.2f}%" if std is None else f"{100 * x:.2f} ± {100 * std:.2f}%"


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("the report's figures need matplotlib: pip install 'kdcache[report]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.grid": True, "grid.alpha": 0.3,
                         "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _save(plt, fig, path: Path) -> None:
    """PNG written to a temp file and renamed into place, like every other artifact."""
    tmp = temp_path_for(path)
    try:
        fig.savefig(tmp, dpi=110, format="png")
        replace_durably(tmp, path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()


def _figure_legend(fig, axes) -> None:
    """One legend under all panels (entries merged by label), so no panel's data is covered."""
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    ncol = min(len(entries), 5 if len(axes) > 1 else 3)
    rows = -(-len(entries) // ncol)
    fig.tight_layout(rect=(0, 0.055 * rows + 0.02, 1, 0.95))
    fig.legend(list(entries.values()), list(entries.keys()), loc="lower center", ncol=ncol, fontsize=9, frameon=False)


def _samples_text(g: Group) -> str:
    """'5,000 labelled samples' or '5,000 labelled + 50,000 unlabelled samples'."""
    extra = f" + {g.unlabelled:,} unlabelled" if g.unlabelled else ""
    return f"{g.num_labelled:,} labelled{extra} samples"


def _group_title(g: Group) -> str:
    return (f"{g.condition}: " if g.condition else "") + f"{_samples_text(g)}, {g.epochs} epochs"


def plot_accuracy_vs_temperature(groups: list[Group], teacher_accuracy: float | None, path: Path) -> Path:
    """One panel per group: mean test accuracy vs T per alpha (error bars = spread over seeds)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(groups), figsize=(max(5.2 * len(groups), 8.0), 4.2), squeeze=False)
    colors = plt.get_cmap("tab10")
    all_alphas = sorted({a for g in groups for a in g.alphas()})
    for ax, g in zip(axes[0], groups):
        temps = sorted({s.temperature for s in g.configs})
        if g.baseline is not None:
            m, s = 100 * g.baseline.mean, 100 * g.baseline.std
            ax.axhline(m, color="0.3", lw=1.5, label="baseline, labels only (band: ± std)")
            if s > 0:
                ax.axhspan(m - s, m + s, color="0.3", alpha=0.12, lw=0)
        if teacher_accuracy is not None:
            ax.axhline(100 * teacher_accuracy, color="k", ls="--", lw=1.2, label=f"teacher ({100 * teacher_accuracy:.2f}%)")
        for alpha in g.alphas():
            i = all_alphas.index(alpha)  # the same colour for an alpha in every panel
            pts = sorted((s for s in g.configs if s.alpha == alpha), key=lambda s: s.temperature)
            name = "soft targets only" if alpha == 1 else "distilled"
            ax.errorbar([s.temperature for s in pts], [100 * s.mean for s in pts], yerr=[100 * s.std for s in pts],
                        marker="o", ms=4, capsize=3, lw=1.5, color=colors(i + 1), label=f"{name}, alpha={alpha:g}")
        ax.set_xscale("log", base=2)
        if temps:
            ax.set_xticks(temps, [f"{t:g}" for t in temps])
            ax.minorticks_off()
        ax.set_xlabel("temperature T (log scale)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(_group_title(g))
    _figure_legend(fig, axes[0])
    fig.suptitle("Student test accuracy vs temperature (mean ± std over seeds)", fontsize=11)
    _save(plt, fig, path)
    return path


def _curve(stat: Stat, key: str) -> tuple[list[int], list[float], list[float]]:
    """Mean and spread over seeds of history[key] per epoch, in percent for accuracies."""
    scale = 100.0 if "accuracy" in key else 1.0
    epochs = [h["epoch"] for h in stat.rows[0]["history"]]
    per_epoch = list(zip(*[[scale * h[key] for h in r["history"]] for r in stat.rows]))
    means = [statistics.fmean(v) for v in per_epoch]
    stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in per_epoch]
    return epochs, means, stds


def plot_training_curves(groups: list[Group], path: Path) -> Path:
    """Test accuracy (top) and test loss (bottom) per epoch: best distilled vs baseline, per group."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, len(groups), figsize=(max(5.2 * len(groups), 8.0), 6.4), squeeze=False, sharex="col")
    for col, g in enumerate(groups):
        shown = [(s, c) for s, c in ((g.baseline, "0.3"), (g.best, "tab:orange")) if s is not None]
        split = "val" if shown and all("val_accuracy" in r["history"][0] for s, _ in shown for r in s.rows) else "test"
        name = "validation" if split == "val" else "test"
        for row, (key, ylabel) in enumerate(((f"{split}_accuracy", f"{name} accuracy (%)"),
                                             (f"{split}_loss", f"{name} loss (cross-entropy, nats)"))):
            ax = axes[row][col]
            for stat, color in shown:
                epochs, means, stds = _curve(stat, key)
                name = stat.label if stat is g.baseline else f"best distilled: {stat.label}"
                ax.plot(epochs, means, marker="o", ms=3, color=color, label=f"{name} ({len(stat.rows)} seeds)")
                ax.fill_between(epochs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                                color=color, alpha=0.15, lw=0)
            ax.set_ylabel(ylabel)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if row == 0:
                ax.set_title(_group_title(g))
                ax.legend(fontsize=8, frameon=False)
            else:
                ax.set_xlabel("epoch")
    fig.suptitle("Best distilled configuration vs labels-only baseline (mean ± std over seeds)", fontsize=11)
    fig.tight_layout()
    _save(plt, fig, path)
    return path


def format_markdown(results: dict[str, Any], groups: list[Group]) -> str:
    """The report's text: the settings, a summary table, and every configuration."""
    teacher = results.get("teacher") or {}
    t_acc = teacher.get("test_accuracy")
    st = results["settings"]
    train = st["train"]
    seeds = sorted({r["seed"] for r in results["rows"]})
    lines = [
        f"# Sweep report: {results.get('cache', '')}", "",
        f"Student `{st['arch']}` trained from the cache only, {train['optimizer']} + {train['schedule']}, "
        f"peak lr {train['lr']:g}, batch {train['batch_size']}, weight decay {train['weight_decay']:g}, "
        f"seeds {', '.join(map(str, seeds))}; {len(results['rows'])} runs. Test accuracy on "
        f"{results['rows'][0]['eval_samples'] if results['rows'] else '-'} test samples. "
        f"Teacher `{teacher.get('arch', '?')}`: {_pct(t_acc)} (recorded in the cache).", "",
        "Spread = standard deviation over seeds. Gap closed = (best − baseline) / (teacher − baseline). "
        + ("The best configuration is picked by mean accuracy on the validation split (held out from the "
           "training images); its test accuracy is reported." if all(g.picked_on == "validation" for g in groups)
           else "The best configuration is picked by mean test accuracy (no validation split), so it is "
                "slightly optimistic."), "",
    ]
    transfer = any(g.unlabelled for g in groups)  # the unlabelled column only where some run had unlabelled rows
    lines += [f"| condition | labelled samples |{' unlabelled samples |' if transfer else ''} epochs | teacher | "
              "baseline (alpha 0) | best distilled | config | picked on | gain | gap closed |",
              f"|---|---:|{'---:|' if transfer else ''}---:|---:|---:|---:|---|---|---:|---:|"]
    for g in groups:
        b, best = g.baseline, g.best
        gain = gap = None
        if b is not None and best is not None:
            gain, gap = best.mean - b.mean, gap_closed(b.mean, best.mean, t_acc)
        unlabelled = f" {g.unlabelled:,} |" if transfer else ""
        lines.append(f"| {g.condition or '-'} | {g.num_labelled:,} |{unlabelled} {g.epochs} | {_pct(t_acc)} | "
                     f"{_pct(b.mean, b.spread) + (f' ({g.baseline_of})' if g.baseline_of else '') if b else '-'} | "
                     f"{_pct(best.mean, best.spread) if best else '-'} | "
                     f"{best.label if best else '-'} | {g.picked_on if best else '-'} | "
                     f"{'-' if gain is None else f'{100 * gain:+.2f} pp'} | {'-' if gap is None else f'{100 * gap:.0f}%'} |")
    lines += ["", f"![test accuracy vs T]({ACCURACY_FIGURE})", "", f"![training curves]({CURVES_FIGURE})", ""]
    for g in groups:
        lines += [f"## {_group_title(g)}", ""]
        if g.baseline_of:
            lines += [f"Baseline (alpha 0): the {g.baseline_of} runs, on the {g.num_labelled:,} labelled samples "
                      "alone.", ""]
        lines += ["| alpha | T | seeds | validation accuracy | test accuracy | vs baseline |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for s in ([g.baseline] if g.baseline else []) + g.configs:
            delta = "-" if g.baseline is None or s is g.baseline else f"{100 * (s.mean - g.baseline.mean):+.2f} pp"
            t = "-" if s.temperature is None else f"{s.temperature:g}"
            val = s.val_values
            val_text = "-" if val is None else _pct(statistics.fmean(val), statistics.stdev(val) if len(val) > 1 else None)
            lines.append(f"| {s.alpha:g} | {t} | {s.seeds_text()} | {val_text} | {_pct(s.mean, s.spread)} | {delta} |")
        lines.append("")
    failed = [r for r in results["rows"] if r.get("test_accuracy") is None]
    if failed:
        lines += ["## Runs that diverged", ""] + [f"- `{r['key']}`: {r.get('error', '?')}" for r in failed] + [""]
    return "\n".join(lines)


def write_report(out_dir: str | os.PathLike) -> dict[str, str]:
    """Write report.md and the two figures into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    results = load_results(out)
    if not results["rows"]:
        raise ConfigError(f"{out / 'results.json'} has no finished runs yet; nothing to report")
    groups = summarize(results["rows"])
    t_acc = (results.get("teacher") or {}).get("test_accuracy")
    paths = {"accuracy_figure": plot_accuracy_vs_temperature(groups, t_acc, out / ACCURACY_FIGURE),
             "curves_figure": plot_training_curves(groups, out / CURVES_FIGURE),
             "markdown": write_text_atomic(out / REPORT_MD, format_markdown(results, groups))}
    return {k: str(v) for k, v in paths.items()}
