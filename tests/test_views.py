"""Stored augmentation views end to end: dump, layout, replay in both batch sources, refusals, verify, and the
single-view path unchanged."""
import json
import math
import shutil
from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch
from conftest import assert_error, cache_attrs, make_image_data, run_cli

from benchmarks import train_batches as memory_batches
from kdcache.cache import VIEWS_SCHEMA_VERSION, open_cache, write_cache
from kdcache.cache.streamed_targets import StreamedTargets
from kdcache.cache.targets import TopK, as_tensors
from kdcache.config import DataConfig, DistillConfig, RunOptions, TrainConfig, ViewConfig
from kdcache.data.augment import ShiftFlip, view_record
from kdcache.data.datasets import load_dataset
from kdcache.data.samples import Batch, ImageData, normalize, standardize, to_unit
from kdcache.data.view_schedule import sample_views, view_schedule
from kdcache.data.views import student_views
from kdcache.jobs.student_targets import distillation_loss
from kdcache.jobs.training import train_student, train_teacher
from kdcache.jobs.verify import verify_cache
from kdcache.train.checkpoint import read_checkpoint
from kdcache.train.loop import fit
from kdcache.train.models import build_model

N, V = 64, 3


@pytest.fixture(scope="module")
def fmnist(data_dir):
    return load_dataset("fashion-mnist", "train", data_dir, limit=N)


def dump_views(out, teacher, data_dir, *extra):
    run_cli("dump-logits", "--teacher", teacher, "--out", out, "--limit", N, "--data-dir", data_dir, "--views", V,
            "--augment", "shift-flip", "--include-original", "-q", *extra)
    return out


@pytest.fixture(scope="module")
def views_cache(tmp_path_factory, teacher_ckpt, data_dir):
    return dump_views(tmp_path_factory.mktemp("views") / "v.h5", teacher_ckpt, data_dir, "--batch-size", 16)


@pytest.fixture(scope="module")
def plain_cache(tmp_path_factory, teacher_ckpt, data_dir):
    out = tmp_path_factory.mktemp("plain") / "p.h5"
    run_cli("dump-logits", "--teacher", teacher_ckpt, "--out", out, "--limit", N, "--data-dir", data_dir, "-q")
    return out


def fp32_close(got: torch.Tensor, ref: torch.Tensor) -> None:
    """verify's float32 rule: |diff| <= 5e-3 x max(1, max |z|) per row."""
    tol = 5e-3 * ref.abs().amax(-1).clamp_min(1.0)
    assert ((got - ref).abs().amax(-1) <= tol).all(), float((got - ref).abs().max())


# ------------------------------------------------------------------------------------ the file


def test_layout_and_attributes_match_the_format_document(views_cache, fmnist):
    with h5py.File(views_cache, "r") as f:
        assert f["logits"].shape == (N, V, 10) and f["view_params"].shape == (N, V, 3)
        assert f["view_params"].dtype == np.float32 and f.attrs["schema_version"] == VIEWS_SCHEMA_VERSION
        assert f.attrs["num_views"] == V and f.attrs["view_policy"] == "shift-flip"
        record = json.loads(f.attrs["view_policy_json"])
        params = f["view_params"][:]
    assert record == {"name": "shift-flip", "version": 1, "settings": {"pad": 2, "flip": 0.5},
                      "param_names": ["dy", "dx", "flip"], "include_original": True, "seed": 0}
    # the documented rule: a pure function of (seed, view, dataset index); view 0 the identity
    expected = sample_views(ShiftFlip(), fmnist.indices.numpy(), V, 0, (28, 28), include_original=True)
    assert np.array_equal(params, expected) and (params[:, 0] == 0).all()
    info = run_cli("info", views_cache).output
    assert "3 per sample, policy shift-flip v1" in info and "view 0 un-augmented" in info


def test_the_format_document_lists_every_policy_and_its_parameters():
    from pathlib import Path

    from kdcache.data.augment import POLICIES
    from kdcache.data.view_schedule import VIEW_BLOCK

    doc = (Path(__file__).resolve().parents[1] / "docs" / "cache-format.md").read_text()
    for name, cls in POLICIES.items():
        row = next(line for line in doc.splitlines() if line.startswith(f"| `{name}` |"))
        assert f"| {cls.VERSION} |" in row and all(f"`{p}`" in row for p in cls.PARAM_NAMES), row
    assert f"i // {VIEW_BLOCK}" in doc and "0x6B647631" in doc


def test_views_do_not_depend_on_the_batch_size(tmp_path, views_cache, teacher_ckpt, data_dir):
    other = dump_views(tmp_path / "b.h5", teacher_ckpt, data_dir, "--batch-size", 64)
    with open_cache(views_cache) as a, open_cache(other) as b:
        assert np.array_equal(a.read_view_params(), b.read_view_params())
        np.testing.assert_allclose(a.read(), b.read(), rtol=0, atol=1e-4)


def test_dump_refusals(tmp_path, teacher_ckpt, data_dir):
    base = ("dump-logits", "--teacher", teacher_ckpt, "--out", tmp_path / "x.h5", "--limit", 8, "--data-dir", data_dir)
    assert_error(run_cli(*base, "--views", 4, ok=False), "--views 4", "--augment")
    assert_error(run_cli(*base, "--include-original", ok=False), "add --augment")
    assert_error(run_cli(*base, "--views", 2, "--augment", "warp", ok=False), "choose one of: crop-flip, shift-flip")
    assert not (tmp_path / "x.h5").exists()


# ------------------------------------------------------------------------------------- replay


def replay_sources(cache_path, data, batch_size=16, seed=0, cache_views=None):
    """The two batch sources train_student builds for a cache with views."""
    with open_cache(cache_path) as c:
        rows = c.align(data.indices.numpy(), labels=data.labels.numpy(), sample_ids=data.sample_ids, info=data.info)
        plan, record = student_views([c], [rows], data, augment=None, alpha=0.5, cache_views=cache_views, seed=seed)
        targets = as_tensors(c.read(rows))
    memory = memory_batches(data, batch_size, seed=seed, targets=targets, views=plan)
    stream = memory_batches(data, batch_size, seed=seed, targets=StreamedTargets([(cache_path, rows)]), views=plan)
    return memory, stream, record


def test_replay_is_exact_the_teacher_on_each_batch_gives_its_targets(views_cache, teacher_ckpt, fmnist):
    from kdcache.train.checkpoint import load_checkpoint

    teacher, _ = load_checkpoint(teacher_ckpt)
    memory, stream, record = replay_sources(views_cache, fmnist)
    assert record["mode"] == "replay" and record["views"] == V
    with stream, torch.inference_mode():
        for source in (memory, stream):
            for _ in range(2):  # two epochs: other views
                for batch in source:
                    assert batch.teacher_logits.shape == (len(batch.labels), 10)
                    fp32_close(teacher.eval()(batch.images), batch.teacher_logits)


def marked_view_cache(path, data, views=V, topk=0):
    """A cache whose logits say which (row, view) they belong to: z[i, v] = [100 + i, 50 + v, noise...]."""
    z = np.random.default_rng(0).normal(size=(len(data), views, 10)).astype(np.float32)
    z[:, :, 0] = np.arange(len(data))[:, None] + 100
    z[:, :, 1] = np.arange(views)[None, :] + 50
    policy = ShiftFlip()
    params = sample_views(policy, data.indices.numpy(), views, 1, (28, 28))
    write_cache(path, z, data.labels, data.indices, data.sample_ids, cache_attrs(data.info), topk=topk,
                num_views=views, view_policy=view_record(policy, include_original=False, seed=1), view_params=params,
                chunk_rows=10)
    return path, params


@pytest.mark.parametrize("source", ["memory", "stream"])
def test_each_epoch_every_image_shows_one_stored_view_with_that_views_targets(tmp_path, source):
    data = make_image_data(n=50)
    path, params = marked_view_cache(tmp_path / "m.h5", data)
    memory, stream, _ = replay_sources(path, data, batch_size=8, seed=3)
    batches = memory if source == "memory" else stream
    seen = np.zeros((50, V), dtype=int)
    with stream:
        for epoch in range(2 * V):
            batches.set_epoch(epoch)  # as train.fit does before every epoch
            for batch in batches:
                row = (batch.teacher_logits[:, 0] - 100).round().long()
                view = (batch.teacher_logits[:, 1] - 50).round().long()
                assert torch.equal(view, torch.from_numpy(view_schedule(epoch, 50, V, 3))[row])  # the schedule's view
                p = torch.from_numpy(params[row.numpy(), view.numpy()])
                want = standardize(ShiftFlip().apply(to_unit(data.images[row]), p), data.info.mean, data.info.std)
                assert torch.equal(batch.images, want)  # exactly the stored view's image
                seen[row.numpy(), view.numpy()] += 1
    assert (seen == 2).all()  # each view once per V epochs


def test_cache_views_uses_only_the_first_k(tmp_path):
    data = make_image_data(n=40)
    path, _ = marked_view_cache(tmp_path / "m.h5", data)
    memory, stream, record = replay_sources(path, data, batch_size=8, cache_views=2)
    assert record["views"] == 2 and record["stored_views"] == V
    memory.dataset.targets = memory.dataset.targets[:, :2]  # what train_student keeps in memory
    with stream:
        for source in (memory, stream):
            views = torch.cat([(b.teacher_logits[:, 1] - 50).round() for _ in range(4) for b in source])
            assert set(views.long().tolist()) == {0, 1}


def test_top_k_views_serve_the_chosen_views_top_k(tmp_path):
    data = make_image_data(n=30)
    path, _ = marked_view_cache(tmp_path / "k.h5", data, topk=3)
    memory, stream, _ = replay_sources(path, data, batch_size=7)
    with open_cache(path) as c:
        stored = as_tensors(c.read())  # TopK (30, V, 3)
    with stream:
        for source in (memory, stream):
            for epoch in range(V):
                source.set_epoch(epoch)
                for batch in source:
                    t = batch.teacher_logits
                    assert isinstance(t, TopK) and t.logits.shape == (len(batch.labels), 3)
                    assert (t.classes[:, :2] == torch.tensor([0, 1])).all()  # the row and view markers lead
                    row, view = (t.logits[:, 0] - 100).round().long(), (t.logits[:, 1] - 50).round().long()
                    assert torch.equal(view, torch.from_numpy(view_schedule(epoch, 30, V, 0))[row])
                    want = stored[(row, view)]
                    for field in ("logits", "classes", "tail_logsumexp", "tail_mean"):
                        assert torch.equal(getattr(t, field), getattr(want, field).to(getattr(t, field).dtype))


# ----------------------------------------------------------------------------------- refusals


def test_a_single_view_cache_with_augmentation_is_refused_unless_asked_for(plain_cache, data_dir, tmp_path):
    common = ("train-student", "--cache", plain_cache, "--limit", N, "--data-dir", data_dir, "--epochs", 1,
              "--eval-limit", 50, "--augment", "shift-flip", "-q")
    args = (*common, "--out", tmp_path / "s.pt")
    assert_error(run_cli(*args, ok=False), "holds one view per image", "inconsistent", "--views K --augment shift-flip",
                 "--allow-inconsistent")
    assert not (tmp_path / "s.pt").exists()
    run_cli(*args, "--allow-inconsistent")
    assert read_checkpoint(tmp_path / "s.pt")["config"]["augment"]["mode"] == "inconsistent"
    run_cli(*common, "--alpha", 0, "--out", tmp_path / "ce.pt")  # labels only: nothing inconsistent
    assert read_checkpoint(tmp_path / "ce.pt")["config"]["augment"]["mode"] == "fresh"


def test_other_view_refusals(views_cache, plain_cache, data_dir, tmp_path):
    base = ("train-student", "--limit", N, "--data-dir", data_dir, "--epochs", 1, "--out", tmp_path / "s.pt")
    assert_error(run_cli(*base, "--cache", views_cache, "--augment", "crop-flip", ok=False),
                 "differs from the views stored in", "drop --augment")
    assert_error(run_cli(*base, "--cache", views_cache, "--cache-views", 4, ok=False), "stores 3 views", "use 1..3")
    assert_error(run_cli(*base, "--cache", plain_cache, "--cache-views", 2, ok=False), "no --cache stores views")
    with h5py.File(shutil.copy(views_cache, tmp_path / "bad.h5"), "r+") as f:
        f["view_params"][0, 1, 0] = 9  # a shift of 9 pixels: not a pad-2 view
    assert_error(run_cli(*base, "--cache", tmp_path / "bad.h5", ok=False), "cannot be views of 28x28 images",
                 "re-dump it")


# ------------------------------------------------------------------------------------- verify


def test_a_tampered_view_parameter_fails_verify_teacher(views_cache, teacher_ckpt, data_dir, tmp_path):
    from kdcache.train.teacher import TeacherSpec

    spec = TeacherSpec(checkpoint=str(teacher_ckpt))
    ok = verify_cache(views_cache, data_dir=str(data_dir), teacher=spec, sample=N)
    assert ok.ok and [c.name for c in ok.checks][-2:] == ["views", "teacher"]
    bad = shutil.copy(views_cache, tmp_path / "t.h5")
    with h5py.File(bad, "r+") as f:
        p = f["view_params"][5, 2]
        f["view_params"][5, 2] = [p[0], p[1], 1 - p[2]]  # the other flip: still a valid view, but not the one stored
    r = verify_cache(bad, data_dir=str(data_dir), teacher=spec, sample=N)
    failed = {c.name: c.message for c in r.failures}
    assert set(failed) == {"content", "teacher"}
    assert "worst: row 5 view 2" in failed["teacher"] and "view parameters were changed" in failed["teacher"]
    result = run_cli("verify", bad, "--data-dir", data_dir, "--teacher", teacher_ckpt, "--sample", N, ok=False)
    assert result.exit_code == 1 and "Error: teacher:" in result.output


def test_verify_refuses_parameters_that_are_no_view(views_cache, teacher_ckpt, data_dir, tmp_path):
    from kdcache.train.teacher import TeacherSpec

    bad = shutil.copy(views_cache, tmp_path / "o.h5")
    with h5py.File(bad, "r+") as f:
        f["view_params"][3, 1, 2] = 0.5
    r = verify_cache(bad, data_dir=str(data_dir), teacher=TeacherSpec(checkpoint=str(teacher_ckpt)))
    status = {c.name: c.status for c in r.checks}
    assert status["views"] == "fail" and status["teacher"] == "skip"


# ------------------------------------------------------------------------- training with views


def test_students_and_teachers_record_their_augmentation(views_cache, data_dir, tmp_path):
    data_cfg = DataConfig(data_dir=str(data_dir), limit=N, eval_limit=50)
    cfg = TrainConfig(epochs=2, batch_size=16, device="cpu")
    r = train_student(tmp_path / "s.pt", data_cfg=data_cfg, cfg=cfg, distill=DistillConfig(caches=[views_cache]), views=ViewConfig(cache_views=2), model="student-convpool")
    aug = r["config"]["augment"]
    assert aug["mode"] == "replay" and aug["views"] == 2 and aug["stored_views"] == V and "once per K" in aug["schedule"]
    assert r["config"]["request"]["augment"] == aug
    t = train_teacher(tmp_path / "t.pt", data_cfg=data_cfg, cfg=replace(cfg, epochs=1, precision="fp32"), views=ViewConfig(augment="shift-flip:pad=3"), model="student-cnn")
    assert t["config"]["request"]["augment"]["settings"] == {"pad": 3, "flip": 0.5}
    again = train_teacher(tmp_path / "t.pt", data_cfg=data_cfg, cfg=replace(cfg, epochs=1, precision="fp32"), views=ViewConfig(augment="shift-flip:pad=3"), run=RunOptions(reuse=True), model="student-cnn")
    assert again["reused"]
    plain = train_teacher(tmp_path / "t.pt", data_cfg=data_cfg, cfg=replace(cfg, epochs=1, precision="fp32"), run=RunOptions(reuse=True), model="student-cnn")
    assert not plain["reused"] and "augment" not in plain["config"]["request"]  # old requests keep matching


class MainMemoryBatches:
    """main's MemoryBatches before views (6180baa), copied verbatim: the reference for the single-view path."""

    def __init__(self, data: ImageData, batch_size, *, shuffle=True, seed=0, teacher_logits=None):
        self.images, self.labels = data.images, data.labels
        self.teacher_logits = None if teacher_logits is None else teacher_logits.float()
        self.mean, self.std = data.info.mean, data.info.std
        self.batch_size, self.shuffle = batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self):
        return math.ceil(len(self.labels) / self.batch_size)

    def set_epoch(self, epoch):
        pass  # it drew the next permutation on each pass; MemoryBatches serves epoch e as the e-th of those

    def __iter__(self):
        n = len(self.labels)  # (batch_order, inlined)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for idx in order.split(self.batch_size):
            x = normalize(self.images[idx], self.mean, self.std).contiguous()
            t = None if self.teacher_logits is None else self.teacher_logits[idx]
            yield Batch(x, self.labels[idx], t)


def test_single_view_caches_train_bit_for_bit_as_before(plain_cache, fmnist):
    with open_cache(plain_cache) as c:
        logits = torch.from_numpy(c.read(c.align(fmnist.indices.numpy())))
    cfg = TrainConfig(epochs=2, batch_size=16, device="cpu")
    histories = []
    for source in (MainMemoryBatches(fmnist, 16, seed=4, teacher_logits=logits),
                   memory_batches(fmnist, 16, seed=4, targets=logits)):
        torch.manual_seed(0)
        model = build_model("student-cnn")
        histories.append([(h["train_loss"], h["train_accuracy"]) for h in fit(model, source, distillation_loss(4, 0.5),
                                                                               cfg)])
        histories.append([p.detach().clone() for p in model.parameters()])
    assert histories[0] == histories[2]  # the same losses, exactly
    assert all(torch.equal(a, b) for a, b in zip(histories[1], histories[3]))  # and the same weights
