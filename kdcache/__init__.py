"""kdcache: knowledge distillation from an offline cache of teacher logits.

Run the teacher once (``dump_logits``), then train students at any temperature
and alpha from the HDF5 cache (``train_student``), without the teacher.
"""
__version__ = "0.1.0"

from .errors import CacheError, CheckpointError, ConfigError, DataError, KDCacheError  # noqa: E402
from .loss import kd_loss  # noqa: E402

__all__ = ["__version__", "kd_loss", "KDCacheError", "CacheError", "CheckpointError", "ConfigError", "DataError"]
