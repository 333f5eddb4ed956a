"""What augmentation a training run gets: replayed stored views, fresh random views, or none.

- A cache with views (``dump-logits --views K --augment POLICY``) is replayed: each epoch
  every image shows one of its stored views, rebuilt from the stored parameters, and learns
  that view's logits (``ViewPlan`` with ``stored``; schedule in kdcache.data.view_schedule.view_schedule).
- ``--augment POLICY`` without a view cache draws fresh parameters every epoch: a teacher
  learning the views it will label, or a labels-only student.
- ``--augment`` with a single-view cache while distilling pairs augmented images with the
  logits of the *original* image. That is refused, with the reason, unless
  ``allow_inconsistent`` asks for it (kept so the inconsistency can be measured).

``StoredViews`` replays the same views one image at a time, for the Dataset wrappers
(kdcache.data.cached_dataset): item i at epoch e is exactly what ``train-student`` shows training row i.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from kdcache.cache import LogitCache
from kdcache.cache.targets import Targets, TopK
from kdcache.data.augment import ViewPolicy, check_replay_size, for_images, parse_policy, policy_from_record
from kdcache.data.images import from_files
from kdcache.data.replay import view_images
from kdcache.data.samples import ImageData
from kdcache.data.view_schedule import ViewPlan, view_schedule
from kdcache.errors import CacheError, ConfigError

SCHEDULE = "each stored view once per K epochs, in a random order per image and cycle"


def fresh_views(augment: str | None, data: ImageData, seed: int) -> ViewPlan | None:
    """Fresh random parameters every epoch (None without ``augment``); crop-flip on image files is v3 (cut from the
    file, kdcache.data.augment.for_images)."""
    if augment is None:
        return None
    policy = for_images(parse_policy(augment), data.images) if isinstance(augment, str) else parse_policy(augment)
    return ViewPlan(policy, tuple(data.info.image_size), seed)


def views_in_use(cache: LogitCache, cache_views: int | None, flag: str) -> int:
    """K': the first ``cache_views`` of the cache's K stored views (all K for None); ``flag`` names the setting."""
    stored = cache.meta.num_views
    used = stored if cache_views is None else int(cache_views)
    if not 1 <= used <= stored:
        raise ConfigError(f"{flag}{cache_views}: {cache.path} stores {stored} views per image; use 1..{stored}")
    return used


def drawn_size(cache: LogitCache) -> tuple[int, int] | None:
    """The image size the cache's views were drawn for (the teacher's input), or None where it is not recorded.

    Image folders: the input transform's size; otherwise the teacher's recorded ``image_size``.
    """
    transform = cache.meta.input_transform
    if transform:
        return int(transform["size"]), int(transform["size"])
    try:
        size = cache.meta.config.get("teacher_config", {}).get("image_size")
        return (int(size[0]), int(size[1])) if size is not None and len(size) == 2 else None
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def check_view_params(policy: ViewPolicy, params: np.ndarray, image_size: Sequence[int], where: Any,
                      fix: str = "the cache is corrupt, re-dump it") -> None:
    """CacheError when stored parameters (..., P) cannot be views of ``image_size`` images (a corrupt cache)."""
    problem = policy.problem(params, image_size)
    if problem:
        raise CacheError(f"{where}: /view_params cannot be views of {image_size[0]}x{image_size[1]} images: "
                         f"{problem}; {fix}")


def stored_view_params(cache: LogitCache, rows: np.ndarray, used: int, image_size: Sequence[int] | None = None,
                       fix: str = "the cache is corrupt, re-dump it") -> torch.Tensor:
    """(n, K', P) float32: the first ``used`` stored views' parameters of cache ``rows``, checked to be views of
    ``image_size`` images where it is known. The one place stored view parameters are read."""
    params = np.ascontiguousarray(cache.read_view_params(rows)[:, :used])
    if image_size is not None:
        check_view_params(policy_from_record(cache.meta.view_policy, where=str(cache.path)), params, image_size,
                          cache.path, fix)
    return torch.from_numpy(params)


def student_views(caches: Sequence[LogitCache], rows: Sequence[np.ndarray], data: ImageData, *,
                  augment: str | None, alpha: float, allow_inconsistent: bool = False,
                  cache_views: int | None = None, seed: int = 0) -> tuple[ViewPlan | None, dict[str, Any] | None]:
    """The ViewPlan of a student run and what its checkpoint records about it (None, None: no augmentation).

    ``rows[i]`` aligns ``caches[i]`` with ``data`` (LogitCache.align). ``cache_views`` keeps
    only the first K' stored views (a K'-view cache dumped with the same seed has exactly these).
    """
    with_views = [c for c in caches if c.meta.has_views]
    if with_views:
        cache, r = with_views[0], rows[caches.index(with_views[0])]
        if len(with_views) != len(caches):
            plain = next(c for c in caches if not c.meta.has_views)
            raise CacheError(f"{cache.path} stores augmentation views but {plain.path} does not; every cache of an "
                             "ensemble must label the same views")
        policy = policy_from_record(cache.meta.view_policy, where=str(cache.path))
        if policy.FROM_FILE and not from_files(data.images):
            raise ConfigError(f"{cache.path} stores {policy} views, cut from the original image files, but this data "
                              "is not read from files; train on the image folder the cache was dumped from")
        if augment is not None and for_images(parse_policy(augment), data.images).describe() != policy.describe():
            raise ConfigError(f"--augment {augment} differs from the views stored in {cache.path} ({policy}); a cache "
                              "with views replays its own views: drop --augment, or dump views with that policy")
        check_replay_size(policy, drawn_size(cache), data.info.image_size, cache.path)
        stored = cache.meta.num_views
        used = views_in_use(cache, cache_views, "--cache-views ")
        plan = ViewPlan(policy, tuple(data.info.image_size), seed, stored_view_params(cache, r, used, data.info.image_size))
        return plan, {"mode": "replay", "policy": cache.meta.view_policy, "views": used, "stored_views": stored,
                      "schedule": SCHEDULE}
    if cache_views is not None:
        raise ConfigError("--cache-views picks among a cache's stored views, but no --cache stores views; dump them "
                          "with `kdcache dump-logits --views K --augment POLICY`")
    if augment is None:
        return None, None
    plan = fresh_views(augment, data, seed)
    assert plan is not None
    if caches and alpha > 0:
        if not allow_inconsistent:
            name = plan.policy.NAME
            raise ConfigError(
                f"{caches[0].path} holds one view per image (the teacher's logits on the un-augmented image): with "
                f"--augment {name} the student would see augmented images but learn the teacher's output on the "
                f"originals, inconsistent targets that overfit (Beyer et al. 2022). Dump the views it will see with "
                f"`kdcache dump-logits --views K --augment {name}`, or pass --allow-inconsistent to measure that mode")
        return plan, {"mode": "inconsistent", "policy": plan.policy.describe()}
    return plan, {"mode": "fresh", "policy": plan.policy.describe()}


IMAGE_CONTRACT = ("views are applied to the un-normalised image, so the dataset must give float tensors (C, H, W) in "
                  "[0, 1] (torchvision's ToTensor()); normalise in the wrapper's transform=, which runs after the view")


class StoredViews:
    """A cache's stored views of some rows, replayed for the items of a batch (kdcache.data.cached_dataset's wrappers).

    Item ``i`` at epoch ``e`` shows view ``view_schedule(e, n, K', seed)[i]`` (each of its K'
    views once per K' epochs): the view ``train-student --seed seed`` gives its training row
    ``i``. The view is ``policy.apply`` with that view's stored parameters on the float image
    in [0, 1], before normalisation, exactly as train-student builds it, so the teacher's
    stored logits are its output on this very image.
    """

    def __init__(self, policy: ViewPolicy, params: torch.Tensor, seed: int, where: str,
                 drawn: tuple[int, int] | None = None):
        self.policy, self.params, self.seed, self.where = policy, params, int(seed), where  # params (n, K', P)
        self.drawn = drawn  # the image size the views were drawn for, where the cache records it
        self.image_size: tuple[int, int] | None = None  # of the first image checked; every image must match
        self._schedule: tuple[int, np.ndarray] | None = None  # (epoch, (n,) view of every item)

    @classmethod
    def from_cache(cls, cache: LogitCache, rows: np.ndarray, *, cache_views: int | None = None,
                   seed: int = 0) -> "StoredViews | None":
        """The views of cache ``rows`` (first ``cache_views`` of each), or None for a cache without views."""
        if not cache.meta.has_views:
            if cache_views is not None:
                raise ConfigError(f"cache_views={cache_views} picks among stored views, but {cache.path} stores one "
                                  "view per image; dump views with `kdcache dump-logits --views K --augment POLICY`")
            return None
        policy = policy_from_record(cache.meta.view_policy, where=str(cache.path))
        if policy.FROM_FILE:
            raise ConfigError(f"{cache.path} stores {policy} views, cut from the original image files, which a "
                              "Dataset's transformed items cannot replay; wrap kdcache's own split instead: "
                              "CachedDataset(load_dataset('imagefolder', 'train', ROOT), cache)")
        used = views_in_use(cache, cache_views, "cache_views=")
        params = stored_view_params(cache, rows, used)  # (n, K', P): checked against the first image's size later
        return cls(policy, params, seed, str(cache.path), drawn_size(cache))

    @property
    def num_views(self) -> int:
        return int(self.params.shape[1])

    def schedule(self, epoch: int) -> np.ndarray:
        """(n,) the view of every item in ``epoch`` (computed once per epoch and process)."""
        if self._schedule is None or self._schedule[0] != epoch:
            self._schedule = (epoch, view_schedule(epoch, len(self.params), self.num_views, self.seed))
        return self._schedule[1]

    def apply(self, images: Sequence[Any], items: Sequence[int], views: Sequence[int]) -> torch.Tensor:
        """(B, C, H, W): view ``views[b]`` of item ``items[b]``, built on its ``images[b]``, all in one batched call.

        Each image must be a float (C, H, W) tensor in [0, 1], of the first image's size
        (ConfigError naming the item otherwise). One call per batch, not per image: a policy's
        apply costs about the same for 1 image as for 100.
        """
        for image, item in zip(images, items):
            self._check_tensor(image, item)
        batch = torch.stack(list(images))  # (B, C, H, W)
        lo, hi = batch.flatten(1).aminmax(dim=1)  # (B,), (B,)
        bad = (lo < 0) | (hi > 1)
        if bool(bad.any()):
            b = int(bad.nonzero()[0, 0])
            raise ConfigError(f"{self.where} stores augmentation views: item {items[b]}'s image has values in "
                              f"[{float(lo[b]):.3g}, {float(hi[b]):.3g}], not [0, 1] (normalised?); {IMAGE_CONTRACT}")
        params = self.params[torch.as_tensor(items, dtype=torch.int64), torch.as_tensor(views, dtype=torch.int64)]
        return view_images(batch, torch.arange(len(batch)), params, self.policy)  # (B, P): one view per image

    def _check_tensor(self, image: Any, item: int) -> None:
        if not isinstance(image, torch.Tensor) or not image.is_floating_point() or image.ndim != 3:
            got = (f"a {image.dtype} tensor of shape {tuple(image.shape)}" if isinstance(image, torch.Tensor)
                   else f"a {type(image).__module__}.{type(image).__qualname__}")
            raise ConfigError(f"{self.where} stores augmentation views: item {item}'s image is {got}; {IMAGE_CONTRACT}")
        size = (int(image.shape[1]), int(image.shape[2]))
        if self.image_size is None:  # the first image: the stored parameters must be views of its size
            check_replay_size(self.policy, self.drawn, size, self.where)
            check_view_params(self.policy, self.params.numpy(), size, self.where,
                              "give the images the size the teacher saw (or re-dump a corrupt cache)")
            self.image_size = size
        elif size != self.image_size:
            raise ConfigError(f"item {item}'s image is {size[0]}x{size[1]}, earlier ones {self.image_size[0]}x"
                              f"{self.image_size[1]}; stored views replay on images of the size the teacher saw: "
                              "give every image that size")


def keep_views(targets: Targets, used: int) -> Targets:
    """Targets (n, V, ...) -> (n, used, ...): the first ``used`` views, copied when that is fewer than V."""
    def first(a: Any) -> Any:
        return a if a.shape[1] == used else np.ascontiguousarray(a[:, :used])
    return targets.map(first) if isinstance(targets, TopK) else first(targets)
