"""Where and at what precision tensors are computed: device choice, bf16 autocast, true fp32 on CUDA."""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Iterator

import torch

from kdcache.config import DEVICES, PRECISIONS
from kdcache.errors import ConfigError


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU; 'cuda' without a GPU is a ConfigError."""
    if device not in DEVICES:
        raise ConfigError(f"unknown device {device!r}; choose one of: {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but no CUDA GPU is available; use --device auto or cpu")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


# CPU flags of the instructions that run bf16 natively (Linux /proc/cpuinfo names): AVX512-BF16 and AMX.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(text: str) -> frozenset[str]:
    """The feature flags in /proc/cpuinfo ``text`` that every processor lists (a process may run on any of them)."""
    sets = [frozenset(value.split()) for key, _, value in (line.partition(":") for line in text.splitlines())
            if key.strip() == "flags"]
    return frozenset.intersection(*sets) if sets else frozenset()


@functools.lru_cache(maxsize=None)
def host_cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """This machine's CPU flags, read once; none where ``path`` is missing or unreadable (not Linux)."""
    try:
        return cpu_flags(Path(path).read_text())
    except (OSError, UnicodeDecodeError):
        return frozenset()


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 in hardware, so that bf16 autocast is faster than fp32 there.

    Without native bf16 it is much slower: per 128-image teacher training step, bf16 took
    0.19 s vs 0.41 s fp32 on a CPU with AVX512-BF16, but 12.6 s vs 1.5 s on an AVX2-only CPU.
    CUDA: a GPU with bf16 units (torch's check without emulation); CPU: AVX512-BF16 or AMX in
    /proc/cpuinfo; anything else, or flags that cannot be read, counts as not native.
    """
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.4: no emulation flag
            return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return any(flag in host_cpu_flags() for flag in BF16_CPU_FLAGS)
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """Return "fp32" or "bf16": ``auto`` is bf16 only where ``device`` runs it natively (bf16_native), since
    without native bf16 it was measured 8x slower than fp32; explicit values pass through. Jobs record the result."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if bf16_native(device) else "fp32"
    return precision


def describe_precision(precision: str, device: torch.device) -> str:
    """The resolved precision and, for auto or a bf16 asked for where it is not native, why (for the CLI to print)."""
    resolved, native = resolve_precision(precision, device), bf16_native(device)
    what = {"cpu": "this CPU", "cuda": "this GPU"}.get(device.type, f"{device.type}")
    if precision == "auto":
        return f"{resolved} (auto: {what} {'runs bf16 natively' if native else 'has no native bf16'})"
    if resolved == "bf16" and not native:
        return f"bf16 ({what} has no native bf16: expect it to be slower than fp32)"
    return resolved


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast or nothing; ``precision`` must be resolved already (resolve_precision), never "auto"."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp32":
        return contextlib.nullcontext()
    raise ConfigError(f"precision {precision!r} must be resolved to fp32 or bf16 first "
                      "(kdcache.device.resolve_precision)")


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """Turn TF32 off on CUDA for the block, so 'fp32' results are true fp32 (cuDNN convs default to TF32)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
