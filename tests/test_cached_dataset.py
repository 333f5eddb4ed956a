"""The Dataset wrappers: any map-style dataset + a cache -> (image, label, teacher targets), checked once."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import cache_attrs
from torch.utils.data import DataLoader, DistributedSampler, Subset

from benchmarks import train_batches as memory_batches

from kdcache.cache import write_cache
from kdcache.cache.targets import TopK
from kdcache.data.cached_dataset import CachedDataset, StreamedCachedDataset, WrapOptions, collate
from kdcache.data.datasets import load_dataset
from kdcache.data.sampler import EpochSampler
from kdcache.errors import CacheError, ConfigError
from kdcache.identity import UNLABELLED, sample_ids_for
from kdcache.train.loss import kd_loss

N = 200  # cache rows: the first N training samples


@pytest.fixture(scope="module")
def fmnist(data_dir):
    """torchvision's own FashionMNIST (ToTensor), exactly as a user would build it."""
    import torchvision
    from torchvision import transforms

    return torchvision.datasets.FashionMNIST(str(data_dir), train=True, transform=transforms.ToTensor())


def index_logits(indices, classes=10):
    """Logits that name their sample: column 0 = dataset index, column 1 = index % 7."""
    z = np.zeros((len(indices), classes), dtype=np.float32)
    z[:, 0] = indices
    z[:, 1] = np.asarray(indices) % 7
    return z


@pytest.fixture(scope="module")
def kd(data_dir):
    return load_dataset("fashion-mnist", "train", data_dir, limit=N)


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory, kd):
    path = tmp_path_factory.mktemp("ds") / "c.h5"
    return write_cache(path, index_logits(np.arange(N)), kd.labels, kd.indices, kd.sample_ids, cache_attrs(kd.info),
                       chunk_rows=16)


def test_items_pair_each_image_with_its_own_targets(fmnist, cache_path):
    ds = CachedDataset(fmnist, cache_path, indices=range(N))
    assert len(ds) == N
    image, label, targets = ds[37]
    ref_image, ref_label = fmnist[37]
    assert torch.equal(image, ref_image) and label == ref_label
    assert targets.dtype == torch.float32 and targets.shape == (10,) and targets[0] == 37 and targets[1] == 37 % 7
    # a torchvision MNIST-style dataset gets kdcache's full check: content ids and the split's fingerprint
    assert set(ds.alignment.checked) >= {"index", "label", "content id", "fingerprint", "class names"}
    text = repr(ds)
    assert text.startswith("CachedDataset\n    Number of datapoints: 200") and "Dataset: FashionMNIST" in text
    assert "teacher teacher-cnn" in text and "Checked: index, label" in text


def test_dataloader_workers_and_default_collate(fmnist, cache_path):
    import os
    import pickle

    ds = CachedDataset(fmnist, cache_path, indices=range(N))
    # nothing HDF5 is left open to cross the workers' fork, and the wrapper pickles (spawn start method)
    assert not any(os.readlink(f"/proc/self/fd/{fd}") == str(cache_path) for fd in os.listdir("/proc/self/fd")
                   if os.path.exists(f"/proc/self/fd/{fd}"))
    assert torch.equal(pickle.loads(pickle.dumps(ds))[7][2], ds[7][2])
    loader = DataLoader(ds, batch_size=32, shuffle=True, num_workers=2, generator=torch.Generator().manual_seed(0))
    seen = []
    for images, labels, targets in loader:
        idx = targets[:, 0].long()
        assert torch.equal(labels, fmnist.targets[idx])
        assert torch.equal(images, torch.stack([fmnist[int(i)][0] for i in idx]))  # each image met its targets
        seen.append(idx)
    assert sorted(torch.cat(seen).tolist()) == list(range(N))


def test_subsets_and_indices_map_to_the_split(fmnist, cache_path):
    sub = Subset(Subset(fmnist, list(range(100, 150))), [5, 3, 9])  # split samples 105, 103, 109
    ds = CachedDataset(sub, cache_path)
    assert [int(ds[i][2][0]) for i in range(3)] == [105, 103, 109]
    assert "through Subset" in repr(ds)
    ds = CachedDataset(fmnist, cache_path, indices=[7, 2])
    assert [int(ds[i][2][0]) for i in range(2)] == [7, 2] and ds[0][1] == int(fmnist.targets[7])


def test_distributed_sampler_splits_the_items(fmnist, cache_path):
    ds = CachedDataset(fmnist, cache_path, indices=range(N))
    parts = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=3)
        parts.append([int(t[0]) for _, _, targets in DataLoader(ds, batch_size=50, sampler=sampler)
                      for t in targets])
    assert len(parts[0]) == len(parts[1]) == N // 2
    assert sorted(parts[0] + parts[1]) == list(range(N)) and not set(parts[0]) & set(parts[1])


def test_misaligned_data_is_refused_with_one_line(fmnist, cache_path, data_dir, tmp_path, kd):
    cases = []
    # not every sample is in the cache
    cases.append((lambda: CachedDataset(fmnist, cache_path), "are not in it (first missing dataset index 200)"))
    # the cache of another split
    test = load_dataset("fashion-mnist", "test", data_dir, limit=N)
    other = write_cache(tmp_path / "test.h5", index_logits(np.arange(N)), test.labels, test.indices, test.sample_ids,
                        cache_attrs(test.info))
    cases.append((lambda: CachedDataset(fmnist, other, indices=range(N)), "made from fashion-mnist/test"))
    # ... also when most of the other split's indices are missing: the split, not the coverage, is what is wrong
    cases.append((lambda: CachedDataset(fmnist, other), "made from fashion-mnist/test, but the data is "
                                                        "fashion-mnist/train"))

    class Relabelled(torch.utils.data.Dataset):  # the user's own dataset, one label changed
        targets = fmnist.targets[:N].clone()
        targets[11] = (targets[11] + 1) % 10

        def __len__(self):
            return N

        def __getitem__(self, i):
            return fmnist[i][0], int(self.targets[i])
    cases.append((lambda: CachedDataset(Relabelled(), cache_path), "1 of 200 rows disagree with the data sample "
                                                                    "at their index (1 by label"))

    class Edited(torch.utils.data.Dataset):  # MNIST-style arrays, one pixel changed: caught by content id
        data = fmnist.data[:N].clone()
        data[12, 3, 3] ^= 1
        targets = fmnist.targets[:N]

        def __len__(self):
            return N

        def __getitem__(self, i):
            return self.data[i], int(self.targets[i])
    cases.append((lambda: CachedDataset(Edited(), cache_path), "(0 by label, 1 by content id; first: dataset index 12)"))

    class OtherClasses(Relabelled):
        targets = fmnist.targets[:N]
        classes = [f"k{i}" for i in range(10)]
    cases.append((lambda: CachedDataset(OtherClasses(), cache_path), "the cache is for another label set"))
    for make, needle in cases:
        with pytest.raises(CacheError) as e:
            make()
        assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert len(CachedDataset(Edited(), cache_path, options=WrapOptions(check_content=False))) == N  # checks can be switched off


def test_datasets_without_targets_labels_or_labels_at_all(fmnist, cache_path):
    class Plain(torch.utils.data.Dataset):  # no .targets: labels are read once
        def __init__(self):
            self.reads = 0

        def __len__(self):
            return 50

        def __getitem__(self, i):
            self.reads += 1
            return fmnist[i]
    plain = Plain()
    ds = CachedDataset(plain, cache_path)
    assert plain.reads == 50 and "label" in ds.alignment.checked
    plain = Plain()
    CachedDataset(plain, cache_path, options=WrapOptions(labels=fmnist.targets[:50].tolist()))
    assert plain.reads == 1  # labels given: only item 0 read, to check what the items are (kdcache.data.items)
    with pytest.raises(CacheError, match="disagree"):
        CachedDataset(Plain(), cache_path, options=WrapOptions(labels=[0] * 50))

    class Images(torch.utils.data.Dataset):  # images only: nothing to compare, the cache's labels come out
        def __len__(self):
            return 20

        def __getitem__(self, i):
            return fmnist[i][0]
    ds = CachedDataset(Images(), cache_path)
    assert ds.alignment.checked == ("index",) and ds[4][1] == int(fmnist.targets[4])


def test_unlabelled_rows_come_out_as_minus_one(fmnist, tmp_path, kd):
    labels = kd.labels.numpy().copy()
    labels[::3] = UNLABELLED  # a transfer set: every third row has no label
    ids = sample_ids_for(kd.images.numpy(), labels)  # an unlabelled row's id hashes -1
    path = write_cache(tmp_path / "u.h5", index_logits(np.arange(N)), labels, kd.indices, ids, cache_attrs(kd.info))
    ds = CachedDataset(fmnist, path, indices=range(N))
    assert "content id" in ds.alignment.checked and "fingerprint" not in ds.alignment.checked
    assert ds[0][1] == UNLABELLED and ds[1][1] == int(fmnist.targets[1]) and ds[3][1] == UNLABELLED
    images, y, t = next(iter(DataLoader(ds, batch_size=12)))
    assert (y == UNLABELLED).sum() == 4
    loss = kd_loss(torch.zeros(12, 10, requires_grad=True), t, y, 4.0, 0.5)
    assert torch.isfinite(loss)
    assert "Unlabelled rows: 67" in repr(ds)


def test_topk_rows_collate_and_train(fmnist, tmp_path, kd, cache_path):
    z = np.random.default_rng(0).normal(0, 4, (N, 10)).astype(np.float32)
    path = write_cache(tmp_path / "k.h5", z, kd.labels, kd.indices, kd.sample_ids, cache_attrs(kd.info), topk=3)
    ds = CachedDataset(fmnist, path, indices=range(N))
    row = ds[5][2]
    assert isinstance(row, TopK) and row.logits.shape == (3,) and row.classes.dtype == torch.int64
    assert torch.equal(row.classes, torch.from_numpy(np.argsort(-z[5])[:3]))
    images, labels, targets = next(iter(DataLoader(ds, batch_size=16, collate_fn=collate, num_workers=1)))
    assert isinstance(targets, TopK) and targets.logits.shape == (16, 3) and targets.tail_mean.shape == (16,)
    assert targets.tail_logsumexp_t2.shape == (16,)  # every field of the rows, stacked (kdcache.cache.targets.stack)
    assert images.shape == (16, 1, 28, 28) and labels.dtype == torch.int64
    student = torch.zeros(16, 10, requires_grad=True)
    kd_loss(student, targets, labels, 4.0, 0.5).backward()
    assert student.grad.abs().sum() > 0
    # dense caches: collate is default_collate
    dense = CachedDataset(fmnist, cache_path, indices=range(4))
    images, labels, targets = collate([dense[0], dense[1]])
    assert targets.shape == (2, 10) and labels.tolist() == fmnist.targets[:2].tolist() and images.shape == (2, 1, 28, 28)


def test_over_the_memory_limit_targets_are_read_from_the_file_giving_the_same_batches(fmnist, cache_path):
    memory = CachedDataset(fmnist, cache_path, indices=range(N))
    with CachedDataset(fmnist, cache_path, indices=range(N), options=WrapOptions(memory_limit_mb=0.001)) as streamed:
        assert streamed.streamed and not memory.streamed and "read from the file" in repr(streamed)
        assert streamed.block_rows == memory.block_rows
        assert streamed_epoch(streamed, 0) == streamed_epoch(memory, 0)  # the same order, the same rows
        assert streamed.targets.reads == -(-N // streamed.block_rows)  # in block order: each block read once
        assert streamed_epoch(streamed, 1) == streamed_epoch(memory, 1)


def streamed_epoch(ds, epoch, workers=0, batch_size=16, rank=0, world_size=1):
    """The items' rows of one epoch read in kdcache's block order (the sampler make_loader uses)."""
    ds.set_epoch(epoch)
    sampler = EpochSampler(len(ds), batch_size, seed=1, rank=rank, world_size=world_size, block_rows=ds.block_rows)
    sampler.set_epoch(epoch)
    out = []
    for images, labels, targets in DataLoader(ds, batch_sampler=sampler, num_workers=workers):
        idx = targets[:, 0].long()
        assert torch.equal(labels, ds.base.targets[idx])
        assert torch.equal(images, torch.stack([ds.base[int(i)][0] for i in idx]))
        out += idx.tolist()
    return out


def test_streamed_epochs_cover_every_sample_once_in_workers_and_ranks(fmnist, cache_path):
    with StreamedCachedDataset(fmnist, cache_path, indices=range(N), seed=1) as ds:
        assert len(ds) == N and "Checked: index, label" in repr(ds)
        first = streamed_epoch(ds, 0)
        assert sorted(first) == list(range(N)) and first != list(range(N))  # all, once, shuffled
        assert streamed_epoch(ds, 0) == first and streamed_epoch(ds, 1) != first  # seeded by epoch
        assert sorted(streamed_epoch(ds, 0, workers=2)) == list(range(N))
    with StreamedCachedDataset(fmnist, cache_path, indices=range(N)) as ds:
        parts = [streamed_epoch(ds, 0, rank=rank, world_size=2) for rank in range(2)]
    assert sorted(parts[0] + parts[1]) == list(range(N))
    assert len(parts[0]) == len(parts[1]) == N // 2  # each rank half of every global batch


def test_streamed_topk_and_subsets(fmnist, tmp_path, kd):
    z = index_logits(np.arange(N))
    path = write_cache(tmp_path / "k.h5", z, kd.labels, kd.indices, kd.sample_ids, cache_attrs(kd.info), topk=2)
    with StreamedCachedDataset(Subset(fmnist, range(40, 60)), path) as ds:
        batches = list(DataLoader(ds, batch_size=8, collate_fn=collate))
    assert all(isinstance(t, TopK) for _, _, t in batches)
    assert sorted(int(v) for _, _, t in batches for v in t.logits[:, 0]) == list(range(40, 60))


def test_torchvision_imagefolder_over_a_cache_of_kdcache_imagefolder(tmp_path):
    """kdcache's imagefolder rows are torchvision ImageFolder's samples in the same order: index, label, classes check."""
    import torchvision
    from test_folders import make_folder
    from torchvision import transforms

    root = make_folder(tmp_path / "imgs")
    kd = load_dataset("imagefolder", "train", root, image_size=16)
    path = write_cache(tmp_path / "if.h5", index_logits(np.arange(len(kd)), classes=3), kd.labels, kd.indices,
                       kd.sample_ids, cache_attrs(kd.info))
    # torchvision's reference evaluation transform at 16: kdcache's input transform is exactly this
    tf = transforms.Compose([transforms.Resize(18), transforms.CenterCrop(16), transforms.ToTensor()])
    folder = torchvision.datasets.ImageFolder(str(root / "train"), transform=tf)
    ds = CachedDataset(folder, path)
    assert ds.alignment.checked == ("index", "label", "class names", "content id")
    for i in (0, 11, 16):  # RGB JPEGs (other modes: kdcache scales 16-bit and keeps palette transparency)
        image, label, targets = ds[i]
        assert int(targets[0]) == i and label == folder.targets[i] and image.shape == (3, 16, 16)
        assert torch.equal((image * 255).round().to(torch.uint8), kd.images[i])  # the very pixels kdcache cached
    other = make_folder(tmp_path / "other", seed=1)  # the same layout and names, other images: refused
    with pytest.raises(CacheError, match=r"images changed since the dump: 18 file\(s\) added or changed \(first: "
                                         r"ant/sub/img00.jpg"):  # named, as the CLI names them
        CachedDataset(torchvision.datasets.ImageFolder(str(other / "train"), transform=tf), path)


def test_set_epoch_reaches_persistent_workers(fmnist, cache_path):
    class Probe(CachedDataset):  # what a worker's copy believes the epoch is
        def targets_of(self, items, views):
            return torch.full((len(items),), self.epoch)

    probe = Probe(fmnist, cache_path, indices=range(32))
    loader = DataLoader(probe, batch_size=16, num_workers=2, persistent_workers=True)
    for epoch in (0, 3, 4):
        probe.set_epoch(epoch)
        assert [t.tolist() for _, _, t in loader] == [[epoch] * 16] * 2
    with StreamedCachedDataset(fmnist, cache_path, indices=range(N)) as ds:
        orders = {e: streamed_epoch(ds, e) for e in (0, 1)}
        sampler = EpochSampler(len(ds), 16, seed=1, block_rows=ds.block_rows)
        loader = DataLoader(ds, batch_sampler=sampler, num_workers=1, persistent_workers=True)
        for e in (0, 1, 0):
            ds.set_epoch(e)
            sampler.set_epoch(e)
            assert [int(v) for _, _, t in loader for v in t[:, 0]] == orders[e]


def test_a_no_labels_cache_is_checked_by_ids_and_fingerprint_with_labels_ignored(fmnist, tmp_path, data_dir):
    """dump-logits --no-labels: every row -1, ids and fingerprint computed with -1 (docs/cache-format.md)."""
    bare = load_dataset("fashion-mnist", "train", data_dir, limit=N, ignore_labels=True)
    assert bare.num_labelled == 0
    teacher_classes = [str(c) for c in fmnist.classes]  # data read unlabelled has none; the teacher names them
    path = write_cache(tmp_path / "nl.h5", index_logits(np.arange(N)), bare.labels, bare.indices, bare.sample_ids,
                       cache_attrs(bare.info, class_names=teacher_classes))
    ds = CachedDataset(fmnist, path, indices=range(N))
    assert {"content id", "fingerprint"} <= set(ds.alignment.checked)
    assert {ds[i][1] for i in range(10)} == {UNLABELLED}  # the cache holds no labels, so none come out
    fmnist.data[3, 0, 0] ^= 1  # one pixel of the split changed: its fingerprint (and that row's id) no longer match
    try:
        with pytest.raises(CacheError, match="was made from different fashion-mnist/train data"):
            CachedDataset(fmnist, path, indices=range(N))
    finally:
        fmnist.data[3, 0, 0] ^= 1


# ------------------------------------------------------------------------------------------- augmentation views

NV, V = 64, 3  # rows and views of the dumped view caches


@pytest.fixture(scope="module", params=["shift-flip", "crop-flip"])
def dumped_views(request, tmp_path_factory, teacher_ckpt, data_dir):
    """`dump-logits --views 3 --augment POLICY --include-original` over the first NV training images."""
    from conftest import run_cli

    out = tmp_path_factory.mktemp("views") / "v.h5"
    run_cli("dump-logits", "--teacher", teacher_ckpt, "--out", out, "--limit", NV, "--data-dir", data_dir, "--views", V,
            "--augment", request.param, "--include-original", "--view-seed", 2, "-q")
    return out


def marked_views(path, kd, *, views=V, topk=0, unlabelled=False, policy="shift-flip"):
    """A cache with views whose logits name their (row, view): z[i, v, 0] = 100 + i, z[i, v, 1] = 50 + v."""
    from kdcache.data.augment import parse_policy, view_record
    from kdcache.data.view_schedule import sample_views

    z = np.random.default_rng(0).normal(size=(len(kd), views, 10)).astype(np.float32)
    z[:, :, 0] = np.arange(len(kd))[:, None] + 100
    z[:, :, 1] = np.arange(views)[None, :] + 50
    labels, ids = kd.labels.numpy(), kd.sample_ids
    if unlabelled:  # a transfer set's rows: no labels, ids hash -1
        labels = labels.copy()
        labels[::4] = UNLABELLED
        ids = sample_ids_for(kd.images.numpy(), labels)
    policy = parse_policy(policy)
    params = sample_views(policy, kd.indices.numpy(), views, 1, (28, 28))
    return write_cache(path, z, labels, kd.indices, ids, cache_attrs(kd.info), topk=topk, num_views=views,
                       view_policy=view_record(policy, include_original=False, seed=1), view_params=params,
                       chunk_rows=16)


def row_and_view(targets):
    """The (row, view) the marked cache's targets name (dense rows or TopK rows, whose top two are the markers)."""
    t = targets.logits if isinstance(targets, TopK) else targets
    return (t[..., 0] - 100).round().long(), (t[..., 1] - 50).round().long()


def by_hand(policy_name, image, params):
    """A stored view replayed with torchvision's functional ops (test_augment's slow per-image reference)."""
    from test_augment import reference_view

    from kdcache.data.augment import parse_policy

    return reference_view(parse_policy(policy_name), image, params)


def test_items_are_the_replayed_view_and_its_stored_logits(fmnist, dumped_views, teacher_ckpt):
    """Through DataLoader workers: each image is its scheduled stored view, rebuilt by hand from /view_params, its
    targets that view's stored logits, and the teacher run on the (normalised) image gives those logits again."""
    from torchvision import transforms

    from kdcache.cache import open_cache
    from kdcache.data.view_schedule import view_schedule
    from kdcache.train.checkpoint import load_checkpoint

    with open_cache(dumped_views) as c:
        params, stored, policy = c.read_view_params(), torch.from_numpy(c.read()), c.meta.view_policy
    teacher, config = load_checkpoint(teacher_ckpt)
    ds = CachedDataset(fmnist, dumped_views, indices=range(NV), seed=7,
                       transform=transforms.Normalize(config["mean"], config["std"]))
    assert f"Views: 3 per item replayed ({policy['name']} v{policy['version']}" in repr(ds)
    loader = DataLoader(ds, batch_size=16, num_workers=2, persistent_workers=True)
    for epoch in (0, 4):
        ds.set_epoch(epoch)
        views = view_schedule(epoch, NV, V, 7)
        images, labels, targets = (torch.cat(column) for column in zip(*loader))  # items 0..NV-1 in order
        assert torch.equal(targets, stored[torch.arange(NV), views])
        assert torch.equal(labels, fmnist.targets[:NV])
        for i in range(NV):
            want = by_hand(policy["name"], fmnist[i][0], params[i, views[i]])
            torch.testing.assert_close(images[i], (want - config["mean"][0]) / config["std"][0], rtol=0, atol=1e-5)
        with torch.inference_mode():
            again = teacher.eval()(images)
        tol = 5e-3 * targets.abs().amax(-1).clamp_min(1.0)  # verify's float32 rule
        assert ((again - targets).abs().amax(-1) <= tol).all()
    assert (views != 0).any() and (views == 0).any()  # augmented views and the original both served


def test_each_item_shows_each_view_once_per_k_epochs_in_persistent_workers(fmnist, tmp_path, kd):
    path = marked_views(tmp_path / "m.h5", kd, unlabelled=True)  # a transfer set: labels -1 as without views
    ds = CachedDataset(fmnist, path, indices=range(N), seed=3)
    loader = DataLoader(ds, batch_size=32, shuffle=True, num_workers=2, persistent_workers=True,
                        generator=torch.Generator().manual_seed(0))
    seen = np.zeros((N, V), dtype=int)
    for epoch in range(2 * V):
        ds.set_epoch(epoch)
        for images, labels, targets in loader:
            row, view = row_and_view(targets)
            seen[row.numpy(), view.numpy()] += 1
            want = kd.labels[row].clone()
            want[row % 4 == 0] = UNLABELLED
            assert torch.equal(labels, want)
    assert (seen == 2).all()  # every row, every view, once per V epochs


def test_the_view_of_an_item_is_the_one_train_student_gives_its_row(fmnist, tmp_path, kd):
    """With the same seed and --cache-views, item i at epoch e is train-student's row i at epoch e: view, image (after
    the wrapper's Normalize) and targets, bit for bit."""
    from torchvision import transforms

    from kdcache.cache import open_cache
    from kdcache.cache.targets import as_tensors
    from kdcache.data.views import student_views

    path = marked_views(tmp_path / "m.h5", kd)
    with open_cache(path) as c:  # what train_student builds for this cache (jobs.student_targets.student_targets)
        rows = c.align(kd.indices.numpy(), labels=kd.labels.numpy(), sample_ids=kd.sample_ids, info=kd.info)
        plan, record = student_views([c], [rows], kd, augment=None, alpha=0.5, cache_views=2, seed=5)
        targets = as_tensors(c.read(rows))[:, :record["views"]]
    memory = memory_batches(kd, N, shuffle=False, seed=5, targets=targets, views=plan)
    ds = CachedDataset(fmnist, path, indices=range(N), cache_views=2, seed=5,
                       transform=transforms.Normalize(kd.info.mean, kd.info.std))
    loader = DataLoader(ds, batch_size=N, num_workers=2, persistent_workers=True)
    for epoch in range(4):
        memory.set_epoch(epoch)
        ds.set_epoch(epoch)
        (batch,), (images, labels, t) = list(memory), next(iter(loader))
        assert set(row_and_view(t)[1].tolist()) == {0, 1}  # only the first K' = 2 of 3 views
        assert torch.equal(t, batch.teacher_logits) and torch.equal(images, batch.images)
        assert torch.equal(labels, batch.labels)
        assert all(torch.equal(ds[i][0], images[i]) for i in (0, 77))  # one item alone: the same view as in a batch
    other = CachedDataset(fmnist, path, indices=range(N), cache_views=2, seed=6)  # another seed, other views
    other.set_epoch(3)
    assert any(not torch.equal(other[i][2], ds[i][2]) for i in range(N))


def test_top_k_caches_with_views_give_that_views_top_k_row(fmnist, tmp_path, kd):
    from kdcache.cache import open_cache
    from kdcache.cache.targets import as_tensors

    path = marked_views(tmp_path / "k.h5", kd, topk=3)
    with open_cache(path) as c:
        stored = as_tensors(c.read())  # TopK (N, V, 3)
    ds = CachedDataset(fmnist, path, indices=range(N))
    ds.set_epoch(1)
    _, _, t = next(iter(DataLoader(ds, batch_size=40, shuffle=True, collate_fn=collate, num_workers=2)))
    assert isinstance(t, TopK) and t.logits.shape == (40, 3) and t.tail_logsumexp_t2.shape == (40,)
    row, view = row_and_view(t)
    assert torch.equal(view, torch.from_numpy(ds.views.schedule(1))[row])
    want = stored[(row, view)]
    for field in ("logits", "classes", "tail_logsumexp", "tail_mean", "tail_logsumexp_t2"):
        assert torch.equal(getattr(t, field), getattr(want, field).to(getattr(t, field).dtype)), field


def test_images_that_are_not_float_tensors_in_0_1_are_refused_with_one_line(data_dir, tmp_path, kd, fmnist,
                                                                             cache_path):
    import torchvision
    from torchvision import transforms

    path = marked_views(tmp_path / "m.h5", kd)
    cases = [
        (transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.286,), (0.353,))]),
         "item 0's image has values in [-0.81, 2.02], not [0, 1] (normalised?)"),
        (None, "item 0's image is a PIL.Image.Image"),
        (transforms.PILToTensor(), "item 0's image is a torch.uint8 tensor of shape (1, 28, 28)"),
    ]
    for tf, needle in cases:
        base = torchvision.datasets.FashionMNIST(str(data_dir), train=True, transform=tf)
        for cls in (CachedDataset, StreamedCachedDataset):
            with pytest.raises(ConfigError) as e:
                cls(base, path, indices=range(N))
            message = str(e.value)
            assert needle in message and "\n" not in message, message
            assert "ToTensor()" in message and "transform=, which runs after the view" in message

    class Mixed(torch.utils.data.Dataset):  # fine at first, one item later breaks the contract
        targets = fmnist.targets[:N]

        def __len__(self):
            return N

        def __getitem__(self, i):
            image, label = fmnist[i]
            return (image * 2 if i == 9 else image[:, :27] if i == 11 else image), label
    ds = CachedDataset(Mixed(), path)
    with pytest.raises(ConfigError, match=r"item 9's image has values in \[0, 2\]"):
        ds[9]
    with pytest.raises(ConfigError, match="item 11's image is 27x28, earlier ones 28x28"):
        ds[11]
    small = torchvision.datasets.FashionMNIST(str(data_dir), transform=transforms.Compose([transforms.Resize(20),
                                                                                           transforms.ToTensor()]))
    crops = marked_views(tmp_path / "c.h5", kd, policy="crop-flip")  # boxes relative to the image: any size replays
    assert CachedDataset(small, crops, indices=range(N))[0][0].shape == (1, 20, 20)
    from kdcache.data.augment import CropFlipV1
    old = marked_views(tmp_path / "v1.h5", kd, policy=CropFlipV1())  # v1 pixel boxes in 28x28 images do not fit 20x20
    with pytest.raises(CacheError, match="cannot be views of 20x20 images: .*give the images the size the teacher saw"):
        CachedDataset(small, old, indices=range(N))
    with pytest.raises(ConfigError, match=r"cache_views=4: .* stores 3 views per image; use 1..3"):
        CachedDataset(fmnist, path, indices=range(N), cache_views=4)
    with pytest.raises(ConfigError, match="stores one view per image"):
        CachedDataset(fmnist, cache_path, indices=range(N), cache_views=2)
    # a single-view cache keeps taking any image: nothing is applied to it
    assert isinstance(CachedDataset(torchvision.datasets.FashionMNIST(str(data_dir)), cache_path, indices=range(4))[0][0],
                      __import__("PIL.Image").Image.Image)


def test_streamed_views_serve_each_item_its_scheduled_view(fmnist, tmp_path, kd):
    from kdcache.cache import open_cache
    from kdcache.data.view_schedule import view_schedule

    path = marked_views(tmp_path / "m.h5", kd)
    with open_cache(path) as c:
        params = c.read_view_params()
    with StreamedCachedDataset(fmnist, path, indices=range(N), seed=4, cache_views=2) as ds:
        assert "Views: 2 per item replayed (shift-flip v1" in repr(ds)
        ds.set_epoch(1)
        views = view_schedule(1, N, 2, 4)
        seen = []
        for images, labels, targets in DataLoader(ds, batch_size=16, num_workers=2):
            row, view = row_and_view(targets)
            assert torch.equal(view, torch.from_numpy(views)[row])
            assert torch.equal(labels, fmnist.targets[row])
            for k, i in enumerate(row.tolist()):
                assert torch.equal(images[k], by_hand("shift-flip", fmnist[i][0], params[i, views[i]]))
            seen += row.tolist()
    assert sorted(seen) == list(range(N))


# -- kdcache's own split in the wrapper: the very rows train-student reads ------------------------------------


def test_a_kdcache_split_in_the_wrapper_is_what_train_student_reads(tmp_path, kd):
    """CachedDataset(ImageData, cache) through make_loader gives, epoch by epoch, the batches train-student's
    data path builds for the same cache and seed: images (views applied), labels and that view's targets."""
    from kdcache.cache import open_cache
    from kdcache.cache.targets import as_tensors
    from kdcache.data.loader import LoaderConfig, make_loader
    from kdcache.data.views import student_views

    path = marked_views(tmp_path / "m.h5", kd)
    with open_cache(path) as c:  # what jobs.student_targets builds
        rows = c.align(kd.indices.numpy(), labels=kd.labels.numpy(), sample_ids=kd.sample_ids, info=kd.info)
        plan, _ = student_views([c], [rows], kd, augment=None, alpha=0.5, seed=5)
        targets, block_rows = as_tensors(c.read(rows)), c.chunk_rows
    theirs = memory_batches(kd, 32, seed=5, targets=targets, views=plan, block_rows=block_rows)
    ds = CachedDataset(kd, path, seed=5)
    assert len(ds) == N and "fashion-mnist/train" in repr(ds) and "stored, replayed" in repr(ds)
    mine = make_loader(ds, LoaderConfig(32, shuffle=True, seed=5))
    for epoch in range(3):
        theirs.set_epoch(epoch)
        mine.set_epoch(epoch)
        pairs = list(zip(mine, theirs))
        assert len(pairs) == len(mine) == 7
        for a, b in pairs:
            assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
            assert torch.equal(a.teacher_logits, b.teacher_logits)
        views = torch.cat([a.teacher_logits[:, 1] for a, _ in pairs]) - 50  # z[i, v, 1] = 50 + v
        assert set(views.round().long().tolist()) == set(range(V))  # every view is in use


def test_a_kdcache_split_is_checked_with_every_rule_and_takes_no_user_transforms(cache_path, kd, data_dir):
    from kdcache.data.datasets import load_dataset

    ds = CachedDataset(kd, cache_path)
    batch = ds.__getitems__([3, 1])
    assert batch.images.dtype == torch.uint8 and batch.labels.tolist() == kd.labels[[3, 1]].tolist()
    assert batch.teacher_logits.shape == (2, 10)
    other = load_dataset("fashion-mnist", "test", data_dir, limit=N)
    with pytest.raises(CacheError, match="test"):
        CachedDataset(other, cache_path)  # another split: refused by LogitCache.align
    with pytest.raises(ConfigError, match="takes no indices"):
        CachedDataset(kd, cache_path, indices=range(3))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from conftest import make_photo_folder

    return make_photo_folder(tmp_path_factory.mktemp("photos"))


def test_a_shuffled_dataset_of_dict_items_is_refused_never_paired_by_position(photos, tmp_path):
    """Hugging Face style items: read by key, checked by content id (a cache dump_logits made of them) or by label
    (a cache of the folder); a shuffled copy is refused, the one in order served as dicts with the teacher's logits."""
    from conftest import DictItems
    from test_user_data import small_model

    import kdcache
    from kdcache.config import DataConfig

    items = DictItems(photos)
    path = tmp_path / "d.h5"
    kdcache.dump_logits(small_model(), path, dataset=items, data_cfg=DataConfig(workers=0))
    order = np.random.default_rng(0).permutation(len(items))
    with pytest.raises(CacheError, match=r"rows disagree .* by content id; first: dataset index 0\)"):
        CachedDataset(DictItems(photos, order), path)  # before: accepted, item 0 paired with row 0's logits
    within = [1, 0] + list(range(2, len(items)))  # two files of one class swapped: the labels agree, the ids do not
    with pytest.raises(CacheError, match=r"2 of 18 rows disagree .* \(0 by label, 2 by content id"):
        CachedDataset(DictItems(photos, within), path)
    ds = CachedDataset(items, path)
    assert ds.alignment.checked == ("index", "label", "class names", "content id")
    with kdcache.open_cache(path) as cache:
        logits = torch.from_numpy(np.asarray(cache.read(), np.float32))
    item = ds[5]
    assert set(item) == {"image", "label", "path", "teacher_logits"} and item["label"] == items[5]["label"]
    assert torch.equal(item["teacher_logits"], logits[5]) and torch.equal(item["image"], items[5]["image"])
    batch = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate)))  # a dict of batches
    assert batch["image"].shape == (4, 3, 16, 16) and torch.equal(batch["teacher_logits"], logits[:4])
    # another transform of the same files (ToTensor: float) is not the dumped bytes: checked by label, not content
    shuffled = CachedDataset(DictItems(photos, within, to_float=True), path)
    assert shuffled.alignment.checked == ("index", "label", "class names")
    with pytest.raises(CacheError, match=r"rows disagree .* by label"):
        CachedDataset(DictItems(photos, order, to_float=True), path)


def test_dict_items_over_a_cache_of_the_folder_are_checked_by_label(photos, tmp_path, caplog):
    """The issue's case: a cache of kdcache's imagefolder, a fully shuffled dict dataset of its files: refused.
    Items kdcache cannot compare by content are paired by index with a warning that says so (a new user's
    trial: a shuffle within a class passed every check silently); check_content=False says it knowingly."""
    import logging

    from conftest import DictItems

    kd = load_dataset("imagefolder", "train", photos, image_size=16, workers=0)
    path = write_cache(tmp_path / "f.h5", index_logits(np.arange(len(kd)), classes=3), kd.labels, kd.indices,
                       kd.sample_ids, cache_attrs(kd.info))
    order = np.random.default_rng(0).permutation(len(kd))
    with pytest.raises(CacheError, match=r"rows disagree with the data sample at their index \(\d+ by label"):
        CachedDataset(DictItems(photos, order), path)
    with caplog.at_level(logging.WARNING, logger="kdcache"):
        ds = CachedDataset(DictItems(photos), path)
    assert ds.alignment.checked == ("index", "label", "class names") and int(ds[7]["teacher_logits"][0]) == 7
    said = [r.getMessage() for r in caplog.records if "could not be compared" in r.getMessage()]
    assert len(said) == 1 and "paired by index and checked by index, label, class names only" in said[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kdcache"):
        CachedDataset(DictItems(photos), path, options=WrapOptions(check_content=False))
    assert not [r for r in caplog.records if "could not be compared" in r.getMessage()]
    renamed = DictItems(photos, keys=("px", "y"))
    with pytest.raises(ConfigError, match=r"dataset item 0 is a dict with keys \['px', 'y', 'path'\], none of them"):
        CachedDataset(renamed, path)
    ds = CachedDataset(renamed, path, options=WrapOptions(image_key="px", label_key="y"))
    assert set(ds[3]) == {"px", "y", "path", "teacher_logits"} and "label" in ds.alignment.checked


def test_changed_and_deleted_files_are_named_by_relative_path(photos, tmp_path):
    """CachedDataset over a torchvision ImageFolder names files as the CLI does, never just 'dataset index 7'."""
    import shutil

    import torchvision

    root = tmp_path / "photos"
    shutil.copytree(photos, root)
    kd = load_dataset("imagefolder", "train", root, image_size=16, workers=0)
    path = write_cache(tmp_path / "f.h5", index_logits(np.arange(len(kd)), classes=3), kd.labels, kd.indices,
                       kd.sample_ids, cache_attrs(kd.info))
    changed = root / "train" / kd.keys[7]
    changed.write_bytes(changed.read_bytes() + b"\0")
    folder = torchvision.datasets.ImageFolder(str(root / "train"))
    with pytest.raises(CacheError, match=f"1 of 7 rows disagree .* first: dataset index 7, {kd.keys[7]}\\)"):
        CachedDataset(Subset(folder, range(5, 12)), path)  # part of the folder: the first changed file, named
    with pytest.raises(CacheError, match=f"the images changed since the dump: 1 file\\(s\\) added or changed "
                                         f"\\(first: {kd.keys[7]}\\)"):
        CachedDataset(folder, path)
    (root / "train" / kd.keys[9]).unlink()  # deleted: the cache keeps no names, so its neighbours name where it was
    (root / "train" / kd.keys[15]).unlink()
    changed.write_bytes(changed.read_bytes()[:-1])
    with pytest.raises(CacheError) as e:
        CachedDataset(torchvision.datasets.ImageFolder(str(root / "train")), path)
    assert (f"2 row(s) of the cache have no such file any more (removed, renamed or changed; dataset index 9, the "
            f"file between {kd.keys[8]} and {kd.keys[10]}; dataset index 15, the file between {kd.keys[14]} and "
            f"{kd.keys[16]})") in str(e.value) and "\n" not in str(e.value), str(e.value)
