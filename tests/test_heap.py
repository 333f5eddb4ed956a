"""kdcache.heap: opt-in (KDCACHE_HEAP=limit) glibc mmap threshold, set once per process on the decode path; a no-op without glibc."""
from __future__ import annotations

import ctypes
import platform
import sys

import numpy as np
import pytest

import kdcache.heap as heap

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    """Each test starts as a process that has not applied it yet, opted in, with no glibc variable set."""
    monkeypatch.setattr(heap, "_applied", None)
    monkeypatch.setenv(heap.ENV, heap.ENV_ON)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)


class FakeLibc:
    """A libc whose mallopt records its calls and answers ``answer``."""

    def __init__(self, answer: int = 1):
        self.calls, self.answer = [], answer

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return self.answer

    def malloc_trim(self, pad):
        return 1


@pytest.mark.skipif(not GLIBC, reason="needs glibc")
def test_applies_on_glibc_and_trims():
    assert heap._glibc() is not None
    assert heap.limit_heap_growth() is True
    assert heap.trim_heap() in (True, False)  # 1 when it released memory, 0 when there was none to release


def test_sets_the_mmap_threshold_once_per_process(monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(heap, "_glibc", lambda: libc)
    assert heap.limit_heap_growth() is True
    assert heap.limit_heap_growth() is True  # idempotent: mallopt is not called again
    assert libc.calls == [(heap.M_MMAP_THRESHOLD, 64 * 1024)] and heap.M_MMAP_THRESHOLD == -3


def test_noop_where_libc_lacks_mallopt(monkeypatch):
    """musl and macOS: ctypes finds a libc without glibc's symbols; nothing is called, False, no exception."""

    class NotGlibc:  # attribute lookups fail as ctypes' do for a missing symbol
        def __getattr__(self, name):
            raise AttributeError(name)

    monkeypatch.setattr(ctypes, "CDLL", lambda *a, **k: NotGlibc())
    assert heap._glibc() is None
    assert heap.limit_heap_growth() is False and heap.limit_heap_growth() is False
    assert heap.trim_heap() is False


def test_noop_off_linux_and_when_libc_cannot_load(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert heap._glibc() is None and heap.limit_heap_growth() is False
    monkeypatch.setattr(heap, "_applied", None)
    monkeypatch.setattr(sys, "platform", "linux")

    def fail(*a, **k):
        raise OSError("no libc")

    monkeypatch.setattr(ctypes, "CDLL", fail)
    assert heap._glibc() is None and heap.limit_heap_growth() is False


def test_off_by_default(monkeypatch):
    """Not asked for: the allocator is left alone (a fixed threshold costs the decode-bound dump ~1.5x)."""
    libc = FakeLibc()
    monkeypatch.setattr(heap, "_glibc", lambda: libc)
    monkeypatch.delenv(heap.ENV)
    assert heap.limit_heap_growth() is False and libc.calls == []


@pytest.mark.parametrize("var, value", [("KDCACHE_HEAP", "default"), ("KDCACHE_HEAP", "1"),
                                        ("MALLOC_MMAP_THRESHOLD_", "131072")])
def test_left_alone_when_switched_off_or_set_by_the_user(monkeypatch, var, value):
    libc = FakeLibc()
    monkeypatch.setattr(heap, "_glibc", lambda: libc)
    monkeypatch.setenv(var, value)
    assert heap.limit_heap_growth() is False and libc.calls == []


def test_refused_by_mallopt_is_false(monkeypatch):
    monkeypatch.setattr(heap, "_glibc", lambda: FakeLibc(answer=0))
    assert heap.limit_heap_growth() is False


def test_decoding_an_image_applies_it(monkeypatch, tmp_path):
    from PIL import Image

    from kdcache.data import images

    calls = []
    monkeypatch.setattr(images, "limit_heap_growth", lambda: calls.append(1) or True)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "a.jpg")
    assert images.open_image(tmp_path / "a.jpg", images.InputTransform(16)).shape == (3, 16, 16)
    assert calls == [1]


def test_listing_a_folder_applies_it_in_the_main_process(monkeypatch, tmp_path):
    """The main process of a W>0 job decodes nothing, so the folder loaders apply it there too."""
    from PIL import Image

    from kdcache.data import folders

    calls = []
    monkeypatch.setattr(folders, "limit_heap_growth", lambda: calls.append(1) or True)
    for split in ("train",):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / split / cls / "x.jpg")
    data = folders.load_imagefolder(str(tmp_path), "train", image_size=16, workers=0)
    assert len(data.labels) == 2 and calls == [1]
