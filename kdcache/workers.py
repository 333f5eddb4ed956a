"""What every worker process kdcache starts (DataLoader workers that hash, decode or read) does first.

``timeout``, Slurm and Kubernetes stop a job by sending SIGTERM to its whole process group. The
main process stops cleanly on it (kdcache.cli.group: temp files removed, one ``Error: stopped
(SIGTERM)`` line, exit 143). torch's own worker handler exits quietly only when the *parent* sends
SIGTERM; from anyone else a worker dies by the signal, and the main process then printed torch's
17-line ``DataLoader worker (pid ...) is killed by signal: Terminated`` report before its line (or
a traceback and exit 1 instead of it). A worker holds nothing to clean up, so it just exits.
"""
from __future__ import annotations

import os
import signal
from typing import Any


def quiet_worker(worker_id: int) -> None:
    """The ``worker_init_fn`` of every DataLoader kdcache builds: a SIGTERM ends the worker at once, quietly."""
    signal.signal(signal.SIGTERM, _exit_quietly)


def _exit_quietly(signum: int, frame: Any) -> None:
    os._exit(0)
