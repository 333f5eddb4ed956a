import json

import pytest

from kdcache.errors import ConfigError
from kdcache.files import check_output, write_json


def test_write_json_is_atomic_and_readable(tmp_path):
    p = write_json(tmp_path / "a" / "m.json", {"x": 1})
    assert json.loads(p.read_text()) == {"x": 1}
    assert [f.name for f in p.parent.iterdir()] == ["m.json"]


def test_check_output(tmp_path):
    p = tmp_path / "sub" / "out.pt"
    assert check_output(p, overwrite=False) == p and p.parent.is_dir()
    p.write_text("x")
    with pytest.raises(ConfigError, match="--overwrite"):
        check_output(p, overwrite=False)
    assert check_output(p, overwrite=True) == p
    with pytest.raises(ConfigError, match="directory"):
        check_output(tmp_path, overwrite=True)


WRITER = r'''
import os, sys, time
from pathlib import Path
import kdcache.files as files

target, ready = Path(sys.argv[1]), Path(sys.argv[2])
real_fsync = os.fsync

def stalled_fsync(fd):  # the new bytes are all in the temp file, not yet renamed over the target
    ready.write_text("written")
    time.sleep(60)

files.os.fsync = stalled_fsync
files.write_text_atomic(target, "new " * (4 << 20))
'''


def test_a_writer_killed_mid_way_leaves_the_old_file_intact(tmp_path):
    """SIGKILL (no cleanup runs) while a 16 MB replacement is being written: the target keeps its old bytes."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from kdcache.files import write_json

    target, ready = tmp_path / "m.json", tmp_path.parent / f"{tmp_path.name}.ready"
    write_json(target, {"old": True})
    old = target.read_bytes()
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(ready)], cwd=repo,
                            env=dict(os.environ, PYTHONPATH=str(repo)))
    deadline = time.time() + 60
    while not ready.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert ready.exists(), proc.returncode
    tmp, = tmp_path.glob(".m.json.tmp-*")
    assert tmp.stat().st_size == 16 << 20  # the replacement was written: only the rename was missing
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert target.read_bytes() == old
    assert json.loads(target.read_text()) == {"old": True}
    ready.unlink()


def test_check_writable_refuses_in_kdcache_words(tmp_path, monkeypatch):
    """Tests run as root, where permission bits block nothing: a path through a file, and a read-only mount
    (EROFS, monkeypatched), each become one StorageError naming the folder."""
    import errno

    import kdcache.files as files
    from kdcache.errors import StorageError

    assert files.check_writable(tmp_path / "new" / "c.h5") == tmp_path / "new"  # created, probe removed
    assert list((tmp_path / "new").iterdir()) == []
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StorageError, match=r"cannot write to .*afile: a part of the path is a file"):
        files.check_writable(tmp_path / "afile" / "c.h5")
    with pytest.raises(StorageError, match=r"cannot write to .*afile/sub: a part of the path is a file"):
        files.check_writable(tmp_path / "afile" / "sub" / "c.h5")

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    with pytest.raises(StorageError, match=f"cannot write to {tmp_path}: read-only file system; write the output"):
        files.check_writable(tmp_path / "c.h5")

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(files.tempfile, "mkstemp", denied)
    with pytest.raises(StorageError, match=f"cannot write to {tmp_path}: permission denied"):
        check_output(tmp_path / "m.pt", overwrite=False)

    def vanished(*a, **k):  # /proc and the like: the folder exists but takes no files (a new user's trial
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(tmp_path / ".c.h5.probe-x"))
    monkeypatch.setattr(files.tempfile, "mkstemp", vanished)  # was told the name of kdcache's own probe file)
    with pytest.raises(StorageError, match=f"cannot write to {tmp_path}: no such file or directory; write") as e:
        files.check_writable(tmp_path / "c.h5")
    assert "probe" not in str(e.value)


@pytest.mark.parametrize("n, text", [(0, "0 bytes"), (1, "1 byte"), (999, "999 bytes"), (30_412, "30.4 KB"),
                                     (999_949, "999.9 KB"), (999_990, "1.0 MB"), (12_345_678, "12.3 MB"),
                                     (1_250_000_000, "1.25 GB")])
def test_format_bytes_picks_a_unit_that_fits(n, text):
    """The dump summary said '0.0 MB' for a 30 KB cache."""
    from kdcache.files import format_bytes

    assert format_bytes(n) == text
