"""One training loop for teacher and student: only the loss and the batch contents differ.

Nothing here knows about caches or teachers; a ``LossFn`` maps (model outputs, batch)
to a scalar, and a batch source yields ``Batch`` objects.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Iterator, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import ImageData, batch_order, normalize
from .errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine", "constant")
PRECISIONS = ("fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by teacher and student training."""

    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.05  # peak learning rate
    optimizer: str = "sgd"  # sgd (momentum 0.9, nesterov) | adamw
    schedule: str = "onecycle"  # onecycle | cosine | constant
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"  # fp32 | bf16 (autocast + channels_last)

    def __post_init__(self) -> None:
        for name, value, choices in (("optimizer", self.optimizer, OPTIMIZERS), ("schedule", self.schedule, SCHEDULES),
                                     ("precision", self.precision, PRECISIONS), ("device", self.device, DEVICES)):
            if value not in choices:
                raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"epochs and batch size must be >= 1, got {self.epochs} and {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)) or self.weight_decay < 0:
            raise ConfigError(f"learning rate must be > 0 and weight decay >= 0, got {self.lr} and {self.weight_decay}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Batch:
    images: torch.Tensor  # (B, C, H, W) float32, normalised, on device
    labels: torch.Tensor  # (B,) int64
    teacher_logits: torch.Tensor | None = None  # (B, K) float32, when distilling from a cache


LossFn = Callable[[torch.Tensor, Batch], torch.Tensor]


class BatchSource(Protocol):
    def __iter__(self) -> Iterator[Batch]: ...
    def __len__(self) -> int: ...


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU; 'cuda' without a GPU is a ConfigError."""
    if device not in DEVICES:
        raise ConfigError(f"unknown device {device!r}; choose one of: {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but no CUDA GPU is available; use --device auto or cpu")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """Turn TF32 off on CUDA for the block, so 'fp32' results are true fp32 (cuDNN convs default to TF32)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


class MemoryBatches:
    """Whole batches sliced from in-memory tensors; one fresh permutation per epoch.

    ``teacher_logits`` (N, K), when given, must be row-aligned with ``data`` and is
    sliced with the same indices, so each image meets its own cached logits.
    """

    def __init__(self, data: ImageData, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 device: torch.device | str = "cpu", teacher_logits: torch.Tensor | None = None,
                 channels_last: bool = False):
        if teacher_logits is not None and teacher_logits.shape[0] != len(data):
            raise ValueError(f"teacher_logits rows {teacher_logits.shape[0]} != data rows {len(data)}")
        self.device = torch.device(device)
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device)
        self.teacher_logits = None if teacher_logits is None else teacher_logits.float().to(self.device)
        self.mean, self.std = data.info.mean, data.info.std
        self.batch_size, self.shuffle = batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        for idx in batch_order(len(self.labels), self.batch_size, self.shuffle, self.generator):
            idx = idx.to(self.device)
            x = normalize(self.images[idx], self.mean, self.std).contiguous(memory_format=self.memory_format)
            t = None if self.teacher_logits is None else self.teacher_logits[idx]
            yield Batch(x, self.labels[idx], t)


def cross_entropy_loss(outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
    return F.cross_entropy(outputs.float(), batch.labels)


def build_optimizer(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int):
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]  # no weight decay on biases / BN
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.lr)
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle" and total >= 4:  # OneCycle needs >= 1 step in each phase
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total,
                                                    pct_start=max(0.25, 2.0 / total))
    elif cfg.schedule == "cosine" or cfg.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return opt, sched


def train_one_epoch(model: nn.Module, batches: Iterable[Batch], loss_fn: LossFn, optimizer, scheduler,
                    device: torch.device, precision: str = "fp32", progress: bool = False,
                    desc: str = "train") -> dict[str, float]:
    """One pass over ``batches``; returns mean loss and accuracy (on the hard labels)."""
    model.train()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    bar = tqdm(batches, desc=desc, disable=not progress, leave=False, unit="batch")
    for batch in bar:
        with autocast(device, precision):
            outputs = model(batch.images)
        loss = loss_fn(outputs, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        n = batch.labels.shape[0]
        total_loss += loss.detach() * n
        correct += (outputs.detach().argmax(1) == batch.labels).sum()
        seen += n
    loss_value = float(total_loss) / max(seen, 1)
    if not math.isfinite(loss_value):
        raise ConfigError(f"training diverged (loss {loss_value}); lower --lr")
    return {"loss": loss_value, "accuracy": float(correct) / max(seen, 1)}


@torch.inference_mode()
def evaluate(model: nn.Module, data: ImageData, *, batch_size: int = 1000, device: torch.device | str = "cpu",
             precision: str = "fp32", progress: bool = False) -> dict:
    """Accuracy, mean cross-entropy and per-class accuracy of ``model`` on ``data``."""
    device = torch.device(device)
    model.eval().to(device)
    batches = MemoryBatches(data, batch_size, shuffle=False, device=device, channels_last=precision == "bf16")
    k = data.info.num_classes
    hits = torch.zeros(k, dtype=torch.int64, device=device)
    counts = torch.zeros(k, dtype=torch.int64, device=device)
    total_loss = 0.0
    for batch in tqdm(batches, desc="eval", disable=not progress, leave=False, unit="batch"):
        with autocast(device, precision):
            outputs = model(batch.images)
        total_loss += float(F.cross_entropy(outputs.float(), batch.labels, reduction="sum"))
        counts += torch.bincount(batch.labels, minlength=k)
        hits += torch.bincount(batch.labels[outputs.argmax(1) == batch.labels], minlength=k)
    n = int(counts.sum())
    per_class = {name: (int(h) / int(c) if int(c) else None)
                 for name, h, c in zip(data.info.class_names, hits.tolist(), counts.tolist())}
    return {"accuracy": int(hits.sum()) / n, "loss": total_loss / n, "num_samples": n,
            "per_class_accuracy": per_class}


def fit(model: nn.Module, batches: BatchSource, loss_fn: LossFn, cfg: TrainConfig, *,
        eval_data: ImageData | None = None, progress: bool = False, desc: str = "train") -> list[dict]:
    """Train for ``cfg.epochs``; returns one metrics dict per epoch (train and, if given, eval)."""
    device = resolve_device(cfg.device)
    model.to(device)
    if cfg.precision == "bf16":
        model.to(memory_format=torch.channels_last)
    optimizer, scheduler = build_optimizer(model, cfg, len(batches))
    history = []
    epochs = tqdm(range(1, cfg.epochs + 1), desc=desc, disable=not progress, unit="epoch")
    for epoch in epochs:
        t0 = time.perf_counter()
        train = train_one_epoch(model, batches, loss_fn, optimizer, scheduler, device, cfg.precision,
                                progress=progress, desc=f"epoch {epoch}")
        row = {"epoch": epoch, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
               "train_seconds": time.perf_counter() - t0}
        if eval_data is not None:
            ev = evaluate(model, eval_data, device=device, precision=cfg.precision)
            row.update(test_loss=ev["loss"], test_accuracy=ev["accuracy"])
        history.append(row)
        epochs.set_postfix(loss=f"{row['train_loss']:.3f}", acc=f"{row.get('test_accuracy', row['train_accuracy']):.4f}")
    return history
