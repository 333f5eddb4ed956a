"""Shared fixtures: the repo's Fashion-MNIST copy and tiny trained checkpoints/caches."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kdcache.samples import DatasetInfo, ImageData, fingerprint_for, sample_ids_for

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    raw = DATA_DIR / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    if not raw.exists():
        pytest.fail(f"Fashion-MNIST missing ({raw}); run scripts/get-data.sh")
    return DATA_DIR


def make_image_data(n: int = 64, classes: int = 10, seed: int = 0, name: str = "synthetic",
                    split: str = "train") -> ImageData:
    """Random uint8 images with labels, shaped like Fashion-MNIST, for unit tests."""
    g = np.random.default_rng(seed)
    images = g.integers(0, 256, size=(n, 1, 28, 28), dtype=np.uint8)
    labels = g.integers(0, classes, size=n).astype(np.int64)
    info = DatasetInfo(name=name, split=split, num_samples=n, class_names=tuple(f"c{i}" for i in range(classes)),
                       in_channels=1, image_size=(28, 28), mean=(0.5,), std=(0.25,),
                       fingerprint=fingerprint_for(images, labels))
    return ImageData(images=torch.from_numpy(images), labels=torch.from_numpy(labels),
                     indices=torch.arange(n), sample_ids=sample_ids_for(images, labels), info=info)


@pytest.fixture
def image_data() -> ImageData:
    return make_image_data()


def cache_attrs(info: DatasetInfo, **over) -> dict:
    attrs = {
        "kdcache_version": "test", "torch_version": str(torch.__version__), "teacher_arch": "teacher-cnn",
        "teacher_sha256": "0" * 64, "teacher_precision": "fp32", "dataset": info.name, "split": info.split,
        "dataset_num_samples": info.num_samples, "dataset_fingerprint": info.fingerprint,
        "class_names": list(info.class_names), "normalization_mean": list(info.mean),
        "normalization_std": list(info.std),
    }
    attrs.update(over)
    return attrs


def assert_error(result, *needles: str, lines: int | None = 1) -> list[str]:
    """A clean refusal: exit status 1, no exception but click's exit, only `Error: ...` lines, each needle present.

    CliRunner stores exceptions instead of printing them, so "Traceback" never appears in
    its output; a stray exception shows up in ``result.exception`` instead.
    """
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    out = result.output.strip().splitlines()
    assert out and all(line.startswith("Error:") for line in out), result.output
    if lines is not None:
        assert len(out) == lines, result.output
    for needle in needles:
        assert needle in result.output, (needle, result.output)
    return out


def run_cli(*args, ok: bool = True):
    """Invoke the kdcache CLI in-process; with ``ok`` assert it exited 0."""
    from click.testing import CliRunner

    from kdcache.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result
