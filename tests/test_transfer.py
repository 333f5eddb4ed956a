"""Transfer sets: unlabelled images dumped, verified and trained on, mixed with labelled rows in every batch.

The module's world: an (untrained) teacher, its cache of the first 300 Fashion-MNIST training
images, a folder of 40 PNGs without labels (nested, with files that are not images) and its
cache; a second teacher with caches of both, for ensembles.
"""
from __future__ import annotations

import json
import sys
import textwrap
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import assert_error, cache_attrs, make_image_data, run_cli
from PIL import Image

from kdcache.cache import open_cache, write_cache
from kdcache.cache.ensemble import combine_logits
from kdcache.config import STUDENT_TRAIN, CacheIO, DataConfig, DistillConfig, RunOptions
from kdcache.data.datasets import load_dataset
from kdcache.data.images import InputTransform, file_digest
from kdcache.data.samples import normalize
from kdcache.errors import DataError
from kdcache.identity import UNLABELLED, fingerprint_for, sample_ids_for
from kdcache.jobs.training import train_student
from kdcache.train.checkpoint import model_config, save_checkpoint
from kdcache.train.models import build_model

run = run_cli
LABELLED_ROWS = 300
FOLDER_IMAGES = 40


def make_unlabelled_folder(root, images):
    """PNGs in nested folders, in an order that sorting by relative path changes; plus files to skip."""
    for i, img in enumerate(images):
        d = root / ("b" if i % 2 else "a") / f"part{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0].numpy()).save(d / f"{FOLDER_IMAGES - i:03d}.png")
    (root / "a" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    Image.fromarray(images[0][0].numpy()).save(root / ".hidden" / "skip.png")
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory, data_dir):
    d = tmp_path_factory.mktemp("transfer")
    info = load_dataset("fashion-mnist", "train", data_dir, limit=1).info
    for name, seed in (("t1", 0), ("t2", 1)):  # untrained teachers: what they predict does not matter here
        torch.manual_seed(seed)
        save_checkpoint(d / f"{name}.pt", build_model("teacher-cnn", 1, 10, (28, 28)), model_config("teacher-cnn", info))
    tail = load_dataset("fashion-mnist", "train", data_dir).images[-FOLDER_IMAGES:]  # images no student here trains on
    folder = make_unlabelled_folder(d / "unl", tail)
    for name in ("t1", "t2"):
        run("dump-logits", "--teacher", d / f"{name}.pt", "--data-dir", data_dir, "--limit", LABELLED_ROWS,
            "--out", d / f"lab-{name}.h5", "-q")
        run("dump-logits", "--teacher", d / f"{name}.pt", "--dataset", "unlabelled", "--data-dir", folder,
            "--out", d / f"unl-{name}.h5", "-q")
    return SimpleNamespace(dir=d, folder=folder, data_dir=data_dir, lab=d / "lab-t1.h5", unl=d / "unl-t1.h5",
                           lab2=d / "lab-t2.h5", unl2=d / "unl-t2.h5")


def student(world, *args, limit=200, ok=True):
    return run("train-student", "--data-dir", world.data_dir, "--limit", limit, "--eval-limit", 100, "--epochs", 1,
               "--batch-size", 64, "--out", world.dir / "s.pt", "--overwrite", *args, ok=ok)


def checkpoint_config(path):
    return torch.load(path, weights_only=True)["config"]


# -- unlabelled data ---------------------------------------------------------------------------------


def test_unlabelled_folder_is_every_image_in_sorted_path_order(world, tmp_path):
    as_fmnist = InputTransform(28, crop_fraction=1.0, mode="L")  # how a Fashion-MNIST teacher reads files
    d = load_dataset("unlabelled", "train", world.folder, image_size=as_fmnist)
    assert len(d) == FOLDER_IMAGES and d.info.class_names == () and d.num_labelled == 0
    assert (d.labels == UNLABELLED).all() and d.info.image_size == (28, 28) and d.info.in_channels == 1
    rel = sorted(p.relative_to(world.folder).as_posix() for p in world.folder.rglob("*.png") if ".hidden" not in str(p))
    images = np.stack([np.asarray(Image.open(world.folder / r))[None] for r in rel])
    assert d.keys == tuple(rel)  # sorted by relative path, hidden and non-image files skipped
    assert np.array_equal(d.images[torch.arange(len(d))].numpy(), images)  # 28x28 files at 28: pixels unchanged
    digests = np.stack([np.frombuffer(file_digest(world.folder / r), np.uint8) for r in rel])
    minus = np.full(FOLDER_IMAGES, -1)
    assert np.array_equal(d.sample_ids, sample_ids_for(digests, minus, rel))  # path + the file's bytes + -1
    assert d.info.fingerprint == fingerprint_for(digests, minus, rel)
    with pytest.raises(DataError, match="one split, train"):
        load_dataset("unlabelled", "test", world.folder)
    with pytest.raises(DataError, match="not found; put the images anywhere under ROOT"):
        load_dataset("unlabelled", "train", world.dir / "no-such-folder")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("no images here")
    with pytest.raises(DataError, match="no images under"):
        load_dataset("unlabelled", "train", tmp_path / "texts")



def test_ignoring_labels_hides_them_from_ids_and_fingerprint(data_dir):
    full = load_dataset("fashion-mnist", "train", data_dir, limit=50)
    blind = load_dataset("fashion-mnist", "train", data_dir, limit=50, ignore_labels=True)
    assert (blind.labels == UNLABELLED).all() and torch.equal(blind.images, full.images)
    assert blind.info.class_names == () and full.info.class_names  # read unlabelled, it has no classes of its own
    assert np.array_equal(blind.sample_ids, sample_ids_for(full.images.numpy(), np.full(50, -1)))
    assert blind.info.fingerprint != full.info.fingerprint and not (blind.sample_ids == full.sample_ids).any()


# -- dump, info, verify ------------------------------------------------------------------------------


def test_unlabelled_cache_dumps_and_verifies_by_content_id(world, tmp_path):
    info = json.loads(run("info", world.unl, "--json").output)
    assert (info["num_labelled"], info["num_unlabelled"], info["teacher_label_agreement"]) == (0, FOLDER_IMAGES, None)
    assert info["dataset"] == "unlabelled" and info["class_names"][0] == "T-shirt/top"  # classes from the teacher
    with open_cache(world.unl) as c:
        assert (c.labels == -1).all() and c.meta.unlabelled
    assert "0 labelled, 40 unlabelled" in run("info", world.unl).output
    v = run("verify", world.unl, "--dataset", "unlabelled", "--data-dir", world.folder, "--teacher", world.dir / "t1.pt")
    assert "all 40 rows match unlabelled/train at their index (40 unlabelled by content id)" in v.output
    assert "ok    teacher:" in v.output
    # one edited image: caught by its content id (path + bytes), and named
    import shutil
    edited = shutil.copytree(world.folder, tmp_path / "edited")
    png = sorted(edited.rglob("a/part0/*.png"))[0]
    pixels = np.asarray(Image.open(png)).copy()
    pixels[0, 0] ^= 1
    Image.fromarray(pixels).save(png)
    bad = run("verify", world.unl, "--dataset", "unlabelled", "--data-dir", edited, ok=False)
    rel = png.relative_to(edited).as_posix()
    assert bad.exit_code == 1 and f"the images changed since the dump: 1 file(s) added or changed (first: {rel}); 1 " \
        "row(s) of the cache have no such file any more" in bad.output, bad.output


def test_no_labels_dump_of_a_labelled_split_verifies_against_it(world, tmp_path):
    out = tmp_path / "blind.h5"
    run("dump-logits", "--teacher", world.dir / "t1.pt", "--data-dir", world.data_dir, "--limit", 30, "--no-labels",
        "--out", out, "-q")
    with open_cache(out) as c, open_cache(world.lab) as labelled:
        assert (c.labels == -1).all() and c.meta.num_labelled == 0
        assert c.meta.dataset_fingerprint != labelled.meta.dataset_fingerprint
        assert not np.isin(c.sample_ids, labelled.sample_ids).any()  # no id is the labelled one: no label leaks
        assert np.array_equal(c.read(slice(0, 30)), labelled.read(slice(0, 30)))  # the same teacher outputs
    v = run("verify", out, "--data-dir", world.data_dir)  # the data is read unlabelled to compare
    assert "30 unlabelled by content id" in v.output
    # as a student's --cache, with the labelled split: said plainly (not "made from different data, re-dump it")
    assert_error(student(world, "--cache", out, limit=30, ok=False), f"{out} holds no labels (dumped with --no-labels)",
                 "--labels-limit N")


FACTORY = textwrap.dedent('''
    from torch import nn

    def build(num_classes, in_channels, image_size):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size[0] * image_size[1], num_classes))
''')


def test_factory_teacher_over_unlabelled_images_needs_class_names(world, tmp_path, monkeypatch):
    (tmp_path / "transfer_team_models.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 28 * 28, 3)).state_dict(), tmp_path / "w.pt")
    common = ["--teacher-factory", "transfer_team_models:build", "--weights", tmp_path / "w.pt", "--dataset",
              "unlabelled", "--data-dir", world.folder, "--image-size", 28, "--out", tmp_path / "c.h5", "-q"]
    assert_error(run("dump-logits", *common, ok=False), "--teacher-factory needs --class-names FILE")
    (tmp_path / "names.txt").write_text("ant\nbee, honey\n\ncat\n")
    (tmp_path / "dup.txt").write_text("ant\nant\n")
    assert_error(run("dump-logits", *common, "--class-names", tmp_path / "dup.txt", ok=False), "2 distinct")
    run("dump-logits", *common, "--class-names", tmp_path / "names.txt")
    assert read_json_info(tmp_path / "c.h5")["class_names"] == ["ant", "bee, honey", "cat"]
    wrong = ["--teacher", world.dir / "t1.pt", "--dataset", "unlabelled", "--data-dir", world.folder,
             "--class-names", tmp_path / "names.txt", "--out", tmp_path / "d.h5"]
    assert_error(run("dump-logits", *wrong, ok=False), "--class-names differs from the class names stored in")
    assert not (tmp_path / "d.h5").exists()


def read_json_info(path):
    return json.loads(run("info", path, "--json").output)


# -- training ----------------------------------------------------------------------------------------


def test_student_trains_on_labelled_and_transfer_rows_and_records_them(world):
    r = student(world, "--cache", world.lab, "--transfer", world.unl, "--transfer-data-dir", world.folder)
    assert "(T=4, alpha=0.5, 200 labelled + 40 unlabelled rows): test accuracy" in r.output.splitlines()[-1]
    config = checkpoint_config(world.dir / "s.pt")
    assert (config["num_labelled"], config["num_unlabelled"], config["num_train_samples"]) == (200, 40, 240)
    (t,) = config["transfer"]
    assert (t["dataset"], t["split"], t["rows"], t["num_labelled"]) == ("unlabelled", "train", 40, 0)
    with open_cache(world.unl) as c:
        assert t["content_sha256"] == c.meta.content_sha256 and config["request"]["transfer"] == [t["content_sha256"]]
    assert "labels_limit" not in config["request"]  # requests name only what was asked: older ones stay reusable
    student(world, "--cache", world.lab, "--labels-limit", 50, "-q")
    config = checkpoint_config(world.dir / "s.pt")
    assert (config["num_labelled"], config["num_unlabelled"], config["request"]["labels_limit"]) == (50, 150, 50)


def test_a_labelled_dataset_of_other_classes_is_a_transfer_set_with_no_labels(world, tmp_path):
    """--no-labels drops a dataset's labels and classes: its images become a transfer set for a teacher of
    another label set (say MNIST digits under a Fashion-MNIST teacher), which names the cache's classes."""
    images = load_dataset("fashion-mnist", "train", world.data_dir).images[-20:]
    for i, img in enumerate(images):  # a labelled folder whose 2 classes are not the teacher's 10
        d = tmp_path / "other" / "train" / ("left" if i % 2 else "right")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0].numpy()).save(d / f"{i:02d}.png")
    out = tmp_path / "other.h5"
    run("dump-logits", "--teacher", world.dir / "t1.pt", "--dataset", "imagefolder", "--data-dir", tmp_path / "other",
        "--no-labels", "--out", out, "-q")
    with open_cache(out) as c:
        assert c.meta.num_labelled == 0 and c.class_names == load_dataset("fashion-mnist", "test",
                                                                          world.data_dir).info.class_names
    run("verify", out, "--dataset", "imagefolder", "--data-dir", tmp_path / "other", "-q")
    r = student(world, "--cache", world.lab, "--transfer", out, "--transfer-data-dir", tmp_path / "other")
    assert "200 labelled + 20 unlabelled rows" in r.output.splitlines()[-1]


@pytest.mark.parametrize("how", ["memory", "streamed", "ensemble"])
def test_every_batch_mixes_labelled_and_transfer_rows_with_their_own_targets(world, monkeypatch, how):
    """train_student's own batch source, captured: each image meets its own teacher targets and label (-1 for
    transfer rows), transfer images are normalised like the labelled ones, every row once per epoch, mixed."""
    import kdcache.jobs.training as jobs

    captured = []
    monkeypatch.setattr(jobs, "fit", lambda model, batches, *a, **k: captured.extend(batches) or [])
    caches, transfer = [world.lab], [world.unl]
    if how == "ensemble":  # each set in its own teacher order: matched by teacher, not by position
        caches, transfer = [world.lab, world.lab2], [world.unl2, world.unl]
    train_student(world.dir / "cap.pt", data_cfg=DataConfig(data_dir=str(world.data_dir), limit=200, eval_limit=50), cfg=replace(STUDENT_TRAIN, batch_size=32, device="cpu"), distill=DistillConfig(caches=caches, transfer=transfer, transfer_data_dirs=[str(world.folder)], temperature=2.0), io=CacheIO(memory_limit_mb=0 if how == "streamed" else 2048), run=RunOptions(overwrite=True))
    labelled = load_dataset("fashion-mnist", "train", world.data_dir, limit=200)
    unl = load_dataset("unlabelled", "train", world.folder, image_size=InputTransform(28, crop_fraction=1.0, mode="L"))
    expect = {}
    for data, paths in ((labelled, [world.lab, world.lab2]), (unl, [world.unl, world.unl2])):
        pixels = data.images[torch.arange(len(data))]
        x = normalize(pixels, labelled.info.mean, labelled.info.std)  # the labelled data's mean/std for all
        members = []
        for path in paths if how == "ensemble" else paths[:1]:
            with open_cache(path) as c:
                members.append(torch.from_numpy(c.read(c.rows_of(data.indices.numpy()))))
        targets = combine_logits(members, "mean-probs", 2.0) if len(members) > 1 else members[0]
        for i in range(len(data)):
            expect[x[i].numpy().tobytes()] = (int(data.labels[i]), targets[i])
    assert len(expect) == 240
    seen = []
    for batch in captured:
        for img, label, target in zip(batch.images, batch.labels, batch.teacher_logits):
            want_label, want_target = expect[img.numpy().tobytes()]
            assert int(label) == want_label and torch.allclose(target, want_target, atol=1e-6)
            seen.append(img.numpy().tobytes())
    assert sorted(seen) == sorted(expect)  # every row exactly once
    kinds = [set((b.labels >= 0).tolist()) for b in captured]
    assert sum(k == {True, False} for k in kinds) >= len(kinds) // 2  # most batches hold both kinds of rows
    config = checkpoint_config(world.dir / "cap.pt")
    assert [t["teacher_sha256"] for t in config["transfer"]] == [c["teacher_sha256"] for c in config["caches"]]
    assert config["cache_streamed"] == (how == "streamed")


def relabelled(data, labels):
    """``data`` with other labels (ids and fingerprint follow them, as for a real dataset)."""
    images = data.images.numpy()
    info = replace(data.info, fingerprint=fingerprint_for(images, labels.numpy()))
    return replace(data, labels=labels, sample_ids=sample_ids_for(images, labels.numpy()), info=info)


def test_unlabelled_rows_never_reach_the_cross_entropy(tmp_path, monkeypatch):
    """Wrong labels on the rows after --labels-limit give the very same losses and weights through train_student's
    real data path (alignment, masking, batches, kd_loss, optimiser); on labelled rows they change both."""
    import kdcache.jobs.training as jobs

    truth = make_image_data(n=64, seed=1)
    wrong = relabelled(truth, torch.where(torch.arange(64) >= 24, (truth.labels + 3) % 10, truth.labels))
    assert (wrong.labels[24:] != truth.labels[24:]).all()
    test = make_image_data(n=20, seed=2, split="test")
    logits = np.random.default_rng(0).normal(0, 3, size=(64, 10)).astype(np.float32)

    def train(data, labels_limit, name):
        cache = write_cache(tmp_path / f"{name}.h5", logits, data.labels, data.indices, data.sample_ids,
                            cache_attrs(data.info))
        monkeypatch.setattr(jobs, "load_train_val", lambda *a, **k: (data, None))
        monkeypatch.setattr(jobs, "load_dataset", lambda *a, **k: test)
        r = train_student(tmp_path / f"{name}.pt", data_cfg=DataConfig(dataset="synthetic"), cfg=replace(STUDENT_TRAIN, epochs=2, batch_size=16, device="cpu"), distill=DistillConfig(caches=[cache], labels_limit=labels_limit, alpha=0.5), run=RunOptions(overwrite=True))
        return [h["train_loss"] for h in r["history"]], torch.load(tmp_path / f"{name}.pt", weights_only=True)

    def same(a, b):
        return a[0] == b[0] and all(torch.equal(a[1]["state_dict"][k], b[1]["state_dict"][k]) for k in a[1]["state_dict"])

    assert same(train(truth, 24, "a"), train(wrong, 24, "b"))
    assert not same(train(truth, None, "c"), train(wrong, None, "d"))  # the test can fail: labels do matter


# -- refusals ----------------------------------------------------------------------------------------


def test_labels_limit_refusals_are_one_line(world):
    assert_error(student(world, "--cache", world.lab, "--labels-limit", 201, ok=False),
                 "--labels-limit 201 is more than the 200 training samples")
    assert_error(student(world, "--cache", world.lab, "--labels-limit", 0, "--alpha", 0.9, ok=False),
                 "--labels-limit 0 leaves no labelled sample", "--alpha 1")
    assert_error(student(world, "--labels-limit", 100, "--alpha", 0, ok=False),
                 "--alpha 0 learns from labels alone, so the 100 training samples after --labels-limit 100 would add")
    assert_error(student(world, "--cache", world.lab, "--transfer", world.unl, "--alpha", 0, ok=False),
                 "--alpha 0 learns from labels alone, so the --transfer rows would add nothing")
    assert_error(student(world, "--cache", world.lab, "--transfer", world.unl, ok=False),  # no --transfer-data-dir
                 "no images under", "--transfer-data-dir names the folder")
    assert_error(student(world, "--transfer", world.unl, "--alpha", 0.5, ok=False), "name its cache")
    student(world, "--cache", world.lab, "--labels-limit", 0, "--alpha", 1, "-q")  # no labels at all: fine
    assert checkpoint_config(world.dir / "s.pt")["num_labelled"] == 0


def test_transfer_caches_of_other_data_teachers_or_splits_are_refused(world, tmp_path):
    import shutil

    other = shutil.copytree(world.folder, tmp_path / "other")
    next(other.rglob("*.png")).unlink()  # the folder the cache was made from, minus one image
    assert_error(student(world, "--cache", world.lab, "--transfer", world.unl, "--transfer-data-dir", other, ok=False),
                 "was made from different unlabelled/train data (dataset fingerprint")
    assert_error(student(world, "--cache", world.lab, "--transfer", world.unl2, "--transfer-data-dir", world.folder,
                         ok=False), "made by 1 teacher(s)", "dump the transfer images with the same teacher(s)")
    assert_error(student(world, "--cache", world.lab, "--cache", world.lab2, "--transfer", world.unl,
                         "--transfer-data-dir", world.folder, ok=False), "--cache caches by 2")
    assert_error(student(world, "--cache", world.lab, "--transfer", world.unl, "--transfer-data-dir", world.folder,
                         "--transfer-data-dir", other, ok=False), "2 --transfer-data-dir for 1 --transfer caches")
    for split in ("train", "test"):  # the student's own images are no transfer set
        blind = tmp_path / f"{split}.h5"
        run("dump-logits", "--teacher", world.dir / "t1.pt", "--data-dir", world.data_dir, "--split", split,
            "--limit", 20, "--no-labels", "--out", blind, "-q")
        hint = "use --labels-limit N" if split == "train" else "the images it is tested on"
        assert_error(student(world, "--cache", world.lab, "--transfer", blind, ok=False),
                     f"holds the {split} images of fashion-mnist", hint)
    assert_error(run("train-teacher", "--dataset", "unlabelled", "--data-dir", world.folder, "--out",
                     tmp_path / "t.pt", ok=False), "has no labels")


@pytest.mark.parametrize("how", ["memory", "streamed"])
def test_transfer_rows_replay_their_own_stored_views(world, tmp_path, monkeypatch, how):
    """Caches with augmentation views compose: every row, labelled or transfer, shows one of its own stored views
    and carries that view's logits; a transfer cache without the labelled cache's views is refused."""
    import kdcache.jobs.training as jobs
    from kdcache.data.augment import policy_from_record
    from kdcache.data.samples import standardize, to_unit

    lab, unl = tmp_path / "lab-views.h5", tmp_path / "unl-views.h5"
    views = ["--views", 2, "--augment", "shift-flip", "--view-seed", 5]
    run("dump-logits", "--teacher", world.dir / "t1.pt", "--data-dir", world.data_dir, "--limit", 100, *views,
        "--out", lab, "-q")
    run("dump-logits", "--teacher", world.dir / "t1.pt", "--dataset", "unlabelled", "--data-dir", world.folder,
        *views, "--out", unl, "-q")
    captured = []
    monkeypatch.setattr(jobs, "fit", lambda model, batches, *a, **k: captured.extend(batches) or [])
    r = train_student(tmp_path / "s.pt", data_cfg=DataConfig(data_dir=str(world.data_dir), limit=100, eval_limit=50), cfg=replace(STUDENT_TRAIN, batch_size=32, device="cpu"), distill=DistillConfig(caches=[lab], transfer=[unl], transfer_data_dirs=[str(world.folder)]), io=CacheIO(memory_limit_mb=0 if how == "streamed" else 2048), run=RunOptions(overwrite=True))
    assert r["config"]["augment"]["mode"] == "replay" and r["config"]["num_unlabelled"] == FOLDER_IMAGES
    labelled = load_dataset("fashion-mnist", "train", world.data_dir, limit=100)
    expect = {}
    as_fmnist = InputTransform(28, crop_fraction=1.0, mode="L")
    for data, path in ((labelled, lab), (load_dataset("unlabelled", "train", world.folder, image_size=as_fmnist), unl)):
        with open_cache(path) as c:
            rows = c.rows_of(data.indices.numpy())
            params, logits = torch.from_numpy(c.read_view_params(rows)), torch.from_numpy(c.read(rows))
            policy = policy_from_record(c.meta.view_policy)
        for v in range(2):
            x = standardize(policy.apply(to_unit(data.images[torch.arange(len(data))]), params[:, v]),
                            labelled.info.mean, labelled.info.std)
            for i in range(len(data)):
                expect[x[i].numpy().tobytes()] = (int(data.labels[i]), logits[i, v])
    seen = 0
    for batch in captured:
        for img, label, target in zip(batch.images, batch.labels, batch.teacher_logits):
            want_label, want_target = expect[img.numpy().tobytes()]
            assert int(label) == want_label and torch.allclose(target, want_target, atol=1e-5)
            seen += 1
    assert seen == 100 + FOLDER_IMAGES
    assert_error(student(world, "--cache", lab, "--transfer", world.unl, "--transfer-data-dir", world.folder, ok=False,
                         limit=100), "holds full logits", "same --top-k, --views and --augment")


def test_lowrank_caches_serve_as_cache_and_transfer_set(world, tmp_path):
    """Low-rank rows are read as decoded logits, so they join full ones: either cache may be low-rank."""
    from kdcache.cache.lowrank import Codec
    from kdcache.jobs.compress import compress_cache

    lab, unl = tmp_path / "lab-lr.h5", tmp_path / "unl-lr.h5"
    compress_cache(world.lab, lab, codec=Codec(rank=5), allow_larger=True)  # tiny caches: the basis outweighs
    compress_cache(world.unl, unl, codec=Codec(rank=5), allow_larger=True)
    for cache, transfer in ((lab, unl), (world.lab, unl)):
        r = student(world, "--cache", cache, "--transfer", transfer, "--transfer-data-dir", world.folder)
        assert "200 labelled + 40 unlabelled rows" in r.output.splitlines()[-1]
        (t,) = checkpoint_config(world.dir / "s.pt")["transfer"]
        with open_cache(unl) as c:
            assert t["content_sha256"] == c.meta.content_sha256 and t["rows"] == 40
