"""Configuration objects: frozen, validated when built (one line each), paths normalised, defaults in one place."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from kdcache.config import (
    CacheIO,
    DataConfig,
    DistillConfig,
    DumpConfig,
    PipelineConfig,
    RunOptions,
    TrainConfig,
    ViewConfig,
)
from kdcache.errors import ConfigError


def test_configs_are_frozen_and_replace_validates_again():
    d = DistillConfig(["a.h5"], temperature=2.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.temperature = 3.0  # type: ignore[misc]
    assert dataclasses.replace(d, temperature=8.0).temperature == 8.0
    with pytest.raises(ConfigError, match="temperature"):
        dataclasses.replace(d, temperature=0.0)


def test_paths_become_tuples_of_str_so_configs_compare_and_serialise_as_data():
    a = DistillConfig([Path("x/c.h5")], transfer=Path("t.h5"), transfer_data_dirs=["d"])
    b = DistillConfig(("x/c.h5",), transfer=("t.h5",), transfer_data_dirs=("d",))
    assert a == b and a.caches == ("x/c.h5",) and a.transfer == ("t.h5",)
    assert json.loads(json.dumps(dataclasses.asdict(a)))["caches"] == ["x/c.h5"]  # what checkpoints record


@pytest.mark.parametrize("build, needle", [
    (lambda: DistillConfig(["c.h5"], temperature=0), "temperature T must be a finite number > 0"),
    (lambda: DistillConfig(["c.h5"], temperature=float("nan")), "temperature T must be a finite number > 0"),
    (lambda: DistillConfig(["c.h5"], alpha=1.5), "alpha must be in [0, 1]"),
    (lambda: DistillConfig(alpha=0.5), "alpha > 0 distils from a teacher: name its cache"),
    (lambda: DistillConfig(["c.h5"], ensemble="median"), "unknown ensemble method 'median'"),
    (lambda: DistillConfig(["c.h5"], topk_rebuild="even"), "topk_rebuild must be one of spread, bucket"),
    (lambda: DistillConfig(alpha=0, labels_limit=-1), "--labels-limit must be >= 0"),
    (lambda: RunOptions(resume=True, overwrite=True), "--resume continues a run and --overwrite starts over"),
    (lambda: ViewConfig(views=0), "--views must be >= 1"),
    (lambda: ViewConfig(cache_views=0), "--cache-views must be >= 1"),
    (lambda: CacheIO(workers=-1), "--cache-workers must be >= 0"),
    (lambda: DumpConfig(precision="fp8"), "unknown precision 'fp8'"),
    (lambda: DumpConfig(dtype="int8"), "unknown --dtype 'int8'"),
    (lambda: DumpConfig(topk=0), "--top-k 0: keep at least 1 logit"),
    (lambda: DataConfig(limit=0), "--limit must be a positive number of samples"),
    (lambda: DataConfig(eval_limit=-5), "--eval-limit must be a positive number of samples"),
    (lambda: TrainConfig(epochs=2.5), "epochs and batch size must be whole numbers"),
    (lambda: TrainConfig(optimizer="lbfgs"), "unknown optimizer 'lbfgs'"),
    (lambda: PipelineConfig(teacher_epochs=0), "epochs must be >= 1"),
    (lambda: PipelineConfig(limit=300, scarce_labels=300), "--scarce-labels 300 must be below the training samples"),
])
def test_bad_values_are_refused_when_the_config_is_built(build, needle):
    with pytest.raises(ConfigError) as e:
        build()
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_labels_only_needs_no_cache_and_defaults_are_the_documented_ones():
    assert DistillConfig(alpha=0).caches == ()
    d = DistillConfig(["c.h5"])
    assert (d.temperature, d.alpha, d.ensemble, d.topk_rebuild) == (4.0, 0.5, "mean-probs", "spread")
    assert DataConfig().dataset is None  # the job's source decides (cache, checkpoint, teacher), else fashion-mnist
    assert (RunOptions().overwrite, RunOptions().reuse, RunOptions().resume) == (False, False, False)


def test_the_cli_fills_configs_from_flags_named_after_fields():
    from kdcache.cli.options import config_from

    kw = {"caches": ("c.h5",), "temperature": 2.0, "alpha": 0.9, "cache_memory_limit_mb": 10.0, "cache_workers": 2,
          "other": 1}
    distill = config_from(DistillConfig, kw)
    io = config_from(CacheIO, kw, memory_limit_mb="cache_memory_limit_mb", workers="cache_workers")
    assert distill == DistillConfig(("c.h5",), 2.0, 0.9) and io == CacheIO(10.0, 2)
    assert kw == {"other": 1}  # each flag taken once; what is not a field stays for the command
