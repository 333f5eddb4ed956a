"""kdcache.data.align's pieces: unwrapping Subsets, finding labels, recognising MNIST-style datasets."""
import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, Subset

from kdcache.data.align import builtin_info, dataset_labels, mnist_style, unwrap
from kdcache.errors import ConfigError
from kdcache.identity import fingerprint_for


class Pairs(Dataset):
    """A user's dataset without .targets: items (image, label)."""

    def __init__(self, labels):
        self.labels = labels
        self.reads = 0

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        self.reads += 1
        return torch.zeros(1, 2, 2), self.labels[i]


class ImagesOnly(Pairs):
    def __getitem__(self, i):
        return torch.zeros(1, 2, 2)


class FashionMNIST(Dataset):
    """Looks like torchvision's FashionMNIST (the class name and attributes are what is checked)."""

    def __init__(self, n=6, train=True):
        g = torch.Generator().manual_seed(0)
        self.data = torch.randint(0, 256, (n, 4, 4), dtype=torch.uint8, generator=g)
        self.targets = torch.arange(n) % 3
        self.classes = ["a", "b", "c"]
        self.train = train

    def __len__(self):
        return len(self.targets)


def test_unwrap_maps_nested_subsets_to_positions_in_the_base_dataset():
    base = Pairs(list(range(10)))
    inner = Subset(base, [9, 8, 7, 6, 5])
    outer = Subset(inner, [4, 0, 2])
    ds, idx = unwrap(outer)
    assert ds is base and idx.tolist() == [5, 9, 7]
    ds, idx = unwrap(outer, indices=[1])
    assert idx.tolist() == [9]
    with pytest.raises(ConfigError, match=r"indices must lie in 0\.\.2"):
        unwrap(outer, indices=[3])


def test_dataset_labels_from_targets_or_items_and_none_for_bare_images():
    fm = FashionMNIST()
    assert dataset_labels(fm, np.array([5, 1])).tolist() == [2, 1]  # .targets, no item read
    pairs = Pairs([4, 3, 2])
    assert dataset_labels(pairs, np.array([2, 0])).tolist() == [2, 4] and pairs.reads == 2
    assert dataset_labels(ImagesOnly([0, 0]), np.array([0, 1])) is None
    with pytest.raises(ConfigError, match="not class indices"):
        dataset_labels(Pairs(["cat", "dog"]), np.array([0, 1]))


def test_mnist_style_pixels_and_builtin_info():
    fm = FashionMNIST(train=False)
    pixels = mnist_style(fm)
    assert pixels.shape == (6, 1, 4, 4) and pixels.dtype == np.uint8 and np.array_equal(pixels[:, 0], fm.data.numpy())
    assert mnist_style(Pairs([0])) is None
    fm_float = FashionMNIST()
    fm_float.data = fm_float.data.float()
    assert mnist_style(fm_float) is None  # not the uint8 pixels kdcache hashes
    labels = fm.targets.numpy()
    info = builtin_info(fm, pixels, labels)
    assert (info.name, info.split, info.num_samples, info.class_names) == ("fashion-mnist", "test", 6, ("a", "b", "c"))
    assert info.fingerprint == fingerprint_for(pixels, labels) and info.image_size == (4, 4)
    assert builtin_info(fm, pixels, labels, classes=False).class_names == ()
    assert builtin_info(Pairs([0]), pixels, labels) is None
