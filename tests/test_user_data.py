"""dump_logits with a user's own nn.Module and map-style Dataset (kdcache.data.user_data, kdcache.train.teacher.module_teacher)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import DictItems, assert_error, make_photo_folder, run_cli
from torch import nn
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.transforms import (
    CenterCrop,
    Compose,
    Normalize,
    PILToTensor,
    Resize,
    ToTensor,
)

import kdcache
from kdcache.config import DataConfig, DumpConfig
from kdcache.data.datasets import load_dataset
from kdcache.data.folders import IMAGENET_MEAN, IMAGENET_STD
from kdcache.data.samples import normalize
from kdcache.errors import ConfigError, DataError, KDCacheError


def small_model(classes: int = 3, channels: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, classes))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_photo_folder(tmp_path_factory.mktemp("photos"))


def image_folder(root, *tail):
    return ImageFolder(str(root / "train"), transform=Compose([Resize(18), CenterCrop(16), *tail]))


def test_imagefolder_and_module_teacher(folder, tmp_path):
    ds = image_folder(folder, PILToTensor())
    model = small_model()
    out = tmp_path / "c.h5"
    r = kdcache.dump_logits(model, out, dataset=ds, data_cfg=DataConfig(workers=0))
    assert r["rows"] == len(ds) == 18 and r["num_classes"] == 3
    ref = load_dataset("imagefolder", "train", folder, image_size=16, workers=0)
    with kdcache.open_cache(out) as cache:
        logits = cache.read()
        assert list(cache.labels) == ds.targets
        assert np.array_equal(cache.sample_ids, ref.sample_ids)
        assert cache.meta.dataset_fingerprint == ref.info.fingerprint
        assert cache.meta.teacher_arch == "module:torch.nn.modules.container.Sequential"
        assert list(cache.class_names) == ds.classes
    rows = [0, 7, 17]
    images = torch.stack([ds[i][0] for i in rows])
    with torch.no_grad():
        expect = model(normalize(images, IMAGENET_MEAN, IMAGENET_STD))
    assert torch.allclose(torch.from_numpy(np.asarray(logits[rows], np.float32)), expect, atol=1e-5)


def test_float_images_are_used_as_returned(folder, tmp_path):
    ds = image_folder(folder, ToTensor(), Normalize((0.4, 0.5, 0.6), (0.2, 0.3, 0.25)))
    model = small_model()
    out = tmp_path / "f.h5"
    kdcache.dump_logits(model, out, dataset=ds, data_cfg=DataConfig(workers=0))
    with kdcache.open_cache(out) as cache:
        logits = np.asarray(cache.read(), np.float32)
        assert list(cache.meta.normalization_mean) == [0.0] * 3 and list(cache.meta.normalization_std) == [1.0] * 3
    with torch.no_grad():
        expect = model(torch.stack([ds[i][0] for i in (1, 5)]))
    assert torch.allclose(torch.from_numpy(logits[[1, 5]]), expect, atol=1e-5)


class Items(Dataset):
    """A plain Dataset: no .targets, no .samples; ``bad`` breaks the item contract."""

    classes = ["a", "b"]

    def __init__(self, bad: str | None = None):
        self.bad = bad

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int):
        side = 9 if self.bad == "shapes" and i == 4 else 8
        image = torch.full((3, side, side), i * 10, dtype=torch.uint8)
        if self.bad == "items":
            return image
        if self.bad == "labels":
            return image, "cat"
        return image, i % 2, "extra"


def test_plain_dataset_ids_from_items(tmp_path):
    model = small_model(2)
    a = kdcache.dump_logits(model, tmp_path / "a.h5", dataset=Items(), data_cfg=DataConfig(workers=0))
    kdcache.dump_logits(model, tmp_path / "b.h5", dataset=Items(), data_cfg=DataConfig(workers=2))
    assert a["rows"] == 6
    with kdcache.open_cache(tmp_path / "a.h5") as ca, kdcache.open_cache(tmp_path / "b.h5") as cb:
        assert list(ca.labels) == [0, 1] * 3
        assert np.array_equal(ca.sample_ids, cb.sample_ids) and len(set(ca.sample_ids.tolist())) == 6
        assert ca.meta.dataset.startswith("dataset:") and ca.meta.dataset.endswith("Items")


@pytest.mark.parametrize("teacher, dataset, kind, needle", [
    ("no-such-teacher.pt", None, KDCacheError, "not found"),
    (3, None, ConfigError, "got a int"),
    ("MODEL", "fashion-mnist", ConfigError, "a dataset by name goes in data_cfg=DataConfig(dataset=...)"),
    ("MODEL", 5, ConfigError, "dataset: got a int"),
    ("MODEL", Items("items"), ConfigError, "not (image, label)"),
    ("MODEL", Items("labels"), ConfigError, "not (image, label)"),
    ("MODEL", Items("shapes"), DataError, "(3, 9, 9) differs from item 0's (3, 8, 8)"),
])
def test_bad_inputs_are_one_line(tmp_path, teacher, dataset, kind, needle):
    out = tmp_path / "x.h5"
    with pytest.raises(kind) as e:
        kdcache.dump_logits(small_model(2) if teacher == "MODEL" else teacher, out, dataset=dataset, data_cfg=DataConfig(workers=0))
    assert needle in str(e.value) and "\n" not in str(e.value) and "Sequential(" not in str(e.value)
    assert not out.exists()


class Pairs(Dataset):
    """The same items as (image, label) tuples."""

    def __init__(self, items):
        self.items, self.classes = items, items.classes

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        item = self.items[i]
        return item["image"], item["label"]


def test_a_dataset_of_dict_items_dumps_as_its_tuples_would(folder, tmp_path):
    """Hugging Face style {"image", "label"} items are read by key: the same rows, labels, ids and logits as tuples."""
    model = small_model()
    items = DictItems(folder)
    r = kdcache.dump_logits(model, tmp_path / "d.h5", dataset=items, data_cfg=DataConfig(workers=0))
    kdcache.dump_logits(model, tmp_path / "t.h5", dataset=Pairs(items), data_cfg=DataConfig(workers=0))
    assert r["rows"] == 18 and r["teacher_label_agreement"] is not None
    with kdcache.open_cache(tmp_path / "d.h5") as d, kdcache.open_cache(tmp_path / "t.h5") as t:
        assert list(d.labels) == [items[i]["label"] for i in range(18)]
        assert np.array_equal(d.sample_ids, t.sample_ids) and np.array_equal(d.read(), t.read())
        assert d.meta.dataset.endswith("DictItems")
    renamed = DictItems(folder, keys=("photo", "kind"))  # keys kdcache does not guess: named, or refused
    with pytest.raises(ConfigError) as e:
        kdcache.dump_logits(model, tmp_path / "r.h5", dataset=renamed, data_cfg=DataConfig(workers=0))
    assert "dataset item 0 is a dict with keys ['photo', 'kind', 'path'], none of them an image key" in str(e.value)
    kdcache.dump_logits(model, tmp_path / "r.h5", dataset=renamed, data_cfg=DataConfig(workers=0),
                        dump=DumpConfig(image_key="photo", label_key="kind"))
    with kdcache.open_cache(tmp_path / "r.h5") as named, kdcache.open_cache(tmp_path / "d.h5") as d:
        assert np.array_equal(named.sample_ids, d.sample_ids)
    unlabelled = DictItems(folder, keys=("image", "what"))  # no label key: refused, as (image,) items are
    with pytest.raises(ConfigError, match="with no label, not \\(image, label\\) or a dict with a label key"):
        kdcache.dump_logits(model, tmp_path / "u.h5", dataset=unlabelled, data_cfg=DataConfig(workers=0))


FACTORIES = '''
import torch
from torch import nn
from torchvision.datasets import ImageFolder
from torchvision.transforms import CenterCrop, Compose, PILToTensor, Resize

def folder():
    return ImageFolder(ROOT, transform=Compose([Resize(18), CenterCrop(16), PILToTensor()]))

def broken():
    raise RuntimeError("no such folder\\nsecond line")

def listless():
    return object()

def teacher(num_classes):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, num_classes))
'''


def test_cli_dataset_factory(folder, tmp_path, monkeypatch):
    (tmp_path / "myfactories.py").write_text(f"ROOT = {str(folder / 'train')!r}\n" + FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    import myfactories

    torch.save(myfactories.teacher(3).state_dict(), tmp_path / "w.pt")
    common = ("dump-logits", "--teacher-factory", "myfactories:teacher", "--weights", "w.pt", "--workers", "0", "-q")
    run_cli(*common, "--dataset-factory", "myfactories:folder", "--out", "ok.h5")
    with kdcache.open_cache(tmp_path / "ok.h5") as cache:
        assert len(cache) == 18
    assert_error(run_cli(*common, "--dataset-factory", "myfactories:broken", "--out", "b.h5", ok=False),
                 "myfactories:broken", "no such folder")
    assert_error(run_cli(*common, "--dataset-factory", "myfactories:listless", "--out", "l.h5", ok=False),
                 "not a map-style Dataset")
    assert not (tmp_path / "b.h5").exists() and not (tmp_path / "l.h5").exists()


def test_a_checkpoint_teacher_gets_float_images_as_the_dataset_returns_them(teacher_ckpt, tmp_path):
    """`dump-logits --teacher CKPT --dataset-factory` standardised float images a second time, with the
    checkpoint's mean/std (a new user's ToTensor()+Normalize factory: 45% agreement instead of 66%)."""
    from kdcache.train.checkpoint import load_checkpoint

    names = torch.load(teacher_ckpt, weights_only=True)["config"]["class_names"]

    class Floats(Dataset):
        classes = names  # the teacher's (Fashion-MNIST's)

        def __init__(self):
            self.x = torch.randn(12, 1, 28, 28, generator=torch.Generator().manual_seed(0))  # already standardised

        def __len__(self):
            return 12

        def __getitem__(self, i):
            return self.x[i], i % 10

    data = Floats()
    kdcache.dump_logits(teacher_ckpt, tmp_path / "c.h5", dataset=data, dump=DumpConfig(class_names=Floats.classes))
    model, _ = load_checkpoint(teacher_ckpt)
    with kdcache.open_cache(tmp_path / "c.h5") as cache, torch.inference_mode():
        assert cache.meta.normalization_mean == (0.0,) and cache.meta.normalization_std == (1.0,)
        assert np.allclose(cache.read(), model.eval()(data.x).numpy(), atol=1e-5)


def test_info_says_the_inputs_were_the_datasets_own_transform(folder, tmp_path):
    """A user's transform is recorded (repr, its Normalize's statistics): info no longer claims mean 0, std 1."""
    from kdcache.cache.info import cache_info, format_info

    model = small_model()
    cases = {
        "imagenet": image_folder(folder, ToTensor(), Normalize(IMAGENET_MEAN, IMAGENET_STD)),
        "bare": image_folder(folder, ToTensor()),
        "uint8": image_folder(folder, PILToTensor()),
        "dicts": DictItems(folder),  # no .transform kdcache can see
    }
    text = {}
    for name, ds in cases.items():
        kdcache.dump_logits(model, tmp_path / f"{name}.h5", dataset=ds, data_cfg=DataConfig(workers=0))
        info = cache_info(tmp_path / f"{name}.h5")
        text[name] = format_info(info)
        assert "the dataset's own, not recorded in full" in text[name], text[name]
    info = cache_info(tmp_path / "imagenet.h5")
    record = info["user_transform"]
    assert record["normalize"] == {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    assert record["repr"].startswith("Compose( Resize(size=18") and "Normalize(mean=(0.485" in record["repr"]
    assert "\n" not in record["repr"] and record["image_dtype"] == "float32"
    assert "standardised by the dataset's transform: Normalize(mean [0.485, 0.456, 0.406], std [0.229" in text["imagenet"]
    assert "mean [0.0, 0.0, 0.0]" not in text["imagenet"] and "mean [0.0, 0.0, 0.0]" not in text["bare"]
    assert "no Normalize found in it, so their standardisation is unknown" in text["bare"]
    assert "standardised with mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225] (by kdcache, after the " \
           "dataset's transform)" in text["uint8"]
    assert "none visible on test_user_data.DictItems" in text["dicts"] or "none visible on conftest.DictItems" \
        in text["dicts"]
    with kdcache.open_cache(tmp_path / "imagenet.h5") as cache:  # what kdcache applied is still recorded as it was
        assert list(cache.meta.normalization_mean) == [0.0] * 3
    r = run_cli("info", tmp_path / "imagenet.h5")
    assert "Normalize(mean [0.485" in r.output, r.output
