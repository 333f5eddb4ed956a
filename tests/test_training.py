"""The jobs: a validation split set aside for choosing configurations, and reuse only by the same request."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from kdcache.config import CacheIO, DataConfig, DistillConfig, DumpConfig, RunOptions, TrainConfig
from kdcache.jobs.training import find_reusable, train_student
from kdcache.train.models import ModelSpec


@pytest.fixture
def data_cfg(data_dir):
    return DataConfig(data_dir=str(data_dir), limit=256, eval_limit=200, val_size=300)


def test_validation_split_is_evaluated_every_epoch_and_recorded(tmp_path, data_cfg):
    r = train_student(tmp_path / "s.pt", data_cfg=data_cfg, cfg=TrainConfig(epochs=2, device="cpu"), distill=DistillConfig(alpha=0.0))
    assert [set(h) >= {"val_accuracy", "val_loss"} for h in r["history"]] == [True, True]
    assert r["val"]["num_samples"] == 300 and r["test"]["num_samples"] == 200
    assert r["config"]["val_accuracy"] == r["val"]["accuracy"] and r["config"]["val_size"] == 300
    assert r["history"][-1]["val_accuracy"] == pytest.approx(r["val"]["accuracy"])


def test_reuse_only_for_the_same_request(tmp_path, data_cfg):
    cfg = TrainConfig(epochs=1, device="cpu")
    first = train_student(tmp_path / "s.pt", data_cfg=data_cfg, cfg=cfg, distill=DistillConfig(alpha=0.0))
    again = train_student(tmp_path / "s.pt", data_cfg=data_cfg, cfg=cfg, distill=DistillConfig(alpha=0.0), run=RunOptions(reuse=True))
    assert again["reused"] and again["test"] == first["test"]
    other = train_student(tmp_path / "s.pt", data_cfg=data_cfg, cfg=TrainConfig(epochs=1, seed=1,
                                                                                           device="cpu"), distill=DistillConfig(alpha=0.0), run=RunOptions(reuse=True))
    assert not other["reused"]  # another seed: trained again, and the file now holds that run
    assert find_reusable(tmp_path / "s.pt", other["config"]["request"]) is not None
    assert find_reusable(tmp_path / "s.pt", first["config"]["request"]) is None


@pytest.mark.parametrize("streamed", [False, True])
def test_topk_cache_with_every_class_trains_the_same_student_as_full_logits(tmp_path, data_dir, streamed):
    """K = C through the real data path (cache file, alignment, batches, loss): the same losses and weights."""
    import numpy as np
    import torch
    from conftest import cache_attrs

    from kdcache.cache import write_cache
    from kdcache.data.datasets import load_dataset

    fm = load_dataset("fashion-mnist", "train", data_dir, limit=300)
    logits = np.random.default_rng(0).normal(0, 4, (300, 10)).astype(np.float32)
    paths = {}
    for name, k in (("full", 0), ("topk", 10)):
        paths[name] = write_cache(tmp_path / f"{name}.h5", logits, fm.labels, fm.indices, fm.sample_ids,
                                  cache_attrs(fm.info), topk=k, chunk_rows=64)
    kw = dict(data_cfg=DataConfig(data_dir=str(data_dir), limit=256, eval_limit=100),
              cfg=TrainConfig(epochs=2, batch_size=64, device="cpu"), io=CacheIO(memory_limit_mb=0 if streamed else 2048))
    runs = {name: train_student(tmp_path / f"{name}.pt", DistillConfig([p], temperature=4.0, alpha=0.7), **kw)
            for name, p in paths.items()}
    assert runs["topk"]["config"]["cache_streamed"] == streamed
    assert [h["train_loss"] for h in runs["topk"]["history"]] == \
        pytest.approx([h["train_loss"] for h in runs["full"]["history"]], rel=1e-5)
    full, top = (torch.load(tmp_path / f"{n}.pt", weights_only=True)["state_dict"] for n in ("full", "topk"))
    for name in full:
        torch.testing.assert_close(top[name], full[name], rtol=1e-4, atol=1e-6)


def test_topk_rebuild_is_part_of_a_topk_students_request(tmp_path, data_dir):
    """Students from a top-k cache trained with another rebuild are other runs: never reused for each other."""
    import numpy as np
    from conftest import cache_attrs

    from kdcache.cache import write_cache
    from kdcache.data.datasets import load_dataset
    from kdcache.errors import ConfigError

    fm = load_dataset("fashion-mnist", "train", data_dir, limit=128)
    logits = np.random.default_rng(0).normal(0, 4, (128, 10)).astype(np.float32)
    path = write_cache(tmp_path / "top3.h5", logits, fm.labels, fm.indices, fm.sample_ids, cache_attrs(fm.info),
                       topk=3, chunk_rows=64)
    kw = dict(run=RunOptions(reuse=True), data_cfg=DataConfig(data_dir=str(data_dir), limit=128, eval_limit=64),
              cfg=TrainConfig(epochs=1, batch_size=64, device="cpu"))
    distill = DistillConfig([path], temperature=2.0, alpha=0.9)
    spread = train_student(tmp_path / "s.pt", replace(distill, topk_rebuild="spread"), **kw)
    assert spread["config"]["request"]["topk_rebuild"] == "spread" and spread["config"]["topk_rebuild"] == "spread"
    bucket = train_student(tmp_path / "s.pt", replace(distill, topk_rebuild="bucket"), **kw)
    assert not bucket["reused"] and bucket["config"]["request"]["topk_rebuild"] == "bucket"
    assert bucket["history"][0]["train_loss"] != spread["history"][0]["train_loss"]
    with pytest.raises(ConfigError, match="topk_rebuild"):
        train_student(tmp_path / "x.pt", replace(distill, topk_rebuild="even"), **kw)


STUDENTS = """
from torch import nn

def build(num_classes, in_channels, width=4):
    return nn.Sequential(nn.Conv2d(in_channels, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(4 * width, num_classes))


def build_bn(num_classes, in_channels, width=4):  # torchvision-like: BatchNorm after the conv
    return nn.Sequential(nn.Conv2d(in_channels, width, 3), nn.BatchNorm2d(width), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(4 * width, num_classes))
"""


@pytest.fixture
def own_student(tmp_path, monkeypatch, data_dir):
    """A module with a student factory in the current folder, and a cache of the first 256 training samples."""
    import sys

    import numpy as np
    from conftest import cache_attrs

    from kdcache.cache import write_cache
    from kdcache.data.datasets import load_dataset

    (tmp_path / "my_students.py").write_text(STUDENTS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "my_students", raising=False)
    d = load_dataset("fashion-mnist", "train", data_dir, limit=256)
    logits = np.random.default_rng(0).normal(0, 3, (256, 10)).astype(np.float32)
    return write_cache(tmp_path / "c.h5", logits, d.labels, d.indices, d.sample_ids, cache_attrs(d.info))


def test_own_student_trains_saves_and_evaluates_only_when_named_again(own_student, tmp_path, data_dir):
    from conftest import assert_error, run_cli

    common = ["--data-dir", data_dir, "--limit", 256, "--eval-limit", 100, "--epochs", 1, "-q"]
    run_cli("train-student", "--cache", own_student, "--student-factory", "my_students:build",
            "--student-kwargs", '{"width": 6}', "--out", tmp_path / "s.pt", *common)
    config = json.loads((tmp_path / "s.metrics.json").read_text())["config"]
    assert config["arch"] == "factory:my_students:build" and config["factory_kwargs"] == {"width": 6}
    assert config["request"]["factory_kwargs"] == {"width": 6}

    evaluate = ["evaluate", "--model", tmp_path / "s.pt", "--data-dir", data_dir, "--limit", 100]
    assert_error(run_cli(*evaluate, ok=False), "made by calling my_students:build",
                 "pass --student-factory my_students:build")
    assert_error(run_cli(*evaluate, "--student-factory", "os:system", ok=False), "made by my_students:build, not by os:system")
    metrics = json.loads(run_cli(*evaluate, "--student-factory", "my_students:build", "--json").output)
    assert metrics["accuracy"] == config["test_accuracy"] and metrics["arch"] == "factory:my_students:build"
    # used as a teacher, the checkpoint is refused the same way (no code runs for dump-logits either)
    assert_error(run_cli("dump-logits", "--teacher", tmp_path / "s.pt", "--data-dir", data_dir, "--limit", 10,
                         "--out", tmp_path / "t.h5", ok=False), "kdcache imports and calls code only when you name it")

    assert_error(run_cli("train-student", "--cache", own_student, "--student-factory", "my_students:build",
                         "--student-kwargs", "width=6", "--out", tmp_path / "x.pt", *common, ok=False), "is not JSON")
    assert_error(run_cli("train-student", "--cache", own_student, "--student-factory", "my_students:build",
                         "--arch", "teacher-cnn", "--out", tmp_path / "x.pt", *common, ok=False), "name the student once")
    assert not (tmp_path / "x.pt").exists()


def test_own_student_in_the_library_and_in_sweeps(own_student, tmp_path, data_dir):
    from kdcache.experiments.sweep import RunSpec, run_sweep

    data_cfg = DataConfig(data_dir=str(data_dir), limit=256, eval_limit=100)
    cfg = TrainConfig(epochs=1, device="cpu")
    kw = dict(data_cfg=data_cfg, cfg=cfg)
    distill = DistillConfig([own_student])
    first = train_student(tmp_path / "s.pt", distill, **kw, model=ModelSpec(factory="my_students:build", kwargs={"width": 4}))
    assert train_student(tmp_path / "s.pt", distill, **kw, run=RunOptions(reuse=True),
                         model=ModelSpec(factory="my_students:build", kwargs={"width": 4}))["reused"]
    wider = train_student(tmp_path / "s.pt", distill, **kw, run=RunOptions(reuse=True),
                          model=ModelSpec(factory="my_students:build", kwargs={"width": 8}))
    assert not wider["reused"] and wider["parameters"] > first["parameters"]  # other kwargs: trained again

    specs = [RunSpec.make(256, 4.0, 0.5, 0, 1, condition=f"width {w}", student_factory="my_students:build",
                          student_kwargs={"width": w}) for w in (2, 4)]
    r = run_sweep(tmp_path / "sweep", own_student, specs, data_cfg=data_cfg, cfg=cfg, report=False)
    assert r["ran"] == 2
    rows = json.loads((tmp_path / "sweep" / "results.json").read_text())["rows"]
    assert [row["options"]["student_kwargs"] for row in rows] == [{"width": 2}, {"width": 4}]


def test_a_streamed_run_is_the_in_memory_run_weight_for_weight(tmp_path, data_cfg):
    """One sampler over a cache, wherever its targets live: streaming them from the file trains the very same
    student, so it is the same request (and reuse may hand one for the other)."""
    from kdcache.data.datasets import load_dataset
    from kdcache.jobs.dump import dump_logits
    from kdcache.train.checkpoint import model_config, read_checkpoint, save_checkpoint
    from kdcache.train.models import build_model

    info = load_dataset("fashion-mnist", "train", data_cfg.data_dir, limit=1).info
    teacher = save_checkpoint(tmp_path / "t.pt", build_model("student-cnn"), model_config("student-cnn", info))
    dump_logits(teacher, tmp_path / "c.h5", dump=DumpConfig(device="cpu"), data_cfg=DataConfig(data_dir=data_cfg.data_dir, limit=256))
    kw = dict(data_cfg=data_cfg, cfg=TrainConfig(epochs=2, device="cpu"))
    distill = DistillConfig([tmp_path / "c.h5"])
    in_memory = train_student(tmp_path / "m.pt", distill, **kw)
    streamed = train_student(tmp_path / "s.pt", distill, **kw, io=CacheIO(memory_limit_mb=0))
    assert streamed["config"]["cache_streamed"] and not in_memory["config"]["cache_streamed"]
    assert streamed["config"]["request"] == in_memory["config"]["request"]
    assert in_memory["config"]["request"]["order"]["block_rows"] > 0
    assert [h["train_loss"] for h in streamed["history"]] == [h["train_loss"] for h in in_memory["history"]]
    a, b = read_checkpoint(tmp_path / "m.pt")["state_dict"], read_checkpoint(tmp_path / "s.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    again = train_student(tmp_path / "m.pt", distill, **kw, io=CacheIO(memory_limit_mb=0), run=RunOptions(reuse=True))
    assert again["reused"]


@pytest.mark.parametrize("native, expect", [(False, "fp32"), (True, "bf16")])
def test_auto_precision_is_recorded_resolved_never_auto(tmp_path, data_cfg, monkeypatch, native, expect):
    """Checkpoint, request and metrics say what ran, so auto on this machine reuses an explicit run of the same."""
    import torch

    from kdcache import device

    monkeypatch.setattr(device, "bf16_native", lambda d: native)
    r = train_student(tmp_path / "s.pt", data_cfg=data_cfg, cfg=TrainConfig(epochs=1, device="cpu", precision="auto"), distill=DistillConfig(alpha=0.0))
    stored = torch.load(tmp_path / "s.pt", weights_only=True)["config"]
    assert stored["train"]["precision"] == stored["request"]["train"]["precision"] == expect
    assert r["config"]["train"]["precision"] == expect
    assert json.loads((tmp_path / "s.metrics.json").read_text())["config"]["request"]["train"]["precision"] == expect
    same = train_student(tmp_path / "s.pt", data_cfg=data_cfg, cfg=TrainConfig(epochs=1, device="cpu", precision=expect), distill=DistillConfig(alpha=0.0), run=RunOptions(reuse=True))
    assert same["reused"] and same["test"] == r["test"]
    other = "bf16" if expect == "fp32" else "fp32"
    assert find_reusable(tmp_path / "s.pt", {**r["config"]["request"],
                                             "train": {**r["config"]["request"]["train"], "precision": other}}) is None


def test_teacher_default_precision_is_resolved_for_this_cpu(tmp_path, data_cfg):
    """TEACHER_TRAIN's auto, with the real detector: the checkpoint records what this CPU resolves it to."""
    from dataclasses import replace

    import torch

    from kdcache.config import TEACHER_TRAIN
    from kdcache.device import resolve_precision
    from kdcache.jobs.training import train_teacher

    assert TEACHER_TRAIN.precision == "auto"
    expect = resolve_precision("auto", torch.device("cpu"))
    assert expect in ("fp32", "bf16")
    train_teacher(tmp_path / "t.pt", data_cfg=data_cfg, cfg=replace(TEACHER_TRAIN, epochs=1, device="cpu"))
    stored = torch.load(tmp_path / "t.pt", weights_only=True)["config"]
    assert stored["train"]["precision"] == stored["request"]["train"]["precision"] == expect


def test_a_run_that_learned_nothing_or_got_worse_says_so():
    from conftest import make_image_data

    from kdcache.train.health import chance_warnings, loss_warnings

    test = make_image_data(n=100, classes=4)
    majority = float(test.labels.bincount().max()) / 100
    assert chance_warnings(majority + 0.2, test) == []
    (w,) = chance_warnings(majority, test)
    assert w.startswith(f"test accuracy {majority:.2%} is at chance (always answering the commonest class scores")
    assert loss_warnings([{"train_loss": 2.0}, {"train_loss": 0.5}]) == []
    (w,) = loss_warnings([{"train_loss": 1.44}, {"train_loss": 9.0}])
    assert w.startswith("the training loss rose from 1.44 (epoch 1) to 9 (epoch 2)") and "lower --lr" in w


def test_a_student_with_batchnorm_on_few_images_gets_smaller_batches_and_settled_statistics(tmp_path, monkeypatch,
                                                                                            data_dir):
    """256 images: a BatchNorm student gets the teacher's small-data batch (32: 8 steps an epoch, not 2) and its
    running statistics recomputed after each epoch; a student without BatchNorm keeps batch 128."""
    import sys

    (tmp_path / "my_students.py").write_text(STUDENTS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "my_students", raising=False)
    kw = dict(data_cfg=DataConfig(data_dir=str(data_dir), limit=256, eval_limit=100),
              cfg=TrainConfig(epochs=2, device="cpu"), distill=DistillConfig(alpha=0.0))
    bn = train_student(tmp_path / "bn.pt", model=ModelSpec(factory="my_students:build_bn"), **kw)
    assert bn["config"]["train"]["batch_size"] == bn["config"]["request"]["train"]["batch_size"] == 32
    state = torch.load(tmp_path / "bn.pt", weights_only=True)["state_dict"]
    assert int(state["1.num_batches_tracked"]) == 8  # one settling pass of 8 batches, not 2 epochs x 8 steps
    assert bn["resumed_from_epoch"] is None and bn["epochs_run"] == 2

    from kdcache.config import STUDENT_TRAIN
    from kdcache.jobs.training import resolve_train_config
    for batchnorm, batch in ((False, 128), (True, 32)):  # student-cnn (no BatchNorm) keeps its batch on any data
        assert resolve_train_config(TrainConfig(device="cpu"), STUDENT_TRAIN, False, 256, batchnorm).batch_size == batch
    assert resolve_train_config(TrainConfig(device="cpu"), STUDENT_TRAIN, False, 60_000, True).batch_size == 128
    # image files: a BatchNorm student keeps the role's rate (measured: benchmarks.small_folder), student-cnn 10x lower
    bn_files = resolve_train_config(TrainConfig(device="cpu"), STUDENT_TRAIN, True, 420, True)
    plain_files = resolve_train_config(TrainConfig(device="cpu"), STUDENT_TRAIN, True, 420, False)
    assert (bn_files.lr, bn_files.batch_size, plain_files.lr, plain_files.batch_size) == (0.02, 32, 0.002, 128)


def test_a_run_at_chance_that_learned_its_training_set_names_the_likely_cause():
    from conftest import make_image_data

    from kdcache.train.health import FitFacts, chance_warnings

    test = make_image_data(n=99, classes=3)
    majority = float(test.labels.bincount().max()) / 99
    stale = FitFacts(train_accuracy=0.8, steps_per_epoch=4, batch_size=128, batchnorm_updates=20)
    (w,) = chance_warnings(majority, test, stale)
    assert w.startswith(f"train 80% vs test {majority:.0%}: test accuracy {majority:.2%} is at chance")
    assert "BatchNorm running statistics that 20 updates left unsettled" in w and "4 steps per epoch at batch 128" in w
    assert "check the data" not in w and "--batch-size" in w
    (w,) = chance_warnings(majority, test, FitFacts(0.8, 4, 128))  # no BatchNorm
    assert "too few steps per epoch (4 steps per epoch at batch 128)" in w and "BatchNorm" not in w
    (w,) = chance_warnings(majority, test, FitFacts(majority + 0.05, 4, 128, 20))  # learned nothing at all
    assert "the model learned nothing; check the data and labels" in w
    assert chance_warnings(majority + 0.2, test, stale) == []


def test_default_learning_rates_are_stored_as_asked_not_as_float_products():
    from kdcache.config import STUDENT_TRAIN, TEACHER_TRAIN, default_lr
    from kdcache.jobs.training import resolve_train_config

    assert repr(default_lr(0.05, True)) == "0.005" and default_lr(0.05, False) == 0.05
    assert repr(resolve_train_config(TrainConfig(device="cpu"), TEACHER_TRAIN, True, 1000).lr) == "0.005"
    assert resolve_train_config(TrainConfig(device="cpu", lr=0.0123), STUDENT_TRAIN, True).lr == 0.0123
