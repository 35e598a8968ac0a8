"""``slurmft watch``: probe the nodes of running jobs every interval; reschedule on failure.

This is the fast path: active probing notices a dead node in about one probe timeout, long
before Slurm's SlurmdTimeout. The loop is bounded (``max_cycles``, a cool-down per job after a
refusal or an error, one probe fan-out per cycle for all jobs) and stops when ``stop`` is set
(the CLI sets it on SIGINT/SIGTERM).

Slurm load per cycle does not grow with the number of jobs: every read goes through one
``CachedSlurmClient`` (``slurm.view``), refreshed once at the start of each cycle and handed
to the rescheduler: one ``squeue --json``, at most one ``sinfo`` and at most one step listing
per cycle, plus one ``scontrol show job`` per job acted on (the re-read under its lock).
Nothing waits for a requeued job inside a cycle; the next cycles nudge and follow it.

Several watchers can split a site (``owner``, ``slurmft watch --shard I/N --partition P``,
``recovery.shard``): each looks only at the jobs it owns. Watchers that overlap (or one that
takes over a dead one's shard) never act twice on a job: every action runs under the job's
lock in the shared state directory and starts from a re-read of the job (``Rescheduler``).
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from slurmft.checkpoint.peerloss import PEER_LOST_SIGNAL_NAME
from slurmft.core.errors import SlurmFTError
from slurmft.core.log import failed_extra, failure_level, get_logger
from slurmft.core.nodeset import NodeSet
from slurmft.observe.events import Detected, Event, Recovered
from slurmft.probe.records import Health, ProbeResult, Prober
from slurmft.recovery.policy import HELD_REASONS, Outcome, is_relaunchable, replica_run
from slurmft.recovery.report import Report
from slurmft.recovery.rescheduler import Rescheduler
from slurmft.recovery.shard import Ownership
from slurmft.recovery.suspicion import ConfirmPolicy, FailureTracker, too_many_failed
from slurmft.slurm.records import JobInfo, SlurmClient
from slurmft.slurm.view import CachedSlurmClient

log = get_logger(__name__)


class JobPhase(enum.Enum):
    """Where the watcher stands with one job (``JobWatch.phase``)."""

    WATCHED = "watched"            # probed every cycle
    COOLING_DOWN = "cooling-down"  # a refusal or an error: not probed until the cool-down ends
    REQUEUED = "requeued"          # requeued by this watcher: nudged until it runs again
    RECOVERING = "recovering"      # acted on: waiting for its training to run again


@dataclass(frozen=True)
class Recovery:
    """A failure this watcher acted on, until the job's training runs again."""

    detected: float                # wall time the failure was confirmed
    failed: frozenset[str]         # the nodes taken out
    wait_step: int | None          # a job step id to exceed (see Watcher._step_to_wait_for)


@dataclass
class JobWatch:
    """The watcher's record of one job. Transitions (``Watcher`` makes them):

    WATCHED --refused/error--> COOLING_DOWN --cool-down over--> WATCHED (or RECOVERING)
    WATCHED --acted, job still running--> RECOVERING --training runs again--> WATCHED
    WATCHED --acted, job requeued--> REQUEUED --running, or nudge deadline--> RECOVERING
    any --the job ended or left the queue--> record dropped
    """

    job_id: int
    phase: JobPhase = JobPhase.WATCHED
    until: float = 0.0                     # COOLING_DOWN: its end; REQUEUED: stop nudging
    target_nodes: int | None = None        # REQUEUED: the node count it was requeued with
    recovery: Recovery | None = None       # set from an action until the training runs again
    # failed nodes the policy drained but left running (DRAIN), by health: not acted on
    # again while their health stays the same
    left_running: dict[str, str] = field(default_factory=dict)

    def settle(self) -> None:
        """Leave COOLING_DOWN or REQUEUED for what is still pending."""
        self.phase = JobPhase.RECOVERING if self.recovery else JobPhase.WATCHED
        self.until, self.target_nodes = 0.0, None


@dataclass
class CycleResult:
    """What one watch cycle saw and did."""

    started: float
    jobs: list[int] = field(default_factory=list)
    failed: dict[int, list[str]] = field(default_factory=dict)
    reports: list[Report] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)   # job id -> why not rescheduled
    probe_s: float = 0.0
    list_error: str = ""          # the jobs could not be listed (squeue failed): nothing seen
    phases: dict[int, str] = field(default_factory=dict)   # job id -> JobPhase value, after
    slurm_reads: dict[str, int] = field(default_factory=dict)  # ViewReads of the cycle
    not_owned: int = 0            # running jobs left to other watchers (--shard/--partition)
    # job id -> its replica group peers told that it was lost (per-step mode, group jobs)
    peers_told: dict[int, list[int]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"started": round(self.started, 3), "jobs": self.jobs,
                "failed": self.failed, "probe_s": round(self.probe_s, 3),
                "peers_told": self.peers_told,
                "reports": [r.to_dict() for r in self.reports], "errors": self.errors,
                "list_error": self.list_error, "phases": self.phases,
                "slurm_reads": self.slurm_reads, "not_owned": self.not_owned}


#: The most echo requests a second the pings between cycles send (a site of 10,000 nodes is
#: pinged every 5 s between its cycles, not every ``ping_every``).
MAX_IDLE_PINGS_PER_S = 2000
#: Cycles a host is left out of those pings after a miss its probe did not confirm.
QUIET_CYCLES = 30


def idle_ping_period(ping_every: float, hosts: int) -> float:
    """Seconds between the pings of ``hosts`` between cycles (0: none)."""
    return max(ping_every, hosts / MAX_IDLE_PINGS_PER_S) if ping_every > 0 else 0.0


class Watcher:
    """Watches running jobs (``job_ids``, or all running jobs when empty).

    ``client``: a Slurm client, wrapped in a ``CachedSlurmClient`` (``self.view``) unless it
    is one already; the view is refreshed once per cycle and shared with the rescheduler.
    ``owner``: the jobs this watcher owns (a shard of the original job ids and/or partitions;
    default all); the others are neither probed nor acted on."""

    def __init__(self, client: SlurmClient, prober: Prober, rescheduler: Rescheduler, *,
                 job_ids: Sequence[int] = (), interval: float = 2.0, cooldown: float = 30.0,
                 stop: threading.Event | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_cycle: Callable[[CycleResult], None] | None = None,
                 confirm: ConfirmPolicy | None = None,
                 owner: Ownership | None = None,
                 pinger: Callable[[Sequence[str]], list[str]] | None = None,
                 ping_every: float = 0.0) -> None:
        if not interval > 0:
            raise SlurmFTError(f"watch interval must be > 0, not {interval}")
        self.client = client
        self.view = client if isinstance(client, CachedSlurmClient) else CachedSlurmClient(client)
        self.prober = prober
        self.rescheduler = rescheduler
        self.job_ids = set(job_ids)
        self.interval = interval
        self.cooldown = cooldown
        self.stop = stop or threading.Event()
        self.clock = clock
        self.on_cycle = on_cycle
        self.tracker = FailureTracker(confirm)
        self.nudge_for = 120.0
        self.watches: dict[int, JobWatch] = {}      # job id -> the watcher's record of it
        self.owner = owner or Ownership()
        self._originals: dict[int, int] = {}        # restart job id -> its chain's first id
        self._not_owned = 0
        self._held: list[JobInfo] = []              # relaunchable jobs requeued held
        self._listing: list[JobInfo] = []           # the cycle's one job listing
        self.pinger, self.ping_every = pinger, ping_every   # liveness between cycles
        self._probed: list[str] = []                # the last cycle's healthy nodes
        self._early: set[str] = set()               # missed a ping: this cycle came early
        self._quiet: dict[str, int] = {}            # host -> cycles left without pings

    def _watch(self, job_id: int) -> JobWatch:
        return self.watches.setdefault(job_id, JobWatch(job_id))

    def running_jobs(self) -> list[JobInfo]:
        """The running jobs to probe this cycle; moves every known job on first (drops ended
        ones, ends cool-downs, nudges requeued ones, records recoveries). Starts the cycle:
        the view's one job listing."""
        all_jobs = self._listing = self.view.refresh().jobs
        self._advance(all_jobs)
        self._held = [j for j in all_jobs if j.is_pending and j.reason in HELD_REASONS
                      and is_relaunchable(j)
                      and (not self.job_ids or j.job_id in self.job_ids)]
        jobs = [j for j in all_jobs if j.state == "RUNNING" and j.nodes]
        if self.job_ids:
            jobs = [j for j in jobs if j.job_id in self.job_ids]
        owned = self.owned(jobs)
        self._not_owned = len(jobs) - len(owned)
        return [j for j in owned if self._watch(j.job_id).phase is not JobPhase.COOLING_DOWN]

    def owned(self, jobs: Sequence[JobInfo]) -> list[JobInfo]:
        """``jobs`` this watcher owns (``owner``). A shard hashes each job's ORIGINAL id, so a
        restart job stays with its chain's watcher: the aliases are read with one listing of
        the state directory per cycle, and an alias once read is kept (it never changes)."""
        if self.owner.everything:
            return list(jobs)
        if self.owner.needs_original_ids:
            ids = {j.job_id for j in jobs}
            self._originals = {j: o for j, o in self._originals.items() if j in ids}
            unknown = [j for j in ids if j not in self._originals]
            if unknown:
                found = self.rescheduler.store.original_ids(unknown)
                self._originals.update({j: o for j, o in found.items() if o != j})
        return [j for j in jobs
                if self.owner.owns(self._originals.get(j.job_id, j.job_id), j.partition)]

    def _advance(self, jobs: Sequence[JobInfo]) -> None:
        """One step of every job's state machine (JobWatch), once per cycle, never blocking."""
        now = self.clock()
        by_id = {j.job_id: j for j in jobs}
        for jid, watch in list(self.watches.items()):
            job = by_id.get(jid)
            if job is None or job.has_ended:
                del self.watches[jid]
                continue
            if watch.phase is JobPhase.COOLING_DOWN and now >= watch.until:
                watch.settle()
            if watch.phase is JobPhase.REQUEUED:
                if job.state == "RUNNING" or now > watch.until:
                    watch.settle()
                else:
                    # Slurm may apply its requeue delay once the job finishes COMPLETING (a
                    # dead batch host can keep it COMPLETING for seconds) or undo the shrink.
                    self.rescheduler.nudge(job, watch.target_nodes)
            if watch.recovery is not None:
                self._note_recovery(job, watch)

    def _note_recovery(self, job: JobInfo, watch: JobWatch) -> None:
        """Audit ``recovered`` (with recovery_seconds, detection -> the training running
        again without the failed nodes) for a job this watcher rescheduled: the job is RUNNING
        without them and, for a job whose training runs in job steps, a step of the restarted
        training has started (a relaunched job never stops running; its new mpirun or srun
        starts a step)."""
        rec = watch.recovery
        if job.state != "RUNNING" or rec.failed & set(job.nodes):
            return
        step = None
        if rec.wait_step is not None:
            started = [s for s in self._steps_now(job.job_id) or () if s > rec.wait_step]
            if not started:                 # not yet, or Slurm cannot say this cycle
                return
            step = f"{job.job_id}.{started[0]}"
        watch.recovery = None
        if watch.phase is JobPhase.RECOVERING:
            watch.phase = JobPhase.WATCHED
        self._audit(Recovered(job_id=job.job_id, nodes=tuple(job.nodes), step=step,
                              recovery_seconds=round(time.time() - rec.detected, 3)))

    def _steps_now(self, job_id: int) -> list[int] | None:
        """The job's numbered steps (None when Slurm cannot say), from the cycle's one
        listing of every job's steps."""
        try:
            return self.view.steps(job_id)
        except SlurmFTError as exc:
            log.debug("watch: steps of job %s: %s", job_id, exc)
            return None

    @staticmethod
    def _step_to_wait_for(outcome: Outcome, steps_before: list[int] | None) -> int | None:
        """What marks the training running again, as a step id to exceed: a relaunch starts a
        step after those it had (the newest before), a requeued job's new run numbers its
        steps from 0 (-1: any step). None: look at the job alone (DRAIN leaves the training
        running; a job whose training runs in no step never shows one)."""
        if not steps_before or outcome is Outcome.DRAIN:
            return None
        return max(steps_before) if outcome is Outcome.RELAUNCH else -1

    def cycle(self) -> CycleResult:
        """One pass: list running jobs, probe all their nodes at once, reschedule failures."""
        res = CycleResult(started=time.time())
        try:
            jobs = self.running_jobs()
        except SlurmFTError as exc:
            if self.stop.is_set():          # interrupted by SIGTERM/SIGINT (a child got it too)
                return res
            log.error("watch: cannot list jobs: %s", exc)
            res.list_error = str(exc)
            res.slurm_reads = self.view.reads.to_dict()
            return res
        res.jobs = [j.job_id for j in jobs]
        res.not_owned = self._not_owned
        names = list(NodeSet(n for j in jobs for n in j.nodes))
        health: dict[str, ProbeResult] = {}
        if names:
            t0 = self.clock()
            health = self._probe_confirmed(
                names, on_first=lambda first: self._tell_peers_of_cut_hosts(jobs, first, res))
            res.probe_s = self.clock() - t0
        # pinged between cycles: the hosts found healthy (a failed one is this cycle's case)
        self._probed = self._to_ping(names, health)
        policy = self.tracker.policy
        for job in jobs:
            failed = self._not_left_running(job.job_id, self.tracker.confirmed(job.nodes), health)
            if not failed:
                continue
            res.failed[job.job_id] = failed
            if too_many_failed(job.nodes, failed, policy.max_failed_fraction):
                msg = (f"{len(failed)} of {len(job.nodes)} nodes look failed at once "
                       f"({', '.join(f'{n}: {health[n].reason}' for n in failed)}); more likely "
                       "the prober's side (network, load) than the nodes: not rescheduling. "
                       "Check with `slurmft probe`; raise --max-failed-fraction to override")
                res.errors[job.job_id] = msg
                self._cool_down(job.job_id)
                log.error("watch: job %s: %s", job.job_id, msg,
                          extra={"job": str(job.job_id), **failed_extra(failed)})
                continue
            log.log(failure_level(health[n].health for n in failed),
                    "watch: job %s: failed node(s) %s: %s", job.job_id, ",".join(failed),
                    "; ".join(health[n].reason for n in failed),
                    extra={"job": str(job.job_id), **failed_extra(failed)})
            if job.job_id not in res.peers_told:     # told at the first probe already
                self._tell_peers(job, failed, res)
            self._act(job, failed, health, res)
        self._finish_regains(res)
        res.phases = {jid: w.phase.value for jid, w in self.watches.items()}
        res.slurm_reads = self.view.reads.to_dict()
        return res

    def _tell_peers_of_cut_hosts(self, jobs: Sequence[JobInfo], health: dict[str, ProbeResult],
                                 res: CycleResult) -> None:
        """Per-step mode, one job per replica group: a host that stopped answering ping keeps
        its peers' collective waiting for every second the re-probes take to confirm it. Tell
        the peers at the first failed probe instead (a suspect that then clears costs each
        of them one step). Only a host cut off (no ping): a host that answers ping but not
        SSH sends resets, and its peers are told when it is confirmed, as before. Not when
        more than ``max_failed_fraction`` of the hosts look cut off at once (the prober's
        side, more likely), nor for a host already drained and left running for its job."""
        cut = {h for h in self.tracker.suspects()
               if h in health and health[h].health is Health.UNREACHABLE}
        if not cut or len(cut) / len(health) > self.tracker.policy.max_failed_fraction:
            return
        for job in jobs:
            if not replica_run(job):
                continue
            lost = self._not_left_running(job.job_id, [n for n in job.nodes if n in cut], health)
            if lost:
                self._tell_peers(job, lost, res, why="stopped answering ping")

    def _tell_peers(self, job: JobInfo, failed: Sequence[str], res: CycleResult,
                    why: str = "lost") -> None:
        """Per-step mode, one job per replica group: the other groups of ``job``'s run are
        blocked in the step's collective with the lost one until their timeout (a host cut
        off sends no reset). Send their training steps ``PEER_LOST_SIGNAL`` so they end it
        now (``slurmft.checkpoint.peerloss``) and train on without it; before the
        reschedule, which takes seconds. A peer that already moved on loses one step."""
        run = replica_run(job)
        if not run:
            return
        peers = [j for j in self._listing if j.job_id != job.job_id and j.state == "RUNNING"
                 and j.user_id == job.user_id and replica_run(j) == run]
        client = self.rescheduler.client
        for peer in peers:
            steps = self._steps_now(peer.job_id)
            if not steps:
                continue
            try:
                client.signal_steps(peer.job_id, steps, PEER_LOST_SIGNAL_NAME)
            except SlurmFTError as exc:
                log.warning("watch: job %s: cannot tell its peer job %s of the loss: %s",
                            job.job_id, peer.job_id, exc, extra={"job": str(job.job_id)})
                continue
            res.peers_told.setdefault(job.job_id, []).append(peer.job_id)
        told = res.peers_told.get(job.job_id, [])
        if told:
            log.info("watch: job %s %s %s: told its replica peers %s to end the step "
                     "(SIG%s)", job.job_id, why, ",".join(failed), ",".join(map(str, told)),
                     PEER_LOST_SIGNAL_NAME, extra={"job": str(job.job_id)})

    def _finish_regains(self, res: CycleResult) -> None:
        """A job's supervisor asked for its size back (``reschedule --regain``) and died with
        the requeue-hold before resizing and releasing it: finish it. Only jobs whose retry
        record holds a regain in flight: a job held for any other reason is left held."""
        for job in self.owned(self._held):
            record = self.rescheduler.store.load(job.job_id, read_only=True)
            if not record.regain_nodes:
                continue
            try:
                report = self.rescheduler.reschedule(job.job_id, view=self.view)
            except SlurmFTError as exc:
                res.errors[job.job_id] = str(exc)
                log.error("watch: job %s: cannot finish its regain: %s", job.job_id, exc,
                          extra={"job": str(job.job_id)})
                continue
            res.reports.append(report)

    def _act(self, job: JobInfo, failed: list[str], health: dict[str, ProbeResult],
             res: CycleResult) -> None:
        """Reschedule ``job`` for its confirmed ``failed`` nodes and move its JobWatch on."""
        detected = self._audit_detection(job, failed, health)
        steps_before = self._steps_now(job.job_id)   # before a relaunch can add one
        watch = self._watch(job.job_id)
        try:
            report = self.rescheduler.reschedule(job.job_id, health=health, view=self.view)
        except SlurmFTError as exc:
            res.errors[job.job_id] = str(exc)
            self._cool_down(job.job_id)
            log.error("watch: job %s not rescheduled: %s (next try in %gs)", job.job_id,
                      exc, self.cooldown, extra={"job": str(job.job_id), **failed_extra(failed)})
            return
        res.reports.append(report)
        self.tracker.forget(failed)
        decision = report.decision
        if decision.outcome in (Outcome.DRAIN, Outcome.ALREADY_DONE):
            watch.left_running.update({n: health[n].health.value for n in failed})
        if not decision.changes_anything:
            return
        watch.recovery = Recovery(detected, frozenset(failed),
                                  self._step_to_wait_for(decision.outcome, steps_before))
        if report.state_after != "RUNNING":
            watch.phase, watch.until = JobPhase.REQUEUED, self.clock() + self.nudge_for
            watch.target_nodes = decision.num_nodes
        else:
            watch.phase = JobPhase.RECOVERING

    def _cool_down(self, job_id: int) -> None:
        watch = self._watch(job_id)
        watch.phase, watch.until = JobPhase.COOLING_DOWN, self.clock() + self.cooldown

    def _not_left_running(self, job_id: int, failed: Sequence[str],
                          health: dict[str, ProbeResult]) -> list[str]:
        """``failed`` without the nodes already drained and left running for this job whose
        health has not changed since (a node that gets worse is acted on again)."""
        left = self._watch(job_id).left_running
        for node in list(left):
            if node not in health or left[node] != health[node].health.value:
                del left[node]
        return [n for n in failed if n not in left]

    def _audit_detection(self, job: JobInfo, failed: Sequence[str],
                         health: dict[str, ProbeResult]) -> float:
        """The moment a failure is confirmed, before any action (timelines start here).
        ``detection_seconds`` is an upper bound: time since the nodes last probed healthy."""
        now = time.time()
        self._audit(Detected(job_id=job.job_id, nodes=tuple(failed),
                             health={n: health[n].to_dict() for n in failed},
                             detection_seconds=self.tracker.detection_bound(failed, now)))
        return now

    def _audit(self, event: Event) -> None:
        try:
            self.rescheduler.store.audit(event)
        except SlurmFTError as exc:   # the audit must never stop the recovery
            log.warning("watch: cannot write the audit record: %s", exc)

    def _probe_confirmed(self, names: Sequence[str], on_first: Callable[[dict[str, ProbeResult]],
                         None] | None = None) -> dict[str, ProbeResult]:
        """Probe ``names``; re-probe suspects at once until each is confirmed or cleared
        (a dead host costs ``confirm`` probe timeouts, not ``confirm`` intervals).
        ``on_first`` sees the first probe's results, before any re-probe."""
        health = dict(self.prober.probe(names))
        self.tracker.observe(health, now=time.time())
        if on_first is not None:
            on_first(health)
        for _ in range(self.tracker.policy.confirm - 1):
            suspects = [n for n in self.tracker.suspects() if n in health]
            if not suspects or self.stop.is_set():
                break
            log.info("watch: re-probing suspect(s) %s: %s", ",".join(suspects),
                     "; ".join(health[n].reason for n in suspects))
            again = dict(self.prober.probe(suspects))
            self.tracker.observe(again)
            health.update(again)
        return health

    def run(self, *, once: bool = False, max_cycles: int | None = None) -> int:
        """Loop until stopped; returns the number of cycles run."""
        n = 0
        self.last: CycleResult | None = None
        log.info("watch: %s (%s) every %gs", f"jobs {sorted(self.job_ids)}" if self.job_ids
                 else "all running jobs", self.owner.describe(), self.interval)
        while not self.stop.is_set():
            t0 = self.clock()
            res = self.cycle()
            self.last = res
            n += 1
            if self.on_cycle:
                self.on_cycle(res)
            if once or (max_cycles is not None and n >= max_cycles):
                break
            self._between_cycles(t0 + self.interval)
        log.info("watch: stopped after %d cycle(s)", n)
        return n

    def _to_ping(self, names: Sequence[str], health: dict[str, ProbeResult]) -> list[str]:
        """The hosts to ping before the next cycle: those found healthy, but a host whose
        missed ping this cycle's probe did not confirm (ICMP dropped or rate-limited there)
        for ``QUIET_CYCLES`` cycles: it would start a cycle early again and again."""
        for h in self._early:
            if h in health and not health[h].health.is_failed:
                self._quiet[h] = QUIET_CYCLES
                log.info("watch: %s missed a ping but passed the probe: not pinged between "
                         "the next %d cycles", h, QUIET_CYCLES)
        self._early = set()
        self._quiet = {h: n - 1 for h, n in self._quiet.items() if n > 1}
        return [h for h in names if h in health and not health[h].health.is_failed
                and h not in self._quiet]

    def _between_cycles(self, deadline: float) -> None:
        """Wait until ``deadline`` (the next cycle). With a ``pinger``, ping the last cycle's
        nodes every ``ping_every`` seconds meanwhile (never more than ``MAX_IDLE_PINGS_PER_S``
        echo requests a second): a host that misses its echo starts the next cycle at once,
        the miss counting as its first failed probe, so that the cycle's own probe confirms
        it. A host cut off just after a cycle is found a ping wait later, not an interval."""
        every = idle_ping_period(self.ping_every, len(self._probed))
        while not self.stop.is_set():
            left = deadline - self.clock()
            if left <= 0:
                return
            if not (self.pinger and every and self._probed):
                self.stop.wait(left)
                return
            if self.stop.wait(min(every, left)) or self.clock() >= deadline:
                return
            try:
                silent = self.pinger(self._probed)
            except (OSError, SlurmFTError) as exc:
                log.warning("watch: cannot ping between cycles (%s): waiting for the next "
                            "cycle", exc)
                self.pinger = None
                continue
            if silent:
                self._early = set(silent)
                why = "no echo reply between probe cycles"
                self.tracker.observe({h: ProbeResult(h, Health.UNREACHABLE, why) for h in silent})
                log.info("watch: %s missed a ping between cycles: probing now", ",".join(silent))
                return
