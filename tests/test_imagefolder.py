"""A team's own data and teacher: a tiny ImageFolder made here, and a custom model from a factory."""
import json
import sys
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import assert_error
from kdcache.cli import main
from kdcache.data import load_dataset
from kdcache.errors import DataError

CLASSES = ("ant", "bee", "cat")
SIZE = 12  # teacher-cnn needs a multiple of 4


def make_folder(root, per_class=(6, 2), mode="RGB", seed=0):
    g = np.random.default_rng(seed)
    for split, n in zip(("train", "test"), per_class):
        for k, cls in enumerate(CLASSES):
            d = root / split / cls / "sub"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                shape = (SIZE, SIZE, 3) if mode == "RGB" else (SIZE, SIZE)
                pixels = np.clip(g.normal(60 + 60 * k, 30, size=shape), 0, 255).astype(np.uint8)  # learnable
                Image.fromarray(pixels, mode=mode).save(d / f"img{i:02d}.png")
    return root


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, needle):
    assert_error(result, needle)


def test_shape_classes_order_ids_and_stats_come_from_the_data(tmp_path):
    root = make_folder(tmp_path / "imgs")
    d = load_dataset("imagefolder", "train", root)
    info = d.info
    assert info.class_names == CLASSES and info.in_channels == 3 and info.image_size == (SIZE, SIZE)
    assert len(d) == 18 and d.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6  # class, then sorted path
    pixels = d.images.double() / 255
    assert info.mean == pytest.approx(tuple(pixels.mean(dim=(0, 2, 3)).tolist()), abs=1e-6)
    assert info.std == pytest.approx(tuple(pixels.std(dim=(0, 2, 3), unbiased=False).tolist()), abs=1e-6)
    assert len(set(d.sample_ids.tolist())) == 18
    test = load_dataset("imagefolder", "test", root)
    assert test.info.mean == info.mean and test.info.class_names == CLASSES  # train statistics for both splits


def test_ids_are_stable_and_follow_path_and_content(tmp_path):
    a = make_folder(tmp_path / "a")
    b = make_folder(tmp_path / "b")  # same files written again: same order, ids and fingerprint
    da, db = load_dataset("imagefolder", "train", a), load_dataset("imagefolder", "train", b)
    assert np.array_equal(da.sample_ids, db.sample_ids) and da.info.fingerprint == db.info.fingerprint
    (b / "train" / "ant" / "sub" / "img00.png").rename(b / "train" / "ant" / "sub" / "img99.png")
    c = make_folder(tmp_path / "c")
    (c / "train" / "bee" / "sub" / "img03.png").write_bytes((c / "train" / "bee" / "sub" / "img04.png").read_bytes())
    from kdcache.imagefolder import _read_split
    _read_split.cache_clear()
    from kdcache.data import _load_full
    _load_full.cache_clear()
    moved = load_dataset("imagefolder", "train", b)
    edited = load_dataset("imagefolder", "train", c)
    assert moved.info.fingerprint != da.info.fingerprint and edited.info.fingerprint != da.info.fingerprint
    assert set(moved.sample_ids.tolist()) ^ set(da.sample_ids.tolist())  # the renamed file has a new id
    changed = np.flatnonzero(edited.sample_ids != da.sample_ids)
    assert changed.tolist() == [9]  # bee (6..11), img03 -> only that row differs


def test_greyscale_and_bad_layouts(tmp_path):
    grey = load_dataset("imagefolder", "train", make_folder(tmp_path / "g", mode="L"))
    assert grey.info.in_channels == 1 and grey.images.shape == (18, 1, SIZE, SIZE)
    with pytest.raises(DataError, match="ROOT/train/<class>/<image>"):
        load_dataset("imagefolder", "train", tmp_path / "nothing-here")
    odd = make_folder(tmp_path / "odd")
    Image.fromarray(np.zeros((5, 7, 3), dtype=np.uint8)).save(odd / "train" / "cat" / "sub" / "zz.png")
    with pytest.raises(DataError, match="resize all images to one size"):
        load_dataset("imagefolder", "train", odd)


FACTORY = textwrap.dedent('''
    import torch
    from torch import nn

    def build(num_classes, in_channels, image_size):
        h, w = image_size
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * h * w, 16), nn.ReLU(), nn.Linear(16, num_classes))
''')


@pytest.fixture
def team(tmp_path, monkeypatch):
    """An ImageFolder, a factory module in the current folder, and its weights file."""
    root = make_folder(tmp_path / "imgs")
    (tmp_path / "team_models_if.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)  # the factory is found like `python -m` finds modules: from the current folder
    monkeypatch.setattr(sys, "path", list(sys.path))
    sys.modules.pop("team_models_if", None)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * SIZE * SIZE, 16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 3))
    torch.save(model.state_dict(), tmp_path / "w.pt")
    return root, tmp_path / "w.pt"


def test_custom_teacher_dump_verify_train_evaluate(team, tmp_path):
    root, weights = team
    common = ["--dataset", "imagefolder", "--data-dir", root]
    r = run("dump-logits", "--teacher-factory", "team_models_if:build", "--weights", weights, *common,
            "--out", tmp_path / "c.h5", "-q")
    assert r.exit_code == 0, r.output
    info = json.loads(run("info", tmp_path / "c.h5", "--json").output)
    assert info["teacher_arch"] == "factory:team_models_if:build" and info["dataset"] == "imagefolder"
    assert info["class_names"] == list(CLASSES) and info["num_samples"] == 18
    v = run("verify", tmp_path / "c.h5", *common, "--teacher-factory", "team_models_if:build", "--weights", weights)
    assert v.exit_code == 0 and "ok    teacher:" in v.output and "ok    alignment:" in v.output, v.output
    s = run("train-student", "--cache", tmp_path / "c.h5", *common, "--epochs", 1, "--batch-size", 6,
            "--out", tmp_path / "s.pt", "-q")
    assert s.exit_code == 0, s.output
    e = run("evaluate", "--model", tmp_path / "s.pt", "--data-dir", root, "--json")
    assert e.exit_code == 0 and json.loads(e.output)["num_samples"] == 6, e.output


def test_kdcache_teacher_on_imagefolder(team, tmp_path):
    root, _ = team
    common = ["--dataset", "imagefolder", "--data-dir", root]
    t = run("train-teacher", *common, "--epochs", 1, "--batch-size", 6, "--precision", "fp32",
            "--out", tmp_path / "t.pt", "-q")
    assert t.exit_code == 0, t.output
    d = run("dump-logits", "--teacher", tmp_path / "t.pt", "--data-dir", root, "--out", tmp_path / "c.h5", "-q")
    assert d.exit_code == 0, d.output  # dataset defaults to the teacher's (imagefolder)
    v = run("verify", tmp_path / "c.h5", "--data-dir", root, "--teacher", tmp_path / "t.pt", "-q")
    assert v.exit_code == 0 and v.output == "", v.output


def test_custom_teacher_bad_inputs(team, tmp_path):
    root, weights = team
    common = ["--dataset", "imagefolder", "--data-dir", root, "--out", tmp_path / "c.h5", "-q"]
    (tmp_path / "notes.pt").write_text("not a torch file")
    torch.save({"layer.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    cases = [
        (["--teacher-factory", "team_models_if:build"], "--teacher-factory needs --weights"),
        (["--teacher-factory", "no_such_module_xyz:build", "--weights", weights], "cannot import 'no_such_module_xyz'"),
        (["--teacher-factory", "team_models_if:nothing", "--weights", weights], "has no function 'nothing'"),
        (["--teacher-factory", "team_models_if", "--weights", weights], "must look like package.module:function"),
        (["--teacher-factory", "team_models_if:build", "--weights", tmp_path / "notes.pt"], "not a readable checkpoint"),
        (["--teacher-factory", "team_models_if:build", "--weights", tmp_path / "other.pt"], "weights do not fit"),
        (["--teacher", weights, "--teacher-factory", "team_models_if:build", "--weights", weights], "name the teacher once"),
        ([], "name the teacher once"),
    ]
    for args, needle in cases:
        one_line_error(run("dump-logits", *args, *common), needle)
        assert not (tmp_path / "c.h5").exists()
    one_line_error(run("dump-logits", "--teacher-factory", "team_models_if:build", "--weights", weights,
                       "--dataset", "imagefolder", "--data-dir", tmp_path / "empty", "--out", tmp_path / "c.h5"),
                   "not found; lay the data out as ROOT/train/<class>/<image>")


def test_validation_split_covers_every_class(tmp_path):
    """--val-size on a folder stored class by class holds out rows of every class, not the last class."""
    from kdcache.data import load_train_val

    make_folder(tmp_path, per_class=(6, 4))  # 3 classes x 6 train images, stored class by class
    train, val = load_train_val("imagefolder", str(tmp_path), None, 6)
    assert sorted(val.labels.tolist()) == [0, 0, 1, 1, 2, 2] and len(train) == 12
    assert not set(val.indices.tolist()) & set(train.indices.tolist())
