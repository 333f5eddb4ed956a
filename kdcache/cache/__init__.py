"""The logit cache: one HDF5 file per (teacher, dataset split). The format lives here and only here.

Everything else in kdcache goes through ``open_cache(path) -> LogitCache`` (reading) and
``CacheWriter`` (writing); no other module names an HDF5 dataset, chunk or filter.
docs/cache-format.md is the reference for people reading caches with other tools.

Rows are samples. Per row: its dataset index, content id and label (UNLABELLED = -1 where
it has none), and the teacher's soft targets, as full raw logits or as top-k (see
kdcache.cache.targets), for one image or for V stored augmentation views of it, with each view's
parameters, or as low-rank codes (``lowrank``: one basis per cache, a short code per row,
decoded to logits when read). Raw logits, never probabilities: softmax(z/T) for any T is computed at
training time, so one cache serves every temperature.

Modules: ``schema`` (names, versions, attribute parsing), ``writer`` (CacheWriter), ``reader``
(LogitCache, open_cache, align), ``lowrank`` (the low-rank codec's pure functions).
"""
from kdcache.cache.reader import (
           LogitCache,
           ScanResult,
           check_readable,
           open_cache,
           read_meta,
)
from kdcache.cache.schema import (
           DATASETS,
           FORMAT_NAME,
           LOGIT_DTYPES,
    LOWRANK_SCHEMA_VERSION,
           MAX_ABS_LOGIT,
           PLAIN_SCHEMA_VERSION,
           ROOT_ATTRS,
           SCHEMA_VERSION,
    VIEWS_SCHEMA_VERSION,
           CacheMeta,
           class_id_dtype,
)
from kdcache.cache.writer import CacheLayout, CacheWriter, write_cache

__all__ = ["LogitCache", "ScanResult", "check_readable", "open_cache", "read_meta", "CacheWriter", "CacheLayout",
           "write_cache", "CacheMeta",
           "DATASETS", "ROOT_ATTRS", "FORMAT_NAME", "SCHEMA_VERSION", "PLAIN_SCHEMA_VERSION", "VIEWS_SCHEMA_VERSION",
           "LOWRANK_SCHEMA_VERSION", "LOGIT_DTYPES",
           "MAX_ABS_LOGIT", "class_id_dtype"]
