"""What a checkpoint or cache records about how its data was read, for the jobs that come after it.

A teacher's checkpoint stores its job's DataConfig (``config["job_config"]["data"]``: the folder,
``skip_unreadable``, ...), and a cache stores its teacher's config (``teacher_config``) and the files
it left out. Later jobs inherit the reading settings from there, as they inherit the input transform,
and a folder that is not where the job looks is named from there in the message.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from kdcache.data.folders import IMAGEFOLDER, UNLABELLED_FOLDER
from kdcache.errors import DataError, KDCacheError


def recorded_reading(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The DataConfig a checkpoint's job ran with, as its ``config`` records it (``job_config.data``); {} where
    none is recorded (a checkpoint of an older kdcache, a stand-in saved by hand)."""
    job = (config or {}).get("job_config")
    data = job.get("data") if isinstance(job, Mapping) else None
    return dict(data) if isinstance(data, Mapping) else {}


def checkpoint_reading(path: str | os.PathLike | None) -> dict[str, Any]:
    """``recorded_reading`` of the checkpoint at ``path`` ({} for None or a file that is no checkpoint: the job
    reports that itself)."""
    from kdcache.train.checkpoint import read_checkpoint

    if path is None:
        return {}
    try:
        return recorded_reading(read_checkpoint(path)["config"])
    except KDCacheError:
        return {}


def cache_reading(meta: Any) -> dict[str, Any]:
    """How a cache's rows were read: its teacher's recorded reading, with ``skip_unreadable`` also set where the
    cache lists files it left out (``meta``: a CacheMeta)."""
    reading = recorded_reading(meta.config.get("teacher_config"))
    if meta.skipped_files:
        reading["skip_unreadable"] = True
    return reading


def cache_file_reading(path: str | os.PathLike | None) -> dict[str, Any]:
    """``cache_reading`` of the cache at ``path`` ({} for None or a file that is no cache: the job says so)."""
    from kdcache.cache import read_meta

    if path is None:
        return {}
    try:
        return cache_reading(read_meta(path))
    except KDCacheError:
        return {}


def inherited_skip(asked: bool, reading: Mapping[str, Any]) -> bool:
    """--skip-unreadable as asked, or as the teacher/cache's job ran (a job must not stop at the file the job
    before it left out)."""
    return bool(asked or reading.get("skip_unreadable"))


def with_recorded_folder(e: DataError, data_dir: str | os.PathLike, reading: Mapping[str, Any], source: str
                         ) -> DataError:
    """``e`` (a folder not found under ``data_dir``) with the fix where ``source`` (e.g. "the checkpoint s.pt") was
    trained on another folder: 'imagefolder: data/test not found; the checkpoint s.pt was trained on /photos: pass
    --data-dir /photos'. Any other error comes back unchanged."""
    root, text = reading.get("data_dir"), str(e)
    folder = text.startswith((f"{IMAGEFOLDER}: ", f"{UNLABELLED_FOLDER}: "))  # not an hf:PATH that is not there
    if not isinstance(root, str) or not folder or " not found" not in text or Path(root) == Path(data_dir):
        return e
    return DataError(f"{str(e).split('; ')[0]}; {source} was trained on {root}: pass --data-dir {root}")
