"""Resume states: what a training run has done after each epoch, so a stopped run continues.

``train-teacher`` / ``train-student`` write ``.<out name>.resume.pt`` next to ``--out``
at the end of every epoch (atomically: a temp file renamed over the last one), and delete
it once the final checkpoint is written. It holds the model's and optimizer's and
scheduler's states, the completed epoch, the history rows, the torch RNG state, the
divergence watch's reference losses, and the run's request (jobs._request). Only tensors
and plain values: it is read with ``torch.load(weights_only=True)`` like a checkpoint.

Data order and views are pure functions of (seed, epoch) (kdcache.data.sampler, kdcache.data.cached_dataset), so a run
resumed from epoch k gives the same weights as one never stopped (bit-identical on CPU).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from kdcache.errors import CheckpointError, ConfigError
from kdcache.train.checkpoint import load_weights_only, save_payload

RESUME_FORMAT = "kdcache-resume"
RESUME_VERSION = 1
REQUIRED = ("epoch", "model", "optimizer", "scheduler", "history", "rng", "watch", "request")


def resume_path_for(out: str | os.PathLike) -> Path:
    """runs/student.pt -> runs/.student.pt.resume.pt (hidden, next to the checkpoint)."""
    p = Path(out)
    return p.with_name(f".{p.name}.resume.pt")


def save_resume_state(path: Path, state: Mapping[str, Any]) -> Path:
    """Atomically write ``state`` (plus the format marker) to ``path``."""
    return save_payload(path, {"format": RESUME_FORMAT, "version": RESUME_VERSION, **state})


def load_resume_state(path: Path) -> dict[str, Any]:
    """The state at ``path`` (weights_only); a CheckpointError naming ``--overwrite`` if it is not one."""
    try:
        payload = load_weights_only(path)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; pass --overwrite to start over") from None
    if (not isinstance(payload, dict) or payload.get("format") != RESUME_FORMAT
            or any(k not in payload for k in REQUIRED)):
        raise CheckpointError(f"{path} is not a kdcache resume state; pass --overwrite to start over")
    if int(payload.get("version", 0)) > RESUME_VERSION:
        raise CheckpointError(f"{path} is resume state version {payload['version']}, newer than this kdcache reads; "
                              "upgrade kdcache or pass --overwrite to start over")
    return payload


def differences(stored: Any, wanted: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(key, stored value, wanted value) for every leaf where two requests differ (JSON-plain values)."""
    if isinstance(stored, dict) and isinstance(wanted, dict):
        out = []
        for k in list(stored) + [k for k in wanted if k not in stored]:
            out += differences(stored.get(k, _ABSENT), wanted.get(k, _ABSENT), f"{prefix}{k}.")
        return out
    return [] if stored == wanted else [(prefix.rstrip("."), stored, wanted)]


_ABSENT = "(none)"


def check_request(path: Path, stored: Any, request: Mapping[str, Any]) -> None:
    """Refuse, in one line naming what differs, a state made by another request."""
    diff = differences(_plain(stored), _plain(request))
    if not diff:
        return
    shown = diff[:3]
    more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""

    def name(key: str) -> str:  # train.lr -> lr: the option's name
        return key.split(".", 1)[1] if key.startswith("train.") else key
    made = ", ".join(f"{name(k)} {_show(a)}" for k, a, _ in shown)
    asks = ", ".join(f"{name(k)} {_show(b)}" for k, _, b in shown)
    raise ConfigError(f"{path} was made with {made}, this run asks for {asks}{more}; pass --overwrite to start over")


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True))


def matching_state(path: Path, request: dict[str, Any], required: bool, refuse_other: bool) -> dict | None:
    """The resume state at ``path`` made by ``request``; None if there is none (an error when ``required``).

    One made by another request is refused naming what differs, or ignored (to be replaced) when not
    ``refuse_other``.
    """
    if not path.exists():
        if required:
            raise ConfigError(f"--resume: there is no resume state at {path} (no epoch of this run finished, or it "
                              "completed); drop --resume to start the run")
        return None
    state = load_resume_state(path)
    try:
        check_request(path, state["request"], request)
    except ConfigError:
        if refuse_other:
            raise
        return None
    return state
