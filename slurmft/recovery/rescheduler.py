"""The rescheduler: read the job, probe its nodes, decide (pure policy), act, record, report.

Every dependency comes in through the constructor (Slurm client, prober, state store, the
render function), so unit tests run it against a fake Slurm and a scripted prober.

Safety:
  * one reschedule per job at a time (file lock in ``state_dir``, keyed by the original job id);
    the job is read again under the lock, so a second caller sees the first one's work and
    does not requeue twice;
  * a non-root caller may act only on their own jobs (PermissionDeniedError);
  * every action is logged and appended to ``state_dir/audit.jsonl``;
  * ``dry_run`` runs nothing that changes Slurm and writes no state: each planned command's
    exact argv is reported instead (built by the same argv builders the real client uses).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shlex
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from slurmft.core import nodeset as hosts
from slurmft.core.nodeset import NodeSet
from slurmft.core.config import RescheduleConfig
from slurmft.core.errors import (
    PermissionDeniedError,
    PolicyError,
    SlurmCommandError,
    SlurmFTError,
)
from slurmft.core.log import failed_extra, failure_level, get_logger
from slurmft.observe.events import Acted, Decided
from slurmft.probe.records import Health, ProbeResult, Prober
from slurmft.recovery.actions import (
    Action,
    DownNodes,
    NodeAction,
    SubmitRestart,
    UpdateJob,
    holds_job,
    requeues_job,
    starts_job,
    with_kill_steps,
)
from slurmft.recovery.policy import (
    HELD_REASONS,
    Decision,
    History,
    Outcome,
    PolicyConfig,
    candidate_nodes,
    decide,
    drain_reason,
    full_size,
    needs_probe,
    pinned_params,
    regain_candidates,
    shrink_params,
)
from slurmft.recovery.report import Report
from slurmft.recovery.scripts import job_context, restart_context  # noqa: F401 (job_context: for callers that import it from here)
from slurmft.recovery.state import Attempt, RetryRecord, StateStore
from slurmft.render import render as default_render
from slurmft.slurm import commands as scli
from slurmft.slurm.records import JobInfo, SlurmClient
from slurmft.slurm.view import CachedSlurmClient

log = get_logger(__name__)
T = TypeVar("T")

#: States in which the job is still winding down; ``settle`` waits them out.
TRANSIENT_STATES = frozenset({"COMPLETING", "CONFIGURING", "REQUEUED", "RESIZING"})
#: How long an update refused for a held job waits for it to finish COMPLETING, then again.
HELD_UPDATE_SETTLE_S = 15.0


def poll_delays(first: float = 0.5, factor: float = 1.5, cap: float = 5.0) -> Iterator[float]:
    """Pauses between two reads of a job we wait for: 0.5 s, then 1.5 times longer each time,
    at most 5 s (each read lists every job: a tight loop would load slurmctld with the
    cluster's size). Hand-written rather than tenacity (whose one owner is checkpoint.upload):
    this paces a state poll, it retries nothing that failed."""
    delay = first
    while True:
        yield delay
        delay = min(cap, delay * factor)


def ended_normally(job: JobInfo, decision: Decision) -> bool:
    """The job completed (exit code 0) and nothing is to be done: the epilog hands every
    ending job to ``reschedule``, and such a job leaves no line in the audit log."""
    return (job.state == "COMPLETED" and decision.outcome is Outcome.NOTHING
            and not decision.actions)


def slurm_health(client: Any, names: Sequence[str]) -> dict[str, ProbeResult]:
    """Nodes Slurm itself already reports DOWN or NOT_RESPONDING count as failed too."""
    out: dict[str, ProbeResult] = {}
    if not names:
        return out
    try:
        infos = client.nodes(list(names))
    except SlurmFTError as exc:
        log.warning("cannot read node states from Slurm: %s", exc)
        return out
    for info in infos:
        if info.is_down or "NOT_RESPONDING" in info.flags:
            out[info.name] = ProbeResult(info.name, Health.UNREACHABLE,
                                         reason=f"slurm reports {info.state}"
                                         f"{'+' + '+'.join(info.flags) if info.flags else ''}")
    return out


class Rescheduler:
    """Composes client, prober, policy, state and templates. No global state."""

    def __init__(self, client: SlurmClient, prober: Prober, store: StateStore,
                 config: RescheduleConfig, *, uid: int | None = None, dry_run: bool = False,
                 render: Callable[[str, Mapping[str, Any]], str] = default_render,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 slurmft_cmd: Sequence[str] = (), start_wait: float = 0.0,
                 wall: Callable[[], float] = time.time) -> None:
        # Every Slurm write goes through the recorder: its argv for the audit log and the
        # report, or, in a dry run, instead of running it.
        self.client, self.recorder = client.recording(dry_run=dry_run)
        self.prober = prober
        self.store = store
        self.config = config
        self.uid = os.getuid() if uid is None else uid
        self.dry_run = dry_run
        self.render = render
        self.sleep = sleep
        self.clock = clock
        self.slurmft_cmd = list(slurmft_cmd)
        self.start_wait = start_wait
        self.wall = wall

    # ------------------------------------------------------------------ checks
    def check_permission(self, job: JobInfo) -> None:
        """Root may act on any job, and so may a Slurm operator or SlurmUser
        (``reschedule.operator``: Slurm itself refuses what that user may not do); anyone
        else only on their own jobs."""
        if self.uid == 0 or self.config.operator or self._owns(job):
            return
        raise PermissionDeniedError(
            f"job {job.job_id} belongs to {job.user or job.user_id}; uid {self.uid} may only "
            "reschedule its own jobs (run as root or the job's owner, or as a Slurm operator "
            "with reschedule.operator: true)")

    def _owns(self, job: JobInfo) -> bool:
        if job.user_id is not None:
            return job.user_id == self.uid
        if job.user:
            import pwd

            try:
                return pwd.getpwnam(job.user).pw_uid == self.uid
            except KeyError:
                return False
        return False

    def _health(self, names: Sequence[str],
                view: CachedSlurmClient | None = None) -> dict[str, ProbeResult]:
        """Probe ``names``; nodes Slurm already calls DOWN/NOT_RESPONDING count as failed
        (node states from the watcher's ``view`` when it gives one: no sinfo of our own)."""
        if not names:
            return {}
        health = dict(self.prober.probe(list(names)))
        for name, res in slurm_health(view or self.client, names).items():
            if name not in health or not health[name].health.is_failed:
                health[name] = res
        return health

    def _idle(self, view: CachedSlurmClient | None) -> tuple[str, ...]:
        """The nodes Slurm lists idle, with no flag (DRAIN, NOT_RESPONDING...), now."""
        listed = view.nodes() if view is not None else self.client.nodes()
        return tuple(n.name for n in listed if n.state == "idle" and not n.flags)

    def _with_nodes_back(self, job: JobInfo, decision: Decision,
                         health: dict[str, ProbeResult], history: History, pcfg: PolicyConfig,
                         view: CachedSlurmClient | None) -> tuple[Decision, dict]:
        """A failure requeue of a job that shrank before: probe those of its excluded nodes
        Slurm lists idle now, and decide again with them (``policy.taken_back``). Only
        those are probed (the job's own nodes were, a cut-off one takes a probe timeout)."""
        try:
            idle = self._idle(view)
        except SlurmFTError as exc:
            log.warning("job %s: cannot list idle nodes (%s): requeued without its excluded "
                        "nodes", job.job_id, exc, extra={"job": str(job.job_id)})
            return decision, health
        ask = [n for n in regain_candidates(job, history) if n in idle and n not in health]
        if not ask:
            return decision, health
        health = {**health, **self._health(ask, view)}
        return decide(job, health, history, dataclasses.replace(pcfg, idle=idle)), health

    def _settle(self, job: JobInfo, names: Sequence[str], settle: float,
                view: CachedSlurmClient | None = None) -> JobInfo:
        """A job COMPLETING on an unreachable node stays so until Slurm declares the node
        down (SlurmdTimeout): set failed nodes DOWN now, then wait for the job to settle."""
        failed = [n for n, r in self._health(names, view).items() if r.health.is_failed]
        if failed:
            action = DownNodes(tuple(failed), drain_reason(job.job_id))
            try:
                argvs = self._carry_out(job, action, lambda: action.apply(self.client))[1]
                self._audit(job, action, argvs, "ok (settle)")
                log.info("job %s is %s: set %s DOWN to let it finish", job.job_id, job.state,
                         ",".join(failed), extra={"job": str(job.job_id)})
            except SlurmCommandError as exc:   # e.g. not root: wait for Slurm instead
                log.warning("job %s: cannot set %s DOWN: %s", job.job_id, ",".join(failed),
                            exc.slurm_message or exc, extra={"job": str(job.job_id)})
        return self.wait_settled(job, settle, view=view)

    def wait_settled(self, job: JobInfo, settle: float,
                     states: frozenset[str] = TRANSIENT_STATES, *,
                     view: CachedSlurmClient | None = None) -> JobInfo:
        """Poll while the job is in one of ``states`` (default: transient ones such as
        COMPLETING), at most ``settle`` s, with a slow backoff (``poll_delays``). With a
        ``view``, each poll reads this one job alone (never the view's cached listing)."""
        read = view.fresh_job if view is not None else self.client.job
        deadline = self.clock() + settle
        delays = poll_delays()
        while job.state in states and self.clock() < deadline:
            self.sleep(min(next(delays), max(0.0, deadline - self.clock())))
            job = read(job.job_id)
        return job

    # ------------------------------------------------------------------ main entry
    def reschedule(self, job_id: int, *, settle: float = 0.0, train_cmd: str | None = None,
                   checkpoint_dir: str | None = None, min_nodes: int | None = None,
                   max_retry: int | None = None, drain: bool | None = None,
                   nodes_hint: Sequence[str] = (),
                   health: Mapping[str, ProbeResult] | None = None,
                   restart_failed: bool = False, in_place: bool = False,
                   caller_restarts: int | None = None,
                   regain_nodes: int | None = None,
                   view: CachedSlurmClient | None = None) -> Report:
        """Reschedule ``job_id`` if any of its nodes failed. Raises PolicyError (exit 3) when
        the budget is spent or too few nodes remain, after holding the job.

        ``nodes_hint``: the nodes the job ran on, for a job Slurm already requeued (a pending
        job lists none); the epilog passes SLURM_JOB_NODELIST. ``health``: fresh probe results
        (the watcher's), used instead of probing again. ``view``: the watcher's cycle view:
        the job and node states come from it (no squeue or sinfo of our own), the job is read
        again alone under the lock, and nothing waits for a requeued job to run: the
        watcher's next cycles follow it up (nudge, ``recovered``)."""
        start = self.clock()
        job_id = scli.check_job_id(job_id)
        job = view.job(job_id) if view is not None else self.client.job(job_id)
        self.check_permission(job)
        pcfg = PolicyConfig(
            max_retry=self.config.max_retry if max_retry is None else max_retry,
            min_nodes=self.config.min_nodes if min_nodes is None else min_nodes,
            drain=self.config.drain if drain is None else drain,
            restart_failed=restart_failed,
            in_place=in_place,
            caller_restarts=caller_restarts,
            regain_nodes=regain_nodes,
        )
        if self.dry_run:
            report = self._run_locked(job, pcfg, train_cmd, checkpoint_dir, nodes_hint,
                                      settle, health, reread=False, view=view)
        else:
            try:
                with self.store.lock(job_id):
                    report = self._run_locked(job, pcfg, train_cmd, checkpoint_dir, nodes_hint,
                                              settle, health, reread=True, view=view)
            finally:
                if view is not None:      # whatever was sent, the cached copy is stale now
                    view.changed(job_id)
        # Outside the lock: a second caller need not wait for this job to start. Under the
        # watcher (a view) nothing waits here: its next cycles nudge and follow the job.
        if (view is None and not self.dry_run and self.start_wait > 0
                and report.decision.outcome in
                (Outcome.REQUEUE, Outcome.UPDATE_PENDING, Outcome.ALREADY_DONE,
                 Outcome.REGAIN)):
            report.state_after, report.running_after_s = self._kick(
                job_id, report.decision.num_nodes)
        report.elapsed_s = self.clock() - start
        if report.decision.outcome.is_error:
            raise PolicyError(report.decision.message, report=report)
        return report

    def _run_locked(self, job: JobInfo, pcfg: PolicyConfig, train_cmd: str | None,
                    checkpoint_dir: str | None, nodes_hint: Sequence[str], settle: float,
                    known: Mapping[str, ProbeResult] | None, reread: bool,
                    view: CachedSlurmClient | None = None) -> Report:
        if reread:
            # Needed, also with the watcher's view: the view's copy was listed before the
            # probe, and between that listing and this lock another caller (the epilog's
            # detached reschedule, an operator, a second watcher) or Slurm itself (a node it
            # declared DOWN) may have requeued or ended the job. Acting on the stale copy
            # would requeue twice or spend a second retry. The view reads this one job alone
            # (scontrol show job), so the re-read costs the same however many jobs run.
            job = (view.fresh_job(job.job_id) if view is not None
                   else self.client.job(job.job_id))
        record = self.store.load(job.job_id, job.submit_time, job.restart_count,
                                 read_only=self.dry_run)
        if nodes_hint and not record.last_nodes:
            record.last_nodes = [hosts.validate_hostname(n) for n in nodes_hint]
        history = record.history(job.job_id)
        if settle > 0 and job.state in TRANSIENT_STATES:
            job = self._settle(job, candidate_nodes(job, history), settle, view)
        health: dict[str, ProbeResult] = {}
        if needs_probe(job):
            names = candidate_nodes(job, history)
            if pcfg.regain_nodes:        # the excluded nodes too: which are healthy again
                names = tuple(dict.fromkeys((*names, *regain_candidates(job, history))))
                pcfg = dataclasses.replace(pcfg, idle=self._idle(view))
            if known is not None and names and all(n in known for n in names):
                health = {n: known[n] for n in names}
            else:
                health = self._health(names, view)
        decision = decide(job, health, history, pcfg)
        if (decision.outcome is Outcome.REQUEUE and decision.healthy and not pcfg.idle
                and (decision.num_nodes or 0) < full_size(job, history)
                and regain_candidates(job, history)):     # (a first loss lists nothing more)
            decision, health = self._with_nodes_back(job, decision, health, history, pcfg, view)
        if (pcfg.restart_failed and not decision.failed and settle > 0
                and job.state in TRANSIENT_STATES | {"RUNNING"}):
            # Called by the job wrapper whose launcher just failed on healthy nodes: the
            # wrapper exits right after, so wait for the job to end, then decide again.
            job = self.wait_settled(job, settle, TRANSIENT_STATES | {"RUNNING"}, view=view)
            decision = decide(job, health, history, pcfg)
        for name in decision.failed:
            res = health.get(name)
            log.log(failure_level([res.health] if res else []), "job %s: node %s failed: %s",
                    job.job_id, name, res.reason if res else "?",
                    extra={"job": str(job.job_id), **failed_extra(name)})
        log.info("job %s: %s", job.job_id,
                 decision.plan if self.dry_run and decision.plan else decision.message,
                 extra={"job": str(job.job_id)})
        report = Report(decision=decision, dry_run=self.dry_run)
        if not self.dry_run and not ended_normally(job, decision):
            self.store.audit(Decided(job_id=job.job_id, original_job_id=record.original_job_id,
                                     outcome=decision.outcome.value, failed=decision.failed,
                                     message=decision.message,
                                     health={n: r.health.value for n, r in health.items()}))
        if (not self.dry_run and decision.outcome is Outcome.REGAIN and job.is_running
                and decision.num_nodes):
            # Requeue-holding the job kills the job's processes, this one too when the job's
            # own supervisor started it: whoever reschedules the held job next finishes it.
            record.regain_nodes = decision.num_nodes
            record.regain_exclude = list(decision.exclude)
            self.store.save(record)
        if view is not None:        # a kill's steps from the cycle's one listing of them
            decision = with_kill_steps(decision, view.steps)
        self._execute(job, decision, record, report, train_cmd, checkpoint_dir)
        if self.dry_run:
            report.commands = list(self.recorder.writes)
        else:
            self._update_record(job, decision, record, report, train_cmd, checkpoint_dir)
        return report

    # ------------------------------------------------------------------ acting
    def _execute(self, job: JobInfo, decision: Decision, record: RetryRecord, report: Report,
                 train_cmd: str | None, checkpoint_dir: str | None) -> None:
        held = False
        # A pending job Slurm itself just requeued carries the requeue time as submit time.
        requeued_at: float | None = (float(job.submit_time) if job.is_pending
                                     and job.submit_time else None)
        for action in decision.actions:
            if starts_job(action) and requeued_at is not None:
                self._credential_gap(requeued_at)
                requeued_at = None
            if isinstance(action, SubmitRestart):
                self._submit_restart(job, action, record, report, train_cmd, checkpoint_dir)
                continue
            try:
                try:
                    argvs = self._carry_out(job, action, lambda a=action: a.apply(self.client))[1]
                except SlurmCommandError:
                    if not (held and isinstance(action, UpdateJob)):
                        raise
                    # Slurm refuses updates to a job still COMPLETING after a requeue-hold
                    # (22.05: "Unexpected message received", a dead slurmd on the batch host):
                    # once it settled, again (released unshrunk, it was seen to end FAILED)
                    with contextlib.suppress(SlurmFTError):   # (unread: try again anyway)
                        self.wait_settled(self.client.job(job.job_id), HELD_UPDATE_SETTLE_S)
                    argvs = self._carry_out(job, action, lambda a=action: a.apply(self.client))[1]
            except SlurmCommandError as exc:
                if isinstance(action, NodeAction) and self.uid != 0:
                    # Only root (or a Slurm operator) may change node states; a user can still
                    # move their own job away from the node.
                    log.warning("job %s: cannot %s %s as uid %s (%s); going on without it",
                                job.job_id, action.op, ",".join(action.nodes), self.uid,
                                exc.slurm_message or exc, extra={"job": str(job.job_id)})
                    continue
                if isinstance(action, UpdateJob) and action.only_comment:
                    # the comment only says why: the job is held, its nodes out all the same
                    log.warning("job %s: cannot set its comment (%s); going on without it",
                                job.job_id, exc.slurm_message or exc,
                                extra={"job": str(job.job_id)})
                    continue
                if held and decision.outcome is not Outcome.EXHAUSTED:
                    self._unhold(job.job_id)
                raise
            held = held or holds_job(action)
            if requeues_job(action):
                requeued_at = self.wall()
            if not self.dry_run:
                report.commands += argvs
                self._audit(job, action, argvs, "ok")
                log.info("job %s: ran %s", job.job_id, "; ".join(map(shlex.join, argvs)),
                         extra={"job": str(job.job_id)})

    def _credential_gap(self, requeued_at: float) -> None:
        """Requeue revokes the job's credential on its nodes; slurmd refuses a credential
        created in the same second as the revocation (Slurm compares whole seconds), so a
        job restarted within that second fails to launch (FAILED, exit 1, run time 0 -- seen
        on the real cluster). Slurm's own guard is the requeue delay (cred_expire + 1 s);
        ours is to release only once the requeue's second is over."""
        gap = math.floor(requeued_at) + 1.05 - self.wall()
        if gap > 0 and not self.dry_run:
            log.debug("waiting %.2fs so the restart gets a fresh credential", gap)
            self.sleep(gap)

    def _kick(self, job_id: int, target_nodes: int | None = None) -> tuple[str, float | None]:
        """Wait up to ``start_wait`` s for the job to run (``slurmft reschedule`` alone; the
        watcher follows its jobs up in its next cycles instead). Slurm may apply the requeue
        delay (BeginTime, cred_expire + 1 s) after our ``StartTime=now`` when the job was still
        completing, or undo the shrink (BadConstraints): ``nudge`` it whenever it is. Reads
        back off from 0.5 s to 5 s (``poll_delays``): each one lists every job."""
        t0 = self.clock()
        state = ""
        delays = poll_delays()
        while True:
            try:
                job = self.client.job(job_id)
            except SlurmFTError as exc:
                log.warning("job %s: cannot read state after reschedule: %s", job_id, exc)
                return state, None
            state = job.state
            if state == "RUNNING":
                return state, self.clock() - t0
            left = self.start_wait - (self.clock() - t0)
            if job.has_ended or left <= 0:
                return state, None
            self.nudge(job, target_nodes)
            self.sleep(min(next(delays), left))

    def nudge(self, job: JobInfo, target_nodes: int | None = None) -> bool:
        """Keep a job we requeued moving. Pending for BeginTime (the requeue delay Slurm
        applies once the job has finished COMPLETING): ``StartTime=now`` again. Pending, not
        held, with more nodes than ``target_nodes``: a shrink sent while the job was still
        COMPLETING can be undone by the requeue (seen on 22.05 when the batch host died; the
        job then waits for BadConstraints, or for Resources when a spare could make up the
        count but is busy): send the shrink again, then ``StartTime=now``. True if anything
        was sent."""
        if self.dry_run or not job.is_pending:
            return False
        reshrink = (job.reason not in HELD_REASONS and target_nodes is not None
                    and 0 < target_nodes < job.node_count)
        if job.reason != "BeginTime" and not reshrink:
            return False
        try:
            if reshrink:
                self.client.update_job(job.job_id, exclude=list(job.excluded_nodes),
                                       **shrink_params(job, target_nodes),
                                       **pinned_params(job, job.excluded_nodes))
            self.client.update_job(job.job_id, start_now=True)
        except SlurmFTError as exc:
            log.debug("job %s: nudge refused: %s", job.job_id, exc)
            return False
        log.info("job %s: pending for %s: %sStartTime=now again", job.job_id, job.reason,
                 f"NumNodes={target_nodes} again, " if reshrink else "",
                 extra={"job": str(job.job_id)})
        return True

    def _unhold(self, job_id: int) -> None:
        """After a failed step, do not leave the job held by us."""
        try:
            self.client.release(job_id)
            self.client.update_job(job_id, start_now=True)
            log.warning("job %s: released again after a failed step", job_id)
        except SlurmFTError as exc:
            log.error("job %s: could not release after a failed step: %s", job_id, exc)

    def _carry_out(self, job: JobInfo, action: Action, call: Callable[[], T]) -> tuple[T, list[list[str]]]:
        """``call()`` (which carries ``action`` out) and the commands it ran (or, in a dry
        run, would run), as the recorder saw them at the runner seam. A refused command is
        audited with Slurm's message and raised again."""
        mark = len(self.recorder.writes)
        try:
            result = call()
        except SlurmCommandError as exc:
            self._audit(job, action, self._written_since(mark),
                        f"error: {exc.slurm_message or exc}")
            raise
        return result, self._written_since(mark)

    def _written_since(self, mark: int) -> list[list[str]]:
        return [list(argv) for argv in self.recorder.writes[mark:]]

    def _audit(self, job: JobInfo, action: Action, argvs: Sequence[Sequence[str]], result: str) -> None:
        """One audit line per action: its commands in one argv, ";" between two of them."""
        argv = [arg for i, cmd in enumerate(argvs) for arg in ([";"] if i else []) + list(cmd)]
        if not self.dry_run:
            self.store.audit(Acted(job_id=job.job_id, op=action.op, argv=tuple(argv), result=result))

    def restart_context(self, job: JobInfo, healthy: Sequence[str], exclude: Sequence[str],
                        train_cmd: str, checkpoint_dir: str) -> dict[str, Any]:
        """Variables for templates/restart.sh.j2."""
        return restart_context(job, healthy, exclude, train_cmd, checkpoint_dir, self.config,
                               slurmft_cmd=self.slurmft_cmd,
                               reschedule_log=str(Path(self.store.root) / "reschedule.log"))

    def _submit_restart(self, job: JobInfo, action: SubmitRestart, record: RetryRecord,
                        report: Report,
                        train_cmd: str | None, checkpoint_dir: str | None) -> None:
        if self.uid != 0 and not self._owns(job):
            # sbatch submits as the caller: an operator's restart job would run as the operator
            raise PermissionDeniedError(
                f"job {job.job_id} of {job.user or job.user_id} cannot be requeued, and a restart "
                "job for it must be submitted as root or as its owner (sbatch submits as the "
                "caller); submit it with --requeue (slurmft render job does) to avoid this")
        cmd = train_cmd or record.train_cmd or self.config.train_cmd
        ckpt = checkpoint_dir or record.checkpoint_dir or self.config.checkpoint_dir
        if not cmd or not ckpt:
            raise PolicyError(
                f"job {job.job_id} cannot be requeued and no "
                f"{'training command' if not cmd else 'checkpoint directory'} is known for a "
                "restart job: pass --train-cmd/--checkpoint-dir or set reschedule.train_cmd/"
                "reschedule.checkpoint_dir")
        ctx = self.restart_context(job, action.nodes, action.exclude, cmd, ckpt)
        script = self.render("restart.sh.j2", ctx)
        attempt = len(record.attempts) + 1
        path = Path(self.store.root) / "scripts" / f"restart-{record.original_job_id}-{attempt}.sh"
        args = [f"--nodes={action.num_nodes}", f"--exclude={NodeSet(action.exclude)}"]
        report.restart_script = str(path)
        if not self.dry_run:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(script)
            path.chmod(0o755)
        new_id, argvs = self._carry_out(job, action, lambda: self.client.submit(str(path), args))
        if not self.dry_run:
            report.commands += argvs
            report.new_job_id = new_id
            self._audit(job, action, argvs, f"ok: job {new_id}")
            log.info("job %s: restart job %s submitted (%s)", job.job_id, new_id, path,
                     extra={"job": str(job.job_id)})

    def _update_record(self, job: JobInfo, decision: Decision, record: RetryRecord,
                       report: Report, train_cmd: str | None, checkpoint_dir: str | None) -> None:
        if train_cmd:
            record.train_cmd = train_cmd
        if checkpoint_dir:
            record.checkpoint_dir = checkpoint_dir
        if job.nodes:
            record.last_nodes = list(job.nodes)
            record.full_nodes = max(record.full_nodes, len(job.nodes))
        counted = decision.spends_retry
        if decision.outcome in (Outcome.DRAIN, Outcome.REGAIN):     # no retry spent
            record.excluded = list(decision.exclude)      # (regain: the nodes back are not)
        if decision.outcome is Outcome.REGAIN:
            record.regain_nodes, record.regain_exclude = None, []    # done: resized, released
        if counted:
            record.attempts.append(Attempt(time=round(time.time(), 3), job_id=job.job_id,
                                           outcome=decision.outcome.value,
                                           failed=list(decision.failed),
                                           new_job_id=report.new_job_id))
            record.excluded = list(decision.exclude)
            if decision.outcome in (Outcome.UPDATE_PENDING, Outcome.REQUEUE, Outcome.RELAUNCH):
                record.last_nodes = list(decision.healthy)
        if decision.outcome is Outcome.EXHAUSTED:
            record.exhausted = True
        if report.new_job_id:
            record.job_ids.append(report.new_job_id)
            record.last_nodes = list(decision.healthy)
            self.store.add_alias(report.new_job_id, record.original_job_id)
        if (counted or decision.outcome in (Outcome.EXHAUSTED, Outcome.DRAIN, Outcome.REGAIN)
                or train_cmd
                or checkpoint_dir):
            self.store.save(record)
