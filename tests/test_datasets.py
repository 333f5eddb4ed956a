import numpy as np
import pytest

from kdcache.data.datasets import load_dataset
from kdcache.data.samples import normalize
from kdcache.errors import ConfigError, DataError
from kdcache.identity import fingerprint_for, sample_ids_for


def test_fashion_mnist_loads_in_memory(data_dir):
    d = load_dataset("fashion-mnist", "train", data_dir)
    assert tuple(d.images.shape) == (60000, 1, 28, 28) and d.images.dtype.is_floating_point is False
    assert d.info.num_classes == 10 and d.info.class_names[9] == "Ankle boot"
    assert len(d.sample_ids) == 60000 and len(np.unique(d.sample_ids)) > 59900  # (a few duplicate images exist)
    t = load_dataset("fashion-mnist", "test", data_dir, limit=100)
    assert len(t) == 100 and t.info.num_samples == 10000 and t.info.fingerprint != d.info.fingerprint


def test_head_keeps_identity(data_dir):
    full = load_dataset("fashion-mnist", "train", data_dir)
    head = load_dataset("fashion-mnist", "train", data_dir, limit=10)
    assert head.info == full.info
    assert np.array_equal(head.sample_ids, full.sample_ids[:10]) and head.indices.tolist() == list(range(10))


def test_ids_and_fingerprint_see_content_and_order():
    g = np.random.default_rng(0)
    imgs = g.integers(0, 256, (5, 1, 4, 4), dtype=np.uint8)
    labels = np.arange(5)
    ids = sample_ids_for(imgs, labels)
    assert ids.dtype == np.uint64 and len(set(ids.tolist())) == 5
    assert np.array_equal(sample_ids_for(imgs[::-1], labels[::-1]), ids[::-1])
    changed = imgs.copy()
    changed[2, 0, 0, 0] ^= 1
    assert sample_ids_for(changed, labels)[2] != ids[2]
    assert fingerprint_for(imgs, labels) != fingerprint_for(imgs[::-1], labels[::-1])


def test_normalize():
    import torch
    x = torch.full((1, 1, 2, 2), 255, dtype=torch.uint8)
    assert torch.allclose(normalize(x, (0.5,), (0.25,)), torch.full((1, 1, 2, 2), 2.0))


def test_errors(tmp_path):
    with pytest.raises(ConfigError, match="choose one of: fashion-mnist"):
        load_dataset("cifar10")
    with pytest.raises(ConfigError, match="split"):
        load_dataset("fashion-mnist", "val")
    with pytest.raises(DataError, match="scripts/get-data.sh"):
        load_dataset("mnist", "train", tmp_path)


def test_validation_is_held_out_from_the_end_of_the_train_split(data_dir):
    from kdcache.data.datasets import load_train_val

    train, val = load_train_val("fashion-mnist", data_dir, limit=300, val_size=5000)
    assert len(train) == 300 and len(val) == 5000
    assert train.indices[-1] == 299 and val.indices[0] == 55000 and val.indices[-1] == 59999
    whole, none = load_train_val("fashion-mnist", data_dir, limit=None, val_size=5000)
    assert none is not None and len(whole) == 55000 and whole.indices.max() == 54999  # never overlaps
    with pytest.raises(ConfigError, match="leaves no training samples"):
        load_train_val("fashion-mnist", data_dir, limit=None, val_size=60000)


def test_validation_rows_built_in_take_the_last_rows():
    from kdcache.data.datasets import validation_rows

    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    assert validation_rows(labels, 3, stratified=False).tolist() == [5, 6, 7]


def test_validation_rows_of_a_class_ordered_folder_cover_every_class():
    """An image folder is stored class by class: the last rows would validate on the last class only."""
    from kdcache.data.datasets import validation_rows

    labels = np.repeat([0, 1, 2], [50, 30, 20])  # class order, as ImageFolder stores it
    rows = validation_rows(labels, 10, stratified=True)
    assert len(rows) == 10 and np.bincount(labels[rows]).tolist() == [5, 3, 2]  # in proportion
    assert rows.tolist() == [45, 46, 47, 48, 49, 77, 78, 79, 98, 99]  # each class's last rows, sorted
    odd = validation_rows(labels, 7, stratified=True)  # 3.5, 2.1, 1.4 -> largest remainders: 4, 2, 1
    assert np.bincount(labels[odd]).tolist() == [4, 2, 1]
