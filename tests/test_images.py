"""kdcache.data.images: the input transform is torchvision's evaluation transform, for files of every mode."""
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_photo_folder, save_image
from PIL import Image
from torchvision import transforms

from kdcache.data.images import (
    ConcatImages,
    FileImages,
    InputTransform,
    concat,
    open_image,
    subset,
)
from kdcache.errors import ConfigError, DataError


@pytest.mark.parametrize("size,wh", [(16, (40, 23)), (16, (23, 40)), (32, (32, 32)), (24, (300, 90)), (16, (10, 7))])
def test_transform_is_torchvisions_resize_and_centre_crop(size, wh):
    g = np.random.default_rng(size + wh[0])
    image = Image.fromarray(g.integers(0, 256, (wh[1], wh[0], 3), dtype=np.uint8))
    ours = InputTransform(size)(image)
    ref = transforms.Compose([transforms.Resize(round(size / 0.875)), transforms.CenterCrop(size),
                              transforms.PILToTensor()])(image)
    assert ours.shape == (3, size, size) and np.array_equal(ours, ref.numpy())  # (smaller images are upscaled)


def test_every_mode_becomes_rgb_of_the_same_brightness(tmp_path):
    g = np.random.default_rng(0)
    for mode in ("RGB", "L", "P", "RGBA", "CMYK", "I;16"):
        path = tmp_path / f"{mode.replace(';', '')}.jpg"  # save_image picks JPEG or PNG by mode
        save_image(path, g, (30, 20), mode, 150)
        stored = next(tmp_path.glob(path.stem + ".*"))
        x = InputTransform(16)(open_image(stored))
        assert x.shape == (3, 16, 16) and x.dtype == np.uint8
        assert 120 < x.mean() < 180, (mode, x.mean())  # 16-bit greyscale scaled to 8 bits, not clipped to white
    grey = InputTransform(16, mode="L")(open_image(next(tmp_path.glob("RGB.*"))))
    assert grey.shape == (1, 16, 16)


def test_crop_fraction_one_keeps_an_image_of_the_input_size_unchanged(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(pixels, "L").save(tmp_path / "a.png")
    x = InputTransform(28, crop_fraction=1.0, mode="L")(open_image(tmp_path / "a.png"))
    assert np.array_equal(x[0], pixels)


def test_records_round_trip_and_bad_settings_are_refused():
    for t in (InputTransform(64), InputTransform(28, crop_fraction=1.0, mode="L"), InputTransform(224)):
        assert InputTransform.from_record(t.record()) == t
    assert InputTransform(224).record()["resize"] == 256  # the references' 256 -> 224
    assert InputTransform.from_record(None) is None
    with pytest.raises(ConfigError, match="--image-size 4"):
        InputTransform(4)
    with pytest.raises(ConfigError, match="mode must be RGB or L"):
        InputTransform(16, mode="CMYK")


def test_unreadable_files_are_named(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    with pytest.raises(DataError, match=r"cannot read image .*x.jpg .*--skip-unreadable"):
        open_image(tmp_path / "x.jpg")


def test_sources_index_like_tensors(tmp_path):
    root = make_photo_folder(tmp_path / "p", classes=("a",), per_class=(6, 0), unlabelled=True)
    paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.*"))
    files = FileImages(root, paths, InputTransform(16))
    every = files[torch.arange(6)]
    assert files.shape == (6, 3, 16, 16) and every.dtype == torch.uint8
    assert torch.equal(files[2], every[2]) and torch.equal(files[1:3], every[1:3])
    assert torch.equal(subset(files, [4, 0])[[0, 1]], every[[4, 0]])  # lazy subset, same pixels
    memory = torch.arange(2 * 3 * 16 * 16, dtype=torch.int64).remainder(256).to(torch.uint8).view(2, 3, 16, 16)
    both = concat([files, memory])
    assert isinstance(both, ConcatImages) and both.shape == (8, 3, 16, 16)
    assert torch.equal(both[[7, 0, 6]], torch.stack([memory[1], every[0], memory[0]]))
    assert torch.equal(subset(both, [1, 7])[[0, 1]], torch.stack([every[1], memory[1]]))
    assert torch.equal(concat([memory, memory]), torch.cat([memory, memory]))


def test_exif_orientation_is_ignored_as_torchvision_ignores_it(tmp_path):
    """The README says so (Your own images): a JPEG stored 40x20 with a 'rotate 90' EXIF tag is read 40x20, as
    stored, exactly as torchvision's ImageFolder loader reads it."""
    from torchvision.datasets.folder import pil_loader

    pixels = np.random.default_rng(2).integers(0, 256, (20, 40, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    Image.fromarray(pixels).save(tmp_path / "sideways.jpg", exif=exif.tobytes(), quality=95)
    image = open_image(tmp_path / "sideways.jpg")
    assert Image.open(tmp_path / "sideways.jpg").getexif()[0x0112] == 6 and image.size == (40, 20)
    ours = InputTransform(16)(image)
    ref = transforms.Compose([transforms.Resize(round(16 / 0.875)), transforms.CenterCrop(16),
                              transforms.PILToTensor()])(pil_loader(str(tmp_path / "sideways.jpg")))
    assert np.array_equal(ours, ref.numpy())
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "EXIF orientation is ignored, as\n  torchvision's loader ignores it" in readme
