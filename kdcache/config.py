"""Configuration as data: frozen dataclasses, with every default in this one module.

The CLI maps flags onto these fields (its defaults are read from here), the jobs take
them as arguments, and checkpoints store their resolved values, so an artifact says how
it was made and can be reused only when the configuration asked for is the same.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace

from kdcache.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16")  # auto: kdcache.device.resolve_precision
DEVICES = ("auto", "cpu", "cuda")
SPLITS = ("train", "test")
LOGIT_DTYPES = ("float32", "float16")  # how a cache may store logit values (docs/cache-format.md)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by teacher and student training."""

    epochs: int = 5
    batch_size: int | None = None  # global batch (split across ranks under torchrun); None: the role's, for the data
    lr: float | None = None  # peak learning rate; None: the role's default for the data (default_lr)
    optimizer: str = "sgd"  # sgd (momentum 0.9, nesterov) | adamw
    schedule: str = "onecycle"  # onecycle | cosine | constant
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "auto"
    precision: str | None = None  # auto | fp32 | bf16 (autocast + channels_last); None: the role's. Jobs record
    # what every None and auto resolved to (jobs.training.resolve_train_config)

    def __post_init__(self) -> None:
        for name, value, choices in (("optimizer", self.optimizer, OPTIMIZERS), ("schedule", self.schedule, SCHEDULES),
                                     ("precision", self.precision or "auto", PRECISIONS), ("device", self.device, DEVICES)):
            if value not in choices:
                raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")
        if not isinstance(self.epochs, int) or (self.batch_size is not None and not isinstance(self.batch_size, int)):
            raise ConfigError(f"epochs and batch size must be whole numbers, got {self.epochs} and {self.batch_size}")
        if self.epochs < 1 or (self.batch_size is not None and self.batch_size < 1):
            raise ConfigError(f"epochs and batch size must be >= 1, got {self.epochs} and {self.batch_size}")
        if (self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr))) or self.weight_decay < 0:
            raise ConfigError(f"learning rate must be > 0 and weight decay >= 0, got {self.lr} and {self.weight_decay}")

    def to_dict(self) -> dict:
        return asdict(self)

    def settled(self) -> "TrainConfig":
        """What a loop with no role in mind runs (kdcache.train.loop.fit called directly): None -> the generic
        settings (lr GENERIC_LR, batch GENERIC_BATCH, precision auto). Jobs fill them from their role first."""
        return replace(self, lr=GENERIC_LR if self.lr is None else self.lr,
                       batch_size=GENERIC_BATCH if self.batch_size is None else self.batch_size,
                       precision=self.precision or "auto")


GENERIC_LR, GENERIC_BATCH = 0.05, 128  # fit() without a role: the teacher's rate and batch

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
# 5,000 of Fashion-MNIST's 60,000: a twelfth of the training samples, whatever --limit leaves (1,000 -> 83).
PIPELINE_SCARCE_FRACTION = 1 / 12
PIPELINE_SCARCE_EPOCHS = 15
PIPELINE_SCARCE_ALPHA = 0.9  # with T = 4: picked on validation for this case by benchmarks.transfer
PIPELINE_WORKDIR = "runs/pipeline"  # the main job's checkpoints and metrics
PIPELINE_CACHE = "data/caches/fmnist-train.h5"  # the main job's cache (the benchmarks read it too)

# A teacher on small data gets smaller batches: an epoch of fewer optimizer steps than this warms OneCycle up too
# fast. Measured (teacher-cnn, 1,000 Fashion-MNIST images, 3 epochs, lr 0.05, 2,000 test images): batch 128 (8 steps
# an epoch) reached loss 18.6 in epoch 1 and 54% test; lr 0.01 at batch 128 still 57%; batch 32 (32 steps) 77%.
# Students without BatchNorm keep their batch: the soft term's gradients grow with T, and at batch 16 a T=8 student of
# a 1-epoch teacher blew up (loss 1.6e8) where batch 128 trained. Students with BatchNorm (torchvision's) get the rule:
# at batch 128, 421 photos gave a resnet18 4 steps an epoch and its running statistics never settled (80% train, 33.6%
# test). With the rule (batch 32) and the statistics settled after each epoch (kdcache.train.batchnorm), on 420
# photos (benchmarks/small_folder.py, 3 seeds, validation accuracy): resnet18 82.8% at lr 0.002 and 86.9% at 0.02,
# mobilenet_v3_small 60.0% and 81.4%; so a student with BatchNorm keeps STUDENT_TRAIN.lr on image folders (the 10x
# lower FILES_LR_SCALE is for the seed's CNNs, whose Linear layer's fan-in grows with the image's area; torchvision's
# models pool globally). Before: batch 128, lr 0.002, 49.2% and 33.3% (chance).
MIN_STEPS_PER_EPOCH = 32
# not below 32: on 180 mixed photos (64 px, lr 0.005, 3 epochs) a teacher at batch 16 blew up (loss 1.19 -> 12.7),
# at 32 reached 83% test and at 128 75%
MIN_DEFAULT_BATCH = 32


def default_batch_size(role_batch: int, num_samples: int) -> int:
    """The role's batch size, halved (not below MIN_DEFAULT_BATCH) until an epoch has MIN_STEPS_PER_EPOCH steps."""
    b = role_batch
    while b > MIN_DEFAULT_BATCH and -(-num_samples // b) < MIN_STEPS_PER_EPOCH:
        b //= 2
    return b


def default_lr(role_default: float, image_files: bool) -> float:
    """The learning rate a run gets when none is asked for: the role's, 10x lower for image folders.

    Rounded to 6 significant digits, so requests and checkpoints record 0.005, not 0.05 * 0.1's
    0.005000000000000001."""
    return float(f"{role_default * (FILES_LR_SCALE if image_files else 1.0):.6g}")


TEACHER_ARCH = "teacher-cnn"
STUDENT_ARCH = "student-cnn"
DEFAULT_DATASET = "fashion-mnist"
DEFAULT_DATA_DIR = "data"
DEFAULT_TEMPERATURE = 4.0
DEFAULT_ALPHA = 0.5
DUMP_BATCH_SIZE = 1000
EVAL_BATCH_SIZE = 1000  # evaluate: images per forward pass (no gradients, so larger than training's)
VERIFY_SAMPLE = 256  # verify --teacher: rows the teacher re-runs to check stored logits
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


@dataclass(frozen=True)
class DataConfig:
    """Where the training data comes from."""

    dataset: str | None = None  # None: the job's source decides (a cache's, a checkpoint's, a teacher's), else DEFAULT_DATASET
    data_dir: str = DEFAULT_DATA_DIR
    limit: int | None = None  # first N training samples (after the validation samples are set aside)
    eval_limit: int | None = None  # first N test samples (quick runs)
    download: bool = False
    val_size: int = 0  # the last N samples of the train split: never trained on, for choosing configurations
    image_size: int | None = None  # image folders: side of the square input (None: the checkpoint's/cache's, or 64)
    workers: int | None = None  # DataLoader workers (None: one per available CPU for image files, 0 in memory)
    skip_unreadable: bool = False  # image folders: leave out files that do not decode (recorded), not fail
    image_key: str | None = None  # a Hugging Face dataset's image column (--image-column; None: its Image feature)
    label_key: str | None = None  # ... and its label column (--label-column; None: its ClassLabel feature)

    def __post_init__(self) -> None:
        if self.val_size < 0:
            raise ConfigError(f"--val-size must be >= 0, got {self.val_size}")
        for name, value in (("--limit", self.limit), ("--eval-limit", self.eval_limit)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive number of samples, got {value}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {self.workers}")

    def to_dict(self) -> dict:
        return asdict(self)


# ---- the jobs' configuration objects: the CLI fills them from flags, the Python API takes them, checkpoints
# ---- and caches record them (asdict), and reuse compares what they determine.
ENSEMBLE_METHODS = ("mean-probs", "mean-logits")
DEFAULT_ENSEMBLE = "mean-probs"
TOPK_REBUILDS = ("spread", "bucket")
# Top-k rows are rebuilt by spreading the tail's mass evenly over the other classes (TinyViT, ml-dr): at the full
# cache's best T it matched full logits on the 1,000-class task where the bucket loss lost 2 points
# (docs/results/topk-rebuild.md: top-10 82.66 vs 79.94, full 81.98; 3 seeds).
DEFAULT_TOPK_REBUILD = "spread"
HIGH_TEMPERATURE = 20.0  # the usual range of T ends here; far above it the soft loss behaves like logit matching


def check_temperature(temperature: float) -> float:
    """Refuse a temperature softmax(z/T) cannot use (0, negative, infinite, NaN, not a number)."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"temperature T must be a finite number > 0, got {temperature}")
    return float(temperature)


def check_alpha(alpha: float) -> float:
    """Refuse a mixing weight outside [0, 1]."""
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise ConfigError(f"alpha must be in [0, 1] (0 = labels only, 1 = soft targets only), got {alpha}")
    return float(alpha)


def check_topk_rebuild(rebuild: str) -> str:
    """Refuse an unknown way of rebuilding top-k rows."""
    if rebuild not in TOPK_REBUILDS:
        raise ConfigError(f"topk_rebuild must be one of {', '.join(TOPK_REBUILDS)}, got {rebuild!r}")
    return rebuild


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")


def _paths(value) -> tuple[str, ...]:
    """A path or a sequence of paths, as a tuple of str (so configs compare and serialise as data)."""
    if isinstance(value, (str, os.PathLike)):
        value = (value,)
    return tuple(os.fspath(p) for p in value)


@dataclass(frozen=True)
class RunOptions:
    """How a job treats what is already on disk, and whether it shows progress (never what it computes)."""

    overwrite: bool = False  # replace an existing output
    reuse: bool = False  # keep an output made by the same request; redo one made by another
    resume: bool = False  # continue a stopped training run (there must be a resume state)
    progress: bool = False  # progress bars on stderr

    def __post_init__(self) -> None:
        if self.resume and self.overwrite and not self.reuse:
            raise ConfigError("--resume continues a run and --overwrite starts over: pass one of them")


@dataclass(frozen=True)
class DistillConfig:
    """What a student learns from: the teacher's caches and how their rows become soft targets."""

    caches: tuple[str, ...] = ()  # several caches of one dataset: an ensemble
    temperature: float = DEFAULT_TEMPERATURE
    alpha: float = DEFAULT_ALPHA  # weight of the soft term; 0 trains on labels alone (no cache needed)
    ensemble: str = DEFAULT_ENSEMBLE  # how several caches combine: mean-probs | mean-logits
    topk_rebuild: str = DEFAULT_TOPK_REBUILD  # top-k rows -> soft targets: spread | bucket (kd_loss)
    # rows without labels (kdcache.jobs.transfer): the soft term covers every row, cross-entropy the labelled ones
    labels_limit: int | None = None  # only the first N training samples keep their labels
    transfer: tuple[str, ...] = ()  # caches of other images (dump-logits --no-labels, unlabelled folders)
    transfer_data_dirs: tuple[str, ...] = ()  # their images: none = --data-dir, one for all, or one per cache

    def __post_init__(self) -> None:
        object.__setattr__(self, "caches", _paths(self.caches))
        object.__setattr__(self, "transfer", _paths(self.transfer))
        object.__setattr__(self, "transfer_data_dirs", _paths(self.transfer_data_dirs))
        if self.labels_limit is not None and self.labels_limit < 0:
            raise ConfigError(f"--labels-limit must be >= 0, got {self.labels_limit}")
        check_temperature(self.temperature)
        check_alpha(self.alpha)
        _choice("ensemble method", self.ensemble, ENSEMBLE_METHODS)
        check_topk_rebuild(self.topk_rebuild)
        if self.alpha > 0 and not self.caches:
            raise ConfigError("alpha > 0 distils from a teacher: name its cache (--cache; DistillConfig(caches=...)), "
                              "or use alpha 0 for labels only")


@dataclass(frozen=True)
class ViewConfig:
    """Augmentation views: drawn fresh every epoch, stored by a dump, or replayed from a cache (kdcache.data.views)."""

    augment: str | None = None  # a policy (kdcache.data.augment), e.g. "crop-flip"
    views: int = 1  # dump-logits: views stored per image
    include_original: bool = False  # dump-logits: view 0 is the un-augmented image
    seed: int = VIEW_SEED  # dump-logits: the views' parameters are a pure function of it, the view and the index
    cache_views: int | None = None  # train-student: replay only the first K stored views
    allow_inconsistent: bool = False  # train-student: fresh views with a single-view cache (teacher never saw them)

    def __post_init__(self) -> None:
        if self.views < 1:
            raise ConfigError(f"--views must be >= 1, got {self.views}")
        if self.cache_views is not None and self.cache_views < 1:
            raise ConfigError(f"--cache-views must be >= 1, got {self.cache_views}")


@dataclass(frozen=True)
class CacheIO:
    """How a student reads its caches: in memory up to a limit, else streamed from disk."""

    memory_limit_mb: float = CACHE_MEMORY_LIMIT_MB  # caches bigger than this (as float32) are streamed
    workers: int = 0  # processes reading a streamed cache

    def __post_init__(self) -> None:
        if not self.memory_limit_mb >= 0 or self.workers < 0:
            raise ConfigError(f"--cache-memory-limit and --cache-workers must be >= 0, got {self.memory_limit_mb} "
                              f"and {self.workers}")


@dataclass(frozen=True)
class DumpConfig:
    """How dump-logits runs the teacher over a split and stores its outputs."""

    split: str = "train"
    batch_size: int = DUMP_BATCH_SIZE
    device: str = "auto"
    precision: str = DUMP_PRECISION
    dtype: str | None = None  # None: LOGITS_DTYPE for full rows, TOPK_DTYPE for top-k
    topk: int | None = None  # keep each row's K largest logits and the tail's statistics
    ignore_labels: bool = False  # --no-labels: every row unlabelled, its id hashes -1
    class_names: tuple[str, ...] | None = None  # a factory teacher's classes, for data without labels
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # your Dataset's uint8 images: (mean, std)
    codec: str | None = None  # "lowrank[:rank=R][,dtype=D]": low-rank codes instead of logits (kdcache.cache.lowrank)
    kl_budget: float | None = None  # lowrank without a rank: the smallest rank meeting it (None: DEFAULT_KL_BUDGET)
    image_key: str | None = None  # your Dataset's dict items: the image's key (None: image, img, pixel_values, ...)
    label_key: str | None = None  # ... and the label's (None: label, labels, cls, target, ...; kdcache.data.items)

    def __post_init__(self) -> None:
        _choice("precision", self.precision, PRECISIONS)
        _choice("device", self.device, DEVICES)
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.dtype is not None:
            _choice("--dtype", self.dtype, LOGIT_DTYPES)
        if self.topk is not None and (isinstance(self.topk, bool) or not isinstance(self.topk, int) or self.topk < 1):
            raise ConfigError(f"--top-k {self.topk}: keep at least 1 logit per row (or leave it out to store all)")
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(self.class_names))


@dataclass(frozen=True)
class PipelineConfig:
    """The main job (kdcache.experiments.pipeline): a teacher, its cache, a labels-only and a distilled student,
    and the scarce-label pair. Sizes that depend on the data scale with it."""

    workdir: str = PIPELINE_WORKDIR
    cache_path: str = PIPELINE_CACHE
    teacher_epochs: int = PIPELINE_TEACHER.epochs
    student_epochs: int = STUDENT_TRAIN.epochs
    temperature: float = DEFAULT_TEMPERATURE
    alpha: float = DEFAULT_ALPHA
    limit: int | None = None  # first N training samples (a quick try: 1000)
    eval_limit: int | None = None
    data_dir: str = DEFAULT_DATA_DIR
    device: str = "auto"
    seed: int = 0
    scarce_labels: int | None = None  # None: PIPELINE_SCARCE_FRACTION of the training samples; 0: skip the pair
    scarce_epochs: int = PIPELINE_SCARCE_EPOCHS
    scarce_alpha: float = PIPELINE_SCARCE_ALPHA

    def __post_init__(self) -> None:
        check_temperature(self.temperature)
        check_alpha(self.alpha)
        check_alpha(self.scarce_alpha)
        _choice("device", self.device, DEVICES)
        if min(self.teacher_epochs, self.student_epochs, self.scarce_epochs) < 1:
            raise ConfigError(f"epochs must be >= 1, got teacher {self.teacher_epochs}, student {self.student_epochs}, "
                              f"scarce-label {self.scarce_epochs}")
        if self.scarce_labels is not None and self.scarce_labels < 0:
            raise ConfigError(f"--scarce-labels must be >= 0, got {self.scarce_labels}")
        if self.scarce_labels and self.limit is not None and self.scarce_labels >= self.limit:
            raise ConfigError(f"--scarce-labels {self.scarce_labels} must be below the training samples (--limit "
                              f"{self.limit}); use fewer, or 0 to skip the scarce-label rows")

    def scarce_rows(self, train_rows: int) -> int:
        """How many labels the scarce-label pair keeps: as asked, else the same fraction of any training set."""
        if self.scarce_labels is not None:
            return self.scarce_labels
        return max(1, round(train_rows * PIPELINE_SCARCE_FRACTION)) if train_rows > 1 else 0
