"""One training loop for teacher and student: only the loss and the batch contents differ.

Nothing here knows about caches or teachers; a ``LossFn`` maps (model outputs, batch)
to a scalar, and a batch source (kdcache.data.loader's Loader) yields ``Batch`` objects.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kdcache import dist
from kdcache.config import EVAL_BATCH_SIZE, TrainConfig
from kdcache.data.loader import LoaderConfig, make_loader
from kdcache.data.samples import Batch, BatchSource, ImageData
from kdcache.device import autocast, resolve_device, resolve_precision
from kdcache.errors import Diverged
from kdcache.identity import UNLABELLED
from kdcache.progress import track
from kdcache.train.batchnorm import is_stale, settle_batchnorm

LossFn = Callable[[torch.Tensor, Batch], torch.Tensor]


def cross_entropy_loss(outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
    return F.cross_entropy(outputs.float(), batch.labels)


def build_optimizer(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int):
    cfg = cfg.settled()
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


# A loss this many times its value at the start is a run blowing up, not noise: healthy teacher-cnn runs on
# Fashion-MNIST spike to ~5x in their first epoch (BatchNorm, one-cycle warm-up), so 4x stopped good runs.
# A loss that only ends higher than it started is reported as a warning (kdcache.train.health.loss_warnings).
DIVERGENCE_FACTOR = 10.0
DIVERGENCE_REFERENCE_STEPS = 5  # the start: the mean loss of the untrained model's first steps
DIVERGENCE_CHECK_EVERY = 10  # steps between checks after those (each check waits for the device)


class DivergenceWatch:
    """Stops a run whose loss blows up, instead of letting it finish at chance and exit 0.

    NaN or inf is divergence; so is a loss ``DIVERGENCE_FACTOR`` times the mean of the first
    steps' losses (an untrained model's loss is the highest a healthy run sees, with labels and
    soft targets alike; a run that blew up on a folder of photos went 31 -> 136).
    """

    def __init__(self) -> None:
        self.first: list[float] = []

    def step(self, loss: float) -> None:
        if not math.isfinite(loss):
            raise Diverged(f"loss {loss}")
        if len(self.first) < DIVERGENCE_REFERENCE_STEPS:
            self.first.append(loss)
            return
        start = sum(self.first) / len(self.first)
        if loss > DIVERGENCE_FACTOR * max(start, 1e-3):
            raise Diverged(f"loss {loss:.4g}, {loss / max(start, 1e-3):.1f}x its {start:.3g} at the start")


def train_one_epoch(model: nn.Module, batches: Iterable[Batch], loss_fn: LossFn, optim: tuple[Any, Any],
                    device: torch.device, precision: str = "fp32", desc: str | None = None,
                    watch: "DivergenceWatch | None" = None) -> dict[str, float]:
    """One pass over ``batches``; returns mean loss and accuracy (on the rows that have a label).

    ``optim`` is (optimizer, scheduler), as ``build_optimizer`` returns them; ``desc`` names a progress
    bar (None: none). ``watch`` (one per run, so the reference is the untrained model's loss) stops a run
    that blows up.
    """
    optimizer, scheduler = optim
    model.train()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    labelled = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    watch = watch if watch is not None else DivergenceWatch()
    for step, batch in enumerate(track(batches, desc=desc or "train", enabled=desc is not None)):
        with autocast(device, precision):
            outputs = model(batch.images)
        loss = loss_fn(outputs, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        n = batch.labels.shape[0]
        total_loss += loss.detach() * n
        correct += (outputs.detach().argmax(1) == batch.labels).sum()  # UNLABELLED (-1) never matches
        labelled += (batch.labels != UNLABELLED).sum()
        seen += n
        if step < DIVERGENCE_REFERENCE_STEPS or step % DIVERGENCE_CHECK_EVERY == 0:  # a sync: not every GPU step
            watch.step(float(loss.detach()))
    loss_value = float(total_loss) / max(seen, 1)
    watch.step(loss_value)
    return {"loss": loss_value, "accuracy": float(correct) / max(int(labelled), 1),
            "loss_sum": float(total_loss), "samples": seen, "correct": int(correct),
            "labelled": int(labelled)}  # sums, for reducing over ranks


def evaluate(model: nn.Module, data: ImageData, *, batch_size: int = EVAL_BATCH_SIZE, device: torch.device | str = "cpu",
             precision: str = "fp32", progress: bool = False, workers: int | None = None) -> dict:
    """Accuracy, mean cross-entropy and per-class accuracy of ``model`` on ``data``.

    Under torchrun every rank must call it: each evaluates a contiguous shard of the rows
    (as torchvision's reference ``evaluate`` does with a DistributedSampler) and the sums are
    reduced, so N ranks take ~1/N of the time and every rank returns the same metrics.
    """
    ctx = dist.current()
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    k = data.info.num_classes
    mine = data
    if ctx.distributed:
        ctx.sync_buffers(model)  # rank 0's BatchNorm statistics: the model that is saved
        mine = data.take(dist.rank_share(np.arange(len(data)), ctx.rank, ctx.world_size))  # the one partition rule
    sums, error = np.zeros(1 + 2 * k), None
    try:
        sums = _evaluate_sums(model, mine, batch_size, device, precision, progress and ctx.is_main, workers)
    except Exception as e:  # noqa: BLE001 - reported on every rank by ctx.check, raised here when alone
        error = e
    ctx.check(error)
    sums = np.asarray(ctx.sum(sums.tolist()))
    total_loss, hits, counts = float(sums[0]), sums[1:1 + k].astype(np.int64), sums[1 + k:].astype(np.int64)
    n = int(counts.sum())
    per_class = {name: (int(h) / int(c) if int(c) else None)
                 for name, h, c in zip(data.info.class_names, hits.tolist(), counts.tolist())}
    return {"accuracy": int(hits.sum()) / n, "loss": total_loss / n, "num_samples": n,
            "per_class_accuracy": per_class}


@torch.inference_mode()
def _evaluate_sums(model: nn.Module, data: ImageData, batch_size: int, device: torch.device, precision: str,
                   progress: bool, workers: int | None) -> np.ndarray:
    """[summed cross-entropy, hits per class (k), samples per class (k)] over ``data``."""
    model.eval().to(device)
    batches = make_loader(data, LoaderConfig(batch_size, workers=workers, device=device,
                                             channels_last=precision == "bf16"))
    k = data.info.num_classes
    hits = torch.zeros(k, dtype=torch.int64, device=device)
    counts = torch.zeros(k, dtype=torch.int64, device=device)
    total_loss = 0.0
    for batch in track(batches, desc="eval", enabled=progress):
        with autocast(device, precision):
            outputs = model(batch.images)
        total_loss += float(F.cross_entropy(outputs.float(), batch.labels, reduction="sum"))
        counts += torch.bincount(batch.labels, minlength=k)
        hits += torch.bincount(batch.labels[outputs.argmax(1) == batch.labels], minlength=k)
    return np.concatenate([[total_loss], hits.cpu().numpy(), counts.cpu().numpy()]).astype(np.float64)


@dataclass(frozen=True)
class FitHooks:
    """What a run does around its epochs: a progress bar, a report after each epoch, its resume state."""

    desc: str = "train"  # names the progress bar
    progress: bool = False
    on_epoch: Callable[[dict], None] | None = None  # called with each epoch's metrics row
    resume: dict | None = None  # a state save_state was given: continue after its epoch
    save_state: Callable[[dict], None] | None = None  # rank 0, after every epoch (kdcache.train.resume)


def fit(model: nn.Module, batches: BatchSource, loss_fn: LossFn, cfg: TrainConfig, *,
        eval_data: ImageData | None = None, eval_name: str = "test", hooks: FitHooks = FitHooks()) -> list[dict]:
    """Train for ``cfg.epochs``; returns one metrics dict per epoch (train and, if given, eval).

    ``eval_name`` prefixes the evaluation's keys (``test_accuracy``, or ``val_accuracy`` when
    the per-epoch evaluation is on a validation split). ``hooks.on_epoch(row)`` is called after each epoch.

    Under torchrun (kdcache.dist) the model trains as DistributedDataParallel on every rank's
    ``batches`` (its share of each global batch); train loss and accuracy are summed over
    ranks, every rank evaluates a shard of ``eval_data`` (``evaluate``), and every rank returns rank 0's history.

    ``hooks.save_state(state)`` (rank 0) gets, after every epoch, what continuing needs (``resume_state``:
    tensors and plain values); ``hooks.resume`` (such a state, on every rank) continues after its epoch. The
    batches' order and views are pure functions of (seed, epoch) and the RNG state is restored, so a
    resumed run ends with the weights of one never stopped.

    A model with BatchNorm whose running statistics an epoch of ``len(batches)`` steps leaves stale
    (kdcache.train.batchnorm.is_stale) gets them recomputed over the epoch's batches after each epoch, so
    what is evaluated and saved is settled; its ``train_seconds`` include that pass.
    """
    cfg = cfg.settled()  # called directly, without a job to fill the role's settings
    resume, save_state, on_epoch = hooks.resume, hooks.save_state, hooks.on_epoch
    ctx = dist.current()
    device = ctx.local_device(resolve_device(cfg.device))
    precision = resolve_precision(cfg.precision, device)
    model.to(device)
    if precision == "bf16":
        model.to(memory_format=torch.channels_last)
    optimizer, scheduler = build_optimizer(model, cfg, len(batches))
    history: list[dict] = []
    watch = DivergenceWatch()
    if resume is not None:  # before DDP's wrap, which broadcasts rank 0's weights
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        history, watch.first = [dict(r) for r in resume["history"]], [float(x) for x in resume["watch"]]
    ctx.check()  # every rank has its data, cache and model before DDP's first collective
    net = ctx.wrap(model, device)
    if resume is not None:  # last: nothing between here and the next epoch may draw from it
        torch.set_rng_state(resume["rng"])
        if device.type == "cuda" and resume.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(resume["cuda_rng"], device)
    # BatchNorm statistics that few steps an epoch leave stale are recomputed after each epoch (kdcache.train.batchnorm)
    settle = is_stale(model, len(batches))
    for epoch in range(len(history) + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        batches.set_epoch(epoch - 1)  # the order and views of this epoch, explicitly (no hidden counters)
        with ctx.steps():
            desc = f"{hooks.desc} epoch {epoch}/{cfg.epochs}" if hooks.progress and ctx.is_main else None
            train = train_one_epoch(net, ctx.checked(batches), loss_fn, (optimizer, scheduler), device, precision,
                                    desc=desc, watch=watch)
        ctx.check()
        loss_sum, seen, correct, labelled = ctx.sum([train["loss_sum"], train["samples"], train["correct"],
                                                     train["labelled"]])
        if settle:  # each rank its own share; evaluate uses rank 0's (the model that is saved)
            error = None
            try:
                settle_batchnorm(model, batches, precision)  # the plain model: no DDP collectives in its forward
            except Exception as e:  # noqa: BLE001 - reported on every rank by ctx.check
                error = e
            ctx.check(error)
        row = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(labelled, 1),
               "train_seconds": time.perf_counter() - t0}
        if eval_data is not None:  # every rank a shard, with the plain model (no DDP collectives in its forward)
            ev = evaluate(model, eval_data, device=device, precision=precision)
            row.update({f"{eval_name}_loss": ev["loss"], f"{eval_name}_accuracy": ev["accuracy"]})
        ctx.check()
        row = ctx.broadcast(row)
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if save_state is not None:
            error = None
            if ctx.is_main:  # rank 0 writes; every rank hears if it could not
                try:
                    save_state(resume_state(model, optimizer, scheduler, history, watch, device))
                except Exception as e:  # noqa: BLE001 - reported on every rank by ctx.check
                    error = e
            ctx.check(error)
    return history


def resume_state(model: nn.Module, optimizer, scheduler, history: list[dict], watch: DivergenceWatch,
                 device: torch.device) -> dict:
    """What continuing after ``history[-1]`` needs, as tensors and plain values (``fit(resume=)``)."""
    return {"epoch": len(history), "history": [dict(r) for r in history], "watch": list(watch.first),
            "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
