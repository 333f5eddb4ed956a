"""Atomic file output: every artifact appears whole at its path or not at all."""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from .errors import ConfigError


def temp_path_for(path: Path) -> Path:
    """A hidden temp file next to ``path`` (same filesystem, so os.replace is atomic)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def check_output(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an existing output unless ``overwrite``; create its folder."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p} is a directory; give a file path")
    if p.exists() and not overwrite:
        raise ConfigError(f"{p} already exists; pass --overwrite to replace it")
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(p)
    try:
        tmp.write_text(text)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
