"""The ONE place where an exception becomes ``slurmft: <message>`` and an exit code.

``SlurmFTGroup`` (the root group's class) runs a command with click's own error printing off
and sends every exception through ``error_exit``: one line on stderr, the documented exit
code (slurmft.core.errors.ExitCode), never a traceback.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any

import click

from slurmft.core.errors import ExitCode, SlurmFTError
from slurmft.core.log import get_logger

log = get_logger(__name__)


class OutputClosedError(Exception):
    """stdout's reader went away (EPIPE); raised instead of the OSError so that click does
    not end the process silently itself."""


def _click_exit(exc: click.exceptions.Exit) -> tuple[None, ExitCode]:
    known = exc.exit_code in ExitCode._value2member_map_  # noqa: SLF001 - enum lookup
    return None, ExitCode(exc.exit_code) if known else ExitCode.FAILED


def _os_error(exc: OSError) -> tuple[str, ExitCode]:
    if exc.errno == errno.EPIPE:
        return "output closed early (broken pipe)", ExitCode.FAILED
    where = exc.filename if exc.filename is not None else "output"
    what = exc.strerror or str(exc)
    return f"cannot use {where}: {what}", ExitCode.FAILED


def error_exit(exc: BaseException) -> tuple[str | None, ExitCode]:
    """The one line to print (None: nothing) and the exit code for ``exc``."""
    import yaml

    if isinstance(exc, click.exceptions.Exit):
        return _click_exit(exc)
    if isinstance(exc, SlurmFTError):
        return str(exc), ExitCode(exc.exit_code)
    if isinstance(exc, click.UsageError):
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        return exc.format_message() + hint, ExitCode.USAGE
    if isinstance(exc, click.ClickException):
        return exc.format_message(), ExitCode.FAILED
    if isinstance(exc, (KeyboardInterrupt, click.Abort)):
        return "interrupted", ExitCode.INTERRUPTED
    if isinstance(exc, UnicodeDecodeError):
        return (f"cannot read input as UTF-8 text (byte {exc.start}): {exc.reason}",
                ExitCode.USAGE)
    if isinstance(exc, yaml.YAMLError):
        return f"invalid YAML: {str(exc).splitlines()[0]}", ExitCode.USAGE
    if isinstance(exc, OutputClosedError):
        return "output closed early (broken pipe)", ExitCode.FAILED
    if isinstance(exc, OSError):
        return _os_error(exc)
    if isinstance(exc, (OverflowError, ValueError)):
        return f"invalid value: {exc}", ExitCode.USAGE
    if isinstance(exc, RecursionError):
        return "input nested too deeply", ExitCode.USAGE
    return (f"internal error ({type(exc).__name__}: {exc}); please report it with the output "
            "of the same command run with -vv", ExitCode.FAILED)


def say(message: str | None) -> None:
    """Print ``slurmft: <message>`` as one line on stderr (nothing for None)."""
    if message:
        line = " ".join(str(message).split("\n")).strip()
        try:
            click.echo(f"slurmft: {line}", err=True)
        except OSError:
            pass


def _silence_stdout() -> None:
    """After EPIPE/ENOSPC on stdout, let the interpreter's final flush find nothing to write."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _finish(code: int) -> None:
    """Flush stdout (a full disk or closed pipe shows here) and exit with ``code``."""
    try:
        sys.stdout.flush()
    except OSError as exc:
        message, code = error_exit(exc)
        say(message)
        _silence_stdout()
    sys.exit(int(code))


def _fail(exc: BaseException) -> None:
    """Say what went wrong in one line and exit with the code ``error_exit`` gives."""
    message, code = error_exit(exc)
    if code is ExitCode.FAILED and message and message.startswith("internal error"):
        log.debug("internal error", exc_info=exc)
    if isinstance(exc, OutputClosedError) or (
            isinstance(exc, OSError) and exc.errno in (errno.EPIPE, errno.ENOSPC)):
        _silence_stdout()
    say(message)
    _finish(code)


class SlurmFTGroup(click.Group):
    """Runs the command with click's own error printing off and maps every exception
    through ``error_exit``: one ``slurmft:`` line on stderr and the documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise OutputClosedError() from exc
            raise

    def main(self, args: Any = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except SystemExit:
            raise
        except BaseException as exc:  # noqa: BLE001 - the one place errors become exit codes
            _fail(exc)
        _finish(rv if isinstance(rv, int) and not isinstance(rv, bool) else ExitCode.OK)
