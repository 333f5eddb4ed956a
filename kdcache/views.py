"""What augmentation a training run gets: replayed stored views, fresh random views, or none.

- A cache with views (``dump-logits --views K --augment POLICY``) is replayed: each epoch
  every image shows one of its stored views, rebuilt from the stored parameters, and learns
  that view's logits (``ViewPlan`` with ``stored``; schedule in kdcache.augment.view_schedule).
- ``--augment POLICY`` without a view cache draws fresh parameters every epoch: a teacher
  learning the views it will label, or a labels-only student.
- ``--augment`` with a single-view cache while distilling pairs augmented images with the
  logits of the *original* image. That is refused, with the reason, unless
  ``allow_inconsistent`` asks for it (kept so the inconsistency can be measured).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .augment import ViewPlan, ViewPolicy, parse_policy, policy_from_record
from .cache import LogitCache
from .errors import CacheError, ConfigError
from .samples import ImageData

SCHEDULE = "each stored view once per K epochs, in a random order per image and cycle"


def fresh_views(augment: str | None, data: ImageData, seed: int) -> ViewPlan | None:
    """Fresh random parameters every epoch (None without ``augment``)."""
    if augment is None:
        return None
    return ViewPlan(parse_policy(augment), tuple(data.info.image_size), seed)


def views_in_use(cache: LogitCache, cache_views: int | None, flag: str) -> int:
    """K': the first ``cache_views`` of the cache's K stored views (all K for None); ``flag`` names the setting."""
    stored = cache.meta.num_views
    used = stored if cache_views is None else int(cache_views)
    if not 1 <= used <= stored:
        raise ConfigError(f"{flag}{cache_views}: {cache.path} stores {stored} views per image; use 1..{stored}")
    return used


def check_view_params(policy: ViewPolicy, params: np.ndarray, image_size: Sequence[int], where: Any) -> None:
    """CacheError when stored parameters (..., P) cannot be views of ``image_size`` images (a corrupt cache)."""
    problem = policy.problem(params, image_size)
    if problem:
        raise CacheError(f"{where}: /view_params cannot be views of {image_size[0]}x{image_size[1]} images: "
                         f"{problem}; the cache is corrupt, re-dump it")


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
        if augment is not None and parse_policy(augment).describe() != policy.describe():
            raise ConfigError(f"--augment {augment} differs from the views stored in {cache.path} ({policy}); a cache "
                              "with views replays its own views: drop --augment, or dump views with that policy")
        params = cache.read_view_params(r)  # (N, V, P)
        check_view_params(policy, params, data.info.image_size, cache.path)
        stored = cache.meta.num_views
        used = views_in_use(cache, cache_views, "--cache-views ")
        plan = ViewPlan(policy, tuple(data.info.image_size), seed, torch.from_numpy(np.ascontiguousarray(params[:, :used])))
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

