"""Teachers for dump-logits and verify: a kdcache checkpoint, or a team's own model.

A team's own teacher is named by a factory and a weights file::

    --teacher-factory mypkg.models:build_teacher --weights teacher_state.pt

``build_teacher`` is imported (the current directory is on the import path, as
with ``python -m``) and called with whichever of ``num_classes``, ``in_channels``
and ``image_size`` it accepts, taken from the data. The weights file is a state
dict (or a dict holding one under ``"state_dict"``), loaded with
``torch.load(weights_only=True)``, so it can carry tensors but never code. The
teacher sees images standardised with the dataset's mean/std (for imagefolder: the
train split's statistics), the same preprocessing the student gets.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from kdcache.data.images import InputTransform
from kdcache.data.samples import standardize, to_unit
from kdcache.device import autocast, resolve_precision, strict_fp32
from kdcache.errors import CheckpointError, ConfigError
from kdcache.files import sha256_file
from kdcache.identity import DatasetInfo
from kdcache.train.checkpoint import (
    check_model_fits_data,
    load_checkpoint,
    load_weights_only,
    read_checkpoint,
)
from kdcache.train.models import build_from_factory, check_output_shape


@dataclass(frozen=True)
class TeacherSpec:
    """What the user named: a checkpoint, or a factory plus a weights file."""

    checkpoint: str | None = None
    factory: str | None = None  # "package.module:function"
    weights: str | None = None
    arch: str | None = None  # refuse a checkpoint of any other architecture

    def __post_init__(self) -> None:
        if (self.checkpoint is None) == (self.factory is None):
            raise ConfigError("name the teacher once: --teacher CKPT, or --teacher-factory MODULE:FUNCTION "
                              "with --weights FILE (in Python: TeacherSpec(checkpoint=...) or TeacherSpec(factory=..., "
                              "weights=...))")
        if self.factory is not None and self.weights is None:
            raise ConfigError("--teacher-factory needs --weights FILE (a state dict saved with torch.save)")
        if self.factory is None and self.weights is not None:
            raise ConfigError("--weights goes with --teacher-factory; a kdcache checkpoint (--teacher) holds its weights")

    @property
    def file(self) -> str:
        """The file whose SHA-256 identifies the teacher."""
        return str(self.checkpoint if self.checkpoint is not None else self.weights)


@dataclass(frozen=True)
class Teacher:
    """A loaded teacher in eval mode on CPU, with what a cache records about it."""

    model: nn.Module
    arch: str  # e.g. "teacher-cnn" or "factory:mypkg.models:build_teacher"
    sha256: str  # of the checkpoint or weights file
    mean: tuple[float, ...]  # input standardisation the teacher expects
    std: tuple[float, ...]
    config: dict[str, Any]  # recorded in the cache's config_json (teacher_config)

    @torch.inference_mode()
    def logits(self, images: torch.Tensor, device: torch.device, precision: str = "fp32") -> torch.Tensor:
        """Raw logits (B, classes) float32 on CPU for uint8 images, or float images in [0, 1] (augmented views).

        The model must already be on ``device`` (and channels_last for bf16). Inputs are
        standardised with the teacher's own mean/std, exactly as in its training; fp32 runs
        with TF32 off on CUDA, so cached logits are true fp32.
        """
        precision = resolve_precision(precision, device)
        x = images.to(device)
        x = to_unit(x) if x.dtype == torch.uint8 else x.float()
        x = standardize(x, self.mean, self.std)
        if precision == "bf16":
            x = x.contiguous(memory_format=torch.channels_last)
        with (strict_fp32() if precision == "fp32" else contextlib.nullcontext()), autocast(device, precision):
            return self.model(x).float().cpu()

    @torch.inference_mode()
    def view_logits(self, views: torch.Tensor, device: torch.device, precision: str = "fp32") -> torch.Tensor:
        """Raw logits (B, V, classes) on already-built views (B, V, C, H, W) (kdcache.data.replay.view_images).

        uint8 views (cut from files) or float views in [0, 1]; each view v of the batch runs as one
        batch of B through ``logits``, standardised there exactly as a student's replayed view is.
        """
        return torch.stack([self.logits(views[:, v], device, precision) for v in range(views.shape[1])], dim=1)


def default_transform(spec: TeacherSpec) -> InputTransform | None:
    """How image files become a checkpoint teacher's input: the transform it was trained with, or, for a teacher
    of an in-memory dataset (Fashion-MNIST), its input size and channels with images of that size unchanged.
    None for a factory teacher (the data's default)."""
    if spec.checkpoint is None:
        return None
    config = read_checkpoint(spec.checkpoint)["config"]
    if config.get("input_transform"):
        return InputTransform.from_record(config["input_transform"])
    h, w = config["image_size"]
    if h != w:
        return None
    return InputTransform(int(h), crop_fraction=1.0, mode="L" if int(config["in_channels"]) == 1 else "RGB")


def default_dataset(spec: TeacherSpec | None) -> str:
    """The dataset a teacher was trained on (checkpoint), else fashion-mnist."""
    if spec is not None and spec.checkpoint is not None:
        return str(read_checkpoint(spec.checkpoint)["config"]["dataset"])
    return "fashion-mnist"


def read_class_names(path: str | os.PathLike) -> tuple[str, ...]:
    """Class names from a text file, one per line in logit column order (blank lines ignored)."""
    try:
        text = open(path, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--class-names {path}: cannot read it ({e}); give a UTF-8 text file with one class "
                          "name per line") from None
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) < 2 or len(set(names)) != len(names):
        raise ConfigError(f"--class-names {path} holds {len(names)} names ({len(set(names))} distinct); give at "
                          "least 2 distinct class names, one per line, in the order of the teacher's logits")
    return names


def with_teacher_classes(spec: TeacherSpec | None, info: DatasetInfo, class_names: tuple[str, ...] | None = None
                         ) -> DatasetInfo:
    """``info`` with the classes the teacher predicts, for data that has none of its own (unlabelled images).

    A kdcache checkpoint carries its class names; a factory teacher (or an nn.Module: spec None) has only a number of
    outputs, so its class names must be given (``class_names``, e.g. from ``--class-names``).
    Data with classes keeps them; ``class_names``, if given, must equal them.
    """
    names = tuple(class_names) if class_names else None
    if info.class_names:
        if names is not None and names != tuple(info.class_names):
            raise ConfigError(f"--class-names lists {len(names)} classes {list(names)[:3]}..., but {info.name} has "
                              f"{info.num_classes} {list(info.class_names)[:3]}...; drop --class-names (labelled data "
                              "names its own classes)")
        return info
    if spec is not None and spec.checkpoint is not None:
        own = tuple(str(c) for c in read_checkpoint(spec.checkpoint)["config"]["class_names"])
        if names is not None and names != own:
            raise ConfigError(f"--class-names differs from the class names stored in {spec.checkpoint}; drop "
                              "--class-names (a kdcache checkpoint names its classes)")
        names = own
    if names is None:
        raise ConfigError(f"{info.name} images have no labels, so the cache's class names must come from the teacher: "
                          "--teacher-factory needs --class-names FILE (one class name per line, in the order of "
                          "the teacher's logits)")
    return replace(info, class_names=names)


def _state_dict_from(payload: Any, path: str) -> dict[str, torch.Tensor]:
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise CheckpointError(f"{path} is not a state dict (a dict of parameter name -> tensor); save it with "
                              "torch.save(model.state_dict(), path)")
    return payload


def load_teacher(spec: TeacherSpec, info: DatasetInfo) -> Teacher:
    """Load the teacher ``spec`` names and check that it fits ``info``'s classes and inputs."""
    if spec.checkpoint is not None:
        model, config = load_checkpoint(spec.checkpoint, expect_arch=spec.arch)
        check_model_fits_data(config, info, spec.checkpoint)
        return Teacher(model=model, arch=str(config["arch"]), sha256=sha256_file(spec.checkpoint),
                       mean=tuple(config["mean"]), std=tuple(config["std"]),
                       config={k: v for k, v in config.items() if k != "class_names"})
    assert spec.factory is not None and spec.weights is not None
    state = _state_dict_from(load_weights_only(spec.weights), spec.weights)
    model = build_from_factory(spec.factory, num_classes=info.num_classes, in_channels=info.in_channels,
                               image_size=tuple(info.image_size))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split()).replace("Error(s) in loading state_dict for ", "")  # one line
        raise CheckpointError(f"{spec.weights}: weights do not fit the model from {spec.factory} ({detail[:240]}); "
                              "pass the state dict of the model this factory builds") from None
    model.eval()
    check_output_shape(model, info.num_classes, info.in_channels, tuple(info.image_size), f"--teacher-factory {spec.factory}")
    config = {"factory": spec.factory, "weights": os.path.basename(spec.weights), "dataset": info.name,
              "mean": list(info.mean), "std": list(info.std)}
    return Teacher(model=model, arch=f"factory:{spec.factory}", sha256=sha256_file(spec.weights),
                   mean=tuple(info.mean), std=tuple(info.std), config=config)


def state_sha256(module: nn.Module) -> str:
    """SHA-256 over the state dict in key order: each key, dtype, shape and tensor bytes."""
    h = hashlib.sha256()
    for key, value in module.state_dict().items():
        t = value.detach().cpu().contiguous()
        h.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def module_teacher(module: nn.Module, info: DatasetInfo) -> Teacher:
    """An nn.Module as a Teacher (eval mode) that sees ``info``'s standardisation; checked on the data's input shape."""

    cls = type(module)
    arch = f"module:{cls.__module__}.{cls.__qualname__}"
    check_output_shape(module, info.num_classes, info.in_channels, tuple(info.image_size), arch)
    return Teacher(model=module.eval(), arch=arch, sha256=state_sha256(module), mean=tuple(info.mean),
                   std=tuple(info.std), config={})
