"""How the in-job supervisor starts processes: the ``Processes`` protocol (a fake in unit
tests) and ``SubprocessProcesses``, its one real implementation: the launcher in this process
group (Slurm signals the whole batch step), the in-place reschedule waited for, the hand-off
detached in a session of its own (it requeues this very job)."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Protocol

from slurmft.core.log import get_logger

log = get_logger(__name__)


class Launched(Protocol):
    """A started launcher (a ``subprocess.Popen``)."""

    pid: int

    def poll(self) -> int | None: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...
    def wait(self, timeout: float | None = None) -> int: ...


class Processes(Protocol):
    """How the supervisor starts processes (subprocess here; a fake in unit tests)."""

    def start(self, argv: Sequence[str], env: Mapping[str, str],
              stdin_text: str | None = None) -> Launched: ...

    def call(self, argv: Sequence[str], env: Mapping[str, str], log_path: Path,
             timeout: float) -> int: ...

    def detach(self, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> None: ...

    def output(self, argv: Sequence[str], env: Mapping[str, str],
               timeout: float) -> str | None: ...


class SubprocessProcesses:
    """``Processes`` with subprocess: the launcher in this process group (Slurm signals the
    whole batch step), the in-place reschedule waited for, the hand-off detached."""

    def start(self, argv: Sequence[str], env: Mapping[str, str],
              stdin_text: str | None = None) -> Launched:
        proc = subprocess.Popen(list(argv), env=dict(env),
                                stdin=subprocess.PIPE if stdin_text is not None else None)
        if stdin_text is not None:
            assert proc.stdin is not None
            try:
                proc.stdin.write(stdin_text.encode())
                proc.stdin.close()
            except BrokenPipeError:       # it exited before reading: its exit code says why
                pass
        return proc

    def call(self, argv: Sequence[str], env: Mapping[str, str], log_path: Path,
             timeout: float) -> int:
        with _log_file(log_path) as out:
            try:
                return subprocess.run(list(argv), env=dict(env), stdin=subprocess.DEVNULL,
                                      stdout=out, stderr=out, timeout=timeout,
                                      check=False).returncode
            except subprocess.TimeoutExpired:
                log.error("%s did not answer within %.0f s", shlex.join(argv[:3]), timeout)
                return 1
            except OSError as exc:
                log.error("cannot run %s: %s", argv[0], exc.strerror)
                return 1

    def detach(self, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        with _log_file(log_path) as out:
            try:
                subprocess.Popen(list(argv), env=dict(env), stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=out, start_new_session=True)
            except OSError as exc:
                log.error("cannot run %s: %s", argv[0], exc.strerror)

    def output(self, argv: Sequence[str], env: Mapping[str, str],
               timeout: float) -> str | None:
        """What a short command prints (None: it failed, did not end in ``timeout`` s or
        could not start)."""
        try:
            done = subprocess.run(list(argv), env=dict(env), stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=timeout, check=False)
        except (subprocess.TimeoutExpired, OSError):
            return None
        return done.stdout.decode(errors="replace") if done.returncode == 0 else None


def _log_file(path: Path) -> IO[bytes]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "ab")                              # noqa: SIM115 (a context manager)
    except OSError:
        return open(os.devnull, "ab")                        # noqa: SIM115
