"""The ONLY place in slurmft that starts Slurm commands: argv lists, no shell, a timeout always.

A runner is anything with ``run(argv, timeout) -> CommandResult``. ``SubprocessRunner`` is the
real one; tests pass ``tests.fakes.fake_slurm.FakeSlurm`` instead (same interface, no process).
``RecordingRunner`` sits in front of either: it passes reads through and records writes (and,
for ``--dry-run``, runs none of them).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from slurmft.core.errors import ControllerUnreachableError, SlurmCommandError
from slurmft.core.log import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class CommandResult:
    """What a command returned (like subprocess.CompletedProcess, text only)."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str = ""
    stderr: str = ""


class Runner(Protocol):
    def run(self, argv: Sequence[str], timeout: float) -> CommandResult: ...


class SubprocessRunner:
    """Runs argv with subprocess (never a shell).

    ``prefix`` is prepended to every argv (e.g. ``nsenter --net=/run/netns/X``) and ``env``
    entries are added to the environment, so the same client works inside a namespace.
    """

    def __init__(self, prefix: Sequence[str] = (), env: Mapping[str, str] | None = None) -> None:
        self.prefix = tuple(prefix)
        self.env = dict(env or {})

    def run(self, argv: Sequence[str], timeout: float) -> CommandResult:
        if isinstance(argv, str):
            raise TypeError("argv must be a list of strings, not a string")
        full = [*self.prefix, *argv]
        env = {**os.environ, **self.env} if self.env else None
        log.debug("run %s (timeout %.1fs)", full, timeout)
        try:
            proc = subprocess.run(  # noqa: S603 - argv list, no shell
                full, capture_output=True, text=True, timeout=timeout, env=env,
                stdin=subprocess.DEVNULL, check=False,
            )
        except subprocess.TimeoutExpired:
            raise ControllerUnreachableError(
                f"{argv[0]} did not answer within {timeout:g}s (is slurmctld up?)",
                argv=full, slurm_message="timed out",
            ) from None
        except FileNotFoundError:
            raise SlurmCommandError(
                f"{full[0]} not found: is Slurm installed and on PATH (slurm.bin_dir)?",
                argv=full,
            ) from None
        except PermissionError as exc:
            raise SlurmCommandError(f"cannot run {full[0]}: {exc.strerror}", argv=full) from None
        return CommandResult(tuple(full), proc.returncode, proc.stdout, proc.stderr)


class RecordingRunner:
    """A runner in front of another: reads pass through, every write is recorded.

    ``is_write(argv)`` tells the two apart (``slurm.commands.is_write``). With ``dry_run`` a
    write is only recorded and answered as a success whose stdout is ``reply(argv)`` (e.g. a
    job id for ``sbatch --parsable``); without it the write runs too, and ``writes`` is the
    exact argv of each change made, for the audit log and the report. This is the only
    dry-run mechanism: the client and the argv builders do not know about it.
    """

    def __init__(self, inner: Runner, is_write: Callable[[Sequence[str]], bool], *,
                 dry_run: bool, reply: Callable[[Sequence[str]], str] = lambda argv: "") -> None:
        self.inner = inner
        self.is_write = is_write
        self.dry_run = dry_run
        self.reply = reply
        self.writes: list[list[str]] = []

    def run(self, argv: Sequence[str], timeout: float) -> CommandResult:
        if not self.is_write(argv):
            return self.inner.run(argv, timeout)
        self.writes.append(list(argv))
        if self.dry_run:
            return CommandResult(tuple(argv), 0, self.reply(argv), "")
        return self.inner.run(argv, timeout)
