"""A team's own data and teacher: a tiny ImageFolder made here, and a custom model from a factory."""
import json
import shutil
import sys
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import assert_error, make_photo_folder

from kdcache.cli import main
from kdcache.data.datasets import load_dataset
from kdcache.data.folders import IMAGENET_MEAN, IMAGENET_STD
from kdcache.data.images import FileImages
from kdcache.errors import ConfigError, DataError

CLASSES = ("ant", "bee", "cat")
SIZE = 16  # --image-size of these tests (teacher-cnn needs a multiple of 4)


def make_folder(root, per_class=(6, 2), seed=0):
    """JPEGs and PNGs of 20..90 px sides in RGB, L, P, RGBA, CMYK and 16-bit modes (conftest.make_photo_folder)."""
    return make_photo_folder(root, CLASSES, per_class, seed)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, needle):
    assert_error(result, needle)


def test_files_of_any_size_and_mode_load_lazily_at_image_size(tmp_path):
    root = make_folder(tmp_path / "imgs")
    d = load_dataset("imagefolder", "train", root, image_size=SIZE, workers=0)
    info = d.info
    assert info.class_names == CLASSES and info.in_channels == 3 and info.image_size == (SIZE, SIZE)
    assert isinstance(d.images, FileImages) and d.images.shape == (18, 3, SIZE, SIZE)  # nothing decoded yet
    assert len(d) == 18 and d.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6  # class, then sorted path
    assert d.keys[0] == "ant/sub/img00.jpg" and {k.rsplit(".", 1)[1] for k in d.keys} == {"jpg", "png"}
    assert info.transform == {"kind": "resize-center-crop", "size": SIZE, "resize": 18, "interpolation": "bilinear",
                              "antialias": True, "mode": "RGB"}
    assert (info.mean, info.std) == (IMAGENET_MEAN, IMAGENET_STD)
    pixels = d.images[torch.arange(18)]
    assert pixels.dtype == torch.uint8 and pixels.shape == (18, 3, SIZE, SIZE)
    # brightness still tells the classes apart after every mode's conversion: the data is learnable
    means = [float(pixels[d.labels == k].float().mean()) for k in range(3)]
    assert means[0] + 40 < means[1] and means[1] + 40 < means[2]
    assert len(set(d.sample_ids.tolist())) == 18
    sub = d.take(np.array([5, 1]))
    assert sub.keys == (d.keys[5], d.keys[1]) and torch.equal(sub.images[[0, 1]], pixels[[5, 1]])


def test_ids_follow_relative_path_and_bytes_not_location(tmp_path):
    a = make_folder(tmp_path / "a")
    shutil.copytree(a, tmp_path / "elsewhere" / "b")  # a copy in another place: same rows
    da = load_dataset("imagefolder", "train", a, image_size=SIZE)
    db = load_dataset("imagefolder", "train", tmp_path / "elsewhere" / "b", image_size=SIZE)
    assert np.array_equal(da.sample_ids, db.sample_ids) and da.info.fingerprint == db.info.fingerprint
    b = tmp_path / "elsewhere" / "b" / "train" / "bee" / "sub"
    first = sorted(b.iterdir())[3]
    first.write_bytes(first.read_bytes() + b"\0")  # a changed file: only its row's id changes
    edited = load_dataset("imagefolder", "train", tmp_path / "elsewhere" / "b", image_size=SIZE)
    assert np.flatnonzero(edited.sample_ids != da.sample_ids).tolist() == [9]  # bee (6..11), its 4th file
    assert edited.info.fingerprint != da.info.fingerprint


def test_bad_layouts_and_sizes(tmp_path):
    with pytest.raises(DataError, match="ROOT/train/<class>/<image>"):
        load_dataset("imagefolder", "train", tmp_path / "nothing-here")
    root = make_folder(tmp_path / "imgs")
    (root / "train" / "dog").mkdir()
    with pytest.raises(DataError, match="dog holds no images"):
        load_dataset("imagefolder", "train", root)
    (root / "train" / "dog").rmdir()
    for bad in (0, 4, 5000):
        with pytest.raises(ConfigError, match=f"--image-size {bad}: give the side"):
            load_dataset("imagefolder", "train", root, image_size=bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="unlabelled: no images under"):
        load_dataset("unlabelled", "train", tmp_path / "empty")


def test_unreadable_files_are_named_or_skipped_and_recorded(tmp_path):
    root = make_folder(tmp_path / "imgs")
    bad = root / "train" / "bee" / "sub" / "zz-truncated.jpg"
    good = next((root / "train" / "bee" / "sub").glob("*.jpg"))
    bad.write_bytes(good.read_bytes()[:200])  # a JPEG cut short: its header reads, its pixels do not
    (root / "train" / "cat" / "sub" / "notes.png").write_text("not an image")
    d = load_dataset("imagefolder", "train", root, image_size=SIZE)  # listing and hashing read no pixels
    with pytest.raises(DataError, match="cannot read image .*zz-truncated.jpg"):
        d.images[torch.arange(len(d))]
    kept = load_dataset("imagefolder", "train", root, image_size=SIZE, skip_unreadable=True)
    assert len(kept) == 18 and kept.info.skipped == ("bee/sub/zz-truncated.jpg", "cat/sub/notes.png")
    assert kept.images[torch.arange(18)].shape == (18, 3, SIZE, SIZE)


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
    common = ["--dataset", "imagefolder", "--data-dir", root, "--image-size", SIZE]
    r = run("dump-logits", "--teacher-factory", "team_models_if:build", "--weights", weights, *common,
            "--out", tmp_path / "c.h5", "-q")
    assert r.exit_code == 0, r.output
    info = json.loads(run("info", tmp_path / "c.h5", "--json").output)
    assert info["teacher_arch"] == "factory:team_models_if:build" and info["dataset"] == "imagefolder"
    assert info["class_names"] == list(CLASSES) and info["num_samples"] == 18
    v = run("verify", tmp_path / "c.h5", *common[:4], "--teacher-factory", "team_models_if:build", "--weights", weights)
    assert v.exit_code == 0 and "ok    teacher:" in v.output and "ok    alignment:" in v.output, v.output
    assert info["input_transform"]["size"] == SIZE
    s = run("train-student", "--cache", tmp_path / "c.h5", "--data-dir", root, "--epochs", 1, "--batch-size", 6,
            "--out", tmp_path / "s.pt", "-q")  # dataset and input size come from the cache
    assert s.exit_code == 0, s.output
    e = run("evaluate", "--model", tmp_path / "s.pt", "--data-dir", root, "--json")
    assert e.exit_code == 0 and json.loads(e.output)["num_samples"] == 6, e.output


def test_kdcache_teacher_on_imagefolder(team, tmp_path):
    root, _ = team
    common = ["--dataset", "imagefolder", "--data-dir", root, "--image-size", SIZE]
    t = run("train-teacher", *common, "--epochs", 1, "--batch-size", 6, "--precision", "fp32",
            "--out", tmp_path / "t.pt", "-q")
    assert t.exit_code == 0, t.output
    d = run("dump-logits", "--teacher", tmp_path / "t.pt", "--data-dir", root, "--out", tmp_path / "c.h5", "-q")
    assert d.exit_code == 0, d.output  # dataset and input size default to the teacher's (imagefolder, 16)
    v = run("verify", tmp_path / "c.h5", "--data-dir", root, "--teacher", tmp_path / "t.pt", "-q")
    assert v.exit_code == 0 and v.output == "", v.output


def test_custom_teacher_bad_inputs(team, tmp_path):
    root, weights = team
    common = ["--dataset", "imagefolder", "--data-dir", root, "--image-size", SIZE, "--out", tmp_path / "c.h5", "-q"]
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
    from kdcache.data.datasets import load_train_val

    make_folder(tmp_path, per_class=(6, 4))  # 3 classes x 6 train images, stored class by class
    train, val = load_train_val("imagefolder", str(tmp_path), None, 6, image_size=SIZE)
    assert sorted(val.labels.tolist()) == [0, 0, 1, 1, 2, 2] and len(train) == 12
    assert not set(val.indices.tolist()) & set(train.indices.tolist())


def test_a_folder_changed_since_the_dump_is_named_in_one_line(team, tmp_path):
    root, weights = team
    cache = tmp_path / "c.h5"
    run("dump-logits", "--teacher-factory", "team_models_if:build", "--weights", weights, "--dataset", "imagefolder",
        "--data-dir", root, "--image-size", SIZE, "--out", cache, "-q")
    bee = root / "train" / "bee" / "sub"
    edited = sorted(bee.iterdir())[2]
    edited.write_bytes(edited.read_bytes() + b"\0")  # changed
    shutil.copy(sorted(bee.iterdir())[0], bee / "zz-new.png")  # added
    (root / "train" / "cat" / "sub" / sorted(p.name for p in (root / "train" / "cat" / "sub").iterdir())[0]).unlink()
    want = ("the images changed since the dump: 2 file(s) added or changed (first: bee/sub/" + edited.name +
            ", bee/sub/zz-new.png); 2 row(s) of the cache have no such file any more")
    one_line_error(run("train-student", "--cache", cache, "--data-dir", root, "--epochs", 1, "--out", tmp_path / "s.pt"),
                   want)
    v = run("verify", cache, "--data-dir", root)
    assert v.exit_code == 1 and want in v.output, v.output
    assert not (tmp_path / "s.pt").exists()


def test_image_size_and_unreadable_files_are_one_line_cli_errors(team, tmp_path):
    root, weights = team
    dump = ["dump-logits", "--teacher-factory", "team_models_if:build", "--weights", weights, "--dataset",
            "imagefolder", "--data-dir", root, "--out", tmp_path / "c.h5"]
    for size in (0, 5000):
        one_line_error(run(*dump, "--image-size", size), f"--image-size {size}: give the side of the square input")
    bad = root / "train" / "ant" / "sub" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    one_line_error(run(*dump, "--image-size", SIZE), "cannot read image")
    assert not (tmp_path / "c.h5").exists()
    r = run(*dump, "--image-size", SIZE, "--skip-unreadable", "-q")
    assert r.exit_code == 0, r.output
    info = json.loads(run("info", tmp_path / "c.h5", "--json").output)
    assert info["skipped_files"] == ["ant/sub/broken.jpg"] and info["num_samples"] == 18
    assert "skipped    1 unreadable file(s) left out: ant/sub/broken.jpg" in run("info", tmp_path / "c.h5").output
    # later jobs read the folder as the dump did, without being told (a new user's verify failed: 'changed')
    v = run("verify", tmp_path / "c.h5", "--data-dir", root)
    assert v.exit_code == 0 and "ok    alignment: all 18 rows match" in v.output, v.output
    s = run("train-student", "--cache", tmp_path / "c.h5", "--data-dir", root, "--epochs", 1, "--batch-size", 6,
            "--out", tmp_path / "s.pt", "-q")
    assert s.exit_code == 0, s.output


@pytest.mark.parametrize("views", [0, 2])
def test_a_student_at_another_image_size_than_its_teacher(tmp_path, views):
    """A cache dumped at 32 px trains a student read at 16 px: plain, or replaying crop-flip views (fractions)."""
    from kdcache.train.checkpoint import load_checkpoint

    root = make_folder(tmp_path / "data", per_class=(4, 1))
    t = run("train-teacher", "--dataset", "imagefolder", "--data-dir", root, "--image-size", 32, "--epochs", 1,
            "--batch-size", 6, "--precision", "fp32", "--out", tmp_path / "t.pt", "-q")
    assert t.exit_code == 0, t.output
    more = ["--views", views, "--augment", "crop-flip"] if views else []
    d = run("dump-logits", "--teacher", tmp_path / "t.pt", "--data-dir", root, "--out", tmp_path / "c.h5", *more, "-q")
    assert d.exit_code == 0, d.output
    s = run("train-student", "--cache", tmp_path / "c.h5", "--data-dir", root, "--image-size", 16, "--epochs", 1,
            "--batch-size", 6, "--precision", "fp32", "--out", tmp_path / "s.pt", "-q")
    assert s.exit_code == 0, s.output  # the alignment hashes files and labels, not pixels: any input size aligns
    _, config = load_checkpoint(tmp_path / "s.pt")
    assert config["image_size"] == [16, 16] and config["input_transform"]["size"] == 16  # the student's own
    if views:  # the teacher's crop-flip views, cut from the files (v3 on image folders), replayed at 16 px
        assert config["augment"]["mode"] == "replay" and config["augment"]["policy"]["version"] == 3, config["augment"]
    else:
        assert "augment" not in config or not config["augment"]
    e = run("evaluate", "--model", tmp_path / "s.pt", "--data-dir", root, "--json")
    assert e.exit_code == 0 and json.loads(e.output)["num_samples"] == 3, e.output


def test_pixel_views_at_another_image_size_are_a_one_line_error(tmp_path):
    """shift-flip's pixel shifts replay only at the teacher's size: the refusal says to use crop-flip."""
    root = make_folder(tmp_path / "data", per_class=(4, 1))
    t = run("train-teacher", "--dataset", "imagefolder", "--data-dir", root, "--image-size", 32, "--epochs", 1,
            "--batch-size", 6, "--precision", "fp32", "--out", tmp_path / "t.pt", "-q")
    assert t.exit_code == 0, t.output
    d = run("dump-logits", "--teacher", tmp_path / "t.pt", "--data-dir", root, "--out", tmp_path / "c.h5",
            "--views", 2, "--augment", "shift-flip", "-q")
    assert d.exit_code == 0, d.output
    s = run("train-student", "--cache", tmp_path / "c.h5", "--data-dir", root, "--image-size", 16, "--epochs", 1,
            "--batch-size", 6, "--precision", "fp32", "--out", tmp_path / "s.pt", "-q")
    one_line_error(s, "use crop-flip (its boxes are fractions of the image) for images read at another --image-size")


def python_folder(root, split="train"):
    """torchvision's ImageFolder at SIZE, standardised with ImageNet's statistics, as a user builds it."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import CenterCrop, Compose, Normalize, Resize, ToTensor

    return ImageFolder(str(root / split), transform=Compose([Resize(18), CenterCrop(SIZE), ToTensor(),
                                                             Normalize(IMAGENET_MEAN, IMAGENET_STD)]))


def test_an_imagefolder_cache_made_in_python_is_the_clis_imagefolder(team, tmp_path):
    """dump_logits(dataset=ImageFolder(...)) records imagefolder, so verify and train-student take it as the CLI's own;
    a cache from before (recorded as dataset:...ImageFolder) is recognised by its fingerprint."""
    import h5py

    import kdcache
    from kdcache.config import DataConfig

    root, _ = team
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * SIZE * SIZE, 3))
    cache = tmp_path / "py.h5"
    kdcache.dump_logits(model, cache, dataset=python_folder(root), data_cfg=DataConfig(workers=0))
    info = json.loads(run("info", cache, "--json").output)
    assert (info["dataset"], info["split"]) == ("imagefolder", "train")
    ref = load_dataset("imagefolder", "train", root, workers=0)
    assert info["dataset_fingerprint"] == ref.info.fingerprint
    legacy = tmp_path / "legacy.h5"  # what dump_logits recorded before
    shutil.copy(cache, legacy)
    with h5py.File(legacy, "r+") as f:
        f.attrs["dataset"] = "dataset:torchvision.datasets.folder.ImageFolder"
    for path in (cache, legacy):
        for dataset in ([], ["--dataset", "imagefolder"]):
            v = run("verify", path, "--data-dir", root, *dataset)
            assert v.exit_code == 0 and "ok    alignment:" in v.output, v.output
        s = run("train-student", "--cache", path, "--data-dir", root, "--epochs", 1, "--batch-size", 6,
                "--out", tmp_path / f"{path.stem}.pt", "-q")
        assert s.exit_code == 0, s.output
    test_cache = tmp_path / "test.h5"  # an ImageFolder of ROOT/test: the test split, whatever split= says
    kdcache.dump_logits(model, test_cache, dataset=python_folder(root, "test"), data_cfg=DataConfig(workers=0))
    v = run("verify", test_cache, "--data-dir", root)
    assert json.loads(run("info", test_cache, "--json").output)["split"] == "test" and v.exit_code == 0, v.output


def test_a_cli_imagefolder_cache_serves_torchvisions_imagefolder(team, tmp_path):
    from kdcache.cache import open_cache
    from kdcache.data.cached_dataset import CachedDataset

    root, weights = team
    cache = tmp_path / "c.h5"
    run("dump-logits", "--teacher-factory", "team_models_if:build", "--weights", weights, "--dataset", "imagefolder",
        "--data-dir", root, "--image-size", SIZE, "--out", cache, "-q")
    ds = CachedDataset(python_folder(root), cache)
    assert ds.alignment.checked == ("index", "label", "class names", "content id")
    with open_cache(cache) as c:
        assert torch.equal(ds[4][2], torch.from_numpy(np.asarray(c.read([4]), np.float32))[0])


def test_a_deleted_file_is_placed_by_name_in_verify_and_train_student(team, tmp_path):
    root, weights = team
    cache = tmp_path / "c.h5"
    run("dump-logits", "--teacher-factory", "team_models_if:build", "--weights", weights, "--dataset", "imagefolder",
        "--data-dir", root, "--image-size", SIZE, "--out", cache, "-q")
    keys = load_dataset("imagefolder", "train", root, workers=0).keys
    (root / "train" / keys[3]).unlink()
    want = (f"1 row(s) of the cache have no such file any more (removed, renamed or changed; dataset index 3, the file "
            f"between {keys[2]} and {keys[4]})")
    v = run("verify", cache, "--data-dir", root)
    assert v.exit_code == 1 and want in v.output, v.output
    one_line_error(run("train-student", "--cache", cache, "--data-dir", root, "--epochs", 1, "--out", tmp_path / "s.pt"),
                   want)


def test_skipped_files_are_said_and_later_jobs_inherit_the_setting(tmp_path, monkeypatch):
    """train-teacher and dump-logits said nothing of the files --skip-unreadable left out (only `info` listed
    them), and dump-logits stopped at the file the teacher had skipped. Now each job names them once, and
    dump-logits, evaluate and train-student read the folder as the teacher did, without being told."""
    root = make_folder(tmp_path / "imgs", per_class=(4, 2))
    (root / "train" / "ant" / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "test" / "cat" / "sub" / "notes.png").write_text("not an image")
    teacher, cache = tmp_path / "t.pt", tmp_path / "c.h5"
    r = run("train-teacher", "--dataset", "imagefolder", "--data-dir", root, "--image-size", SIZE, "--epochs", 1,
            "--batch-size", 6, "--precision", "fp32", "--workers", 0, "--skip-unreadable", "--out", teacher, "-q")
    assert r.exit_code == 0, r.output
    said = [f"warning: imagefolder/train: left out 1 unreadable file under {root / 'train'} (--skip-unreadable): "
            "ant/sub/broken.jpg",
            f"warning: imagefolder/test: left out 1 unreadable file under {root / 'test'} (--skip-unreadable): "
            "cat/sub/notes.png"]
    assert r.stderr.splitlines() == said  # each once, though the job reads the train split twice
    r = run("dump-logits", "--teacher", teacher, "--data-dir", root, "--workers", 0, "--out", cache, "-q")
    assert r.exit_code == 0 and r.stderr.splitlines() == said[:1], r.output  # inherited from the checkpoint
    assert json.loads(run("info", cache, "--json").output)["skipped_files"] == ["ant/sub/broken.jpg"]
    r = run("evaluate", "--model", teacher, "--data-dir", root, "--workers", 0)
    assert r.exit_code == 0 and r.stderr.splitlines() == said[1:] and "(6 samples)" in r.stdout, r.output
    r = run("train-student", "--cache", cache, "--data-dir", root, "--epochs", 1, "--batch-size", 6, "--workers", 0,
            "--out", tmp_path / "s.pt", "-q")
    assert r.exit_code == 0 and r.stderr.splitlines() == said, r.output
    # without --data-dir: not 'imagefolder: data/train not found' alone, but the folder each was trained on
    monkeypatch.chdir(tmp_path)
    fix = f"pass --data-dir {root}"
    one_line_error(run("train-student", "--cache", cache, "--epochs", 1, "--out", tmp_path / "s2.pt"),
                   f"imagefolder: data/train not found; the teacher of the cache {cache} was trained on {root}: {fix}")
    one_line_error(run("evaluate", "--model", tmp_path / "s.pt"),
                   f"imagefolder: data/test not found; the checkpoint {tmp_path / 's.pt'} was trained on {root}: {fix}")
    one_line_error(run("dump-logits", "--teacher", teacher, "--out", tmp_path / "c2.h5"),
                   f"imagefolder: data/train not found; the teacher {teacher} was trained on {root}: {fix}")


def test_pipeline_on_a_folder_of_images_gives_its_own_fix(tmp_path):
    """`kdcache pipeline --data-dir FOLDER` said `pass --dataset imagefolder`, an option pipeline does not have."""
    root = make_folder(tmp_path / "imgs", per_class=(1, 1))
    r = run("pipeline", "--data-dir", root, "--workdir", tmp_path / "w", "--cache", tmp_path / "c.h5")
    one_line_error(r, f"{root} looks like your own images (ROOT/train/<class>/...), and `kdcache pipeline` runs the "
                      f"Fashion-MNIST job only: run its steps on your folder, `kdcache train-teacher --dataset "
                      f"imagefolder --data-dir {root} --out teacher.pt`")
    assert "pass --dataset" not in r.output and not (tmp_path / "w").exists()


@pytest.mark.parametrize("augment, limit", [(None, None), (None, 11), ("crop-flip", None), ("crop-flip", 11),
                                            ("shift-flip", None)])
def test_a_dump_hashing_files_where_it_reads_them_equals_one_hashed_first(team, tmp_path, monkeypatch, augment, limit):
    """The deferred identity (files hashed by the decoding workers, ids per batch, fingerprint at the end; rows past
    --limit hashed then) writes the cache the hashing pass writes: ids, fingerprint, logits and views bit for bit."""
    from kdcache import cache as kcache
    from kdcache.config import DataConfig, ViewConfig
    from kdcache.data import folders
    from kdcache.jobs import dump as dump_job
    from kdcache.train.teacher import TeacherSpec

    root, weights = team
    spec = TeacherSpec(factory="team_models_if:build", weights=str(weights))
    data_cfg = DataConfig(dataset="imagefolder", data_dir=str(root), image_size=SIZE, limit=limit, workers=0)
    views = ViewConfig(augment=augment, views=3 if augment else 1)
    hashed_files = []  # what the deferred dump hashes in a pass: only the rows past --limit, which it never reads
    real_hash_files = folders.hash_files
    monkeypatch.setattr(folders, "hash_files", lambda paths, **kw: hashed_files.append(len(paths)) or
                        real_hash_files(paths, **kw))
    deferred = dump_job.dump_logits(spec, tmp_path / "deferred.h5", data_cfg=data_cfg, views=views)
    assert hashed_files == ([18 - limit] if limit else [])
    monkeypatch.setattr(dump_job, "defers_identity", lambda *a: False)  # the hashing pass first, as before
    hashed = dump_job.dump_logits(spec, tmp_path / "hashed.h5", data_cfg=data_cfg, views=views)
    ref = load_dataset("imagefolder", "train", root, limit, image_size=SIZE, workers=0)
    assert deferred["request"] == hashed["request"]
    assert deferred["request"]["dataset_fingerprint"] == ref.info.fingerprint
    with kcache.open_cache(tmp_path / "deferred.h5") as a, kcache.open_cache(tmp_path / "hashed.h5") as b:
        assert a.meta.dataset_fingerprint == b.meta.dataset_fingerprint == ref.info.fingerprint
        assert a.meta.content_sha256 == b.meta.content_sha256
        assert np.array_equal(a.sample_ids, ref.sample_ids) and np.array_equal(b.sample_ids, ref.sample_ids)
        rows = np.arange(len(ref))
        assert np.array_equal(a.read(rows), b.read(rows)) and len(ref) == (limit or 18)
        if augment:
            assert np.array_equal(a.read_view_params(rows), b.read_view_params(rows))


def test_a_file_changed_after_a_deferred_dump_is_caught_and_named(team, tmp_path, monkeypatch):
    """A dump that hashed its files as it read them (no pass) is reused by the same folder (--reuse compares the
    request, fingerprint included, made by the pass), and a file changed since is named by verify and redumped."""
    from kdcache.config import DataConfig, RunOptions
    from kdcache.data import folders
    from kdcache.jobs.dump import dump_logits
    from kdcache.train.teacher import TeacherSpec

    root, weights = team
    spec = TeacherSpec(factory="team_models_if:build", weights=str(weights))
    data_cfg = DataConfig(dataset="imagefolder", data_dir=str(root), image_size=SIZE, workers=0)
    cache, passes = tmp_path / "c.h5", []
    real_hash_files = folders.hash_files
    monkeypatch.setattr(folders, "hash_files", lambda paths, **kw: passes.append(len(paths)) or
                        real_hash_files(paths, **kw))
    first = dump_logits(spec, cache, data_cfg=data_cfg)
    assert passes == [] and not first["reused"]  # deferred: no hashing pass
    again = dump_logits(spec, cache, data_cfg=data_cfg, run=RunOptions(reuse=True))
    assert passes == [18] and again["reused"] and again["request"] == first["request"]  # --reuse: the pass first
    edited = sorted((root / "train" / "cat" / "sub").iterdir())[1]
    edited.write_bytes(edited.read_bytes() + b"\0")
    v = run("verify", cache, "--data-dir", root)
    assert v.exit_code == 1 and "1 file(s) added or changed (first: cat/sub/" + edited.name in v.output, v.output
    redone = dump_logits(spec, cache, data_cfg=data_cfg, run=RunOptions(reuse=True))
    assert not redone["reused"] and redone["request"]["dataset_fingerprint"] != first["request"]["dataset_fingerprint"]


def test_evaluate_takes_the_skip_unreadable_its_message_suggests(tmp_path):
    """A new user's trial: a corrupt file in the test split made `evaluate` say `pass --skip-unreadable`, an
    option it did not have (exit 2 on the next try); the only way on was deleting the file."""
    root = make_folder(tmp_path / "imgs", per_class=(3, 2))
    teacher = tmp_path / "t.pt"
    r = run("train-teacher", "--dataset", "imagefolder", "--data-dir", root, "--image-size", SIZE, "--epochs", 1,
            "--batch-size", 6, "--precision", "fp32", "--workers", 0, "--out", teacher, "-q")
    assert r.exit_code == 0, r.output
    (root / "test" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    one_line_error(run("evaluate", "--model", teacher, "--data-dir", root, "--workers", 0), "--skip-unreadable")
    r = run("evaluate", "--model", teacher, "--data-dir", root, "--workers", 0, "--skip-unreadable")
    assert r.exit_code == 0 and "cat/broken.jpg" in r.stderr and "(6 samples)" in r.stdout, r.output


def test_the_recorded_folder_is_suggested_for_a_missing_folder_only():
    """A new user's trial: `dump-logits --teacher t.pt --dataset hf:/nowhere` suggested `pass --data-dir` the
    teacher's image folder, though a Hugging Face dataset was asked for and --data-dir is not its fix."""
    from kdcache.errors import DataError
    from kdcache.jobs.recorded import with_recorded_folder

    reading = {"data_dir": "/photos"}
    folder = DataError("imagefolder: data/train not found; lay the data out as ROOT/train/<class>/<image>")
    assert str(with_recorded_folder(folder, "data", reading, "the teacher t.pt")) == (
        "imagefolder: data/train not found; the teacher t.pt was trained on /photos: pass --data-dir /photos")
    hf = DataError("hf:/nowhere not found; give a folder written by save_to_disk, or a folder of Parquet files")
    assert with_recorded_folder(hf, "data", reading, "the teacher t.pt") is hf
