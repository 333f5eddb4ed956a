"""Opening a cache or checkpoint never runs code; killing dump-logits never leaves a broken cache behind."""
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import assert_error

from kdcache.cli import main
from kdcache.train.checkpoint import save_checkpoint
from kdcache.train.models import build_model

REPO = Path(__file__).resolve().parents[1]


class Evil:
    """Unpickling this creates ``marker``: a stand-in for arbitrary code execution."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"format": "kdcache-checkpoint", "version": 1, "state_dict": {}, "config": Evil(marker)}, path)
    return path, marker


def test_the_malicious_pickle_really_would_run_code(evil, tmp_path):
    """Control: with weights_only=False the file does execute, so the refusals below mean something."""
    path, marker = evil
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()


def test_malicious_checkpoint_is_refused_not_run(evil, tmp_path, monkeypatch, data_dir):
    path, marker = evil
    cache = _small_cache(tmp_path / "good.h5", data_dir)
    (tmp_path / "w_factory_mod.py").write_text("import torch\ndef build():\n    return torch.nn.Linear(784, 10)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    commands = [
        ["dump-logits", "--teacher", path, "--out", tmp_path / "c.h5"],
        ["dump-logits", "--teacher-factory", "w_factory_mod:build", "--weights", path, "--out", tmp_path / "c.h5"],
        ["evaluate", "--model", path],
        ["verify", cache, "--data-dir", data_dir, "--teacher", path],
    ]
    for args in commands:
        r = run(*args)
        assert_error(r)
        assert not marker.exists(), f"{args[0]} ran the pickle"
        assert not (tmp_path / "c.h5").exists()
    r = run("dump-logits", "--teacher", path, "--out", tmp_path / "c.h5")
    assert "could run code" in r.output and "io.open" in r.output


def _small_cache(path, data_dir):
    from conftest import cache_attrs

    from kdcache.cache import write_cache
    from kdcache.data.datasets import load_dataset

    d = load_dataset("fashion-mnist", "train", data_dir, limit=20)
    return write_cache(path, torch.zeros(20, 10), d.labels, d.indices, d.sample_ids, cache_attrs(d.info))


def test_a_cache_holds_no_pickled_objects(tmp_path, data_dir):
    """Every dataset is numeric and every attribute a string or number: nothing for a reader to unpickle."""
    p = _small_cache(tmp_path / "c.h5", data_dir)
    with h5py.File(p, "r") as f:
        for name in f:
            assert f[name].dtype.kind in "fiu", name
        for name, value in f.attrs.items():
            assert isinstance(value, (str, int, float)) or getattr(value, "dtype", None) is not None, name
            assert getattr(value, "dtype", None) is None or value.dtype.kind in "fiu", name


def _teacher(tmp_path):
    """An untrained teacher-cnn: slow enough (~2 ms/image on 2 cores) that a kill lands mid-way."""
    torch.manual_seed(0)
    config = {"arch": "teacher-cnn", "in_channels": 1, "num_classes": 10, "image_size": [28, 28],
              "dataset": "fashion-mnist", "mean": [0.286], "std": [0.353],
              "class_names": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                              "Bag", "Ankle boot"]}
    return save_checkpoint(tmp_path / "t.pt", build_model("teacher-cnn"), config)


def _kill_mid_dump(teacher, out, data_dir, overwrite):
    """Start dump-logits in a subprocess, SIGKILL it once its temp file exists; returns the temp files seen."""
    args = [sys.executable, "-m", "kdcache", "dump-logits", "--teacher", str(teacher), "--out", str(out),
            "--split", "test", "--batch-size", "100", "--data-dir", str(data_dir), "--device", "cpu", "-q"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(args + (["--overwrite"] if overwrite else []), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    try:
        while not list(out.parent.glob(f".{out.name}.tmp-*")):
            assert proc.poll() is None, f"dump-logits ended before it could be killed: {proc.stdout.read()!r}"
            assert time.monotonic() < deadline, "dump-logits never started writing"
            time.sleep(0.02)
        time.sleep(0.3)  # let it write a few batches
        assert proc.poll() is None, "dump-logits finished before the kill; the test needs a slower dump"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return list(out.parent.glob(f".{out.name}.tmp-*"))


def test_sigkill_during_dump_leaves_no_file_and_keeps_an_existing_one(tmp_path, data_dir):
    teacher = _teacher(tmp_path)
    fresh = tmp_path / "fresh" / "c.h5"
    fresh.parent.mkdir()
    leftovers = _kill_mid_dump(teacher, fresh, data_dir, overwrite=False)
    assert not fresh.exists()
    assert all(p.name.startswith(".") for p in leftovers)  # at most a hidden temp file, never at the target path

    existing = tmp_path / "old" / "c.h5"
    existing.parent.mkdir()
    existing.write_bytes(b"the cache another team trusts")
    before = existing.read_bytes()
    _kill_mid_dump(teacher, existing, data_dir, overwrite=True)
    assert existing.read_bytes() == before


def _fast_teacher(tmp_path):
    """A student-cnn saved as a teacher checkpoint: dumps tens of thousands of rows in a second or two."""
    config = {"arch": "student-cnn", "in_channels": 1, "num_classes": 10, "image_size": [28, 28],
              "dataset": "fashion-mnist", "mean": [0.286], "std": [0.353],
              "class_names": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                              "Bag", "Ankle boot"]}
    return save_checkpoint(tmp_path / "fast-teacher.pt", build_model("student-cnn"), config)


def test_dump_refuses_up_front_when_free_space_is_short(tmp_path, data_dir, monkeypatch):
    import kdcache.files

    def disk_usage(path):
        return shutil._ntuple_diskusage(1 << 30, (1 << 30) - free, free)

    out = tmp_path / "c.h5"
    out.write_bytes(b"the cache another team trusts")
    free = 200_000  # bytes: less than 5,000 rows of logits need
    monkeypatch.setattr(kdcache.files.shutil, "disk_usage", disk_usage)
    r = run("dump-logits", "--teacher", _fast_teacher(tmp_path), "--out", out, "--overwrite", "--limit", 5000,
            "--data-dir", data_dir, "--device", "cpu", "-q")
    assert_error(r, "not enough disk space for the cache", "needs about 1.", "200.0 KB free")
    assert out.read_bytes() == b"the cache another team trusts"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.fixture
def tiny_disk(tmp_path):
    """A 512 KB tmpfs (needs root and mount; the up-front refusal above is tested without it)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_disk_full_during_dump_is_one_error_line_and_leaves_nothing(tmp_path, data_dir, tiny_disk):
    """The reported failure: on a 1 MB tmpfs (here 512 KB: the test split fills it), dump-logits segfaulted (exit 139) after ~2,700 lines of h5py tracebacks.

    The up-front check is switched off, as if the space were used up by someone else after it passed.
    """
    from conftest import cache_attrs

    from kdcache.cache import read_meta, write_cache
    from kdcache.data.datasets import load_dataset

    out = tiny_disk / "c.h5"
    d = load_dataset("fashion-mnist", "train", data_dir, limit=16)
    write_cache(out, torch.zeros(16, 10), d.labels, d.indices, d.sample_ids, cache_attrs(d.info))
    before = out.read_bytes()
    skip_check = ("import sys, kdcache.jobs.dump; kdcache.jobs.dump.check_free_space = lambda *a, **k: None; "
                  "from kdcache.cli import main; main(sys.argv[1:], prog_name='kdcache')")
    args = [sys.executable, "-c", skip_check, "dump-logits", "--teacher", str(_fast_teacher(tmp_path)),
            "--out", str(out), "--overwrite", "--split", "test", "--data-dir", str(data_dir), "--device", "cpu", "-q"]
    r = subprocess.run(args, env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1, (r.returncode, r.stderr[-3000:])
    assert r.stdout == "" and r.stderr.startswith("Error: disk full while writing the cache c.h5"), r.stderr[-3000:]
    assert len(r.stderr.splitlines()) == 1, r.stderr[-3000:]
    assert "is unchanged" in r.stderr
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["c.h5"]  # the temp file is gone
    assert out.read_bytes() == before and read_meta(out).num_samples == 16
    assert shutil.disk_usage(tiny_disk).free > 400_000  # and its space is free again


@pytest.mark.parametrize("key, value, needle", [
    ("teacher_arch", 5, "attribute teacher_arch is an integer (5), expected text"),
    ("teacher_arch", np.void(pickle.dumps({"a": 1})), "bytes of binary data, expected text"),  # opaque pickle bytes
    ("dataset", np.bytes_(b"\x80\x04\x95 pickled"), "attribute dataset is 11 bytes of binary data, expected text"),
    ("num_classes", "10", "attribute num_classes is text ('10'), expected an integer"),
    ("normalization_std", "0.35", "attribute normalization_std is text ('0.35'), expected a number"),
    ("class_names", '{"a": 1}', "attribute class_names holds dict JSON, expected a JSON list of strings"),
])
def test_an_attribute_of_the_wrong_type_is_refused_in_one_line(tmp_path, data_dir, key, value, needle):
    """A cache whose teacher_arch was an integer, or raw pickle bytes, trained with exit 0; now every reader
    (here train-student and info) refuses it as it refuses malformed JSON, and never unpickles anything."""
    from kdcache.cache import read_meta
    from kdcache.errors import CacheError

    p = _small_cache(tmp_path / "c.h5", data_dir)
    with h5py.File(p, "a") as f:
        f.attrs[key] = value
    with pytest.raises(CacheError, match="expected"):
        read_meta(p)
    r = run("train-student", "--cache", p, "--data-dir", data_dir, "--limit", 64, "--eval-limit", 32, "--epochs", 1,
            "--out", tmp_path / "s.pt", "-q")
    assert_error(r, needle, "the file is corrupt or not written by kdcache")
    assert not (tmp_path / "s.pt").exists()
    assert_error(run("info", p), needle)


def _children(pid):
    """Process ids whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the DataLoader workers in /proc")
def test_sigterm_to_the_process_group_is_one_line_and_exit_143(tmp_path, data_dir):
    """`timeout`, Slurm and Kubernetes signal the whole group: the DataLoader workers died by the signal and
    torch printed 17 lines (`Exception ignored in ... DataLoader worker (pid ...) is killed by signal`) before
    the one promised line, or a traceback and exit 1 instead of it. Workers now exit quietly."""
    out = tmp_path / "c.h5"
    args = [sys.executable, "-m", "kdcache", "dump-logits", "--teacher", str(_teacher(tmp_path)), "--out", str(out),
            "--split", "test", "--batch-size", "100", "--workers", "2", "--data-dir", str(data_dir),
            "--device", "cpu", "-q"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, as under `timeout` or Slurm
    try:
        deadline = time.monotonic() + 60
        while len(_children(proc.pid)) < 2 or not list(tmp_path.glob(".c.h5.tmp-*")):  # workers up, writing
            assert proc.poll() is None, f"dump-logits ended before the signal: {proc.communicate()}"
            assert time.monotonic() < deadline, "dump-logits never started its workers and its file"
            time.sleep(0.02)
        time.sleep(0.3)  # a few batches in
        assert proc.poll() is None, "dump-logits finished before the signal; the test needs a slower dump"
        os.killpg(proc.pid, signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert (proc.returncode, stdout, stderr) == (143, "", "Error: stopped (SIGTERM)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.pt"]  # no cache, no half-written temp file
