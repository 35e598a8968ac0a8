"""``slurmft watch``: probe the nodes of running jobs every interval; reschedule on failure.

This is the fast path: active probing notices a dead node in about one probe timeout, long
before Slurm's SlurmdTimeout. The loop is bounded (``max_cycles``, a cool-down per job after a
refusal or an error, one probe fan-out per cycle for all jobs) and stops when ``stop`` is set
(the CLI sets it on SIGINT/SIGTERM).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from slurmft.core.errors import SlurmFTError
from slurmft.core.log import get_logger
from slurmft.core.nodeset import NodeSet
from slurmft.observe.events import Detected, Event, Recovered
from slurmft.probe.records import ProbeResult, Prober
from slurmft.recovery.policy import Outcome
from slurmft.recovery.rescheduler import Report, Rescheduler
from slurmft.recovery.suspicion import ConfirmPolicy, FailureTracker, too_many_failed
from slurmft.slurm.records import JobInfo, SlurmClient

log = get_logger(__name__)


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

    def to_dict(self) -> dict:
        return {"started": round(self.started, 3), "jobs": self.jobs,
                "failed": self.failed, "probe_s": round(self.probe_s, 3),
                "reports": [r.to_dict() for r in self.reports], "errors": self.errors,
                "list_error": self.list_error}


class Watcher:
    """Watches running jobs (``job_ids``, or all running jobs when empty)."""

    def __init__(self, client: SlurmClient, prober: Prober, rescheduler: Rescheduler, *,
                 job_ids: Sequence[int] = (), interval: float = 2.0, cooldown: float = 30.0,
                 stop: threading.Event | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_cycle: Callable[[CycleResult], None] | None = None,
                 confirm: ConfirmPolicy | None = None) -> None:
        if not interval > 0:
            raise SlurmFTError(f"watch interval must be > 0, not {interval}")
        self.client = client
        self.prober = prober
        self.rescheduler = rescheduler
        self.job_ids = set(job_ids)
        self.interval = interval
        self.cooldown = cooldown
        self.stop = stop or threading.Event()
        self.clock = clock
        self.on_cycle = on_cycle
        self._quiet_until: dict[int, float] = {}
        self.tracker = FailureTracker(confirm)
        self._requeued: dict[int, tuple[float, int | None]] = {}  # job -> (until, node count)
        # job -> (wall time of detection, failed nodes, the training's step to wait for (see
        # _step_to_wait_for)): to record recovery_seconds
        self._recovering: dict[int, tuple[float, frozenset[str], int | None]] = {}
        self.nudge_for = 120.0
        # job -> {node: health} of failed nodes the policy drained but left running (DRAIN):
        # not acted on again while their health stays the same
        self._left_running: dict[int, dict[str, str]] = {}

    def running_jobs(self) -> list[JobInfo]:
        all_jobs = self.client.jobs()
        self._nudge(all_jobs)
        self._note_recoveries(all_jobs)
        jobs = [j for j in all_jobs if j.state == "RUNNING" and j.nodes]
        if self.job_ids:
            jobs = [j for j in jobs if j.job_id in self.job_ids]
        now = self.clock()
        return [j for j in jobs if self._quiet_until.get(j.job_id, 0.0) <= now]

    def _nudge(self, jobs: Sequence[JobInfo]) -> None:
        """Jobs we requeued: if Slurm applies its requeue delay once they finish COMPLETING
        (a dead batch host can keep them COMPLETING for seconds) or undoes the shrink, nudge
        them (Rescheduler.nudge). Done here, once per cycle, so the loop never blocks."""
        now = self.clock()
        by_id = {j.job_id: j for j in jobs}
        for jid, (until, target) in list(self._requeued.items()):
            job = by_id.get(jid)
            if job is None or job.state == "RUNNING" or job.has_ended or now > until:
                del self._requeued[jid]
            else:
                self.rescheduler.nudge(job, target)

    def _note_recoveries(self, jobs: Sequence[JobInfo]) -> None:
        """Audit ``recovered`` (with recovery_seconds, detection -> the training running
        again without the failed nodes) for jobs this watcher rescheduled: the job is RUNNING
        without them and, for a job whose training runs in job steps, a step of the restarted
        training has started (a relaunched job never stops running; its new mpirun or srun
        starts a step)."""
        by_id = {j.job_id: j for j in jobs}
        for jid, (detected, failed, wait_step) in list(self._recovering.items()):
            job = by_id.get(jid)
            if job is None or job.has_ended:
                del self._recovering[jid]
                continue
            if job.state != "RUNNING" or failed & set(job.nodes):
                continue
            step = None
            if wait_step is not None:
                started = [s for s in self._steps_now(jid) or () if s > wait_step]
                if not started:                 # not yet, or Slurm cannot say this cycle
                    continue
                step = f"{jid}.{started[0]}"
            del self._recovering[jid]
            self._audit(Recovered(job_id=jid, nodes=tuple(job.nodes), step=step,
                                  recovery_seconds=round(time.time() - detected, 3)))

    def _steps_now(self, job_id: int) -> list[int] | None:
        """The job's numbered steps (None when Slurm cannot say)."""
        try:
            return self.client.steps(job_id)
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
            return res
        res.jobs = [j.job_id for j in jobs]
        names = list(NodeSet(n for j in jobs for n in j.nodes))
        health: dict[str, ProbeResult] = {}
        if names:
            t0 = self.clock()
            health = self._probe_confirmed(names)
            res.probe_s = self.clock() - t0
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
                self._quiet_until[job.job_id] = self.clock() + self.cooldown
                log.error("watch: job %s: %s", job.job_id, msg, extra={"job": str(job.job_id)})
                continue
            log.warning("watch: job %s: failed node(s) %s: %s", job.job_id, ",".join(failed),
                        "; ".join(health[n].reason for n in failed),
                        extra={"job": str(job.job_id)})
            detected = self._audit_detection(job, failed, health)
            steps_before = self._steps_now(job.job_id)   # before a relaunch can add one
            try:
                report = self.rescheduler.reschedule(job.job_id, health=health)
                res.reports.append(report)
                self.tracker.forget(failed)
                if report.decision.outcome in (Outcome.DRAIN, Outcome.ALREADY_DONE):
                    self._left_running.setdefault(job.job_id, {}).update(
                        {n: health[n].health.value for n in failed})
                if report.decision.changes_anything:
                    self._recovering[job.job_id] = (
                        detected, frozenset(failed),
                        self._step_to_wait_for(report.decision.outcome, steps_before))
                if report.decision.changes_anything and report.state_after != "RUNNING":
                    self._requeued[job.job_id] = (self.clock() + self.nudge_for,
                                                  report.decision.num_nodes)
            except SlurmFTError as exc:
                res.errors[job.job_id] = str(exc)
                self._quiet_until[job.job_id] = self.clock() + self.cooldown
                log.error("watch: job %s not rescheduled: %s (next try in %gs)", job.job_id,
                          exc, self.cooldown, extra={"job": str(job.job_id)})
        return res

    def _not_left_running(self, job_id: int, failed: Sequence[str],
                          health: dict[str, ProbeResult]) -> list[str]:
        """``failed`` without the nodes already drained and left running for this job whose
        health has not changed since (a node that gets worse is acted on again)."""
        left = self._left_running.get(job_id, {})
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

    def _probe_confirmed(self, names: Sequence[str]) -> dict[str, ProbeResult]:
        """Probe ``names``; re-probe suspects at once until each is confirmed or cleared
        (a dead host costs ``confirm`` probe timeouts, not ``confirm`` intervals)."""
        health = dict(self.prober.probe(names))
        self.tracker.observe(health, now=time.time())
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
        log.info("watch: %s every %gs", f"jobs {sorted(self.job_ids)}" if self.job_ids
                 else "all running jobs", self.interval)
        while not self.stop.is_set():
            t0 = self.clock()
            res = self.cycle()
            self.last = res
            n += 1
            if self.on_cycle:
                self.on_cycle(res)
            if once or (max_cycles is not None and n >= max_cycles):
                break
            self.stop.wait(max(0.0, self.interval - (self.clock() - t0)))
        log.info("watch: stopped after %d cycle(s)", n)
        return n
