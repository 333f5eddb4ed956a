"""Shared fixtures: the repo's Fashion-MNIST copy and tiny trained checkpoints/caches."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kdcache.data.samples import ImageData
from kdcache.identity import DatasetInfo, fingerprint_for, sample_ids_for

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


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory, data_dir) -> Path:
    """An untrained student-cnn saved as a kdcache Fashion-MNIST checkpoint: a fast stand-in teacher."""
    import torch

    from kdcache.data.datasets import load_dataset
    from kdcache.train.checkpoint import save_checkpoint
    from kdcache.train.models import build_model

    info = load_dataset("fashion-mnist", "train", data_dir, limit=1).info
    torch.manual_seed(0)
    config = {"arch": "student-cnn", "in_channels": 1, "num_classes": 10, "image_size": [28, 28],
              "dataset": info.name, "mean": list(info.mean), "std": list(info.std), "class_names": list(info.class_names)}
    return save_checkpoint(tmp_path_factory.mktemp("teacher") / "t.pt", build_model("student-cnn"), config)


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


# -- torchrun jobs (tests of kdcache.dist and kdcache.cache.shards) -------------------------------------------

TEST_TEACHER = '''"""A small deterministic teacher for kdcache's distributed tests, with test-only failure switches.

KDT_FAIL_RANK=r: rank r's forward raises after two batches.
KDT_KILL_RANK=r: rank r's forward waits until the file KDT_KILL_AFTER exists (another rank's
finished shard), then SIGKILLs its own process: a deterministic "killed mid-dump".
"""
import os
import signal
import time
from pathlib import Path

import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 7 * 7, num_classes)
        self.calls = 0

    def forward(self, x):
        if x.shape[0] > 2:  # not load_teacher's shape probe
            self.calls += 1
            rank = os.environ.get("RANK", "0")
            if os.environ.get("KDT_FAIL_RANK") == rank and self.calls > 2:
                raise RuntimeError("teacher exploded on purpose")
            if os.environ.get("KDT_KILL_RANK") == rank and self.calls > 2:
                deadline = time.time() + 60
                while not Path(os.environ["KDT_KILL_AFTER"]).exists() and time.time() < deadline:
                    time.sleep(0.05)
                os.kill(os.getpid(), signal.SIGKILL)
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 4)
        return self.fc(x.flatten(1))


def build(num_classes, in_channels):
    return Tiny(num_classes, in_channels)
'''


@pytest.fixture
def test_teacher(tmp_path, monkeypatch) -> dict:
    """A factory teacher module in tmp_path (importable here and by torchrun's ranks) and two weight files."""
    import importlib

    folder = tmp_path / "teacher_module"
    folder.mkdir()
    (folder / "kdcache_test_teacher.py").write_text(TEST_TEACHER)
    monkeypatch.syspath_prepend(str(folder))
    import sys

    sys.modules.pop("kdcache_test_teacher", None)
    module = importlib.import_module("kdcache_test_teacher")
    weights = {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        weights[seed] = folder / f"weights{seed}.pt"
        torch.save(module.build(10, 1).state_dict(), weights[seed])
    return {"folder": folder, "factory": "kdcache_test_teacher:build", "weights": weights[0], "other_weights": weights[1]}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, nproc: int = 2, node: tuple[int, int, int] | None = None, env: dict | None = None,
             pythonpath: tuple = (), timeout: float = 180, background: bool = False, script: str | None = None):
    """``torchrun ... -m kdcache ARGS`` (or ``SCRIPT ARGS``) from the repo root, so the ranks import this
    checkout, with 1 torch thread per rank.

    ``node=(nnodes, node_rank, port)`` joins a static rendezvous on 127.0.0.1 instead of --standalone.
    Returns the CompletedProcess (text), or the Popen with ``background``.
    """
    import os
    import subprocess
    import sys

    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    if node is None:
        launcher += ["--standalone"]
    else:
        nnodes, rank, port = node
        launcher += ["--nnodes", str(nnodes), "--node_rank", str(rank), "--master_addr", "127.0.0.1",
                     "--master_port", str(port)]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {}),
                "PYTHONPATH": os.pathsep.join([*map(str, pythonpath), str(REPO)])}
    cmd = [str(c) for c in [*launcher, *([script] if script else ["-m", "kdcache"]), *args]]
    # its own session, so a job that hangs can be stopped with all of its ranks (finish_job)
    proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    return proc if background else finish_job(proc, timeout)


def finish_job(proc, timeout: float = 180):
    """Wait for a torchrun job; on timeout kill its whole process group (launcher and ranks) and fail."""
    import os
    import signal
    import subprocess

    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun job hung for {timeout}s and was killed:\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def error_lines(proc) -> list[str]:
    """The `Error:` lines a job printed (torchrun's own summary follows them on stderr)."""
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error:")]


MODES = ("RGB", "L", "P", "RGBA", "CMYK", "I;16")  # what a folder of photos and scans holds


def save_image(path: Path, g: np.random.Generator, size: tuple[int, int], mode: str, level: float) -> None:
    """One learnable image (its brightness says its class) of ``size`` (w, h) in ``mode``, as PNG or JPEG."""
    from PIL import Image

    w, h = size
    rgb = np.clip(g.normal(level, 30, size=(h, w, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(rgb, "RGB")
    if mode == "I;16":
        im = Image.fromarray((rgb.mean(axis=2) * 257).astype(np.uint16))
    elif mode == "P":
        im = im.quantize(16)
    elif mode != "RGB":
        im = im.convert(mode)
    if mode in ("RGB", "L", "CMYK") and path.suffix != ".png":
        im.save(path.with_suffix(".jpg"), quality=90)
    else:
        im.save(path.with_suffix(".png"))


def make_photo_folder(root: Path, classes=("ant", "bee", "cat"), per_class=(6, 2), seed: int = 0,
                      unlabelled: bool = False) -> Path:
    """An ImageFolder (or, ``unlabelled``, a plain tree) of JPEGs and PNGs of every size and mode, made here."""
    g = np.random.default_rng(seed)
    splits = [("", per_class[0] * len(classes))] if unlabelled else list(zip(("train", "test"), per_class))
    for split, n in splits:
        for k, cls in enumerate(["misc"] if unlabelled else classes):
            d = root / split / cls / "sub"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                size = (int(g.integers(20, 90)), int(g.integers(20, 90)))
                mode = MODES[(i + k) % len(MODES)]
                save_image(d / f"img{i:02d}.jpg", g, size, mode, 50 + 70 * (k % 3))
    return root



class DictItems(torch.utils.data.Dataset):
    """A Hugging Face style dataset of ``{"image": uint8 (3, 16, 16), "label": int, "path": str}`` over the files of
    ``root``/train, in ``order`` (a permutation of the files; default: ImageFolder's). No ``.samples``/``.root``:
    kdcache cannot tell it is a folder. ``keys`` renames the image and label keys."""

    def __init__(self, root: Path, order=None, keys=("image", "label"), to_float: bool = False):
        from torchvision.datasets import ImageFolder
        from torchvision.transforms import CenterCrop, Compose, PILToTensor, Resize, ToTensor

        folder = ImageFolder(str(root / "train"))
        self.files, self.classes, self.keys = folder.samples, folder.classes, keys
        self.order = list(range(len(self.files))) if order is None else list(order)
        self.tf = Compose([Resize(18), CenterCrop(16), ToTensor() if to_float else PILToTensor()])

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> dict:
        from PIL import Image

        path, label = self.files[self.order[i]]
        with Image.open(path) as im:
            image = self.tf(im.convert("RGB"))
        return {self.keys[0]: image, self.keys[1]: label, "path": path}
