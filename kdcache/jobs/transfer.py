"""Transfer sets: a student distils on images nobody labelled (Hinton, Vinyals & Dean 2015, §2).

The rows a student trains on are its labelled training samples followed by the rows of
each transfer set, as one ``ImageData`` with one row-aligned target store::

    [ labelled samples: the first ``labels_limit`` keep their labels, the rest are UNLABELLED ]
    [ transfer set 1: images of another dataset/folder, labels as in its cache (-1 when unlabelled) ]
    [ transfer set 2 ... ]

Batches are cut from one permutation of all rows (kdcache.data.sampler) or from one block
shuffle over all caches (``kdcache.cache.stream``), so labelled and unlabelled rows mix in
every batch, and **an epoch is one pass over all rows**, labelled or not. ``kd_loss``
applies the soft term to every row and cross-entropy to the labelled ones only.

A transfer set is one or more caches of the same images, one per teacher of the
labelled data's caches (an ensemble labels the transfer images with the same
teachers). Its images are loaded from the dataset and split its cache names, read
unlabelled when the cache has no labelled row, and checked row by row
(``LogitCache.align``: fingerprint, index, content id). The student's own train or
test images are refused as a transfer set: ``--labels-limit`` treats part of the training
split as unlabelled, and the test images are what the student is measured on.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import torch

from kdcache.cache import LogitCache
from kdcache.cache.ensemble import check_members
from kdcache.config import DataConfig
from kdcache.data.datasets import load_dataset
from kdcache.data.images import InputTransform
from kdcache.data.images import concat as concat_images
from kdcache.data.samples import ImageData
from kdcache.data.view_schedule import ViewPlan
from kdcache.data.views import stored_view_params
from kdcache.errors import CacheError, ConfigError, DataError
from kdcache.identity import UNLABELLED


def check_unlabelled_rows(labels_limit: int | None, num_samples: int, alpha: float, transfer: bool) -> None:
    """Refuse a labelled count the training data cannot give, no labels where cross-entropy needs some, and
    unlabelled rows where nothing would learn from them (alpha 0)."""
    if alpha == 0 and (transfer or (labels_limit is not None and labels_limit < num_samples)):
        what = "--transfer rows" if transfer else \
            f"{num_samples - labels_limit} training samples after --labels-limit {labels_limit}"
        raise ConfigError(f"--alpha 0 learns from labels alone, so the {what} would add nothing; use --limit N for "
                          "a labels-only student, or alpha > 0 to distil on them")
    if labels_limit is None:
        return
    if labels_limit < 0:
        raise ConfigError(f"--labels-limit must be >= 0, got {labels_limit}")
    if labels_limit > num_samples:
        raise ConfigError(f"--labels-limit {labels_limit} is more than the {num_samples} training samples (after "
                          f"--limit and --val-size); use at most {num_samples}")
    if labels_limit == 0 and alpha < 1:
        raise ConfigError(f"--labels-limit 0 leaves no labelled sample for the cross-entropy term (weight 1 - alpha "
                          f"= {1 - alpha:g}); use --alpha 1 to learn from the soft targets alone, or --labels-limit > 0")


def mask_labels(data: ImageData, labels_limit: int | None) -> ImageData:
    """``data`` with the labels of every sample after the first ``labels_limit`` set to UNLABELLED.

    Only the labels change: images, indices and content ids stay those of the labelled data,
    so the cache of that data still aligns (alignment uses the data before masking).
    """
    if labels_limit is None or labels_limit >= len(data):
        return data
    labels = data.labels.clone()
    labels[labels_limit:] = UNLABELLED
    return replace(data, labels=labels)


def concat_data(parts: Sequence[ImageData]) -> ImageData:
    """The rows of ``parts`` one after the other, with the first part's identity (its classes and mean/std).

    Every part is normalised with the first part's mean/std in training: the student sees
    transfer images exactly as it sees its labelled ones.
    """
    if len(parts) == 1:
        return parts[0]
    keys = None
    if any(p.keys is not None for p in parts):  # image files: each row's path, others by dataset index
        keys = tuple(k for p in parts for k in (p.keys or [f"#{int(i)}" for i in p.indices]))
    return replace(parts[0], images=concat_images([p.images for p in parts]),
                   labels=torch.cat([p.labels for p in parts]), indices=torch.cat([p.indices for p in parts]),
                   sample_ids=np.concatenate([p.sample_ids for p in parts]), keys=keys)


@dataclass
class TransferSet:
    """Images of a transfer set and, per teacher, its cache and the cache row of each image."""

    data: ImageData
    caches: list[LogitCache]  # in the order of the labelled data's caches (the same teachers)
    rows: list[np.ndarray]
    data_dir: str

    def record(self) -> list[dict[str, Any]]:
        """What a student records about this set (besides each cache's cache_record)."""
        m = self.caches[0].meta
        return [{"path": str(c.path), "dataset": m.dataset, "split": m.split, "dataset_fingerprint": m.dataset_fingerprint,
                 "data_dir": self.data_dir, "rows": len(self.data), "num_labelled": self.data.num_labelled}
                for c in self.caches]


def transfer_data_dirs(num_caches: int, data_dirs: Sequence[str], default: str) -> list[str]:
    """One data folder per transfer cache: none given (the labelled data's), one for all, or one each."""
    if not data_dirs:
        return [default] * num_caches
    if len(data_dirs) == 1:
        return [str(data_dirs[0])] * num_caches
    if len(data_dirs) != num_caches:
        raise ConfigError(f"{len(data_dirs)} --transfer-data-dir for {num_caches} --transfer caches; give one folder "
                          "for all of them, or one per --transfer in the same order")
    return [str(d) for d in data_dirs]


def open_transfer_sets(transfer: Sequence[LogitCache], data_dirs: Sequence[str], labelled: ImageData,
                       teachers: Sequence[LogitCache], data_cfg: DataConfig) -> list[TransferSet]:
    """Group the transfer caches by the images they hold, load and check those images, align every cache.

    ``teachers`` are the opened caches of the labelled data (one per teacher): each set must
    hold one cache per teacher (by teacher SHA-256), of the same classes and target kind.
    """
    if not transfer:
        return []
    if not teachers:
        raise ConfigError("--transfer needs --cache too: the soft term applies to every row, so the labelled "
                          "samples need their teacher targets as well")
    dirs = transfer_data_dirs(len(transfer), data_dirs, data_cfg.data_dir)
    groups: dict[tuple[str, ...], list[LogitCache]] = {}
    for cache, d in zip(transfer, dirs):
        m = cache.meta
        groups.setdefault((m.dataset, m.split, m.dataset_fingerprint, os.path.abspath(d)), []).append(cache)
    sets = []
    for (name, split, _, d), caches in groups.items():
        caches = _match_teachers(caches, teachers)
        try:
            data = load_dataset(name, split, d, ignore_labels=caches[0].meta.unlabelled,  # read as the teacher did
                                image_size=InputTransform.from_record(caches[0].meta.input_transform))
        except DataError as e:
            raise DataError(f"transfer cache {caches[0].path}: {e} (--transfer-data-dir names the folder of the "
                            "images the cache was made from)") from None
        _check_compatible(caches[0], data, labelled, teachers[0], data_cfg, d)
        caches[0].align(np.empty(0, dtype=np.int64), info=data.info)  # other data (fingerprint): refused first
        data = data.take(np.sort(caches[0].indices))  # the samples this set's caches cover
        rows = [c.align(data.indices.numpy(), labels=data.labels.numpy(), sample_ids=data.sample_ids, info=data.info,
                        keys=data.keys)
                for c in caches]
        sets.append(TransferSet(data, caches, rows, d))
    return sets


def _match_teachers(caches: list[LogitCache], teachers: Sequence[LogitCache]) -> list[LogitCache]:
    """``caches`` (of the same images) reordered to the teachers' order; refused unless the teachers are the same."""
    m = caches[0].meta
    want = [t.meta.teacher_sha256 for t in teachers]
    have = [c.meta.teacher_sha256 for c in caches]
    if Counter(want) != Counter(have):
        raise CacheError(f"the transfer caches of {m.dataset}/{m.split} ({', '.join(str(c.path) for c in caches)}) were "
                         f"made by {len(have)} teacher(s) {[h[:12] for h in have]}, the --cache caches by {len(want)} "
                         f"{[w[:12] for w in want]}; dump the transfer images with the same teacher(s), one cache each")
    if len(caches) > 1:
        check_members(caches)
    pool = list(caches)
    ordered = []
    for sha in want:
        ordered.append(pool.pop(next(i for i, c in enumerate(pool) if c.meta.teacher_sha256 == sha)))
    return ordered


def _check_compatible(cache: LogitCache, data: ImageData, labelled: ImageData, teacher: LogitCache,
                      data_cfg: DataConfig, data_dir: str) -> None:
    """Same classes, target kind and image shape as the labelled data; not the student's own train/test images."""
    m, t, p = cache.meta, teacher.meta, cache.path
    if list(m.class_names) != list(labelled.info.class_names):
        raise CacheError(f"transfer cache {p} has classes {list(m.class_names)[:4]}..., the labelled data "
                         f"{list(labelled.info.class_names)[:4]}...; a transfer set must be labelled by a teacher of "
                         "the student's classes")
    dense = {"lowrank": "logits"}  # low-rank rows are read as decoded logits: they join full ones
    if (dense.get(m.targets, m.targets), m.topk, m.num_views, _policy(m)) != \
            (dense.get(t.targets, t.targets), t.topk, t.num_views, _policy(t)):
        raise CacheError(f"transfer cache {p} holds {_kind(m)}, the --cache {teacher.path} {_kind(t)}; dump both with "
                         "the same --top-k, --views and --augment")
    if tuple(data.images.shape[1:]) != tuple(labelled.images.shape[1:]):  # (C, H, W), without reading pixels
        raise DataError(f"transfer images {m.dataset}/{m.split} in {data_dir} are {tuple(data.images.shape[1:])} (C, H, "
                        f"W), the labelled images {tuple(labelled.images.shape[1:])}; use images of the same size and "
                        "colour mode")
    if m.dataset != labelled.info.name:
        return
    mine = data if m.unlabelled else load_dataset(m.dataset, m.split, data_dir, ignore_labels=True)
    for split in ("train", "test"):
        try:
            own = load_dataset(m.dataset, split, data_cfg.data_dir, ignore_labels=True)
        except DataError:  # e.g. an imagefolder without a test split: nothing to overlap with
            continue
        if own.info.fingerprint == mine.info.fingerprint:
            hint = ("use --labels-limit N to treat all but the first N training samples as unlabelled" if split == "train"
                    else "the student would train on the images it is tested on")
            raise ConfigError(f"transfer cache {p} holds the {split} images of {m.dataset}, the student's own "
                              f"{split} split; {hint}")


def _policy(m: Any) -> tuple | None:
    """The augmentation policy of a cache's views (not their seed: views of other seeds replay alike)."""
    p = m.view_policy
    return None if p is None else (p.get("name"), p.get("version"), json.dumps(p.get("settings"), sort_keys=True))


def _kind(m: Any) -> str:
    kind = f"top-{m.topk} targets" if m.topk else "full logits"
    return kind + (f", {m.num_views} views ({m.view_policy.get('name')})" if m.has_views else "")


def transfer_views(plan: ViewPlan | None, sets: Sequence[TransferSet]) -> ViewPlan | None:
    """The run's ViewPlan over every row: a plan replaying stored views continues with each transfer set's
    stored view parameters (rows in ``rows_data`` order); a plan of fresh views draws for every row anyway."""
    if plan is None or not plan.replay or not sets:
        return plan
    assert plan.stored is not None
    used, parts = plan.stored.shape[1], [plan.stored]
    for s in sets:
        parts.append(stored_view_params(s.caches[0], s.rows[0], used, s.data.info.image_size))  # (n, K', P)
    return replace(plan, stored=torch.cat(parts))
