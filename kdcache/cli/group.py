"""The `kdcache` command group: every KDCacheError becomes one `Error: ...` line and exit status 1.

SIGTERM (Slurm, Kubernetes, spot preemption) is handled like Ctrl-C: it raises KeyboardInterrupt
in the main thread, so temp files are removed and resume states kept, and the command exits with
one `Error: stopped (...)` line and status 143 (SIGTERM) or 130 (Ctrl-C), as if the signal had
ended it (128 + the signal's number).
"""
from __future__ import annotations

import _thread
import contextlib
import logging
import signal
import sys
import threading
from typing import Any

import click

from kdcache.errors import Interrupted, KDCacheError

DIST_COMMANDS = ("dump-logits", "train-teacher", "train-student")  # the commands torchrun can run on several ranks


class _UsageLine(click.ClickException):
    """A command-line usage error shown as one `Error:` line (click shows usage + hint + error), exit status 2."""

    exit_code = 2


class KDCacheGroup(click.Group):
    """Maps KDCacheError (and file-system errors) to `Error: <one line>` and exit 1, never a traceback.

    Under torchrun (WORLD_SIZE > 1) the command runs as one rank of the job (kdcache.dist):
    a failure on any rank ends every rank with exit status 1 and one `Error: rank R: ...`
    line for the whole job.
    """

    def invoke(self, ctx: click.Context) -> Any:
        from kdcache.dist import launched

        with _library_warnings():
            if launched():
                return self._invoke_as_rank(ctx)  # kdcache.dist handles SIGTERM there (torchrun's stop)
            return self._invoke_here(ctx)

    def _invoke_here(self, ctx: click.Context) -> Any:
        stop = _Stop()
        main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there only
        old_term = signal.signal(signal.SIGTERM, stop.on_sigterm) if main_thread else None
        old_hook, sys.unraisablehook = sys.unraisablehook, stop.unraisable(sys.unraisablehook)
        try:
            return super().invoke(ctx)
        except click.UsageError as e:  # an unknown option, a value of the wrong type: one line too, exit status 2
            where = e.ctx.command_path if e.ctx is not None else "kdcache"
            raise _UsageLine(f"{e.format_message()} ('{where} --help' lists the options)") from None
        except KDCacheError as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:  # permission denied, disk full, ... on an output path
            raise click.ClickException(_os_error(e)) from None
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM through stop.on_sigterm; cleanup has run
            how = "SIGTERM" if stop.signal == signal.SIGTERM else "Ctrl-C"
            hint = f"; {e}" if isinstance(e, Interrupted) and str(e) else ""
            click.echo(f"Error: stopped ({how}){hint}", err=True)
            raise click.exceptions.Exit(128 + int(stop.signal or signal.SIGINT)) from None
        finally:
            sys.unraisablehook = old_hook
            if main_thread:
                signal.signal(signal.SIGTERM, old_term)

    def _invoke_as_rank(self, ctx: click.Context) -> Any:
        from kdcache.dist import RankFailed, Terminated, launch

        try:
            with launch(report=lambda line: click.echo(f"Error: {line}", err=True)):
                try:
                    return super().invoke(ctx)
                except click.exceptions.Exit as e:  # --help: every rank printed it
                    if e.exit_code:
                        raise KDCacheError(f"exit status {e.exit_code}") from None
                    return None
                except click.ClickException as e:  # a usage error: the same on every rank
                    raise KDCacheError(e.format_message()) from None
                except OSError as e:
                    raise KDCacheError(_os_error(e)) from None
        except RankFailed:  # reported once for the job already
            raise click.exceptions.Exit(1) from None
        except Terminated:  # torchrun stopped this worker because another one failed
            raise click.exceptions.Exit(143) from None

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        from kdcache.dist import launched

        name, cmd, rest = super().resolve_command(ctx, args)
        if launched() and name not in DIST_COMMANDS:
            raise KDCacheError(f"`kdcache {name}` runs in one process: run it without torchrun (torchrun runs "
                               f"{', '.join(DIST_COMMANDS)})")
        return name, cmd, rest


class _Stop:
    """A SIGTERM handler that raises KeyboardInterrupt once (a second SIGTERM during cleanup is ignored)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.again = False

    def on_sigterm(self, signum: int, frame: Any) -> None:
        if self.signal is None or self.again:
            self.signal, self.again = signum, False
            raise KeyboardInterrupt()

    def unraisable(self, old_hook: Any) -> Any:
        """A sys.unraisablehook that delivers again an interrupt Python swallowed.

        A signal handler's exception raised while a weakref callback or ``__del__`` runs is only
        printed ("Exception ignored in ..."), and the command would go on as if never stopped:
        measured with dump-logits. Re-raise it in the main thread at its next step instead.
        """
        def hook(info: Any) -> None:
            if info.exc_type is None or not issubclass(info.exc_type, KeyboardInterrupt):
                return old_hook(info)
            if self.signal is not None:  # ours (SIGTERM)
                self.again = True
                _thread.interrupt_main(self.signal)
            else:  # Ctrl-C: Python's own handler raises KeyboardInterrupt
                _thread.interrupt_main()
        return hook


class _WarningLines(logging.Handler):
    """The library's warnings (logger ``kdcache``, e.g. unreadable files skipped) as `warning: ...` lines on stderr,
    each text once (a job may read a split twice), and under torchrun from rank 0 only."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        from kdcache.dist import current

        text = record.getMessage()
        if text not in self.seen and current().is_main:
            self.seen.add(text)
            click.echo(f"warning: {text}", err=True)


@contextlib.contextmanager
def _library_warnings() -> Any:
    logger = logging.getLogger("kdcache")
    handler, propagate = _WarningLines(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False  # not a second time through Python's last-resort handler
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _os_error(e: OSError) -> str:
    return f"{e.strerror or e}: {e.filename or ''}".rstrip(": ")


def warn(result: dict[str, Any], prefix: str = "") -> None:
    """Print a job's warnings (a model at chance, a loss that rose), one line each on stderr, even with --quiet:
    a run that went wrong never finishes quietly."""
    for w in result.get("warnings") or []:
        click.echo(f"warning: {prefix}{w}", err=True)


def summary(quiet: bool, text: str) -> None:
    from kdcache.dist import current

    if not quiet and current().is_main:  # under torchrun, rank 0 speaks for the job
        click.echo(text)


@click.group(cls=KDCacheGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kdcache")
def main() -> None:
    """Knowledge distillation from an offline cache of teacher logits.

    Train a teacher, dump its raw logits once, then train students at any
    temperature and alpha from the cache, without the teacher.

    Ctrl-C and SIGTERM stop any command cleanly (no partial files; training keeps its
    resume state) with exit status 130 (Ctrl-C) or 143 (SIGTERM).
    """
