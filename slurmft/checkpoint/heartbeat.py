"""Heartbeats: each rank says it still makes progress; the supervisor notices when it stops.

Training side (standard library and slurmft.core only: a rank stays light). The in-job
supervisor (``slurmft run``) sets two environment variables for the ranks:

``SLURMFT_HEARTBEAT_DIR``
    where each rank writes ``rank-<r>`` (its heartbeat) and ``rank-<r>.stacks``;
``SLURMFT_HANG_DUMP_AFTER``
    seconds (optional): a rank that has not beaten for that long writes the Python stacks of
    all its threads to ``rank-<r>.stacks`` (faulthandler's watchdog thread, so also while the
    main thread is blocked in C, e.g. inside an MPI or NCCL collective), again every as many
    seconds while it stays stuck.

``CheckpointManager.should_save`` and ``MPICheckpointManager.vote``/``should_save`` beat when
the variable is set, so a training loop that already asks the manager every step needs no
change. Anything else calls ``heartbeat_from_env(rank)`` once and ``beat(step)`` every step.

``rank-<r>`` is one fixed-size line (``HEARTBEAT_SIZE`` bytes, space-padded) overwritten in
place, no fsync, no new file::

    v2 run <step> <count> <pid> <host> <busy_ms>

``count`` grows with every beat, so each beat changes the content; ``done`` replaces ``run``
after ``close()`` (a rank that finished is never hung). ``busy_ms`` is the rank's recent
busy time per step (an EWMA, ``BUSY_ALPHA``, of ``beat(step, busy_s=...)``, in
milliseconds; ``-`` before the first): the time from the end of its previous collective to
entering the next one, which ``MPICheckpointManager`` measures itself (``agree`` -> next
``vote``). In synchronous data parallel training every rank advances at the slowest rank's
pace, so only this figure names a straggler (``slurmft.supervise.straggler``). Lines of the
first format, ``v1 run <step> <count> <pid> <host>`` (no busy time), are still read. Progress is judged by the reader seeing
the content change on its own monotonic clock, never from mtimes or another host's clock.
"""

from __future__ import annotations

import faulthandler
import math
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from slurmft.core.errors import SlurmFTError
from slurmft.core.log import get_logger

log = get_logger(__name__)

ENV_DIR = "SLURMFT_HEARTBEAT_DIR"
ENV_DUMP_AFTER = "SLURMFT_HANG_DUMP_AFTER"
#: Bytes of a heartbeat file (one line, space-padded, ends with a newline).
HEARTBEAT_SIZE = 128
FORMAT_VERSION = "v2"
#: Formats ``parse_beat`` reads (v1: without the busy time).
READ_VERSIONS = ("v1", "v2")
#: Weight of the newest busy time in the EWMA a heartbeat carries: a rank that turns 2x
#: slower shows >= 1.5x within 4 steps, a one-step spike is forgotten within ~6.
BUSY_ALPHA = 0.2
#: Longest host name written (the busy time must fit in the line after it).
HOST_MAX = 64
#: Where a rank's number comes from when nobody passes it (first one set wins): Open MPI,
#: PMIx, MPICH/PMI, torchrun, then Slurm (under mpirun started through srun, SLURM_PROCID
#: numbers the nodes' daemons, not the ranks: hence last).
RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "RANK", "SLURM_PROCID")


def heartbeat_path(directory: str | os.PathLike, rank: int) -> Path:
    return Path(directory) / f"rank-{int(rank)}"


def stacks_path(directory: str | os.PathLike, rank: int) -> Path:
    return Path(directory) / f"rank-{int(rank)}.stacks"


@dataclass(frozen=True)
class Beat:
    """One heartbeat file's content as the reader parsed it."""

    step: int
    count: int
    pid: int
    host: str
    done: bool = False
    busy_ms: float | None = None     # recent busy time per step (v2; None: unknown)


def format_beat(step: int, count: int, pid: int, host: str, done: bool = False,
                busy_ms: float | None = None) -> bytes:
    busy = "-" if busy_ms is None or not math.isfinite(busy_ms) else f"{max(0.0, busy_ms):.1f}"
    host = ((host or "").split() or ["-"])[0][:HOST_MAX]
    line = (f"{FORMAT_VERSION} {'done' if done else 'run'} {int(step)} {int(count)} {int(pid)} "
            f"{host} {busy}")
    data = line.encode("ascii", "replace")[:HEARTBEAT_SIZE - 1]
    return data.ljust(HEARTBEAT_SIZE - 1) + b"\n"


def parse_beat(data: bytes) -> Beat | None:
    """The beat in ``data`` (format v1 or v2); None for an empty file or one this version
    cannot read (also a read that raced a write)."""
    words = data.decode("ascii", "replace").split()
    if len(words) < 5 or words[0] not in READ_VERSIONS or words[1] not in ("run", "done"):
        return None
    try:
        step, count, pid = int(words[2]), int(words[3]), int(words[4])
    except ValueError:
        return None
    busy = None
    if words[0] != "v1" and len(words) > 6 and words[6] != "-":
        try:
            busy = float(words[6])
        except ValueError:
            return None
        if not math.isfinite(busy) or busy < 0:
            busy = None
    return Beat(step, count, pid, words[5] if len(words) > 5 else "", words[1] == "done", busy)


def rank_from_env(environ: Mapping[str, str] | None = None) -> int | None:
    """This process's rank from the launcher's variables (``RANK_VARIABLES``), or None."""
    env = os.environ if environ is None else environ
    for name in RANK_VARIABLES:
        value = env.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None


class Heartbeat:
    """A rank's heartbeat in ``directory`` (created if missing).

    ``beat(step)`` costs one ``pwrite`` of ``HEARTBEAT_SIZE`` bytes (plus, at most every
    ``dump_after / 2`` seconds, re-arming faulthandler's watchdog). ``dump_after``: seconds
    without a beat after which faulthandler writes every thread's stacks to
    ``rank-<r>.stacks`` (then again every ``dump_after`` s while stuck); the watchdog is armed
    at the first beat. Because it is re-armed at most every ``dump_after / 2`` s, the stacks
    come between ``dump_after / 2`` and ``dump_after`` seconds after the last beat, and never
    while beats come at least every ``dump_after / 2`` s. The stacks file is emptied at the
    first beat after a dump (it only ever holds dumps of the current stall).

    faulthandler has one watchdog per process: keep one Heartbeat with ``dump_after`` per
    process (the checkpoint managers make one each only when ``SLURMFT_HEARTBEAT_DIR`` is set).
    """

    def __init__(self, directory: str | os.PathLike, rank: int, *,
                 dump_after: float | None = None,
                 clock=time.monotonic) -> None:
        if int(rank) < 0:
            raise SlurmFTError(f"heartbeat rank must be >= 0, not {rank}")
        if dump_after is not None and not (math.isfinite(dump_after) and dump_after > 0):
            raise SlurmFTError(f"dump_after must be a positive number of seconds, not {dump_after}")
        self.directory = Path(directory)
        self.rank = int(rank)
        self.dump_after = dump_after
        self.path = heartbeat_path(self.directory, rank)
        self.stacks_path = stacks_path(self.directory, rank)
        self._clock = clock
        self._pid = os.getpid()
        self._host = socket.gethostname().split(".")[0] or "-"
        self._count = 0
        self._step = 0
        self._busy_ms: float | None = None
        self._armed_at: float | None = None
        self._fd = self._stacks_fd = -1
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                               0o644)
            if dump_after is not None:
                self._stacks_fd = os.open(
                    self.stacks_path,
                    os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            self._close_fds()
            raise SlurmFTError(f"cannot write heartbeats in {self.directory}: "
                               f"{exc.strerror or exc}; check {ENV_DIR}") from None

    @property
    def closed(self) -> bool:
        return self._fd < 0

    @property
    def count(self) -> int:
        """Beats so far."""
        return self._count

    @property
    def busy_ms(self) -> float | None:
        """The busy time per step this heartbeat carries (EWMA, ms; None before any)."""
        return self._busy_ms

    def beat(self, step: int, busy_s: float | None = None) -> None:
        """Record progress at ``step`` (call it every training step). ``busy_s``: this rank's
        own compute time of the step in seconds, from the end of its previous collective to
        entering the next one (``MPICheckpointManager`` passes it; a loop of its own may):
        the heartbeat carries its EWMA, which the supervisor compares between ranks to name
        a straggler. A negative or non-finite value is ignored."""
        if self._fd < 0:
            return
        self._count += 1
        self._step = int(step)
        if busy_s is not None and math.isfinite(busy_s) and busy_s >= 0:
            ms = busy_s * 1000.0
            self._busy_ms = ms if self._busy_ms is None else (
                BUSY_ALPHA * ms + (1 - BUSY_ALPHA) * self._busy_ms)
        try:
            os.pwrite(self._fd, format_beat(step, self._count, self._pid, self._host,
                                            busy_ms=self._busy_ms), 0)
            if self._stacks_fd >= 0:
                now = self._clock()
                if self._armed_at is None or now - self._armed_at >= self.dump_after / 2:
                    self._arm(now)
        except OSError as exc:      # a full or stale shared disk must never stop the training
            log.warning("heartbeat of rank %d stops: %s (hang detection is off for it)",
                        self.rank, exc)
            if self._armed_at is not None:
                faulthandler.cancel_dump_traceback_later()
                self._armed_at = None
            self._close_fds()

    def _arm(self, now: float) -> None:
        if self._armed_at is not None and os.fstat(self._stacks_fd).st_size:
            os.ftruncate(self._stacks_fd, 0)        # dumps of a stall that is over
        faulthandler.dump_traceback_later(self.dump_after, repeat=True, file=self._stacks_fd)
        self._armed_at = now

    def close(self) -> None:
        """Stop the watchdog; mark the rank done (the supervisor never calls it hung)."""
        if self._fd < 0:
            return
        if self._armed_at is not None:
            faulthandler.cancel_dump_traceback_later()
            self._armed_at = None
        try:
            os.pwrite(self._fd, format_beat(self._step, self._count + 1, self._pid, self._host,
                                            done=True, busy_ms=self._busy_ms), 0)
        except OSError as exc:
            log.warning("heartbeat of rank %d: cannot mark it done: %s", self.rank, exc)
        self._close_fds()

    def _close_fds(self) -> None:
        for fd in (self._fd, self._stacks_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:             # EIO from a network filesystem: nothing to keep
                    pass
        self._fd = self._stacks_fd = -1

    def __enter__(self) -> "Heartbeat":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Heartbeat({str(self.directory)!r}, rank={self.rank}, dump_after={self.dump_after})"


def dump_after_from_env(environ: Mapping[str, str] | None = None) -> float | None:
    """``SLURMFT_HANG_DUMP_AFTER`` in seconds; None when unset, empty or not a positive number
    (then a warning: a bad value must not stop the training)."""
    env = os.environ if environ is None else environ
    text = env.get(ENV_DUMP_AFTER, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        log.warning("%s=%r is not a positive number of seconds: no stack dumps", ENV_DUMP_AFTER,
                    text)
        return None
    return value


def heartbeat_from_env(rank: int | None = None,
                       environ: Mapping[str, str] | None = None) -> Heartbeat | None:
    """The Heartbeat the supervisor asks for (``SLURMFT_HEARTBEAT_DIR``, and
    ``SLURMFT_HANG_DUMP_AFTER``), or None when the directory is not set. ``rank`` None: from
    the launcher's variables (``rank_from_env``; 0 if none). A directory that cannot be written
    is logged and gives None: heartbeats must never stop the training."""
    env = os.environ if environ is None else environ
    directory = env.get(ENV_DIR, "").strip()
    if not directory:
        return None
    if rank is None:
        rank = rank_from_env(env) or 0
    try:
        return Heartbeat(directory, rank, dump_after=dump_after_from_env(env))
    except SlurmFTError as exc:
        log.warning("rank %s: no heartbeats: %s", rank, exc)
        return None


__all__ = ["BUSY_ALPHA", "Beat", "ENV_DIR", "ENV_DUMP_AFTER", "HEARTBEAT_SIZE", "Heartbeat",
           "dump_after_from_env", "format_beat", "heartbeat_from_env", "heartbeat_path",
           "parse_beat", "rank_from_env", "stacks_path"]
