"""kdcache.data.loader: the one loader, index batches through a DataLoader, in order, from memory or from files in workers."""
import pytest
import torch
from conftest import make_photo_folder

from kdcache.data.images import FileImages, InputTransform
from kdcache.data.loader import LoaderConfig, available_cpus, make_loader, resolve_workers
from kdcache.data.samples import ImageData, normalize
from kdcache.errors import ConfigError, DataError
from kdcache.identity import DatasetInfo

RAW = LoaderConfig(standardize=False)


def rows_of(images) -> ImageData:
    """An ImageData over ``images`` (a tensor or a lazy source) with labels 0..n-1."""
    n = len(images)
    info = DatasetInfo(name="t", split="train", num_samples=n, class_names=tuple(map(str, range(n))),
                       in_channels=int(images.shape[1]), image_size=tuple(images.shape[2:]), mean=(0.5,) * int(images.shape[1]),
                       std=(0.25,) * int(images.shape[1]), fingerprint="x")
    import numpy as np
    return ImageData(images, torch.arange(n), torch.arange(n), np.zeros(n, np.uint64), info)


def test_default_workers_follow_the_cpus_for_files_only(monkeypatch):
    monkeypatch.setattr("kdcache.data.loader.available_cpus", lambda: 12)
    files = FileImages(".", ["a.jpg"], InputTransform(16))
    assert resolve_workers(None, files) == 8 and resolve_workers(None, torch.zeros(1, 1, 2, 2)) == 0
    monkeypatch.setattr("kdcache.data.loader.available_cpus", lambda: 2)
    assert resolve_workers(None, files) == 2 and resolve_workers(3, files) == 3 and resolve_workers(0, files) == 0
    with pytest.raises(ConfigError, match="--workers -1"):
        resolve_workers(-1, files)
    assert available_cpus() >= 1


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_arrive_in_the_order_asked_for(tmp_path, workers):
    root = make_photo_folder(tmp_path / "p", classes=("a",), per_class=(10, 0), unlabelled=True)
    files = FileImages(root, sorted(p.relative_to(root).as_posix() for p in root.rglob("*.*")), InputTransform(16))
    every = files[torch.arange(10)]
    order = [torch.tensor([3, 1]), torch.tensor([9]), torch.tensor([0, 2, 4, 5]), torch.tensor([8, 7, 6])]
    cfg = LoaderConfig(workers=workers, standardize=False)
    got = list(make_loader(rows_of(files), cfg, batches=iter(order)))  # a generator works: consumed lazily
    assert [tuple(g.images.shape) for g in got] == [(len(o), 3, 16, 16) for o in order]
    for g, o in zip(got, order):
        assert torch.equal(g.images, every[o]) and torch.equal(g.labels, o)
    memory = torch.arange(40, dtype=torch.uint8).view(10, 1, 2, 2)
    got = list(make_loader(rows_of(memory), RAW, batches=order))
    assert torch.equal(torch.cat([g.images for g in got]), memory[torch.cat(order)])


def test_batches_are_standardised_on_the_device_and_follow_the_sampler():
    memory = torch.arange(40, dtype=torch.uint8).view(10, 1, 2, 2)
    loader = make_loader(rows_of(memory), LoaderConfig(batch_size=4, shuffle=True, seed=3))
    assert len(loader) == 3
    first = list(loader)
    assert [len(b.labels) for b in first] == [4, 4, 2]
    order = torch.cat([b.labels for b in first])
    assert sorted(order.tolist()) == list(range(10))
    for b in first:  # (x/255 - 0.5) / 0.25, the dataset's mean/std
        assert torch.equal(b.images, normalize(memory[b.labels], (0.5,), (0.25,)))
    assert torch.equal(torch.cat([b.labels for b in loader]), order)  # the same epoch again
    loader.set_epoch(1)
    assert not torch.equal(torch.cat([b.labels for b in loader]), order)


def test_a_file_that_does_not_decode_is_one_clean_error_from_a_worker(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff nope")
    files = FileImages(tmp_path, ["bad.jpg"], InputTransform(16))
    with pytest.raises(DataError) as e:
        list(make_loader(rows_of(files), LoaderConfig(workers=1), batches=[torch.tensor([0])]))
    assert str(e.value).startswith("cannot read image") and "\n" not in str(e.value)


def test_scan_is_one_ordered_pass_of_per_item_values_through_workers():
    """The identity passes (file digests, item digests) share one DataLoader construction: in order, per-item
    values kept as they are (no collation), the same with and without worker processes."""
    from kdcache.data.loader import scan

    class Squares(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitems__(self, rows):
            return [(i, bytes([i * i])) for i in rows]

    for workers in (0, 2):
        batches = list(scan(Squares(), 4, workers))
        assert [len(b) for b in batches] == [4, 4, 2]
        assert [v for b in batches for v in b] == [(i, bytes([i * i])) for i in range(10)]
