"""The `kdcache` command group: every KDCacheError becomes one `Error: ...` line and exit status 1."""
from __future__ import annotations

from typing import Any

import click

from ..errors import KDCacheError

DIST_COMMANDS = ("dump-logits", "train-teacher", "train-student")  # the commands torchrun can run on several ranks


class KDCacheGroup(click.Group):
    """Maps KDCacheError (and file-system errors) to `Error: <one line>` and exit 1, never a traceback.

    Under torchrun (WORLD_SIZE > 1) the command runs as one rank of the job (kdcache.dist):
    a failure on any rank ends every rank with exit status 1 and one `Error: rank R: ...`
    line for the whole job.
    """

    def invoke(self, ctx: click.Context) -> Any:
        from ..dist import launched

        if launched():
            return self._invoke_as_rank(ctx)
        try:
            return super().invoke(ctx)
        except KDCacheError as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:  # permission denied, disk full, ... on an output path
            raise click.ClickException(_os_error(e)) from None

    def _invoke_as_rank(self, ctx: click.Context) -> Any:
        from ..dist import RankFailed, Terminated, launch

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
        from ..dist import launched

        name, cmd, rest = super().resolve_command(ctx, args)
        if launched() and name not in DIST_COMMANDS:
            raise KDCacheError(f"`kdcache {name}` runs in one process: run it without torchrun (torchrun runs "
                               f"{', '.join(DIST_COMMANDS)})")
        return name, cmd, rest


def _os_error(e: OSError) -> str:
    return f"{e.strerror or e}: {e.filename or ''}".rstrip(": ")


def summary(quiet: bool, text: str) -> None:
    from ..dist import current

    if not quiet and current().is_main:  # under torchrun, rank 0 speaks for the job
        click.echo(text)


@click.group(cls=KDCacheGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kdcache")
def main() -> None:
    """Knowledge distillation from an offline cache of teacher logits.

    Train a teacher, dump its raw logits once, then train students at any
    temperature and alpha from the cache, without the teacher.
    """
