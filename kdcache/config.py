"""Configuration as data: frozen dataclasses, with every default in this one module.

The CLI maps flags onto these fields (its defaults are read from here), the jobs take
them as arguments, and checkpoints store their resolved values, so an artifact says how
it was made and can be reused only when the configuration asked for is the same.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from kdcache.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16")  # auto: kdcache.device.resolve_precision
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by teacher and student training."""

    epochs: int = 5
    batch_size: int = 128  # global batch: split across ranks under torchrun
    lr: float | None = 0.05  # peak learning rate; None: the role's default for the data (default_lr)
    optimizer: str = "sgd"  # sgd (momentum 0.9, nesterov) | adamw
    schedule: str = "onecycle"  # onecycle | cosine | constant
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16 (autocast + channels_last); jobs record the resolved one

    def __post_init__(self) -> None:
        for name, value, choices in (("optimizer", self.optimizer, OPTIMIZERS), ("schedule", self.schedule, SCHEDULES),
                                     ("precision", self.precision, PRECISIONS), ("device", self.device, DEVICES)):
            if value not in choices:
                raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"epochs and batch size must be >= 1, got {self.epochs} and {self.batch_size}")
        if (self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr))) or self.weight_decay < 0:
            raise ConfigError(f"learning rate must be > 0 and weight decay >= 0, got {self.lr} and {self.weight_decay}")

    def to_dict(self) -> dict:
        return asdict(self)


# The defaults of each role, used by the CLI, the pipeline, the sweep and the benchmarks.
# Teacher: auto = bf16 only where the hardware runs it natively (kdcache.device.bf16_native). Per 128-image
# teacher step, bf16 took 0.19 s vs 0.41 s fp32 on a CPU with AVX512-BF16, but 12.6 s vs 1.5 s on an AVX2-only CPU.
TEACHER_TRAIN = TrainConfig(epochs=5, batch_size=128, lr=0.05, precision="auto")
# Student: fp32 everywhere. bf16 was only ever measured for the teacher, and the student's documented results and
# sweep tables are fp32 (a sweep resumes only with the same settings, precision included), so auto would change
# them on bf16-native machines. --precision auto|bf16 opts in.
# Image folders: the seed's CNNs end in a Linear layer over every spatial feature, whose fan-in grows with
# the image's area (32,768 at 64 px against 6,272 at 28), and at the rates above they blew up on a folder of
# photos (teacher loss 31 -> 136, student 3.9e15; both trained at a 10x lower rate). Measured here on 600
# mixed-size photos at 64 px, 3 epochs: teacher lr 0.05 -> loss 59 and chance after epoch 1; 0.005 -> 99% test.
FILES_LR_SCALE = 0.1
STUDENT_TRAIN = TrainConfig(epochs=10, batch_size=128, lr=0.02, precision="fp32")  # lr 0.05 diverged with KD on 5k
PIPELINE_TEACHER = replace(TEACHER_TRAIN, epochs=3)  # the main job: ~12 min on 2 cores, 331 s the teacher
# The main job's scarce-label rows: a student on the first N labels alone (15 epochs, as in benchmarks.transfer),
# and one on the same labels plus every other training image as unlabelled rows.
PIPELINE_SCARCE_LABELS = 5000
PIPELINE_SCARCE_EPOCHS = 15
PIPELINE_SCARCE_ALPHA = 0.9  # with T = 4: picked on validation for this case by benchmarks.transfer
PIPELINE_WORKDIR = "runs/pipeline"  # the main job's checkpoints and metrics
PIPELINE_CACHE = "data/caches/fmnist-train.h5"  # the main job's cache (the benchmarks read it too)

def default_lr(role_default: float, image_files: bool) -> float:
    """The learning rate a run gets when none is asked for: the role's, 10x lower for image folders."""
    return role_default * (FILES_LR_SCALE if image_files else 1.0)


TEACHER_ARCH = "teacher-cnn"
STUDENT_ARCH = "student-cnn"
DEFAULT_DATASET = "fashion-mnist"
DEFAULT_DATA_DIR = "data"
DEFAULT_TEMPERATURE = 4.0
DEFAULT_ALPHA = 0.5
DUMP_BATCH_SIZE = 1000
DUMP_PRECISION = "fp32"  # dump-logits keeps fp32-computed logits unless asked otherwise (auto and bf16 accepted)
VIEW_SEED = 0  # dump-logits --view-seed: the views' parameters are a pure function of it, the view and the index
LOGITS_DTYPE = "float32"  # full logits: exact; --dtype float16 halves them (docs/cache-format.md gives the error)
# top-k values: float16 by default. Measured at 1,000 classes (benchmarks.topk, docs/cache-format.md "Top-k
# caches"): its rounding costs ~1e-6 nats of KL at T=1, as float16 full logits do, against 3e-2 for the tail's
# shape that top-10 drops; it saves 20 of 96 bytes a row at K=10.
TOPK_DTYPE = "float16"
CACHE_MEMORY_LIMIT_MB = 2048.0  # caches bigger than this (as float32) are streamed from disk
# torchrun jobs (kdcache.dist): how long a rank waits for the others at a collective point. Long, because a
# resumed dump can leave ranks whose shards are done waiting while another rank redoes its whole shard;
# a rank that dies breaks the wait at once (its connection closes), only a hung one runs into this.
DIST_TIMEOUT_S = 6 * 3600.0
# A streamed cache is cut into at least this many blocks per rank, so the ranks' shares (whole blocks)
# differ by at most ~1/64 of a share and evening out the ranks' step counts drops little.
STREAM_MIN_BLOCKS_PER_RANK = 64


@dataclass(frozen=True)
class DataConfig:
    """Where the training data comes from."""

    dataset: str | None = DEFAULT_DATASET  # None: the cache's (train-student)
    data_dir: str = DEFAULT_DATA_DIR
    limit: int | None = None  # first N training samples (after the validation samples are set aside)
    eval_limit: int | None = None  # first N test samples (quick runs)
    download: bool = False
    val_size: int = 0  # the last N samples of the train split: never trained on, for choosing configurations
    image_size: int | None = None  # image folders: side of the square input (None: the checkpoint's/cache's, or 64)
    workers: int | None = None  # DataLoader workers (None: one per available CPU for image files, 0 in memory)
    skip_unreadable: bool = False  # image folders: leave out files that do not decode (recorded), not fail

    def __post_init__(self) -> None:
        if self.val_size < 0:
            raise ConfigError(f"--val-size must be >= 0, got {self.val_size}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {self.workers}")

    def to_dict(self) -> dict:
        return asdict(self)
