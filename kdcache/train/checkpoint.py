"""Checkpoints: a state dict plus the config that made it, loaded without unpickling code.

A checkpoint is a plain dict of tensors and primitive values, saved with torch.save
and loaded with ``torch.load(weights_only=True)``, so a checkpoint from another team
can carry weights but never executable code.

A model built by a user's factory (``train-student --student-factory mod:fn``) is
recorded as that name plus its keyword arguments. Rebuilding it means importing and
calling ``mod:fn``, so a checkpoint alone never makes kdcache do that: whoever loads it
must name the same factory (``load_checkpoint(..., factory=)``, ``evaluate
--student-factory``). Otherwise a file from anywhere could name any importable callable.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from kdcache.errors import CheckpointError, ConfigError
from kdcache.files import check_output, replace_durably, temp_path_for
from kdcache.identity import DatasetInfo
from kdcache.train.models import ModelSpec

CHECKPOINT_FORMAT = "kdcache-checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED_CONFIG = ("arch", "in_channels", "num_classes", "image_size", "dataset", "mean", "std", "class_names")


def save_checkpoint(path: str | os.PathLike, model: nn.Module, config: Mapping[str, Any], overwrite: bool = False) -> Path:
    """Atomically write ``{format, version, config, state_dict}`` to ``path``."""
    p = check_output(path, overwrite)
    missing = [k for k in REQUIRED_CONFIG if k not in config]
    assert not missing, f"checkpoint config lacks {missing}"
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": dict(config),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
    }
    return save_payload(p, payload)


def save_payload(path: Path, payload: Mapping[str, Any]) -> Path:
    """``torch.save`` to a hidden temp file, then renamed into place: a kill never leaves half a file at ``path``."""
    tmp = temp_path_for(path)
    try:
        torch.save(dict(payload), tmp)
        replace_durably(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_weights_only(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU: tensors and plain values, never code.

    A pickle that would build any other object (and so could run code) is refused
    with a CheckpointError, as is an unreadable file. Used for kdcache checkpoints
    and for the plain state dicts of custom teachers (``--weights``).
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} not found")
    if not zipfile.is_zipfile(p):  # torch.save has written zip archives since torch 1.6
        raise CheckpointError(f"{p} is not a readable checkpoint (not a torch.save file, or truncated)")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = f"a reference to {found.group(1)}" if found else "objects other than tensors and plain values"
        raise CheckpointError(f"{p} was refused: it holds {what}, which could run code when loaded; "
                              "kdcache loads only tensors and plain values (weights_only=True)") from None
    except Exception as e:  # truncated zip, not a torch file, ...
        first = (str(e).strip().splitlines() or ["empty or unreadable file"])[0][:160]
        raise CheckpointError(f"{p} is not a readable checkpoint ({type(e).__name__}: {first})") from None
    return payload


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load the raw payload with ``weights_only=True``; anything else is a CheckpointError."""
    p = Path(path)
    payload = load_weights_only(p)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{p} is not a kdcache checkpoint (no {CHECKPOINT_FORMAT!r} format marker)")
    if int(payload.get("version", 0)) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{p} is checkpoint version {payload.get('version')}, newer than this kdcache reads "
                              f"({CHECKPOINT_VERSION}); upgrade kdcache")
    config = payload.get("config")
    if not isinstance(config, dict) or any(k not in config for k in REQUIRED_CONFIG):
        raise CheckpointError(f"{p}: checkpoint config lacks one of {', '.join(REQUIRED_CONFIG)}")
    if not isinstance(payload.get("state_dict"), dict):
        raise CheckpointError(f"{p}: checkpoint has no state_dict")
    return payload


def load_checkpoint(path: str | os.PathLike, expect_arch: str | None = None,
                    factory: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load its weights (eval mode, CPU).

    A checkpoint made by a factory is rebuilt only when ``factory`` names that same factory
    (the caller's consent to import and call it); any other is refused, as is ``factory``
    for a checkpoint of a built-in architecture. Raises CheckpointError if ``expect_arch``
    is given and differs, or if the weights do not fit the model.
    """
    payload = read_checkpoint(path)
    config = payload["config"]
    spec = model_spec(config, path, factory)
    arch = spec.name
    if expect_arch is not None and arch != expect_arch:
        raise CheckpointError(f"{path} holds a {arch!r} model, but {expect_arch!r} was asked for")
    try:
        model = spec.build(int(config["in_channels"]), int(config["num_classes"]), tuple(config["image_size"]))
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match architecture {arch!r} "
                              f"({str(e).splitlines()[0][:160]}...)") from None
    return model.eval(), config


def model_spec(config: dict[str, Any], path: str | os.PathLike, factory: str | None = None) -> ModelSpec:
    """How to rebuild a checkpoint's model, refusing a recorded factory the caller did not name."""
    recorded = config.get("factory")
    if recorded is None:
        if factory is not None:
            raise CheckpointError(f"{path} holds a built-in {config['arch']!r} model, not one made by {factory}; "
                                  "drop --student-factory")
        return ModelSpec(arch=str(config["arch"]))
    kwargs = config.get("factory_kwargs") or {}
    if not isinstance(recorded, str) or not isinstance(kwargs, dict):
        raise CheckpointError(f"{path}: unreadable factory record ({recorded!r}, {kwargs!r})")
    if factory is None:
        raise CheckpointError(f"{path} holds a model made by calling {recorded} with {json.dumps(kwargs)}; kdcache "
                              f"imports and calls code only when you name it: pass --student-factory {recorded} to evaluate "
                              "if you trust that code")
    if factory != recorded:
        raise CheckpointError(f"{path} holds a model made by {recorded}, not by {factory}; kdcache calls only the "
                              f"factory you name, and only when it is the one the checkpoint records")
    return ModelSpec(factory=recorded, kwargs=kwargs)


def model_config(model: str | ModelSpec, info: DatasetInfo) -> dict[str, Any]:
    """What a checkpoint records about its model and the data it fits (REQUIRED_CONFIG and more)."""
    spec = model if isinstance(model, ModelSpec) else ModelSpec(arch=model)
    return {
        **spec.record(), "in_channels": info.in_channels, "num_classes": info.num_classes,
        "image_size": list(info.image_size), "dataset": info.name, "mean": list(info.mean), "std": list(info.std),
        "class_names": list(info.class_names), "dataset_fingerprint": info.fingerprint,
        "input_transform": info.transform,  # image files: how they became inputs (None for in-memory datasets)
    }


def check_model_fits_data(config: dict[str, Any], info: DatasetInfo, path: str | os.PathLike) -> None:
    """Refuse a checkpoint whose classes or input shape differ from the data's."""
    if info.class_names and (int(config["num_classes"]) != info.num_classes
                             or list(config["class_names"]) != list(info.class_names)):
        raise CheckpointError(f"{path} predicts {config['num_classes']} classes of {config['dataset']}, but "
                              f"{info.name} has {info.num_classes}; use a checkpoint trained on this data")
    if int(config["in_channels"]) != info.in_channels or list(config["image_size"]) != list(info.image_size):
        raise CheckpointError(f"{path} expects {config['in_channels']}x{config['image_size']} inputs, the data is "
                              f"{info.in_channels}x{list(info.image_size)}")
