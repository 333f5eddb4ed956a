"""Named exceptions. Each carries a one-line message that says what is wrong and how to fix it.

The CLI turns every ``KDCacheError`` into a clean ``Error: ...`` line and a non-zero exit.
"""


class KDCacheError(Exception):
    """Base class for every error kdcache reports to a user."""


class ConfigError(KDCacheError):
    """An option value is invalid (T <= 0, alpha outside [0, 1], unknown name...)."""


class Diverged(ConfigError):
    """Training blew up (a non-finite loss, or one far above where it started): a result of the settings.

    ``reason`` says what the loss did, ``hint`` what to change; a sweep records a diverged run
    as a result instead of stopping (it catches this class, never matches the message).
    """

    def __init__(self, reason: str, hint: str = "lower --lr (e.g. by 10x)") -> None:
        super().__init__(f"training diverged ({reason}); {hint}")
        self.reason, self.hint = reason, hint


class DataError(KDCacheError):
    """The dataset is missing or not what was asked for."""


class CacheError(KDCacheError):
    """A logit cache is missing, corrupt, incomplete or does not match the data."""


class CheckpointError(KDCacheError):
    """A checkpoint is missing, unreadable, unsafe or does not match."""


class StorageError(KDCacheError):
    """An output cannot be written: not enough disk space, or the disk filled up while writing."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a job that saved what it had done; the message says how to go on."""
