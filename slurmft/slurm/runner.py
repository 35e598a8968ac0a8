"""The ONLY place in slurmft that starts Slurm commands: argv lists, no shell, a timeout always.

A runner is anything with ``run(argv, timeout) -> CommandResult``. ``SubprocessRunner`` is the
real one; tests pass ``tests.fakes.fake_slurm.FakeSlurm`` instead (same interface, no process).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
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
