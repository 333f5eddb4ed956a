"""Networks: kdcache's teacher and student, built by name, or your own, built by a factory.

The defaults come from the design that started the project (1x28x28 inputs, 10 classes):
a 4-conv BatchNorm teacher (322,506 parameters) and a one-conv student (37,570).
``student-convpool`` (20,586) is a student that can use augmentation: two convs, each
followed by max-pooling, so a shift of a few pixels moves its features by a fraction of a
pooled cell, where the one-conv student's linear layer sees every pixel position apart.
All take the input shape and class count as arguments so the same code serves
custom image datasets. A team's own model is named ``package.module:function`` (a
*factory*) plus keyword arguments (``ModelSpec``); kdcache imports and calls a factory
only when the user names it, never because a file says so (see kdcache.train.checkpoint).
"""
from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from kdcache.errors import ConfigError


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TeacherCNN(nn.Module):
    """conv64-conv64-pool-conv128-conv128-pool-linear, every conv with BatchNorm + ReLU."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: tuple[int, int] = (28, 28)):
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, 64),
            _conv_bn_relu(64, 64),
            nn.MaxPool2d(2, 2),
            _conv_bn_relu(64, 128),
            _conv_bn_relu(128, 128),
            nn.MaxPool2d(2, 2),
        )
        h, w = image_size[0] // 4, image_size[1] // 4
        self.fc = nn.Linear(128 * h * w, num_classes)  # 6272 for 28x28

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        return self.fc(torch.flatten(self.features(x), 1))


class StudentCNN(nn.Module):
    """conv6 (3x3, no padding) - ReLU - maxpool(2, stride 1) - linear."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: tuple[int, int] = (28, 28)):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 6, 3)
        self.pool = nn.MaxPool2d(2, 1)
        h, w = image_size[0] - 3, image_size[1] - 3  # conv -2, pool -1
        self.fc = nn.Linear(6 * h * w, num_classes)  # 3750 for 28x28

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv(x)))
        return self.fc(torch.flatten(x, 1))


class StudentConvPool(nn.Module):
    """conv16-BN-ReLU-maxpool2 - conv32-BN-ReLU-maxpool2 - linear (20,586 parameters at 1x28x28).

    The smallest student here that can use augmentation; ~1.8x the one-conv student's CPU
    time per step (measured: 49 vs 27 ms per 128-image step, one thread).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: tuple[int, int] = (28, 28)):
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, 16), nn.MaxPool2d(2, 2),
            _conv_bn_relu(16, 32), nn.MaxPool2d(2, 2),
        )
        h, w = image_size[0] // 4, image_size[1] // 4
        self.fc = nn.Linear(32 * h * w, num_classes)  # 1568 for 28x28

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        return self.fc(torch.flatten(self.features(x), 1))


def init_weights(model: nn.Module) -> nn.Module:
    """Xavier-normal conv weights, zero biases, BN (1, 0), Linear weights N(0, 0.01)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
    return model


ARCHS: dict[str, Callable[..., nn.Module]] = {
    "teacher-cnn": TeacherCNN,
    "student-cnn": StudentCNN,
    "student-convpool": StudentConvPool,
}


def build_model(
    arch: str, in_channels: int = 1, num_classes: int = 10, image_size: tuple[int, int] = (28, 28)
) -> nn.Module:
    """Build and initialise a registered architecture.

    Raises ConfigError naming the valid choices for an unknown ``arch``.
    """
    if arch not in ARCHS:
        raise ConfigError(f"unknown architecture {arch!r}; choose one of: {', '.join(sorted(ARCHS))}")
    model = ARCHS[arch](in_channels=in_channels, num_classes=num_classes, image_size=tuple(image_size))
    return init_weights(model)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


FACTORY_ARGS = ("num_classes", "in_channels", "image_size")  # offered to a factory that names them


def _offered_args(fn: Callable[..., Any], offered: Mapping[str, Any]) -> dict[str, Any]:
    """The automatic arguments ``fn`` takes: those its signature names as keywords.

    A bare ``**kwargs`` does not count for in_channels and image_size: builders such as
    ``torchvision.models:resnet18`` forward it to a class that takes neither. It does for
    num_classes, which every classifier builder forwards (ResNet, MobileNetV3, ...), so such
    a builder fits the data's classes unasked.
    """
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return {}
    named = {name for name, p in params.items()
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        named.add("num_classes")
    return {k: v for k, v in offered.items() if k in named}


def import_factory(target: str, option: str = "--teacher-factory") -> Callable[..., Any]:
    """Resolve ``package.module:function`` to the callable (``option`` names the flag in messages)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{option} {target!r} must look like package.module:function")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: a module in the current folder is found
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"{option}: cannot import {module_name!r} ({e}); run from the folder that "
                          "holds it or add it to PYTHONPATH") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{option}: {module_name} has no function {attr!r}")
    return fn


def build_from_factory(target: str, *, num_classes: int, in_channels: int, image_size: tuple[int, int],
                       kwargs: Mapping[str, Any] | None = None, option: str = "--teacher-factory") -> nn.Module:
    """Call the factory with ``kwargs`` plus whichever of num_classes, in_channels, image_size it takes.

    ``kwargs`` win over the automatic values; a ``kwargs`` value of None (JSON null) means
    "leave it out", so the factory's own default applies (e.g. ``{"num_classes": null}``).
    Anything the factory raises becomes one ConfigError line.
    """
    fn = import_factory(target, option)
    offered = dict(zip(FACTORY_ARGS, (num_classes, in_channels, tuple(image_size))))
    args = {**_offered_args(fn, offered), **(kwargs or {})}
    args = {k: v for k, v in args.items() if v is not None}
    try:
        model = fn(**args)
    except Exception as e:  # the user's code: any failure is a bad --...-factory or keyword argument
        first = (str(e).strip().splitlines() or [""])[0][:200]
        unwanted = [k for k in args if k in FACTORY_ARGS and k not in (kwargs or {}) and f"'{k}'" in first]
        hint = (f"; add {{\"{unwanted[0]}\": null}} to its keyword arguments to leave {unwanted[0]} out"
                if isinstance(e, TypeError) and unwanted else "")
        raise ConfigError(f"{option} {target} failed with arguments {json.dumps(args, default=str)} "
                          f"({type(e).__name__}: {first}){hint}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{option} {target} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _first_conv_channels(model: nn.Module) -> int | None:
    """The input channels of the model's first convolution, or None: names a channel mismatch plainly."""
    conv = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    return None if conv is None else int(conv.in_channels)


def check_output_shape(model: nn.Module, num_classes: int, in_channels: int, image_size: tuple[int, int],
                       name: str) -> None:
    """Refuse a model that fails on, or does not return (B, num_classes) logits for, the data's inputs."""
    was_training = model.training
    model.eval()  # BatchNorm and dropout would change state or refuse a batch this small in train mode
    x = torch.zeros(2, in_channels, *image_size)
    with torch.inference_mode():
        try:
            out = model(x)
        except Exception as e:  # the team's model: any failure is a mismatch with the data
            expects = _first_conv_channels(model)
            if expects is not None and expects != in_channels:
                raise ConfigError(f"model from {name} expects {expects}-channel inputs, but the data has {in_channels} "
                                  f"channel(s); build the model for {in_channels} channel(s) (a factory argument such as "
                                  f"in_channels, or a wrapper that adapts the input) or use {expects}-channel "
                                  "images") from None
            raise ConfigError(f"model from {name} fails on {in_channels}x{list(image_size)} inputs "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"model from {name} returns {shape} for a batch of 2, expected (2, {num_classes}) "
                          f"logits for the data's {num_classes} classes")


def parse_kwargs(text: str | None, option: str = "--student-kwargs") -> dict[str, Any]:
    """``'{"width": 32}'`` -> {"width": 32}: a JSON object of keyword arguments ({} for None or empty)."""
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{option} {text!r} is not JSON ({e}); write an object, e.g. {option} '{{\"width\": 32}}'") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{option} must be a JSON object of keyword arguments, e.g. '{{\"width\": 32}}', got {text!r}")
    return value


@dataclass(frozen=True)
class ModelSpec:
    """Which model to build: a registered ``arch``, or ``factory`` ("package.module:function") with ``kwargs``.

    ``kwargs`` must be JSON values: checkpoints record them (and load them without
    unpickling), and a run is reused only when they are the same.
    """

    arch: str = "student-cnn"
    factory: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    option: str = "--student-factory"  # the flag that names the factory, for messages

    def __post_init__(self) -> None:
        if self.kwargs and self.factory is None:
            raise ConfigError(f"keyword arguments {dict(self.kwargs)} are for {self.option}; "
                              f"built-in architectures take none")
        try:
            plain = json.loads(json.dumps(dict(self.kwargs)))
        except (TypeError, ValueError):
            raise ConfigError(f"{self.option} keyword arguments must be JSON values (numbers, strings, lists, "
                              f"objects), got {dict(self.kwargs)!r}") from None
        object.__setattr__(self, "kwargs", plain)

    @property
    def name(self) -> str:
        """What checkpoints and summaries call the model: the arch, or ``factory:package.module:function``."""
        return f"factory:{self.factory}" if self.factory else self.arch

    def check(self) -> None:
        """Fail early on an unknown arch or an unimportable factory (before any data is read)."""
        if self.factory is None:
            build_model(self.arch)
        else:
            import_factory(self.factory, self.option)

    def build(self, in_channels: int, num_classes: int, image_size: tuple[int, int]) -> nn.Module:
        """The model for inputs of this shape: registered archs get kdcache's init, factories their own."""
        if self.factory is None:
            return build_model(self.arch, in_channels, num_classes, image_size)
        model = build_from_factory(self.factory, num_classes=num_classes, in_channels=in_channels,
                                   image_size=image_size, kwargs=self.kwargs, option=self.option)
        check_output_shape(model, num_classes, in_channels, image_size, self.factory)
        return model

    def record(self) -> dict[str, Any]:
        """What a checkpoint stores to rebuild the model (with the user's consent, for a factory)."""
        return {"arch": self.name, "factory": self.factory, "factory_kwargs": dict(self.kwargs) if self.factory else None}
