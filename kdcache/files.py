"""Atomic file output and file identity: every artifact appears whole at its path or not at all."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

from kdcache.errors import ConfigError, StorageError

_WRITE_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST)


def temp_path_for(path: Path) -> Path:
    """A hidden temp file next to ``path`` (same filesystem, so os.replace is atomic)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def check_output(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an existing output unless ``overwrite``; create its folder and check it can be written to."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p} is a directory; give a file path")
    if p.exists() and not overwrite:
        raise ConfigError(f"{p} already exists; pass --overwrite to replace it")
    check_writable(p)
    return p


def check_writable(path: str | os.PathLike) -> Path:
    """Create the folder of the output ``path`` and prove a file can be made in it, else a one-line StorageError.

    Called before any slow work (a teacher's run, a training), so a read-only or forbidden folder is
    refused in kdcache's words up front, not as HDF5's or torch's raw text at the end. It creates
    and removes a hidden probe file: permission bits say nothing for root, and a read-only mount
    or a path through a file is only known by trying. Returns the folder.
    """
    folder = Path(path).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{Path(path).name}.probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:  # any OSError here is the folder's: never the probe's name (a user never made it)
        why = {errno.EROFS: "read-only file system", errno.ENOTDIR: "a part of the path is a file, not a folder",
               errno.EEXIST: "a part of the path is a file, not a folder"}.get(
            e.errno or 0, "permission denied" if isinstance(e, PermissionError) or e.errno in _WRITE_ERRNOS
            else (e.strerror or type(e).__name__).lower())
        raise StorageError(f"cannot write to {folder}: {why}; write the output elsewhere (another --out) or "
                           "make the folder writable") from None
    return folder


def check_free_space(path: str | os.PathLike, needed_bytes: int, what: str) -> None:
    """Refuse to start writing ``what`` when the folder of ``path`` has less than ``needed_bytes`` free.

    Checked before anything is written, so a full disk is one clear message instead of
    a failure half-way through (the writer still cleans up if space runs out later).
    """
    folder = Path(path).parent
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise StorageError(f"not enough disk space for {what}: needs about {format_bytes(needed_bytes)}, "
                           f"{format_bytes(free)} free in {folder}; free some space or write elsewhere")


def disk_full_message(e: BaseException, path: str | os.PathLike, what: str) -> str | None:
    """A one-line message for ENOSPC/EDQUOT while writing ``what`` (None for other errors).

    Recognises OSError's errno and HDF5's wording (its Python binding raises OSError or RuntimeError
    whose text carries ``errno = 28`` and the system's message).
    """
    text = str(e)
    if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or any(
            s in text for s in ("No space left", "Disk quota exceeded", f"errno = {errno.ENOSPC},",
                                f"errno = {errno.EDQUOT},")):
        return (f"disk full while writing {what} to {Path(path).parent} (the partial file was removed; {path} is "
                "unchanged); free some space or write elsewhere")
    return None


def format_bytes(n: float) -> str:
    """A size with the unit that fits it: '512 bytes', '30.4 KB', '12.3 MB', '1.25 GB' (decimal units)."""
    if n < 1e3:
        return f"{int(n)} byte{'' if int(n) == 1 else 's'}"
    for unit, scale in (("KB", 1e3), ("MB", 1e6)):
        if n < scale * 999.95:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1e9:.2f} GB"


def replace_durably(tmp: Path, path: Path) -> None:
    """Rename a finished temp file over ``path``, its bytes and then the rename flushed to disk.

    fsync before the rename, so a crash cannot leave the new name on an empty file; fsync of
    the folder after it, so the rename itself survives a crash.
    """
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # a folder that cannot be opened (some platforms): the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(p)
    try:
        tmp.write_text(text)
        replace_durably(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
