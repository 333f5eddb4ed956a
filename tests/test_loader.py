"""kdcache.data.loader: index batches through a DataLoader, in order, from memory or from files in workers."""
import pytest
import torch
from conftest import make_photo_folder

from kdcache.data.images import FileImages, InputTransform
from kdcache.data.loader import available_cpus, image_batches, resolve_workers
from kdcache.errors import ConfigError, DataError


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
    got = list(image_batches(files, iter(order), workers=workers))  # a generator works: consumed lazily
    assert [tuple(g.shape) for g in got] == [(len(o), 3, 16, 16) for o in order]
    for g, o in zip(got, order):
        assert torch.equal(g, every[o])
    memory = torch.arange(40, dtype=torch.uint8).view(10, 1, 2, 2)
    assert torch.equal(torch.cat(list(image_batches(memory, order))), memory[torch.cat(order)])


def test_a_file_that_does_not_decode_is_one_clean_error_from_a_worker(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff nope")
    files = FileImages(tmp_path, ["bad.jpg"], InputTransform(16))
    with pytest.raises(DataError) as e:
        list(image_batches(files, [torch.tensor([0])], workers=1))
    assert str(e.value).startswith("cannot read image") and "\n" not in str(e.value)
