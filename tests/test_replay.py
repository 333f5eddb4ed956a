"""The one view replayer (kdcache.data.replay): crop-flip v3 views cut from the original files, for the dump, the
student and verify alike, on tiny folders of mixed sizes and modes made here."""
import numpy as np
import pytest
import torch
from conftest import error_lines, make_photo_folder, torchrun
from torchvision.transforms.v2 import functional as TF

from kdcache.cache import open_cache
from kdcache.config import DataConfig, DumpConfig, ViewConfig
from kdcache.data.augment import CropFlip, CropFlipFile, for_images, parse_policy
from kdcache.data.cached_dataset import CachedDataset
from kdcache.data.datasets import load_dataset
from kdcache.data.images import _rgb, open_image
from kdcache.data.loader import LoaderConfig, make_loader
from kdcache.data.replay import view_images
from kdcache.data.view_schedule import sample_views, view_schedule
from kdcache.errors import ConfigError
from kdcache.jobs.dump import dump_logits
from kdcache.jobs.verify import verify_cache
from kdcache import kd_loss
from kdcache.train.teacher import TeacherSpec, load_teacher

SIZE, V = 28, 3  # the test teacher (conftest.TEST_TEACHER) pools 28 px to 7


@pytest.fixture
def photo_teacher(test_teacher, tmp_path):
    """conftest's factory teacher, weights for 3 classes of RGB photos, and a folder of 18 + 6 of them."""
    import kdcache_test_teacher

    torch.manual_seed(0)
    weights = tmp_path / "photo_weights.pt"
    torch.save(kdcache_test_teacher.build(3, 3).state_dict(), weights)
    root = make_photo_folder(tmp_path / "photos", per_class=(6, 2), seed=3)
    return {**test_teacher, "weights": weights, "root": root,
            "spec": TeacherSpec(factory=test_teacher["factory"], weights=str(weights))}


def dump(t, out, batch_size=5, views=V, workers=0, include_original=True):
    data_cfg = DataConfig(dataset="imagefolder", data_dir=str(t["root"]), image_size=SIZE, workers=workers)
    return dump_logits(t["spec"], out, data_cfg=data_cfg, dump=DumpConfig(batch_size=batch_size, device="cpu"),
                       views=ViewConfig(views=views, augment="crop-flip", seed=4, include_original=include_original))


def torchvision_view(path, params):
    """What torchvision makes of the file for one view: RGB as kdcache converts it, the pixel box of the file,
    ``resized_crop(..., antialias=True)`` on the PIL image, ``hflip``; (3, S, S) uint8."""
    image = _rgb(open_image(path))
    w, h = image.size
    top, left, height, width, flip = CropFlipFile().pixel_boxes(torch.from_numpy(params[None]), h, w)[0].tolist()
    view = TF.resized_crop(image, top, left, height, width, [SIZE, SIZE], antialias=True)
    return TF.pil_to_tensor(TF.hflip(view) if flip else view)


def test_replayed_v3_views_are_torchvisions_crop_of_the_file_and_their_logits_the_teachers(photo_teacher, tmp_path):
    """Through the one loader's worker processes, two epochs: each image is its scheduled stored view, pixel for
    pixel torchvision's resized_crop + hflip of the full-resolution file; the stored logits are the teacher's on
    that very view, so cached KD is online KD on the replayed view."""
    out = tmp_path / "v3.h5"
    dump(photo_teacher, out)
    with open_cache(out) as c:
        assert c.meta.view_policy["version"] == 3 and c.meta.view_policy["name"] == "crop-flip"
        params = c.read_view_params()  # (N, V, P): fractions of each original file
    data = load_dataset("imagefolder", "train", photo_teacher["root"], image_size=SIZE, workers=0)
    assert len({open_image(data.images.root / p).size for p in data.images.relpaths}) > 10  # mixed sizes and modes
    teacher = load_teacher(photo_teacher["spec"], data.info)
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * SIZE * SIZE, 3))
    ds = CachedDataset(data, out)
    n, checked = len(data), 0
    for epoch in (0, 1):
        loader = make_loader(ds, LoaderConfig(batch_size=4, workers=2, standardize=False))
        loader.set_epoch(epoch)
        shown = view_schedule(epoch, n, V, 0)
        rows = iter(range(n))
        for batch in loader:
            assert batch.images.dtype == torch.uint8  # cut from the file in the worker, uint8 to the device
            for image, stored in zip(batch.images, batch.teacher_logits):
                i = next(rows)
                want = torchvision_view(data.images.root / data.images.relpaths[i], params[i, shown[i]])
                assert torch.equal(image, want), (i, shown[i])
                checked += 1
            online = teacher.logits(batch.images, torch.device("cpu"))
            torch.testing.assert_close(online, batch.teacher_logits, rtol=1e-5, atol=1e-5)
            x = batch.images.float() / 255
            torch.testing.assert_close(kd_loss(student(x), batch.teacher_logits, batch.labels, 4.0, 0.5),
                                       kd_loss(student(x), online, batch.labels, 4.0, 0.5), rtol=1e-5, atol=1e-6)
    assert checked == 2 * n
    assert (params[:, 0] == np.array([0, 0, 1, 1, 0], np.float32)).all()  # include_original: the whole file
    report = verify_cache(out, dataset="imagefolder", data_dir=str(photo_teacher["root"]), teacher=photo_teacher["spec"])
    assert report.ok and "views of" in report.checks[-1].message, report.to_dict()
    # a Dataset's transformed items cannot replay views cut from the files: one line saying what to wrap instead
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import ToTensor

    with pytest.raises(ConfigError, match="wrap kdcache's own split instead") as e:
        CachedDataset(ImageFolder(str(photo_teacher["root"] / "train"), transform=ToTensor()), out)
    assert "\n" not in str(e.value)


def test_v3_parameters_are_a_pure_function_of_seed_view_and_index(photo_teacher, tmp_path):
    """Another batch size, fewer views, another order or subset of rows, another image size: the same parameters."""
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    dump(photo_teacher, a, batch_size=5, views=3)
    dump(photo_teacher, b, batch_size=7, views=2, workers=2)
    with open_cache(a) as ca, open_cache(b) as cb:
        assert np.array_equal(ca.read_view_params()[:, :2], cb.read_view_params())
    policy, keys = CropFlipFile(), np.arange(3000)
    whole = sample_views(policy, keys, 4, 9, (SIZE, SIZE))
    perm = np.random.default_rng(0).permutation(keys)[:500]
    assert np.array_equal(sample_views(policy, perm, 4, 9, (SIZE, SIZE)), whole[perm])
    assert np.array_equal(sample_views(policy, keys, 4, 9, (224, 224)), whole)  # never the image size
    assert policy.problem(whole, (SIZE, SIZE)) is None


def test_in_memory_images_keep_v2_and_refuse_v3_in_one_line(photo_teacher):
    data = load_dataset("imagefolder", "train", photo_teacher["root"], image_size=SIZE, workers=0)
    assert type(for_images(parse_policy("crop-flip:scale_min=0.3"), data.images)) is CropFlipFile
    memory = torch.zeros(4, 3, SIZE, SIZE, dtype=torch.uint8)
    assert type(for_images(parse_policy("crop-flip"), memory)) is CropFlip  # v2: applied on the tensor
    params = CropFlipFile().identity(4, (SIZE, SIZE))
    for call in (lambda: view_images(memory, range(4), params, CropFlipFile()),
                 lambda: CropFlipFile().apply(memory.float(), torch.from_numpy(params))):
        with pytest.raises(ConfigError, match="cut from the original image file") as e:
            call()
        assert "\n" not in str(e.value)
    # v2 on the same files still replays on the decoded centre crop, as before (float in [0, 1])
    v2 = view_images(data.images, range(4), CropFlip().identity(4, (SIZE, SIZE)), CropFlip())
    assert torch.equal(v2, data.images[torch.arange(4)].float() / 255)


def test_a_two_process_dump_of_v3_views_equals_the_one_process_dump(photo_teacher, tmp_path):
    out = tmp_path / "c.h5"
    t = photo_teacher
    flags = ["dump-logits", "--teacher-factory", t["factory"], "--weights", t["weights"], "--dataset", "imagefolder",
             "--data-dir", t["root"], "--image-size", SIZE, "--batch-size", 4, "--device", "cpu", "--workers", 1,
             "--views", V, "--augment", "crop-flip", "--view-seed", 4, "--include-original", "--out", out]
    job = torchrun(*flags, pythonpath=[t["folder"]])
    assert job.returncode == 0, error_lines(job) or job.stderr
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank
    try:
        ref = dump(t, tmp_path / "ref.h5", batch_size=4)
    finally:
        torch.set_num_threads(threads)
    with open_cache(out) as got, open_cache(ref["cache"]) as want:
        assert np.array_equal(got.read_view_params(), want.read_view_params())
        assert np.array_equal(got.read().view(np.uint32), want.read().view(np.uint32))  # bit for bit
        assert got.meta.content_sha256 == want.meta.content_sha256 and got.meta.view_policy["version"] == 3
