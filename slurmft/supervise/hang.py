"""Hang detection for the in-job supervisor: which ranks stopped making progress.

The ranks write heartbeats (``slurmft.checkpoint.heartbeat``: ``rank-<r>`` in one directory);
``HangDetector.poll()`` reads them and judges progress by the content changing, timed on the
supervisor's own monotonic clock (the files may be written on other hosts: their mtimes and
clocks are never compared). Pure logic over the files and an injectable clock.

The timeout, when not given, is ``max(floor, factor x median step time)``; the step times are
observed from the heartbeats (seconds between two changes the reader saw / steps advanced),
pooled over the ranks. Until enough of them are seen, and for a rank that has not beaten yet,
``startup_grace`` applies instead (imports, loading the checkpoint, the first step's warm-up).

``py_spy_dump`` asks py-spy for a process's stacks where it is installed (the ranks' own
faulthandler dumps, ``stacks(rank)``, need nothing and cover other hosts).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import statistics
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from slurmft.checkpoint.heartbeat import Beat, heartbeat_path, parse_beat, stacks_path
from slurmft.core.errors import UsageError
from slurmft.core.log import failed_extra, get_logger
from slurmft.supervise.launch import rank_node

log = get_logger(__name__)

#: Step-time samples kept (pooled over ranks) for the median.
SAMPLES_KEPT = 256
#: Samples needed before the timeout is derived from the median (until then: startup grace).
MIN_SAMPLES = 3
#: At most this many bytes of a stacks file are read (its end: the newest dump).
STACKS_READ_MAX = 1 << 20
_FILE_RE = re.compile(r"^rank-[0-9]+(\.stacks)?$")
_DUMP_HEADER_RE = re.compile(r"^Timeout \([0-9:.]+\)!$", re.M)


@dataclass
class StuckRank:
    """A rank that made no progress for the timeout (``last_step`` None: it never beat)."""

    rank: int
    last_step: int | None
    seconds_without_progress: float
    stacks: str | None
    host: str = ""                  # from its heartbeat ('' if it never beat)
    pid: int | None = None

    def describe(self) -> str:
        step = "no heartbeat yet" if self.last_step is None else f"last step {self.last_step}"
        where = f" on {self.host} (pid {self.pid})" if self.host else ""
        stacks = "" if self.stacks else "; no stacks (process stopped?)"
        return (f"rank {self.rank}{where}: no progress for "
                f"{self.seconds_without_progress:.0f} s, {step}{stacks}")


@dataclass
class _RankState:
    content: bytes | None = None          # what the file held at the last change seen
    changed_at: float = 0.0               # reader's clock at that change (or at reset)
    beat: Beat | None = None              # the newest parseable beat
    sample_step: int | None = None        # step and time of the last change used for a sample
    sample_at: float = 0.0


#: Bounds (s) of the time between two reads of the heartbeats (``read_interval``).
READ_INTERVAL_MIN = 0.25
READ_INTERVAL_MAX = 1.0


def read_interval(step_time: float | None, *, fixed: float | None = None) -> float:
    """Seconds between two reads of every rank's heartbeat: ``fixed`` when given, else about
    two steps, within [READ_INTERVAL_MIN, READ_INTERVAL_MAX] (once a second before a step
    time is known). A straggler's streak is counted in its own steps as the reads see them:
    read once a second, a rank at 10 steps/s would be named up to 10 steps late; a run of
    multi-second steps is still read once a second, whatever its size."""
    if fixed is not None:
        return fixed
    if step_time is None or not math.isfinite(step_time) or step_time <= 0:
        return READ_INTERVAL_MAX
    return min(READ_INTERVAL_MAX, max(READ_INTERVAL_MIN, 2 * step_time))


def _check_seconds(name: str, value: float | None, *, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if value is None or not math.isfinite(value) or value <= 0:
        raise UsageError(f"{name} must be a positive number of seconds, not {value}")


class HangDetector:
    """Reads ``directory``'s heartbeats of ranks 0..world_size-1 at each ``poll()``.

    ``timeout``: seconds without progress that make a rank stuck; None: derived,
    ``max(floor, factor x median step time)``. ``startup_grace``: a rank that has not beaten
    yet, and every rank while fewer than ``MIN_SAMPLES`` step times were seen (with a derived
    timeout), is stuck only after this long without progress (None: never). A rank that never
    beat counts only once some rank did (the training uses heartbeats at all) unless
    ``expect_heartbeats``. A rank whose heartbeat says done (closed) is never stuck.
    """

    def __init__(self, directory: str | os.PathLike, world_size: int, *,
                 timeout: float | None = None, factor: float = 10.0, floor: float = 30.0,
                 startup_grace: float | None = 300.0, expect_heartbeats: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        _check_seconds("the hang timeout", timeout)
        _check_seconds("the hang floor", floor, allow_none=False)
        _check_seconds("the startup grace", startup_grace)
        if not math.isfinite(factor) or factor <= 0:
            raise UsageError(f"the hang factor must be a positive number, not {factor}")
        self.directory = Path(directory)
        self.timeout = timeout
        self.factor = factor
        self.floor = floor
        self.startup_grace = startup_grace
        self.expect_heartbeats = expect_heartbeats
        self.clock = clock
        self._samples: deque[float] = deque(maxlen=SAMPLES_KEPT)
        self.world_size = 0
        self._ranks: list[_RankState] = []
        self._started = clock()
        self._begin(world_size)

    # ---- state ---------------------------------------------------------------------------

    def _begin(self, world_size: int) -> None:
        if world_size < 0:
            raise UsageError(f"world size must be >= 0, not {world_size}")
        self.world_size = int(world_size)
        self._started = now = self.clock()
        self._ranks = [_RankState(changed_at=now) for _ in range(self.world_size)]
        self._samples.clear()

    def reset(self, world_size: int) -> None:
        """Before a (re)launch of ``world_size`` ranks: forget every rank and step time and
        remove the old heartbeat and stacks files (a new launch starts from nothing; call it
        before the new ranks start, after the old ones were stopped)."""
        self._begin(world_size)
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            names = []
        except OSError as exc:
            log.warning("hang detection: cannot list %s: %s", self.directory, exc)
            names = []
        for name in names:
            if _FILE_RE.match(name):
                try:
                    (self.directory / name).unlink()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.warning("hang detection: cannot remove %s: %s", self.directory / name, exc)

    @property
    def step_time(self) -> float | None:
        """Median seconds per step seen so far (None before any)."""
        return statistics.median(self._samples) if self._samples else None

    def current_timeout(self) -> float | None:
        """The timeout in force for ranks that have beaten: the given one, or the derived one
        (None until ``MIN_SAMPLES`` step times were seen: ``startup_grace`` applies)."""
        if self.timeout is not None:
            return self.timeout
        if len(self._samples) < MIN_SAMPLES:
            return None
        return max(self.floor, self.factor * statistics.median(self._samples))

    def last_beat(self, rank: int) -> Beat | None:
        """The newest heartbeat read from ``rank`` (None before any)."""
        return self._ranks[rank].beat if 0 <= rank < self.world_size else None

    def beats(self) -> dict[int, Beat | None]:
        """The newest heartbeat read from every rank (as of the last ``poll``), for the
        straggler detector (``supervise.straggler``)."""
        return {rank: st.beat for rank, st in enumerate(self._ranks)}

    # ---- polling -------------------------------------------------------------------------

    def _read(self, rank: int) -> bytes | None:
        try:
            with open(heartbeat_path(self.directory, rank), "rb") as fh:
                data = fh.read(4096)
        except OSError:
            return None
        return data or None

    def _observe(self, rank: int, now: float) -> None:
        st = self._ranks[rank]
        data = self._read(rank)
        if data is None or data == st.content:
            return
        st.content, st.changed_at = data, now
        beat = parse_beat(data)
        if beat is None:               # a read that raced a write: count the change only
            return
        if (st.sample_step is not None and beat.step > st.sample_step and not beat.done):
            self._samples.append((now - st.sample_at) / (beat.step - st.sample_step))
        st.beat, st.sample_step, st.sample_at = beat, beat.step, now

    def poll(self) -> list[StuckRank]:
        """Read every rank's heartbeat; the ranks that are stuck now (by rank), each with its
        stacks when the rank dumped them."""
        now = self.clock()
        for rank in range(self.world_size):
            self._observe(rank, now)
        any_beat = any(st.beat is not None for st in self._ranks)
        timeout = self.current_timeout()
        stuck = []
        for rank, st in enumerate(self._ranks):
            idle = now - st.changed_at
            if st.beat is None:
                limit = (self.startup_grace
                         if self.expect_heartbeats or any_beat or st.content is not None else None)
            elif st.beat.done:
                continue
            else:
                limit = timeout if timeout is not None else self.startup_grace
            if limit is not None and idle >= limit:
                stuck.append(StuckRank(rank, st.beat.step if st.beat else None, idle,
                                       self.stacks(rank),
                                       st.beat.host if st.beat else "",
                                       st.beat.pid if st.beat else None))
        return stuck

    def finished(self) -> bool:
        """Every rank's heartbeat, read now, says it closed (``done``): the training ran to
        its end, whatever happened to a node after that (no ranks: False)."""
        now = self.clock()
        for rank in range(self.world_size):
            self._observe(rank, now)
        return bool(self._ranks) and all(st.beat is not None and st.beat.done
                                         for st in self._ranks)

    def stacks(self, rank: int) -> str | None:
        """The newest faulthandler dump in ``rank-<r>.stacks`` (None: none written, e.g. the
        process is stopped or has no ``SLURMFT_HANG_DUMP_AFTER``)."""
        return read_stacks(stacks_path(self.directory, rank))


def read_stacks(path: str | os.PathLike) -> str | None:
    """The last dump in a faulthandler file (``Timeout (...)!`` headers between dumps)."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > STACKS_READ_MAX:
                fh.seek(size - STACKS_READ_MAX)
            text = fh.read(STACKS_READ_MAX).decode("utf-8", "replace")
    except OSError:
        return None
    starts = [m.start() for m in _DUMP_HEADER_RE.finditer(text)]
    if starts:
        text = text[starts[-1]:]
    return text if text.strip() else None


def laggards(stuck: Sequence[StuckRank]) -> list[StuckRank]:
    """The stuck ranks at the lowest step: in a collective hang the others wait inside the
    collective one step further, so these are the likely cause."""
    steps = [s.last_step for s in stuck if s.last_step is not None]
    if not steps:
        return list(stuck)
    low = min(steps)
    return [s for s in stuck if s.last_step is None or s.last_step == low]


# ---- py-spy ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class CommandResult:
    returncode: int | None          # None: did not finish in time or could not start
    stdout: str = ""
    stderr: str = ""


Runner = Callable[[Sequence[str], float], CommandResult]


def run_command(argv: Sequence[str], timeout: float) -> CommandResult:
    """Run ``argv`` (no shell), capturing its output; never raises."""
    try:
        cp = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                            stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return CommandResult(None, stderr=f"no answer within {timeout:g} s")
    except OSError as exc:
        return CommandResult(None, stderr=str(exc))
    return CommandResult(cp.returncode, cp.stdout, cp.stderr)


def py_spy_argv(pid: int, executable: str = "py-spy") -> list[str]:
    if int(pid) <= 0:
        raise UsageError(f"not a process id: {pid}")
    return [executable, "dump", "--pid", str(int(pid))]


def py_spy_dump(pid: int, *, runner: Runner = run_command,
                which: Callable[[str], str | None] = shutil.which,
                timeout: float = 10.0) -> str | None:
    """The stacks of process ``pid`` on this host from ``py-spy dump``; None when py-spy is
    not installed or fails (then a warning says why: e.g. ptrace not permitted)."""
    exe = which("py-spy")
    if exe is None:
        return None
    res = runner(py_spy_argv(pid, exe), timeout)
    if res.returncode != 0 or not res.stdout.strip():
        why = (res.stderr or res.stdout).strip().splitlines()
        log.warning("py-spy dump of pid %d failed (%s): %s", pid,
                    "timed out or did not start" if res.returncode is None
                    else f"rc {res.returncode}", why[-1] if why else "no output")
        return None
    return res.stdout


def report_stuck(job: int, stuck: Sequence[StuckRank], nodes: Sequence[str], slots: int) -> None:
    """One ERROR line per stuck rank, naming its node (``failed_node=``), then its stacks.
    The ranks at the lowest step are the likely cause; the others wait for them inside a
    collective."""
    lowest = min((r.last_step for r in stuck if r.last_step is not None), default=None)
    for r in sorted(stuck, key=lambda r: (r.last_step is None or r.last_step != lowest, r.rank)):
        host = getattr(r, "host", "")        # the heartbeat's, when it names a job node
        node = host if host in nodes else rank_node(r.rank, nodes, slots)
        cause = " (likely the cause: lowest step)" if (
            len(stuck) > 1 and r.last_step is not None and r.last_step == lowest) else ""
        extra = {"job": str(job), **failed_extra(node)}
        log.error("job %s: rank %s on %s made no progress for %.0f s (last step %s)%s: "
                  "hung; relaunching from the latest verified checkpoint", job, r.rank, node,
                  r.seconds_without_progress, "none" if r.last_step is None else r.last_step,
                  cause, extra=extra)
        if r.stacks:
            log.error("job %s: stacks of rank %s on %s:\n%s", job, r.rank, node,
                      r.stacks.rstrip(), extra=extra)
        else:
            log.error("job %s: rank %s on %s left no stacks (the process may be stopped)",
                      job, r.rank, node, extra=extra)


__all__ = ["READ_INTERVAL_MAX", "READ_INTERVAL_MIN", "CommandResult", "HangDetector", "StuckRank",
           "laggards", "py_spy_argv", "py_spy_dump", "read_interval", "read_stacks",
           "report_stuck", "run_command"]
