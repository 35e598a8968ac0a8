"""The supervisor's side of the warm pool (``slurmft run --warm``, ``supervise.warm``).

At the job's start, one ``srun`` step puts a pool server on every node of the allocation (the
spares too: a rank relaunched there starts warm as well) and lives as long as the job. Its srun
runs on a peer node, like the launcher: with it on the batch host, losing that host would keep
the other nodes' step daemons sending the pool's task exits to it (Slurm's MessageTimeout,
several times over) before the requeue can start the job again (``bench/requeue_srun_host.py``:
running again 18.1 s after the fault, against 1.8 s with the srun on a peer). A peer lost takes
only its own server: the step's tasks elsewhere keep running (``--no-kill``). The
supervisor must never stop that step with the training's: ``steps`` are the pool's step ids,
which ``Supervisor._signal_training`` leaves alone. The first launch's clients wait up to
``ready_wait`` seconds for their node's server to finish its imports (instead of importing
the same modules next to it on the same cores). So do a later launch's clients on a node whose
server started less than ``ready_wait`` ago (a node the spare refill just took in: its rank
waits a second or two for the server instead of importing torch for nine next to it); on any
other node, a rank without a server starts cold at once. Its client then leaves the node's
name in ``missing_dir`` (shared storage), and ``dead_servers`` tells the supervisor, which
starts a new server there (a server killed with the job's processes on its node, by the OOM
killer or by hand, would otherwise leave that node cold for the rest of the job). Such a kill
also ends the training's launcher: before that relaunch, with a spare free, the supervisor asks
every node's server (``answering``: one short job step, ``warm alive``), and a spare whose
server answers trains in place of a node whose server is gone (about 4 s from the kill to the
first step on the local cluster, against 9-11 s with that rank started cold); that node gets a
new server and becomes the spare.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from slurmft.core.errors import SlurmFTError
from slurmft.core.log import get_logger
from slurmft.core.nodeset import fold, is_valid_hostname
from slurmft.supervise.launch import alive_argv, pool_argv, slurm_env
from slurmft.supervise.processes import Launched, Processes
from slurmft.supervise.warm import ENV_MISSING, ENV_WAIT

log = get_logger(__name__)


class WarmPool:
    """Starts the pool step (and one more for each node taken into the job later) and
    remembers their step ids."""

    def __init__(self, job_id: int, interpreter: str, preload: Sequence[str],
                 processes: Processes, steps: Callable[[int], list[int]],
                 sleep: Callable[[float], None], ready_wait: float = 30.0,
                 clock: Callable[[], float] = time.monotonic,
                 missing_dir: Path | None = None) -> None:
        self.job_id, self.interpreter, self.preload = job_id, interpreter, tuple(preload)
        self.processes, self._steps, self.sleep = processes, steps, sleep
        self.ready_wait, self.clock = ready_wait, clock
        self.started_at: dict[str, float] = {}    # node -> when its server's step showed up
        self.missing_dir = missing_dir            # clients that found no server say so here
        self.failed: set[str] = set()             # nodes whose later step never showed up
        self.gone: set[str] = set()               # nodes found without a server (answering)
        self.procs: list[Launched] = []
        self.steps: frozenset[int] = frozenset()

    @property
    def proc(self) -> Launched | None:
        """The srun of the pool's latest step (None: no pool)."""
        return self.procs[-1] if self.procs else None

    def start(self, nodes: Sequence[str], env: Mapping[str, str],
              launch: Callable[[list[str], Mapping[str, str]], Launched] | None = None,
              find_for: float = 5.0, poll: float = 0.1) -> bool:
        """Start a pool step on ``nodes`` and find its step id (no other step starts
        meanwhile: one thread starts them all). ``launch`` runs its srun (default: here; the
        supervisor runs it on a peer, as it does the launcher). False when Slurm never shows
        the step: no pool at the job's start, no server on ``nodes`` later."""
        if not self.procs:
            self._reset_missing()
        try:
            before = set(self._steps(self.job_id))
        except SlurmFTError:
            before = set()
        start = launch or self.processes.start
        proc = start(pool_argv(self.interpreter, nodes, self.preload), env)
        self.procs.append(proc)
        for _ in range(max(1, int(find_for / poll))):
            try:
                new = set(self._steps(self.job_id)) - before
            except SlurmFTError:
                new = set()
            if new:
                self.steps = self.steps | frozenset(new)
                self.started_at.update(dict.fromkeys(nodes, self.clock()))
                log.info("warm pool on %s: job step %s (preloading %s)", fold(nodes),
                         ",".join(map(str, sorted(new))), ",".join(self.preload),
                         extra={"job": str(self.job_id)})
                return True
            if proc.poll() is not None:
                break
            self.sleep(poll)
        if len(self.procs) > 1:          # a later step: the pool elsewhere stays
            self.failed.update(nodes)
            log.warning("warm pool: its job step on %s never showed up; ranks start cold there",
                        fold(nodes), extra={"job": str(self.job_id)})
            if proc.poll() is None:
                proc.kill()
            self.procs.remove(proc)
            return False
        log.warning("warm pool: its job step never showed up; the training starts cold",
                    extra={"job": str(self.job_id)})
        self.stop()
        return False

    def env(self, nodes: Sequence[str]) -> dict[str, str]:
        """What one launch on ``nodes`` tells its clients: how long to wait for a server
        still importing (the rest of ``ready_wait`` of the youngest server among ``nodes``; a
        client whose server listens already does not wait at all)."""
        now = self.clock()
        left = max((self.started_at[n] + self.ready_wait - now for n in nodes
                    if n in self.started_at), default=0.0)
        env = {ENV_WAIT: f"{max(0.0, left):.3g}"}
        if self.missing_dir is not None:
            env[ENV_MISSING] = str(self.missing_dir)
        return env

    def left_job(self, allocation: Sequence[str]) -> None:
        """Forget the servers of nodes no longer in ``allocation`` (the job's nodes as Slurm
        lists them now; empty: unknown, nothing forgotten): Slurm ended each with the node's
        part of the job, so one taken in again later (the spare refill) needs a new server."""
        if allocation:
            for node in [n for n in self.started_at if n not in allocation]:
                del self.started_at[node]
            self.failed.intersection_update(allocation)

    def never_started(self, nodes: Sequence[str]) -> list[str]:
        """Those of ``nodes`` no server was started on, nor tried and failed (a launch
        must not wait for the step search again and again)."""
        return [n for n in nodes if n not in self.started_at and n not in self.failed]

    def answering(self, nodes: Sequence[str], env: Mapping[str, str],
                  timeout: float = 5.0) -> set[str] | None:
        """Those of ``nodes`` whose server answers now: one short job step asks each node
        (``warm alive``). None when that step failed (it tells nothing). Those that do not
        answer are remembered for ``dead_servers``."""
        ask = [n for n in nodes if n in self.started_at]
        if not ask:
            return set()
        text = self.processes.output(alive_argv(self.interpreter, ask),
                                     {**env, **slurm_env(ask, 1)}, timeout)
        if text is None:
            log.warning("warm pool: cannot ask %s whether their servers answer; relaunching "
                        "as if they did", fold(ask), extra={"job": str(self.job_id)})
            return None
        up = {f[0] for f in (line.split() for line in text.splitlines())
              if len(f) == 2 and f[1] == "up"}
        self.gone |= set(ask) - up
        return up

    def silent(self, nodes: Sequence[str], env: Mapping[str, str]) -> list[str]:
        """Those of ``nodes`` where a rank would not start warm now: no server answers
        (``answering``), or none was started; [] when the question failed. Logged. One
        that started less than ``ready_wait`` ago may be importing still: a spare that
        answers is better all the same."""
        up = self.answering(nodes, env)
        cold = [n for n in nodes if up is not None and n not in up]
        if dead := [n for n in cold if n in self.started_at]:
            log.warning("warm pool: no server answers on %s (killed with the job's processes "
                        "there?): a spare whose server answers trains in its place, and it gets "
                        "a new one", fold(dead), extra={"job": str(self.job_id)})
        return cold

    def dead_servers(self) -> list[str]:
        """Nodes whose client found no server since the last call (their notes removed), or
        that ``answering`` found without one, but those whose server started less than
        ``ready_wait`` ago (it may be on its way: a client that finds none there later says
        so)."""
        found = sorted(set(self._take_missing()) | self.gone)
        self.gone = set()
        now = self.clock()
        return [n for n in found
                if now - self.started_at.get(n, float("-inf")) >= self.ready_wait]

    def _reset_missing(self) -> None:
        """An empty ``missing_dir`` at the job's start (a requeued run's notes are stale); no
        such directory (an unwritable checkpoint path): no servers started again."""
        if self.missing_dir is None:
            return
        try:
            self.missing_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("warm pool: cannot create %s (%s): a server that dies is not started "
                        "again", self.missing_dir, exc.strerror, extra={"job": str(self.job_id)})
            self.missing_dir = None
            return
        self._take_missing()

    def _take_missing(self) -> list[str]:
        """The nodes noted in ``missing_dir``, their notes removed."""
        if self.missing_dir is None:
            return []
        try:
            names = sorted(os.listdir(self.missing_dir))
        except OSError:
            return []
        for name in names:
            try:
                os.unlink(self.missing_dir / name)
            except OSError:
                pass
        return [n for n in names if is_valid_hostname(n)]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        self.procs, self.steps, self.started_at = [], frozenset(), {}
