"""The in-job supervisor behind ``slurmft run``: start the training, relaunch it in the same
allocation when a node is lost, a rank dies or a rank hangs, and hand the job to a requeue
when that cannot work.

One launch goes through these states (``RunState``; each change is a ``RunTransition``
event, logged and written to the audit file)::

    STARTING -> LAUNCHING -> RUNNING --launcher exit 0--------------------------> DONE
                   ^            |-- SIGUSR2 (slurmft took a node out) --------> RELAUNCHING
                   |            |-- launcher failed / a rank hung -> ASKING --> RELAUNCHING
                   |            |                                      |------> HANDING_OFF
                   |            |                                      '------> STALE
                   |            |-- SIGUSR1: passed to the training's steps (save now)
                   |            |-- a straggler, --straggler-action swap, a spare free ----> RELAUNCHING
                   |            '-- SIGTERM/SIGINT (Slurm stops the job) -----> STOPPED
                   '---------------------------------------- RELAUNCHING

ASKING runs ``slurmft reschedule JOB --in-place``: it probes the nodes, takes the failed ones
out of the job (DOWN, then DRAIN) and answers 0 (relaunch on the nodes left, counted against
the retry budget), NEEDS_REQUEUE (the batch host failed, or the budget is spent: HANDING_OFF
starts a detached ``slurmft reschedule`` that requeues the job) or STALE_COPY (Slurm requeued
the job while this host was cut off: this copy stops). Before every relaunch the training's
job steps are killed through Slurm, wherever their launcher ran.

A straggler (``supervise.straggler``) is logged at ERROR with its node; with
``straggler_action="swap"`` and a free spare, its node is left out for the rest of the job and
a spare takes its place. A used spare is refilled (``supervise.refill``) while it trains; a
shrunk run relaunches on full size at the next checkpoint (``supervise.grow``). With the warm
pool (``supervise.pool``), a spare whose server answers replaces a node whose server died.

No Slurm logic of its own: the rescheduler decides, the Slurm client reads the allocation
and kills steps, ``Processes`` starts the launcher (a fake in unit tests)."""

from __future__ import annotations

import enum
import os
import shlex
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from slurmft.core.envfile import RESTART_ENV, read_env_file
from slurmft.core.errors import ExitCode, SlurmFTError
from slurmft.core.log import failed_extra, get_logger
from slurmft.core.nodeset import fold
from slurmft.observe.events import Event, RunTransition, Straggler
from slurmft.supervise.hang import read_interval, report_stuck
from slurmft.supervise.launch import (GroupJob, LaunchSettings, choose_nodes, exit_code,
                                      initial_resume, job_nodes, launch_argv, rank_node,
                                      slurm_env)
from slurmft.supervise.peer import PeerLauncher
from slurmft.supervise.pool import WarmPool
from slurmft.supervise.processes import Launched, Processes
from slurmft.supervise.strays import PEER_DIR, clear_job_notes
from slurmft.supervise.warm import DEFAULT_PRELOAD

log = get_logger(__name__)

#: Where a rank that found no pool server notes it (checkpoint dir), how often it is read.
WARM_DIR = ".slurmft-warm"
POOL_CHECK_S = 2.0


class RunState(enum.Enum):
    STARTING = "starting"
    LAUNCHING = "launching"
    RUNNING = "running"
    ASKING = "asking"              # slurmft reschedule --in-place
    RELAUNCHING = "relaunching"
    HANDING_OFF = "handing-off"    # a detached reschedule requeues the job
    STALE = "stale"                # Slurm requeued the job: this copy stops
    STOPPED = "stopped"            # SIGTERM/SIGINT: Slurm ends or preempts the job
    DONE = "done"


class Ended(enum.Enum):
    """Why a launch ended."""

    EXITED = "exited"              # the launcher exited by itself
    RELAUNCH = "relaunch"          # SIGUSR2: slurmft took failed nodes out of the job
    HUNG = "hung"                  # a rank made no progress for the hang timeout
    STRAGGLER = "straggler"        # a straggler's node is swapped for a spare
    STOP = "stop"                  # SIGTERM/SIGINT


class SlurmView(Protocol):
    """The part of the Slurm client the supervisor uses."""

    def allocation(self, job_id: int) -> list[str]: ...
    def job(self, job_id: int) -> Any: ...
    def steps(self, job_id: int) -> list[int]: ...
    def signal_steps(self, job_id: int, steps: Sequence[int], signal: str = "KILL") -> None: ...


class StuckRankLike(Protocol):
    rank: int
    last_step: int | None
    seconds_without_progress: float
    stacks: str | None


class ProgressMonitor(Protocol):
    """Hang detection (``supervise.hang.HangDetector``): heartbeats of every rank."""

    def reset(self, world_size: int) -> None: ...
    def poll(self) -> Sequence[StuckRankLike]: ...
    def finished(self) -> bool: ...
    @property
    def step_time(self) -> float | None: ...


class StragglerLike(Protocol):
    rank: int
    host: str
    pid: int
    busy_ms: float
    peers_ms: float
    ratio: float
    steps: int
    step: int
    seconds: float


class StragglerMonitor(Protocol):
    """Straggler detection (``supervise.straggler.StragglerDetector``) over the beats the
    progress monitor read (its ``beats()``)."""

    def reset(self) -> None: ...
    def observe(self, beats: Mapping[int, Any]) -> Sequence[StragglerLike]: ...


@dataclass
class RunOptions:
    """What one ``slurmft run`` needs besides the launch settings."""

    job_id: int
    checkpoint_dir: Path
    here: str                                   # this host's Slurm node name
    cwd: str
    slurmft_cmd: tuple[str, ...]                # how to call slurmft reschedule
    reschedule_log: Path
    resume: str = "auto"                        # auto | always | never
    restart_count: int = 0                      # SLURM_RESTART_COUNT when this copy started
    train_cmd_line: str = ""                    # for a restart job (hand-off)
    poll_interval: float = 0.1
    monitor_interval: float | None = None       # heartbeat reads (None: ~2 steps, 0.25-1 s)
    kill_grace: float = 1.0                     # TERM, then KILL after this long
    peer_check_timeout: float = 30.0
    in_place_timeout: float = 600.0
    heartbeat_env: dict[str, str] = field(default_factory=dict)
    spares: int = 0                             # nodes of the allocation kept idle as spares
    train_nodes: int | None = None              # with spares: nodes the training runs on
    straggler_action: str = "report"            # report | swap (a spare takes its place)
    group: GroupJob | None = None               # this job is one torchft replica group
    warm_preload: tuple[str, ...] = DEFAULT_PRELOAD   # with LaunchSettings.warm


class Supervisor:
    """Runs the training of one job to its end; ``run()`` returns the exit code."""

    def __init__(self, settings: LaunchSettings, options: RunOptions, slurm: SlurmView,
                 processes: Processes, *, monitor: ProgressMonitor | None = None,
                 stragglers: StragglerMonitor | None = None, regainer: Any = None,
                 refill: Any = None, grow: Any = None, emit: Callable[[Event], None] | None = None,
                 environ: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings, self.options, self.stragglers = settings, options, stragglers
        self.slurm, self.processes, self.monitor = slurm, processes, monitor
        self.regainer = regainer          # supervise.regain.Regainer: ask for full size back
        self.refill = refill              # supervise.refill.SpareRefill: used spares back
        self.grow = grow                  # supervise.grow.GrowInPlace: full size again, here
        self.want: int | None = None      # the nodes to train on (None: all)
        self.emit = emit or (lambda event: None)
        self.environ = dict(os.environ if environ is None else environ)
        self.clock, self.sleep = clock, sleep
        self.state = RunState.STARTING
        self.launches = 0
        self._relaunch_asked = False
        self._save_asked = False
        self._stop_signal: int | None = None
        self._known_allocation: list[str] | None = None
        self.peer = PeerLauncher(settings, options, processes)
        self.benched: list[str] = []   # stragglers' nodes: never trained on again in this job
        self.pool = WarmPool(options.job_id, settings.train_cmd[0], options.warm_preload,
                             processes, slurm.steps, sleep, clock=clock,
                             missing_dir=options.checkpoint_dir / WARM_DIR / str(options.job_id),
                             ) if settings.warm else None
        self.stragglers_named = 0

    # ------------------------------------------------------------------ signals
    def on_relaunch_signal(self, *_: Any) -> None:
        """SIGUSR2: slurmft took a failed node out of this job; relaunch on the nodes left."""
        self._relaunch_asked = True

    def on_save_signal(self, *_: Any) -> None:
        """SIGUSR1 (``#SBATCH --signal=B:USR1@60``: the time limit is near): pass it to the
        training's steps, whose checkpoint managers save at the next step."""
        self._save_asked = True

    def on_stop_signal(self, signum: int, *_: Any) -> None:
        """SIGTERM/SIGINT: the job ends (scancel, time limit, preemption). Slurm signals the
        training's steps itself; the supervisor stops relaunching and waits for them."""
        self._stop_signal = signum

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGUSR2, self.on_relaunch_signal)
        signal.signal(signal.SIGUSR1, self.on_save_signal)
        signal.signal(signal.SIGTERM, self.on_stop_signal)
        signal.signal(signal.SIGINT, self.on_stop_signal)

    # ------------------------------------------------------------------ main loop
    def run(self) -> int:
        try:
            return self._run()
        finally:
            self.peer.close(self.environ)

    def _run(self) -> int:
        job, ckpt = self.options.job_id, self.options.checkpoint_dir
        try:
            ckpt.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SlurmFTError(f"cannot create the checkpoint directory {ckpt}: "
                               f"{exc.strerror}") from None
        allocation = job_nodes(self.environ)
        want = self.want = self._world_nodes(allocation)
        nodes = choose_nodes(allocation, [], want)
        resume = resume_args(self.options, first=True)
        self.peer.stop_strays(self.environ)      # a requeued run: before its first step
        if self.pool is not None:    # on every node, spares too, for the job; from a peer
            self.pool.start(allocation, self._launch_env(allocation),
                            launch=lambda argv, env: self._start(allocation, argv, env,
                                                                 own_step=True))
        rc = 1
        while True:
            rc, ended = self._launch_once(nodes, resume)
            if ended is Ended.STOP:
                self._to(RunState.STOPPED, f"signal {self._stop_signal}", rc=rc)
                return rc if rc != 0 else 128 + int(self._stop_signal or signal.SIGTERM)
            if ended is Ended.EXITED and self._gone_from_the_job(nodes, rc):
                rc = rc or 1                            # a stale copy asks, and stops
                ended = Ended.RELAUNCH if self._same_run() else ended
            elif rc == 0 and ended is Ended.EXITED:
                self._to(RunState.DONE, "the training finished", rc=0)
                clear_job_notes(ckpt, job, (PEER_DIR, WARM_DIR))
                return 0
            resume = resume_args(self.options, first=False)
            if ended in (Ended.EXITED, Ended.HUNG):
                answer = self._ask_in_place(rc, hung=ended is Ended.HUNG)
                if answer == ExitCode.STALE_COPY:
                    self._to(RunState.STALE, "Slurm requeued the job since this copy started",
                             rc=rc)
                    log.warning("job %s runs elsewhere since its requeue; this copy stops",
                                job, extra={"job": str(job)})
                    return rc
                if answer != 0:
                    break
            if self._stop_signal is not None:
                self._to(RunState.STOPPED, f"signal {self._stop_signal}", rc=rc)
                return 128 + int(self._stop_signal)
            self._stop_training()
            known, self._known_allocation = self._known_allocation, None  # read since SIGUSR2
            allocation = [n for n in known or self._allocation() if n not in self.benched]
            if not allocation:
                log.error("cannot read the allocation of job %s", job, extra={"job": str(job)})
                break
            cold = (self.pool.silent(allocation, self.environ) if self.pool and self.pool.proc
                    and ended is Ended.EXITED and want and len(allocation) > want else [])
            was, nodes = len(nodes), choose_nodes(allocation, nodes, want, avoid=cold)
            spare, where = "", "full size again" if len(nodes) > was else "the nodes left"
            if want is not None:
                spare = (f" ({len(allocation) - len(nodes)} spare(s) left)" if len(nodes) == want
                         else f" (spares used up: {len(nodes)} of {want} node(s))")
            self._to(RunState.RELAUNCHING, f"relaunch on {where}{spare}", nodes=nodes)
            log.warning("relaunching the training on %s in job %s%s", fold(nodes), job, spare,
                        extra={"job": str(job)})
        rc = rc if rc != 0 else 1
        self._hand_off(rc)
        return rc

    # ------------------------------------------------------------------ one launch
    def _launch_once(self, nodes: list[str], resume: Sequence[str]) -> tuple[int, Ended]:
        self.launches += 1
        self._relaunch_asked = False
        self._pool_on(nodes, nodes)          # a node taken in a moment ago: its server first
        env = self._launch_env(nodes)
        self._to(RunState.LAUNCHING, f"{self.settings.launcher} on {len(nodes)} node(s)",
                 nodes=nodes)
        argv = launch_argv(self.settings, nodes, resume)
        proc = self._start(nodes, argv, env)
        if self.monitor is not None:
            self.monitor.reset(len(nodes) * self.settings.slots)
        if self.stragglers is not None:
            self.stragglers.reset()
        if self.regainer is not None:
            self.regainer.launched()
        if self.grow is not None:
            self.grow.launched()
        self._to(RunState.RUNNING, f"launcher pid {proc.pid}", nodes=nodes)
        return self._wait(proc, nodes)

    def _start(self, nodes: list[str], argv: list[str], env: Mapping[str, str], *,
               own_step: bool = False) -> Launched:
        return self.peer.start(nodes, argv, env, own_step=own_step)

    def _wait(self, proc: Launched, nodes: list[str]) -> tuple[int, Ended]:
        """Until the launcher exits, slurmft asks for a relaunch, a rank hangs or the job
        is stopped. A launcher that is stopped gets TERM, then KILL after ``kill_grace``."""
        next_check = self.clock()
        next_pool_check = next_check + POOL_CHECK_S      # the ranks start first
        while True:
            rc = exit_code(proc.poll())
            if rc is not None:
                if self._stop_signal is not None:
                    return rc, Ended.STOP
                return rc, Ended.EXITED
            if self._stop_signal is not None:
                return exit_code(proc.wait()), Ended.STOP    # TERMed by Slurm too: it saves
            if self._relaunch_asked:
                if not self._lost_a_training_node(nodes):
                    continue
                return self._end(proc), Ended.RELAUNCH
            if self._save_asked:
                self._save_asked = False
                self._signal_training("USR1")
            if self.refill is not None:
                self._warm_up(self.refill.poll(), nodes)
                if self.grow is not None and self.grow.due():
                    log.warning("job %s: a node is back in the job and a checkpoint just "
                                "landed: relaunching on full size", self.options.job_id)
                    return self._end(proc), Ended.RELAUNCH
            if self.pool is not None and self.clock() >= next_pool_check:
                next_pool_check = self.clock() + POOL_CHECK_S
                self._pool_on(self.pool.dead_servers(), nodes, why="no warm pool server")
            if self.monitor is not None and self.clock() >= next_check:
                # heartbeats on shared storage: read every ~2 steps (<= 4/s), not every poll
                next_check = self.clock() + read_interval(self.monitor.step_time,
                                                          fixed=self.options.monitor_interval)
                stuck = self.monitor.poll()
                if stuck:
                    report_stuck(self.options.job_id, stuck, nodes, self.settings.slots)
                    return self._end(proc), Ended.HUNG
                if self.stragglers is not None and self._check_stragglers(nodes):
                    return self._end(proc), Ended.STRAGGLER
                if self.regainer is not None:
                    self._check_regain(nodes)
            self.sleep(self.options.poll_interval)

    def _warm_up(self, added: list[str], nodes: list[str]) -> None:
        """Spares taken into the job get a pool server; a shrunk run grows onto them."""
        if added and self.grow is not None and self.want and len(nodes) < self.want:
            self.grow.node_added()
        self._pool_on(added, nodes)

    def _pool_on(self, new: list[str], nodes: list[str], why: str = "") -> None:
        """A pool server on each of ``new`` that has none (taken in: never had one, or left
        the job since), or whose server is gone (``why``: a rank there found none)."""
        new = new if why or not self.pool else self.pool.never_started(new)
        if not new or self.pool is None or self.pool.proc is None:
            return
        if why:
            job = str(self.options.job_id)
            log.warning("job %s: %s on %s (killed?): a new one for the next launch", job, why,
                        fold(new), extra={"job": job})
        self.pool.start(new, {**self.environ, **slurm_env(new, 1)}, launch=lambda argv,
                        env: self._start([*nodes, *new], argv, env, own_step=True))

    def _lost_a_training_node(self, nodes: list[str]) -> bool:
        """After SIGUSR2: whether a node the training runs on left the job. A spare that was
        taken out (the watcher probes spares too) costs the training nothing."""
        self._relaunch_asked = False
        if not (self.options.spares or self.options.train_nodes):
            return True
        allocation = self._allocation()
        if allocation and set(nodes) <= set(allocation):
            log.warning("job %s: a spare left the job (%s spare(s) left); the training goes on",
                        self.options.job_id, len(set(allocation) - set(nodes)),
                        extra={"job": str(self.options.job_id)})
            return False
        self._known_allocation = allocation        # the relaunch need not read it again
        return True

    def _gone_from_the_job(self, nodes: Sequence[str], rc: int) -> list[str]:
        """After a launcher exited with ``rc``: those of ``nodes`` no longer in the job. Slurm
        ends a step whose node it set DOWN, often before the SIGUSR2, and its srun can exit 0:
        a lost node, not a finished training, unless every rank's heartbeat says it closed
        (the node left after the last step). Out already, the relaunch counted by whoever took
        it out: no in-place request (it would count the loss twice, and probe for seconds)."""
        if rc == 0 and self.monitor is not None and self.monitor.finished():
            return []
        allocation = self._allocation()
        gone = [n for n in nodes if allocation and n not in allocation]
        if gone:
            log.warning("job %s: the launcher exited with %s and %s left the job: a lost node%s; "
                        "relaunching without it", self.options.job_id, rc, fold(gone),
                        ", not the end of the training" if rc == 0 else "",
                        extra={"job": str(self.options.job_id), **failed_extra(gone[0])})
        return gone

    def _same_run(self) -> bool:
        """The job RUNNING and not requeued since this copy started (else it must ask)."""
        try:
            job = self.slurm.job(self.options.job_id)
        except SlurmFTError:
            return False
        return job.state == "RUNNING" and job.restart_count == self.options.restart_count

    def _world_nodes(self, allocation: list[str]) -> int | None:
        """How many nodes train (None: all of them); the rest of the allocation are spares.

        ``train_nodes`` (the job script passes it) holds across a requeue: a job requeued
        without its lost node (NumNodes one less) trains on all it got rather than keeping a
        spare idle and shrinking. Without it, ``len(allocation) - spares``."""
        o = self.options
        if o.train_nodes:
            if len(allocation) < o.train_nodes:
                log.warning("job %s holds %s node(s), fewer than the %s it trains on: no spare "
                            "left, the training runs on all of them", o.job_id,
                            len(allocation), o.train_nodes, extra={"job": str(o.job_id)})
            return min(o.train_nodes, len(allocation))
        if not (k := o.spares):
            return None
        if len(allocation) <= k:
            raise SlurmFTError(f"job {o.job_id} holds {len(allocation)} node(s): "
                               f"not enough for --spares {k} and at least one to train on "
                               f"(submit with --nodes N+{k})")
        return len(allocation) - k

    def _end(self, proc: Launched) -> int:
        """Stop a launcher: TERM, then KILL after the grace (it may wait for a node that is
        gone; its ranks are stopped through Slurm afterwards, wherever it runs)."""
        proc.terminate()
        deadline = self.clock() + self.options.kill_grace
        while proc.poll() is None and self.clock() < deadline:
            self.sleep(min(0.02, self.options.kill_grace))   # an ssh client ends at once
        if proc.poll() is None:
            proc.kill()
        return exit_code(proc.wait())

    def _check_stragglers(self, nodes: list[str]) -> bool:
        """Report the stragglers named now (ERROR line, ``Straggler`` event); True when one's
        node is to be swapped for a spare (``straggler_action="swap"`` and one is free)."""
        beats = getattr(self.monitor, "beats", None)
        assert self.stragglers is not None
        found = self.stragglers.observe(beats()) if beats is not None else ()
        swap = False
        job = self.options.job_id
        for s in found:
            node = s.host if s.host in nodes else rank_node(s.rank, nodes, self.settings.slots)
            spare, action, then = None, "report", "reported only (--straggler-action report)"
            if self.options.straggler_action == "swap":
                spare = self._free_spare(nodes) if node in nodes and not swap else None
                action = "swap" if spare else "no-spare"
                then = (f"swapping {node} for the spare {spare} (relaunch from the latest "
                        f"checkpoint)" if spare else "reported only: no free spare to swap it for")
            self.stragglers_named += 1
            extra = {"job": str(job), **failed_extra(node)}
            log.error("job %s: rank %s on %s is a straggler: busy %.1f ms per step, %.2fx the "
                      "median of its peers (%.1f ms) for %d steps (%.0f s, at step %d); %s", job,
                      s.rank, node, s.busy_ms, s.ratio, s.peers_ms, s.steps, s.seconds, s.step,
                      then, extra=extra)
            self.emit(Straggler(job_id=job, node=node, rank=s.rank, pid=s.pid,
                                busy_ms=round(s.busy_ms, 3), peers_ms=round(s.peers_ms, 3),
                                ratio=round(s.ratio, 3), streak_steps=s.steps, at_step=s.step,
                                seconds=round(s.seconds, 3), action=action, spare=spare,
                                count=self.stragglers_named, launch=self.launches or None))
            if spare:
                self.benched.append(node)
                swap = True
                log.warning("job %s: %s stays in the allocation, idle, and is never trained on "
                            "again in this job; a watcher or an operator should drain it "
                            "(slurmft run runs as the job's user and does not)", job, node,
                            extra=extra)
        return swap

    def _check_regain(self, nodes: list[str]) -> None:
        """Shrunk: log each look at whether full size pays (with its arithmetic); at the first
        checkpoint after it paid, hand the job to ``slurmft reschedule --regain`` (detached:
        it requeues this very job at full size; the training goes on until Slurm stops it)."""
        r, o = self.regainer, self.options
        seen = r.last
        beats = getattr(self.monitor, "beats", None)
        decision = r.check(nodes, beats() if beats is not None else {},
                           getattr(self.monitor, "step_time", None))
        job = o.job_id
        if decision is None:
            if r.last is not None and r.last is not seen:
                log.info("job %s: enough idle nodes to run on %s again (runs on %s); full "
                         "size %s: %s", job, r.last.nodes_full, r.last.nodes_now,
                         "pays, asking at the next checkpoint" if r.last.pays else "does not pay",
                         r.last.describe(), extra={"job": str(job)})
            return
        log.warning("job %s: requeueing at full size (%s node(s), runs on %s) after this "
                    "checkpoint: %s", job, decision.nodes_full, decision.nodes_now,
                    decision.describe(), extra={"job": str(job)})
        self._to(RunState.HANDING_OFF, f"regain full size: {decision.describe()}", nodes=nodes)
        argv = [*o.slurmft_cmd, "reschedule", str(job), "--regain", str(decision.nodes_full),
                "--checkpoint-dir", str(o.checkpoint_dir)]
        self.processes.detach(argv, self.environ, o.reschedule_log)

    def _free_spare(self, nodes: list[str]) -> str | None:
        """A node of the allocation that neither trains nor was benched (None: none)."""
        return next((n for n in self._allocation()
                     if n not in nodes and n not in self.benched), None)

    # ------------------------------------------------------------------ asking slurmft
    def _ask_in_place(self, rc: int, *, hung: bool) -> int:
        o = self.options
        why = "a rank hung" if hung else f"launcher exited with {rc}"
        self._to(RunState.ASKING, why, rc=rc)
        log.warning("%s in job %s; asking slurmft", why, o.job_id, extra={"job": str(o.job_id)})
        argv = [*o.slurmft_cmd, "reschedule", str(o.job_id), "--in-place",
                "--restart-count", str(o.restart_count), "--checkpoint-dir", str(o.checkpoint_dir)]
        return self.processes.call(argv, self.environ, o.reschedule_log, o.in_place_timeout)

    def _hand_off(self, rc: int) -> None:
        """Not recoverable in this allocation: a detached ``slurmft reschedule`` checks the
        nodes and requeues or resubmits (detached: it requeues this very job)."""
        o = self.options
        self._to(RunState.HANDING_OFF, "asking slurmft to reschedule the job", rc=rc)
        log.warning("launcher exited with %s in job %s; asking slurmft to reschedule", rc,
                    o.job_id, extra={"job": str(o.job_id)})
        argv = [*o.slurmft_cmd, "reschedule", str(o.job_id), "--settle", "30", "--restart-failed",
                "--restart-count", str(o.restart_count), "--nodes", self.environ.get(
                    "SLURM_JOB_NODELIST", ""), "--checkpoint-dir", str(o.checkpoint_dir),
                "--train-cmd", o.train_cmd_line or shlex.join(self.settings.train_cmd)]
        self.processes.detach(argv, self.environ, o.reschedule_log)

    # ------------------------------------------------------------------ Slurm
    def _stop_training(self) -> None:
        """Nothing of the last launch may train on: kill its job steps (every step but the
        batch script's), e.g. mpirun on a peer whose node failed drives its daemons on."""
        self._signal_training("KILL")

    def _signal_training(self, sig: str) -> None:
        job = self.options.job_id
        try:
            steps = [s for s in self.slurm.steps(job) if not self.pool or s not in self.pool.steps]
            if steps:
                self.slurm.signal_steps(job, steps, sig)
        except SlurmFTError as exc:
            log.warning("job %s: cannot send %s to the training's steps: %s", job, sig, exc,
                        extra={"job": str(job)})

    def _allocation(self) -> list[str]:
        try:
            nodes = self.slurm.allocation(self.options.job_id)
        except SlurmFTError as exc:
            log.error("job %s: cannot read the allocation: %s", self.options.job_id, exc,
                      extra={"job": str(self.options.job_id)})
            return []
        if self.pool is not None:        # a node that left the job lost its server with it
            self.pool.left_job(nodes)
        return nodes

    # ------------------------------------------------------------------ environment
    def _launch_env(self, nodes: list[str]) -> dict[str, str]:
        """This environment, the restart env file (read before every launch: e.g.
        CUDA_VISIBLE_DEVICES from ``slurmft inject mask-gpu``), the heartbeat settings and
        Slurm's view of the allocation now."""
        env = dict(self.environ)
        env["CHECKPOINT_PATH"] = str(self.options.checkpoint_dir)
        try:
            env.update(read_env_file(self.options.checkpoint_dir / RESTART_ENV))
        except SlurmFTError as exc:
            log.warning("%s; starting without it", exc, extra={"job": str(self.options.job_id)})
        env.update(self.options.heartbeat_env)
        env.update(slurm_env(nodes, self.settings.slots))
        if self.options.group is not None:
            env.update(self.options.group.env(nodes))
        if self.pool is not None and self.pool.proc is not None:
            env.update(self.pool.env(nodes))
        self.environ.update(slurm_env(nodes, self.settings.slots))
        return env

    def _to(self, state: RunState, reason: str, *, nodes: Sequence[str] = (),
            rc: int | None = None, launch: int | None = None,
            replica: int | None = None) -> None:
        """One state change: the event (``launch``: default, this supervisor's launches so
        far; ``replica``: per-step mode's group) and ``self.state``."""
        previous, self.state = self.state, state
        self.emit(RunTransition(job_id=self.options.job_id, state=state.value,
                                previous=previous.value, reason=reason, nodes=tuple(nodes),
                                launch=launch or self.launches or None, rc=rc, replica=replica))


def resume_args(options: RunOptions, *, first: bool) -> list[str]:
    """What a launch appends to the training command: for the first, ``initial_resume``;
    a relaunch resumes from the latest verified checkpoint. A torchft group (``group``) gets
    neither: it finds its own checkpoint (``replica-<id>``) or recovers live from a peer."""
    if options.group is not None:
        return []
    if first:
        return initial_resume(options.resume, options.checkpoint_dir)
    return ["--resume", str(options.checkpoint_dir)]
