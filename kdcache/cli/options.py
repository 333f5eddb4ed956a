"""Options several commands share; they map onto kdcache.config's dataclasses and take their defaults."""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Callable, TypeVar

import click

from kdcache.config import (
    DEFAULT_DATA_DIR,
    DEFAULT_DATASET,
    DEVICES,
    MIN_DEFAULT_BATCH,
    MIN_STEPS_PER_EPOCH,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    DataConfig,
    TrainConfig,
)

AUGMENT_HELP = ("Augmentation policy: shift-flip (pad-and-crop shift + horizontal flip, small images) or crop-flip "
                "(random-resized crop + flip); settings as NAME:key=value,..., e.g. shift-flip:pad=4.")
PRECISION_HELP = ("auto = bf16 autocast + channels_last only where the hardware runs bf16 natively (CUDA with bf16, "
                  "a CPU with AMX or AVX512-BF16), fp32 elsewhere (where bf16 was measured 8x slower than fp32).")
T = TypeVar("T")

DATASET_HELP = ("fashion-mnist, mnist, imagefolder (your images: --data-dir ROOT with ROOT/train/<class>/* and "
                "ROOT/test/<class>/*), unlabelled (every image under --data-dir ROOT, no labels: a transfer set), "
                "or hf:PATH (a Hugging Face dataset saved with save_to_disk, or a folder of Parquet files; "
                "--image-column/--label-column where its features do not say)")



def quiet_option(f: Callable) -> Callable:
    return click.option("--quiet", "-q", is_flag=True, help="No progress bars or summary line.")(f)


def read_options(f: Callable) -> Callable:
    """How image files are read: the input size, DataLoader workers, unreadable files (kdcache.data.images)."""
    f = click.option("--label-column", "label_key", default=None, metavar="COLUMN",
                     help="--dataset hf:PATH: the label column (default: its ClassLabel feature, else an integer "
                          "column named label/labels/cls/...).")(f)
    f = click.option("--image-column", "image_key", default=None, metavar="COLUMN",
                     help="--dataset hf:PATH: the image column (default: its one Image feature).")(f)
    f = click.option("--skip-unreadable", is_flag=True,
                     help="Image folders: leave out files that do not decode (truncated, not an image), naming "
                          "and recording them, instead of stopping at the first. Jobs that read a checkpoint or "
                          "cache made with it leave them out without being told.")(f)
    f = click.option("--workers", type=click.IntRange(min=0), default=None,
                     help="DataLoader worker processes that decode images (default: one per available CPU, up to 8, "
                          "for image folders; 0 for in-memory datasets).")(f)
    return click.option("--image-size", type=int, default=None,
                        help="Image folders: side of the square input in pixels (shorter side resized to S/0.875, "
                             "centre crop S). Default: the teacher's or cache's, else 64. A student may "
                             "use another size than its cache (crop-flip views replay at any size).")(f)


def data_options(f: Callable) -> Callable:
    f = read_options(f)
    f = click.option("--download", is_flag=True, help="Download the dataset with torchvision if missing (needs internet).")(f)
    f = click.option("--eval-limit", type=click.IntRange(min=1), default=None,
                     help="Evaluate on only the first N test samples (quick runs).")(f)
    f = click.option("--val-size", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Hold out N training samples as a validation split, never trained on and evaluated "
                          "every epoch, for choosing configurations (the last N; for imagefolder, the last of "
                          "each class in proportion).")(f)
    f = click.option("--limit", type=click.IntRange(min=1), default=None,
                     help="Use only the first N training samples (after --val-size are held out).")(f)
    f = click.option("--data-dir", default=DEFAULT_DATA_DIR, show_default=True, type=click.Path(file_okay=False),
                     help="Folder that holds the datasets.")(f)
    return click.option("--dataset", default=None,
                        help=f"Default: {DEFAULT_DATASET} (train-student: the cache's). " + DATASET_HELP)(f)


def train_options(defaults: TrainConfig) -> Callable:
    """Options that map onto TrainConfig fields, with the role's defaults (kdcache.config)."""
    def deco(f: Callable) -> Callable:
        d = defaults
        opts = [
            click.option("--epochs", type=click.IntRange(min=1), default=d.epochs, show_default=True),
            click.option("--batch-size", type=click.IntRange(min=1), default=None,
                         help=f"Global batch size (split across ranks under torchrun). Default: {d.batch_size}, halved "
                              f"for small data until an epoch has {MIN_STEPS_PER_EPOCH} steps (not below "
                              f"{MIN_DEFAULT_BATCH})."),
            click.option("--lr", type=float, default=None,
                         help=f"Peak learning rate. Default: {d.lr:g}, 10x lower for image folders (kdcache.config)."),
            click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=d.optimizer, show_default=True),
            click.option("--schedule", type=click.Choice(SCHEDULES), default=d.schedule, show_default=True),
            click.option("--weight-decay", type=float, default=d.weight_decay, show_default=True),
            click.option("--seed", type=int, default=d.seed, show_default=True),
            click.option("--device", type=click.Choice(DEVICES), default=d.device, show_default=True),
            click.option("--precision", type=click.Choice(PRECISIONS), default=d.precision,
                         show_default=True, help=PRECISION_HELP),
        ]
        for opt in reversed(opts):
            f = opt(f)
        return f
    return deco


def config_from(cls: type[T], kw: dict[str, Any], **params: str) -> T:
    """Pop the fields of the config dataclass ``cls`` out of a command's keyword arguments and build it.

    Flags are named after fields; ``params`` maps a field to its parameter where they differ
    (``memory_limit_mb="cache_memory_limit_mb"``). Fields without a flag keep their defaults.
    """
    names = {f.name: params.get(f.name, f.name) for f in fields(cls)}
    return cls(**{name: kw.pop(param) for name, param in names.items() if param in kw})


def train_config(kw: dict[str, Any]) -> TrainConfig:
    """Pop the TrainConfig fields out of a command's keyword arguments."""
    return config_from(TrainConfig, kw)


def precision_note(precision: str, device: str) -> str:
    """What ``precision`` ran as on ``device`` and, for auto, why: for a command's summary line (after the job,
    so a refusal stays one `Error:` line)."""
    from kdcache.device import describe_precision, resolve_device

    return describe_precision(precision, resolve_device(device))


def data_config(kw: dict[str, Any], from_cache: bool = False) -> DataConfig:
    """Pop the DataConfig fields out of a command's keyword arguments.

    ``from_cache``: leave an unnamed dataset open (None), for the job to take from its cache.
    """
    if kw.get("dataset") is None and not from_cache:
        kw["dataset"] = DEFAULT_DATASET
    return config_from(DataConfig, kw)


def teacher_factory_options(f: Callable) -> Callable:
    """A team's own teacher: --teacher-factory package.module:function + --weights state_dict.pt."""
    f = click.option("--weights", default=None, type=click.Path(dir_okay=False),
                     help="State dict for --teacher-factory (torch.save(model.state_dict()); loaded weights_only).")(f)
    return click.option("--teacher-factory", default=None, metavar="MODULE:FUNCTION",
                        help="Your own teacher: a function returning a torch.nn.Module (gets num_classes, "
                             "in_channels, image_size if it takes them). Use with --weights.")(f)
