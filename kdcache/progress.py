"""Progress that stays readable in a terminal and in a log file.

On a terminal: tqdm bars. Anywhere else (redirected to a file, CI, a pipe): one plain
line every ``LOG_INTERVAL_S`` seconds and one at the end, instead of a carriage-return
update per batch that becomes thousands of lines in a log.
"""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
LOG_INTERVAL_S = 30.0


def is_terminal(stream=None) -> bool:
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def track(iterable: Iterable[T], *, desc: str, total: int | None = None, enabled: bool = True, unit: str = "batch",
          leave: bool = False, interval_s: float = LOG_INTERVAL_S, stream=None) -> Iterator[T]:
    """Iterate ``iterable`` showing progress: a tqdm bar on a terminal, a line per ``interval_s`` elsewhere."""
    if not enabled:
        yield from iterable
        return
    stream = stream if stream is not None else sys.stderr
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if is_terminal(stream):
        from tqdm.auto import tqdm

        yield from tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, file=stream)
        return
    t0 = last = time.perf_counter()
    n = 0
    for item in iterable:
        # an interval line only once the next item has come: after the last one the "done" line alone
        # speaks, so a loop of one slow batch prints one line, not the same count twice
        now = time.perf_counter()
        if n and now - last >= interval_s:
            last = now
            stream.write(_line(desc, n, total, now - t0, unit) + "\n")
            stream.flush()
        yield item
        n += 1
    if leave or time.perf_counter() - t0 >= interval_s:
        stream.write(_line(desc, n, total, time.perf_counter() - t0, unit, done=True) + "\n")
        stream.flush()


def _plural(unit: str) -> str:
    return unit + ("es" if unit.endswith(("ch", "sh", "s", "x")) else "s")


def _line(desc: str, n: int, total: int | None, seconds: float, unit: str, done: bool = False) -> str:
    unit = _plural(unit)
    rate = n / seconds if seconds > 0 else 0.0
    if done:
        shown = f"{n}/{total} {unit} ({n / total:.0%})" if total else f"{n} {unit}"
        return f"{desc}: {shown}, {seconds:.0f}s elapsed, done"
    if total:
        left = (total - n) / rate if rate > 0 else 0.0
        return f"{desc}: {n}/{total} {unit} ({n / total:.0%}), {seconds:.0f}s elapsed, {left:.0f}s left"
    return f"{desc}: {n} {unit}, {seconds:.0f}s elapsed"


class _Lines:
    """A tqdm-like counter for logs: one line per ``update`` (for slow steps, e.g. one sweep run each)."""

    def __init__(self, total: int, initial: int, desc: str, unit: str, stream) -> None:
        self.n, self.total, self.desc, self.unit, self.stream = initial, total, desc, unit, stream
        self.postfix = ""
        self.t0 = time.perf_counter()

    def set_description_str(self, desc: str) -> None:
        self.desc = desc

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def update(self, n: int = 1) -> None:
        self.n += n
        elapsed = time.perf_counter() - self.t0
        self.stream.write(f"{self.desc}: {self.n}/{self.total} {_plural(self.unit)}, {elapsed:.0f}s elapsed"
                          + (f", {self.postfix}" if self.postfix else "") + "\n")
        self.stream.flush()

    def close(self) -> None:
        pass


class _Silent(_Lines):
    def update(self, n: int = 1) -> None:
        self.n += n


def counter(total: int, *, desc: str, initial: int = 0, unit: str = "run", enabled: bool = True, stream=None):
    """A progress counter updated by hand: a tqdm bar on a terminal, one line per update elsewhere."""
    stream = stream if stream is not None else sys.stderr
    if not enabled:
        return _Silent(total, initial, desc, unit, stream)
    if is_terminal(stream):
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=stream,
                    bar_format="{desc}: {n_fmt}/{total_fmt} " + _plural(unit) + " |{bar}| {elapsed} elapsed{postfix}")
    return _Lines(total, initial, desc, unit, stream)


def note(message: str, *, enabled: bool = True, stream=None) -> None:
    """One line of what a job is doing (e.g. that it resumes), on stderr beside its progress; nothing when not
    ``enabled`` (a job without progress, a quiet command)."""
    if enabled:
        stream = stream if stream is not None else sys.stderr
        stream.write(message + "\n")
        stream.flush()
