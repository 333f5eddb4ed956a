"""Hugging Face datasets as kdcache's data (kdcache.data.hf): columns from features, rows keyed by encoded bytes."""
from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, assert_error, make_photo_folder, run_cli
from PIL import Image as PILImage
from torch import nn

import kdcache
from kdcache.config import DataConfig, DumpConfig, RunOptions
from kdcache.data.cached_dataset import WrapOptions
from kdcache.data.datasets import load_dataset
from kdcache.data.hf import find_columns, is_hf_dataset, load_hf, open_hf
from kdcache.data.items import ItemKeys
from kdcache.errors import CacheError, ConfigError

datasets = pytest.importorskip("datasets")
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value  # noqa: E402

CLASSES = ("ant", "bee", "cat")


def small_model(classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, classes))


def folder_rows(root, split):
    """(encoded bytes, relative path, label) of ROOT/split's files in ImageFolder order."""
    rows = []
    for k, name in enumerate(CLASSES):
        d = root / split / name
        for f in sorted((p for p in d.rglob("*") if p.is_file()), key=lambda p: p.relative_to(d).as_posix()):
            rows.append((f.read_bytes(), f.relative_to(root / split).as_posix(), k))
    return rows


def hf_split(rows, image="image", label="label") -> Dataset:
    return Dataset.from_dict({image: [{"bytes": b, "path": p} for b, p, _ in rows], label: [k for _, _, k in rows]},
                             features=Features({image: Image(), label: ClassLabel(names=list(CLASSES))}))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_photo_folder(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def saved(folder, tmp_path_factory):
    """The photo folder as a DatasetDict (train, test) saved with save_to_disk, the same files' bytes in each row."""
    path = tmp_path_factory.mktemp("hf") / "photos"
    DatasetDict({s: hf_split(folder_rows(folder, s)) for s in ("train", "test")}).save_to_disk(str(path))
    return path


def test_columns_come_from_the_features_or_are_named(saved):
    ds = open_hf(saved, "train")
    assert is_hf_dataset(ds) and not is_hf_dataset(list(range(3)))
    cols = find_columns(ds)
    assert (cols.image, cols.label, cols.class_names) == ("image", "label", CLASSES)
    renamed = ds.rename_columns({"image": "photo", "label": "kind"})
    assert find_columns(renamed).image == "photo" and find_columns(renamed).label == "kind"
    two = renamed.add_column("coarse", [0] * len(ds)).cast_column("coarse", ClassLabel(names=["x"]))
    with pytest.raises(ConfigError, match="2 ClassLabel columns .kind, coarse.; name the one"):
        find_columns(two)
    named = find_columns(two, ItemKeys(label="coarse"))
    assert (named.image, named.label, named.class_names) == ("photo", "coarse", ("x",))


def _columns(ds, **columns):
    """A dataset of ``ds``'s encoded images and labels under other columns: name -> (feature, "image"|"label"|list)."""
    raw = ds.cast_column("image", Image(decode=False))
    values = {"image": [dict(e) for e in raw["image"]], "label": list(ds["label"])}
    return Dataset.from_dict({k: values[v] if isinstance(v, str) else v for k, (_, v) in columns.items()},
                             features=Features({k: f for k, (f, _) in columns.items()}))


@pytest.mark.parametrize("make, needle", [
    (lambda ds: ds.remove_columns(["image"]), "no Image column among ['label']"),
    (lambda ds: _columns(ds, image=(Image(), "image"), thumb=(Image(), "image"), label=(ClassLabel(names=CLASSES),
                                                                                        "label")),
     "2 Image columns (image, thumb)"),
    (lambda ds: _columns(ds, image=(Image(), "image"), label=(Value("string"), [CLASSES[k] for k in ds["label"]])),
     "ds.class_encode_column('label')"),
])
def test_bad_columns_are_one_line(saved, make, needle):
    ds = make(open_hf(saved, "train"))
    with pytest.raises(ConfigError) as e:
        kdcache.dump_logits(small_model(), saved.parent / "bad.h5", dataset=ds, data_cfg=DataConfig(workers=0))
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert not (saved.parent / "bad.h5").exists()


def test_rows_are_keyed_by_bytes_and_label_not_path_or_position(saved, folder, tmp_path):
    """A re-saved copy (elsewhere, as Parquet, without paths) has the same ids and fingerprint; a shuffled copy the
    same ids in another order; the 16-byte digests are the files' (images.file_digest)."""
    from kdcache.data.images import file_digest

    data = load_hf(saved, "train", image_size=16)
    assert data.info.name == "hf" and data.info.class_names == CLASSES and len(data) == 18
    ds = open_hf(saved, "train")
    pq = tmp_path / "pq"
    for split in ("train", "test"):
        rows = [(b, None, k) for b, _, k in folder_rows(folder, split)]  # no paths kept
        hf_split(rows).to_parquet(str(pq / f"{split}-00000-of-00001.parquet"))
    again = load_dataset("hf:" + str(pq), "train", image_size=16)
    assert np.array_equal(again.sample_ids, data.sample_ids) and again.info.fingerprint == data.info.fingerprint
    assert np.array_equal(again.images[:], data.images[:])  # same bytes, same pixels
    order = np.random.default_rng(0).permutation(len(ds))
    shuffled = hf_data_of(ds.select(order))
    assert np.array_equal(shuffled.sample_ids, data.sample_ids[order])
    from kdcache.identity import sample_ids_for

    digest = np.frombuffer(file_digest(folder / "train" / "ant" / "sub" / "img00.jpg"), np.uint8)
    assert sample_ids_for(digest[None], np.array([0]))[0] == data.sample_ids[0]
    assert data.keys[0] == "row 0 (img00.jpg)"  # save_to_disk keeps the file's name with its bytes


def hf_data_of(ds):
    from kdcache.data.hf import hf_data

    return hf_data(ds, image_size=16)


def test_hf_dump_equals_the_folder_dump_bit_for_bit(saved, folder, tmp_path):
    """The same files as a folder and as a Hugging Face dataset: the same pixels reach the teacher, so the caches'
    logits are equal bit for bit (and their 16-byte digests equal; ids differ by the folder rule's path)."""
    model = small_model()
    cfg = DataConfig(workers=0, image_size=24)
    kdcache.dump_logits(model, tmp_path / "hf.h5", dataset=open_hf(saved, "train"), data_cfg=cfg)
    kdcache.dump_logits(model, tmp_path / "folder.h5",
                        data_cfg=DataConfig(dataset="imagefolder", data_dir=str(folder), workers=0, image_size=24))
    with kdcache.open_cache(tmp_path / "hf.h5") as a, kdcache.open_cache(tmp_path / "folder.h5") as b:
        assert a.meta.dataset == "hf" and b.meta.dataset == "imagefolder"
        assert np.array_equal(a.read(), b.read()) and np.array_equal(a.labels, b.labels)
        assert a.meta.input_transform == b.meta.input_transform and a.meta.data_source["image_column"] == "image"


def test_cached_dataset_aligns_a_shuffled_copy_and_trains(saved, tmp_path):
    ds = open_hf(saved, "train")
    out = tmp_path / "c.h5"
    kdcache.dump_logits(small_model(), out, dataset=ds, data_cfg=DataConfig(workers=0, image_size=16))
    with kdcache.open_cache(out) as cache:
        logits = cache.read()
    order = np.random.default_rng(1).permutation(len(ds))
    shuffled = ds.select(order).flatten_indices()  # a re-written, re-ordered copy
    cached = kdcache.CachedDataset(shuffled, out)
    assert cached.alignment.checked == ("content id", "label", "class names")
    assert np.array_equal(cached.alignment.rows, order)  # row i of the copy is row order[i] of the dump
    item = cached[3]
    assert set(item) == {"image", "label", "teacher_logits"} and item["label"] == ds[int(order[3])]["label"]
    assert torch.equal(torch.as_tensor(item["teacher_logits"]), torch.as_tensor(logits[order[3]]))
    from torchvision.transforms import CenterCrop, Compose, Lambda, PILToTensor, Resize

    tf = Compose([Lambda(lambda im: im.convert("RGB")), Resize(18), CenterCrop(16), PILToTensor()])
    student = small_model()
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    loader = torch.utils.data.DataLoader(kdcache.CachedDataset(shuffled, out, transform=tf), batch_size=6,
                                         shuffle=True, collate_fn=kdcache.collate)
    losses = []
    for batch in loader:
        loss = kdcache.kd_loss(student(batch["image"].float() / 255), batch["teacher_logits"], batch["label"],
                               temperature=4.0, alpha=0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert len(losses) == 3 and all(np.isfinite(losses))


def test_a_changed_row_is_named(saved, tmp_path):
    ds = open_hf(saved, "train")
    out = tmp_path / "c.h5"
    kdcache.dump_logits(small_model(), out, dataset=ds, data_cfg=DataConfig(workers=0, image_size=16))
    buf = io.BytesIO()
    PILImage.new("RGB", (20, 20), (1, 2, 3)).save(buf, format="PNG")
    changed = _replace_row(ds, 4, buf.getvalue())
    with pytest.raises(CacheError, match=r"1 of 18 rows of the Hugging Face dataset are not in the cache "
                                         r"\(first: row 4 \(img04.jpg\)\)"):
        kdcache.CachedDataset(changed, out)
    relabelled = ds.map(lambda r, i: {"label": 1 if i == 0 else r["label"]}, with_indices=True)
    with pytest.raises(CacheError, match=r"first: row 0 \(img00.jpg\)"):
        kdcache.CachedDataset(relabelled, out)


def _replace_row(ds, i, data: bytes):
    images = [dict(e) for e in ds.cast_column("image", Image(decode=False))["image"]]
    images[i] = {"bytes": data, "path": images[i]["path"]}
    return _columns(ds, image=(Image(), images), label=(ds.features["label"], "label"))


@pytest.fixture
def factory_teacher(tmp_path, monkeypatch) -> tuple[str, ...]:
    """dump-logits' teacher options for a small factory teacher, written in (and run from) tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "hffactory.py").write_text(
        "from torch import nn\nimport torch\n\ndef teacher(num_classes):\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), "
        "nn.Linear(16, num_classes))\n")
    torch.save(small_model(3).state_dict(), tmp_path / "w.pt")
    return "--teacher-factory", "hffactory:teacher", "--weights", "w.pt"


def test_cli_jobs_read_hf_path(saved, factory_teacher):
    """dump-logits (a factory teacher), info, verify --data-dir, train-student, evaluate on --dataset hf:PATH."""
    run_cli("dump-logits", *factory_teacher, "--dataset", f"hf:{saved}", "--image-size", 16, "--workers", 0,
            "--out", "c.h5", "-q")
    info = run_cli("info", "c.h5").output
    assert "data       hf/train: 18 of 18 samples" in info
    assert "source     hf (Hugging Face dataset), image column 'image', label column 'label'; rows keyed by image " \
           "bytes" in info
    r = run_cli("verify", "c.h5", "--data-dir", saved)
    assert "ok    alignment: all 18 rows match hf/train" in r.output
    r = run_cli("train-student", "--cache", "c.h5", "--dataset", f"hf:{saved}", "--epochs", 1, "--workers", 0,
                "--out", "s.pt")
    assert "student student-cnn (T=4, alpha=0.5): test accuracy" in r.output
    r = run_cli("evaluate", "--model", "s.pt", "--dataset", f"hf:{saved}", "--workers", 0)
    assert "student-cnn on hf/test (6 samples): accuracy" in r.output
    with kdcache.open_cache("c.h5") as cache:
        assert cache.meta.dataset == "hf" and cache.meta.input_transform["size"] == 16
    buf = io.BytesIO()
    PILImage.new("RGB", (20, 20), (1, 2, 3)).save(buf, format="PNG")
    ds = open_hf(saved, "train")
    DatasetDict({"train": _replace_row(ds, 4, buf.getvalue())}).save_to_disk("changed")
    r = run_cli("verify", "c.h5", "--dataset", "hf:changed", ok=False)
    assert r.exit_code == 1 and "1 file(s) added or changed (first: row 4 (img04.jpg))" in r.output, r.output
    order = np.random.default_rng(0).permutation(len(ds))
    DatasetDict({"train": ds.select(order).flatten_indices()}).save_to_disk("shuffled")
    r = run_cli("train-student", "--cache", "c.h5", "--dataset", "hf:shuffled", "--epochs", 1, "--out", "x.pt",
                ok=False)  # CLI jobs read rows in order: a shuffled copy is refused, one line (CachedDataset maps it)
    assert_error(r, "the files are the same but their order or labels differ")


def test_cli_named_columns_and_bad_input(saved, tmp_path, factory_teacher):
    ds = open_hf(saved, "train")
    two = ds.rename_columns({"image": "photo", "label": "kind"}).add_column("coarse", [0] * len(ds))
    two = two.cast_column("coarse", ClassLabel(names=["x"]))
    DatasetDict({"train": two}).save_to_disk(str(tmp_path / "two"))
    common = ("dump-logits", *factory_teacher, "--image-size", 16, "--workers", 0)
    assert_error(run_cli(*common, "--dataset", f"hf:{tmp_path / 'two'}", "--out", "x.h5", ok=False),
                 "2 ClassLabel columns (kind, coarse)", "--label-column")
    assert_error(run_cli(*common, "--dataset", f"hf:{tmp_path / 'nowhere'}", "--out", "x.h5", ok=False),
                 "not found")
    (tmp_path / "empty").mkdir()
    assert_error(run_cli(*common, "--dataset", f"hf:{tmp_path / 'empty'}", "--out", "x.h5", ok=False),
                 "is no Hugging Face dataset")
    assert_error(run_cli(*common, "--dataset", f"hf:{tmp_path / 'two'}", "--split", "test", "--out", "x.h5",
                         ok=False), "has splits train, no 'test'")
    assert_error(run_cli(*common, "--dataset", f"hf:{tmp_path / 'two'}", "--image-column", "kind",
                         "--out", "x.h5", ok=False), "column 'kind' is ClassLabel, not an Image feature")
    data = load_dataset(f"hf:{tmp_path / 'two'}", "train", image_size=16,
                        keys=ItemKeys(label="kind"))
    assert data.info.class_names == CLASSES and data.info.source["label_column"] == "kind"
    assert not (tmp_path / "x.h5").exists()


def test_kdcache_works_without_the_datasets_package(tmp_path):
    code = ("import sys; sys.modules['datasets'] = None\n"
            "import kdcache, kdcache.cli, kdcache.data.hf\n"
            "from kdcache.data.datasets import load_dataset\n"
            "try:\n    load_dataset('hf:somewhere')\nexcept kdcache.errors.ConfigError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert "needs the datasets package; pip install 'kdcache[data]'" in r.stdout


def test_unlabelled_rows_and_no_labels(saved, tmp_path):
    ds = open_hf(saved, "train").remove_columns(["label"])
    out = tmp_path / "u.h5"
    kdcache.dump_logits(small_model(), out, dataset=ds, data_cfg=DataConfig(workers=0, image_size=16),
                        dump=DumpConfig(class_names=CLASSES), run=RunOptions())
    with kdcache.open_cache(out) as cache:
        assert (cache.labels == -1).all() and cache.meta.data_source["label_column"] is None
    assert len(kdcache.CachedDataset(ds.shuffle(seed=0), out)) == 18
    labelled = open_hf(saved, "train")
    assert len(kdcache.CachedDataset(labelled, out, options=WrapOptions())) == 18  # unlabelled rows hash -1
