"""The restart policy: a pure function of (job, health, history, config) -> Decision.

Nothing here talks to Slurm or the network; the rescheduler carries out ``Decision.actions``
in order. The order of the fast path is the one measured on Slurm 22.05 (CLUSTER_NOTES.md):
(``scancel --ctld --signal=KILL`` to the job's steps, then ``scancel --batch --full
--signal=KILL`` to its batch host, when a node is cut off) -> ``requeuehold`` -> node ``down``
-> node ``drain`` -> ``update ExcNodeList NumNodes=k-k`` -> ``release`` ->
``update StartTime=now``.

``--no-drain`` still sets the failed nodes DOWN: without it a running job stays COMPLETING on
an unreachable node until Slurm itself declares the node down (SlurmdTimeout, 300 s by
default). A DOWN node returns to service on its own when its slurmd registers again
(ReturnToService=2); a drained one stays out until an operator resumes it. The job's own
ExcNodeList keeps the node out of *this* job either way.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from slurmft.core.nodeset import NodeSet
from slurmft.probe.records import Health, ProbeResult
from slurmft.recovery.actions import (
    Action,
    DownNodes,
    DrainNodes,
    HoldJob,
    KillJob,
    ReleaseJob,
    RequeueHoldJob,
    RequeueJob,
    SignalBatch,
    SubmitRestart,
    UpdateJob,
)
from slurmft.slurm.records import JobInfo

#: The job wrapper's mark in ``--comment``: the job runs with ``--no-kill`` (Slurm removes a
#: downed node from it instead of killing it) and relaunches its training on the nodes it has
#: left when slurmft sends its batch script ``RELAUNCH_SIGNAL``. squeue does not show
#: ``--no-kill`` itself, hence the mark.
RELAUNCH_MARK = "slurmft:relaunch"
RELAUNCH_SIGNAL = "USR2"
#: Per-step mode, one job per replica group: ``--comment=slurmft:relaunch,slurmft:group=URL``
#: (torchft's lighthouse, which the groups of one run share). A group whose node is lost
#: leaves its peers, the running jobs with the same mark, blocked in the step's collective:
#: the watcher tells them (``replica_run``).
GROUP_MARK = "slurmft:group="

#: Failures that cut a node off from the job's collectives (a DEGRADED node still runs them).
CUT_OFF = frozenset({Health.UNREACHABLE, Health.UNRESPONSIVE})

#: Ended states in which a node failure is the likely cause and a restart makes sense.
RESTARTABLE_ENDED = frozenset({"NODE_FAIL", "FAILED", "BOOT_FAIL"})
#: Pending reasons that mean the job is on hold.
HELD_REASONS = frozenset({"JobHeldUser", "JobHeldAdmin", "job_requeued_in_held_state", "held"})


class Outcome(str, enum.Enum):
    NOTHING = "nothing"            # no failed node, or a state we must not touch
    ALREADY_DONE = "already_done"  # an earlier call already excluded the failed nodes
    RELAUNCH = "relaunch"          # running, relaunchable: drop the failed nodes from the
                                   # allocation, the wrapper restarts the training in the job
    DRAIN = "drain"                # relaunchable job, only degraded nodes: drained, job untouched
    HAND_OFF = "hand_off"          # asked in place, but the job must be requeued (exit 5)
    STALE = "stale"                # asked in place by a wrapper the job left behind (exit 6)
    REQUEUE = "requeue"            # running (or ended, requeueable) -> requeuehold fast path
    UPDATE_PENDING = "update_pending"
    RESUBMIT = "resubmit"          # ended and not requeueable -> rendered restart job
    REGAIN = "regain"              # shrunk and running, its nodes back: requeue at full size
    EXHAUSTED = "exhausted"        # retry budget spent: hold with a reason, exit 3
    REFUSED = "refused"            # would go below the minimum node count, exit 3

    @property
    def is_error(self) -> bool:
        return self in (Outcome.EXHAUSTED, Outcome.REFUSED)


#: Outcomes that use one retry of the budget (the rescheduler records an attempt for each).
RETRY_OUTCOMES = frozenset({Outcome.REQUEUE, Outcome.UPDATE_PENDING, Outcome.RESUBMIT,
                            Outcome.RELAUNCH})


@dataclass(frozen=True)
class History:
    """What earlier reschedules of this job (and its resubmissions) did."""

    attempts: int = 0                    # reschedules recorded, all job ids together
    attempts_on_job: int = 0             # of those, on the job id asked about now
    excluded: tuple[str, ...] = ()       # every node slurmft excluded so far
    last_nodes: tuple[str, ...] = ()     # the allocation seen last (pending jobs have none)
    exhausted: bool = False              # the job was held because the budget was spent
    regain_nodes: int | None = None      # a regain in flight (requeued held, not yet resized)
    regain_exclude: tuple[str, ...] = ()
    full_nodes: int = 0                  # the most nodes slurmft saw the job hold


@dataclass(frozen=True)
class PolicyConfig:
    max_retry: int = 3
    min_nodes: int = 1
    drain: bool = True
    # Restart a job that ended FAILED on healthy nodes (a rank crashed, no node to blame),
    # in place and within the retry budget. The job wrapper asks for it; a plain
    # `slurmft reschedule` does not, since a job can fail for reasons a restart won't fix.
    restart_failed: bool = False
    # The caller is the job's own wrapper, inside the allocation, whose launcher just failed:
    # plan only what keeps the job running (RELAUNCH), else HAND_OFF to a requeue.
    in_place: bool = False
    # SLURM_RESTART_COUNT of the job's own supervisor asking (in place, or handing off): when
    # Slurm has requeued the job since, the caller is a copy left behind (its node was cut off)
    # and must stop, not relaunch, and nothing is done to the job's new run.
    caller_restarts: int | None = None
    # The job's supervisor asks for its size back (it shrank, nodes returned, and the rest of
    # the run at full size saves more than a requeue costs): requeue it at this many nodes.
    regain_nodes: int | None = None
    # The nodes Slurm lists idle (no flag) now. With regain_nodes: the requeue happens only if
    # they make up the difference (a job requeued at a size it cannot get would wait). For a
    # failure requeue of a job that shrank before: those of its excluded nodes among them that
    # probe healthy come back (``taken_back``).
    idle: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    job_id: int
    message: str
    failed: tuple[str, ...] = ()
    healthy: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    num_nodes: int | None = None
    retries_used: int = 0
    max_retry: int = 0
    actions: tuple[Action, ...] = ()
    plan: str = ""                 # the message worded as what it would do (dry runs)

    @property
    def changes_anything(self) -> bool:
        return bool(self.actions)

    @property
    def spends_retry(self) -> bool:
        """Carrying out this decision uses one retry of the budget."""
        return self.outcome in RETRY_OUTCOMES

    @property
    def retries_after(self) -> int:
        """Retries used once this decision is carried out."""
        return self.retries_used + (1 if self.spends_retry else 0)

    def to_dict(self) -> dict:
        return {
            "job_id": self.job_id,
            "outcome": self.outcome.value,
            "message": self.message,
            "failed": list(self.failed),
            "healthy": list(self.healthy),
            "exclude": list(self.exclude),
            "num_nodes": self.num_nodes,
            "retries_used": self.retries_used,
            "retries_after": self.retries_after,
            "max_retry": self.max_retry,
            "actions": [a.to_dict() for a in self.actions],
        }


def drain_reason(job_id: int, health: Health | None = None) -> str:
    """The node reason slurmft writes: names slurmft and the job."""
    what = health.value.lower() if health is not None else "failed health probe"
    return f"slurmft: {what}, excluded from job {job_id}"


def shrink_params(job: JobInfo, k: int) -> dict:
    """The size fields of the update that moves ``job`` onto ``k`` nodes.

    ``NumNodes=k-k`` pins the count (``NumNodes=k`` only sets the minimum). A job submitted
    with ``--ntasks-per-node`` also keeps its task and CPU counts, which no longer fit k nodes
    (Slurm leaves it PENDING with reason BadConstraints): shrink them in the same request.
    """
    params: dict = {"num_nodes": (k, k)}
    if job.tasks_per_node > 0:
        params["num_tasks"] = k * job.tasks_per_node
        params["num_cpus"] = k * job.tasks_per_node * max(1, job.cpus_per_task)
    return params


def pinned_params(job: JobInfo, exclude: Sequence[str]) -> dict:
    """A job pinned to its nodes (``sbatch -w``) that now excludes one of them would stay
    PENDING for good (BadConstraints): keep only the required nodes still allowed."""
    required, out = NodeSet(job.required_nodes), NodeSet(exclude)
    if not required & out:
        return {}
    return {"required": tuple(required - out)}


def retries_used(job: JobInfo, history: History) -> int:
    """Reschedules slurmft spent on this job and its resubmissions, from its own record.
    Slurm's restart count is not one of them: Slurm requeues on its own (a node failure, a
    preemption, a user's scontrol requeue), and that must not use slurmft's budget."""
    return history.attempts


def candidate_nodes(job: JobInfo, history: History) -> tuple[str, ...]:
    """The nodes whose health matters: the job's allocation, else the last one we saw."""
    return tuple(job.nodes) or tuple(history.last_nodes)


def is_relaunchable(job: JobInfo) -> bool:
    """The job's wrapper relaunches its training itself (see ``RELAUNCH_MARK``)."""
    return RELAUNCH_MARK in job.comment


def replica_run(job: JobInfo) -> str:
    """The run a replica group's job belongs to (its lighthouse, see ``GROUP_MARK``), or ''."""
    for word in job.comment.split(","):
        if word.startswith(GROUP_MARK) and len(word) > len(GROUP_MARK):
            return word[len(GROUP_MARK):]
    return ""


def needs_probe(job: JobInfo) -> bool:
    """Whether the job's state can lead to any action (skip probing otherwise)."""
    return job.is_running or job.is_pending or job.state in RESTARTABLE_ENDED


def _merge(*groups: Sequence[str]) -> tuple[str, ...]:
    """The union of node groups, in natural order (node2 before node10)."""
    merged = NodeSet()
    for group in groups:
        merged = merged | NodeSet(group)
    return tuple(merged)


def decide(job: JobInfo, health: Mapping[str, ProbeResult | Health], history: History,
           config: PolicyConfig) -> Decision:
    """Plan the recovery of ``job`` given the health of its nodes. Pure: no side effects."""
    jid = job.job_id
    nodes = candidate_nodes(job, history)
    status = {n: (h.health if isinstance(h, ProbeResult) else h) for n, h in health.items()}
    failed = tuple(n for n in nodes if n in status and status[n].is_failed)
    healthy = tuple(n for n in nodes if n not in failed)
    used = retries_used(job, history)
    base = dict(job_id=jid, failed=failed, healthy=healthy, retries_used=used,
                max_retry=config.max_retry)

    if config.caller_restarts is not None and config.caller_restarts != job.restart_count:
        # in place or handing off: a copy cut off from the job that Slurm has requeued since
        # acts on the new run otherwise (requeues it, takes its nodes out)
        return Decision(Outcome.STALE, message=f"job {jid} was requeued since this wrapper "
                        f"started (restart {config.caller_restarts}, now {job.restart_count}): "
                        "this copy must stop", **base)
    if not needs_probe(job):
        return Decision(Outcome.NOTHING, message=f"job {jid} is {job.state}: nothing to do",
                        **base)
    if config.regain_nodes:
        return _regain(job, status, history, config, base)
    if history.regain_nodes and job.is_pending:
        return _finish_regain(job, history, base)
    if config.in_place or (job.state == "RUNNING" and failed and is_relaunchable(job)):
        relaunch = _relaunch(job, failed, status, history, config, base)
        if relaunch is not None:
            return relaunch
    if not failed and config.restart_failed and job.state == "FAILED" and job.requeue:
        return _restart_failed(job, history, config, base)
    if not failed:
        return _nothing_failed(job, nodes, history, config, base)
    # The job goes on at the size of its healthy nodes (k-k); with none left (a one-node job,
    # e.g. one replica group of per-step mode, or a whole rack gone) at its own size on other
    # nodes, the failed ones excluded: Slurm finds them, or the job waits for them. Not a
    # restart job (an ended job that cannot be requeued): that one is pinned to healthy nodes.
    resubmit = job.has_ended and not job.requeue
    back = taken_back(job, status, history, config, healthy, failed)
    # not the healthy nodes it holds: a node excluded once and taken back in as a spare
    # (refill) would make NumNodes unsatisfiable (seen: pending for BadConstraints for good)
    base.update(exclude=tuple(n for n in _merge(job.excluded_nodes, history.excluded, failed)
                              if n not in healthy and n not in back),
                num_nodes=(len(healthy) + len(back)) if healthy else
                (0 if resubmit else len(nodes)))
    if ((job.is_pending or job.state == "COMPLETING")
            and not NodeSet(failed) - NodeSet(job.excluded_nodes)):
        # COMPLETING: an earlier call's requeue is winding down the old run, still listed
        # on its nodes, the failed ones already excluded (requeueing again spends a retry)
        return _already_excluded(job, history, base)
    if used >= config.max_retry:
        return _hold_exhausted(job, status, config, base)
    if base["num_nodes"] < config.min_nodes:
        left = (f"only {len(healthy)} healthy node(s) left," if healthy else
                f"no healthy node left and its size, {base['num_nodes']} node(s), is"
                if base["num_nodes"] else "no healthy node left to pin a restart job to,")
        return Decision(Outcome.REFUSED, message=f"job {jid}: {left} below the minimum of "
                        f"{config.min_nodes}; not rescheduled", **base)
    return _move_off_failed(job, status, config, base, back)


def full_size(job: JobInfo, history: History) -> int:
    """The most nodes the job held, as slurmft saw it (its size before any loss)."""
    return max(history.full_nodes, len(job.nodes))


def taken_back(job: JobInfo, status: Mapping[str, Health], history: History,
               config: PolicyConfig, healthy: Sequence[str],
               failed: Sequence[str]) -> tuple[str, ...]:
    """The nodes a failure requeue takes back: those the job excluded before (a loss it
    shrank for) that Slurm lists idle now (``config.idle``) and that probe healthy, up to
    the job's full size. The job is requeued anyway, so asking for them costs no restart:
    without them it would start again shrunk and regain its size only once the rest of the
    run paid for a second requeue (seen: a job that lost its batch host twice trained its last
    47 s on 3 of 4 ranks, the node lost first idle and healthy again). Nodes the job never
    held are not taken: a job shrinks when it loses a node (spares keep its size). Only for
    a requeue: none when the job is neither running nor ended requeueable."""
    if not config.idle or not (job.is_running or (job.has_ended and job.requeue)):
        return ()
    room = full_size(job, history) - len(healthy)
    back = [n for n in regain_candidates(job, history)
            if n in config.idle and n not in failed and n not in job.nodes
            and status.get(n) is Health.HEALTHY]
    return tuple(back[:max(0, room)])


def regain_candidates(job: JobInfo, history: History) -> tuple[str, ...]:
    """The nodes a job that shrank could get back: the ones it (or slurmft) excluded."""
    return _merge(job.excluded_nodes, history.excluded)


def _regain(job: JobInfo, status: Mapping[str, Health], history: History,
            config: PolicyConfig, base: dict) -> Decision:
    """Requeue a running job that shrank at ``regain_nodes`` nodes (its supervisor saw
    enough idle nodes), no longer excluding the nodes it excluded that probe healthy again
    (the others stay excluded). Not a failure: no retry is spent."""
    jid, n, have = job.job_id, int(config.regain_nodes or 0), len(job.nodes)
    if not job.is_running:
        return Decision(Outcome.NOTHING, message=f"job {jid} is {job.state}: not regaining "
                        "its size", **base)
    if base["failed"]:
        return Decision(Outcome.NOTHING, message=f"job {jid}: node(s) "
                        f"{', '.join(base['failed'])} failed: recover first, regain later",
                        **base)
    if n <= have:
        return Decision(Outcome.NOTHING, message=f"job {jid} runs on {have} node(s) already: "
                        f"nothing to regain for {n}", **base)
    out = regain_candidates(job, history)
    usable = tuple(x for x in config.idle
                   if x not in job.nodes and not (x in status and status[x].is_failed))
    if have + len(usable) < n:
        return Decision(Outcome.NOTHING, message=f"job {jid}: {len(usable)} idle node(s) "
                        f"({', '.join(usable) or 'none'}) cannot take it from {have} to {n} "
                        "node(s): not requeued (it would wait for nodes)", **base)
    back = tuple(x for x in out if x in usable)
    still = tuple(x for x in out if x not in back)
    base = {**base, "exclude": still, "num_nodes": n}
    update = UpdateJob(jid, exclude=still, **shrink_params(job, n), **pinned_params(job, still))
    again = f"; {', '.join(back)} healthy again" if back else ""
    return Decision(Outcome.REGAIN,
                    actions=(RequeueHoldJob(jid), update, ReleaseJob(jid),
                             UpdateJob(jid, start_now=True)),
                    message=f"job {jid} requeued at {n} node(s) (it ran on {have}){again}",
                    plan=f"would requeue job {jid} at {n} node(s) (it runs on {have}){again}",
                    **base)


def _finish_regain(job: JobInfo, history: History, base: dict) -> Decision:
    """A regain whose requeue happened (the job is pending, held) but whose caller died with
    the job before it could resize and release it: finish it."""
    jid, n, still = job.job_id, int(history.regain_nodes or 0), history.regain_exclude
    base = {**base, "exclude": still, "num_nodes": n}
    update = UpdateJob(jid, exclude=still, **shrink_params(job, n), **pinned_params(job, still))
    actions: list[Action] = [update]
    if job.reason in HELD_REASONS:
        actions.append(ReleaseJob(jid))
    actions.append(UpdateJob(jid, start_now=True))
    return Decision(Outcome.REGAIN, actions=tuple(actions),
                    message=f"job {jid}: regain finished: {n} node(s), released",
                    plan=f"would finish the regain of job {jid}: {n} node(s), release it",
                    **base)


def _restart_failed(job: JobInfo, history: History, config: PolicyConfig,
                    base: dict) -> Decision:
    """A requeueable job FAILED on healthy nodes, asked by its wrapper: requeue in place."""
    jid, used = job.job_id, base["retries_used"]
    base = {**base, "exclude": _merge(job.excluded_nodes, history.excluded),
            "num_nodes": len(base["healthy"])}
    if used >= config.max_retry:
        return Decision(Outcome.EXHAUSTED, message=f"job {jid} FAILED on healthy nodes; "
                        f"retry budget spent ({used}/{config.max_retry}): not restarted",
                        **base)
    return Decision(Outcome.REQUEUE, actions=(RequeueJob(jid), UpdateJob(jid, start_now=True)),
                    message=f"job {jid} FAILED on healthy nodes: requeued in place to "
                    "resume from its checkpoint",
                    plan=f"would requeue job {jid} in place (FAILED on healthy nodes) to "
                    "resume from its checkpoint", **base)


def _nothing_failed(job: JobInfo, nodes: tuple[str, ...], history: History,
                    config: PolicyConfig, base: dict) -> Decision:
    jid, used = job.job_id, base["retries_used"]
    if job.is_pending and job.reason in HELD_REASONS and history.exhausted:
        return Decision(Outcome.NOTHING, message=f"job {jid} is held: retry budget "
                        f"spent ({used}/{config.max_retry})", **base)
    where = ", ".join(nodes) if nodes else "no nodes allocated"
    return Decision(Outcome.NOTHING,
                    message=f"job {jid} ({job.state}): no failed node ({where}); nothing changed",
                    **base)


def _already_excluded(job: JobInfo, history: History, base: dict) -> Decision:
    """A pending job, or one an earlier call requeued that is still COMPLETING, that
    already excludes every failed node (an earlier call's work)."""
    jid, failed = job.job_id, ", ".join(base["failed"])
    if job.reason in HELD_REASONS and not history.exhausted:
        return Decision(
            Outcome.ALREADY_DONE,
            message=f"job {jid} already excludes {failed} but is held: released",
            plan=f"would release job {jid}: it already excludes {failed} but is held",
            actions=(ReleaseJob(jid), UpdateJob(jid, start_now=True)),
            **base)
    state = "pending" if job.is_pending else "being requeued (COMPLETING)"
    return Decision(Outcome.ALREADY_DONE,
                    message=f"job {jid} is {state} and already excludes {failed}: not "
                    "requeueing again", **base)


def _hold_exhausted(job: JobInfo, status: Mapping[str, Health], config: PolicyConfig,
                    base: dict) -> Decision:
    """Retry budget spent: hold the job with a comment that says why, take the nodes out."""
    jid, used, failed = job.job_id, base["retries_used"], base["failed"]
    comment = (f"slurmft: held, retry budget spent ({used}/{config.max_retry}); "
               f"failed nodes {','.join(failed)}")
    actions: list[Action] = []
    if job.is_running:
        actions.append(RequeueHoldJob(jid))
    elif job.is_pending:
        actions.append(HoldJob(jid))
    actions += _node_actions(jid, failed, status, config, down=job.is_running)
    if job.is_running or job.is_pending:
        actions.append(UpdateJob(jid, comment=comment))
    return Decision(Outcome.EXHAUSTED, actions=tuple(actions),
                    message=f"job {jid}: retry budget spent ({used}/{config.max_retry}); "
                    "job held, not rescheduled",
                    plan=f"would hold job {jid}: retry budget spent "
                    f"({used}/{config.max_retry}); not rescheduled", **base)


def _move_off_failed(job: JobInfo, status: Mapping[str, Health], config: PolicyConfig,
                     base: dict, back: Sequence[str] = ()) -> Decision:
    """Requeue (running, or ended and requeueable), update (pending) or resubmit the job on
    the ``num_nodes`` healthy nodes (with ``back``, see ``taken_back``), excluding ``exclude``."""
    jid, failed, exclude, k = job.job_id, base["failed"], base["exclude"], base["num_nodes"]
    without = ", ".join(failed) + (f" ({', '.join(back)} healthy again, taken back)"
                                   if back else "")
    update = UpdateJob(jid, exclude=exclude, **shrink_params(job, k),
                       **pinned_params(job, exclude))
    start = UpdateJob(jid, start_now=True)
    if job.is_running or (job.has_ended and job.requeue):
        actions: list[Action] = []
        if job.is_running and any(status.get(n) in CUT_OFF for n in failed):
            # A rank on a cut-off node never reaches the collective save a SIGTERM asks for:
            # the others would sit out KillWait (30 s by default) before Slurm kills them
            # (kill_job SIGKILLs the steps by number: a job killed whole gets SIGTERM first).
            actions.append(KillJob(jid))
        actions.append(RequeueHoldJob(jid))
        actions += _node_actions(jid, failed, status, config, down=job.is_running)
        actions += [update, ReleaseJob(jid), start]
        verb = "requeued" if job.is_running else "requeued (ended, requeueable)"
        what = "" if job.is_running else " (ended, requeueable)"
        return Decision(Outcome.REQUEUE, actions=tuple(actions),
                        message=f"job {jid} {verb} on {k} node(s) without {without}",
                        plan=f"would requeue job {jid}{what} on {k} node(s) without {without}",
                        **base)
    if job.is_pending:
        actions = _node_actions(jid, failed, status, config, down=False) + [update]
        if job.reason in HELD_REASONS:
            actions.append(ReleaseJob(jid))
        actions.append(start)
        return Decision(Outcome.UPDATE_PENDING, actions=tuple(actions),
                        message=f"pending job {jid} updated: {k} node(s), excluding "
                        f"{', '.join(exclude)}",
                        plan=f"would update pending job {jid}: {k} node(s), excluding "
                        f"{', '.join(exclude)}", **base)
    # Ended and not requeueable: submit a restart job that resumes from the checkpoint.
    actions = _node_actions(jid, failed, status, config, down=False)
    actions.append(SubmitRestart(jid, nodes=base["healthy"], exclude=exclude, num_nodes=k))
    return Decision(Outcome.RESUBMIT, actions=tuple(actions),
                    message=f"job {jid} ended {job.state} and cannot be requeued: restart job "
                    f"submitted on {k} node(s) without {without}",
                    plan=f"would submit a restart job for job {jid} (ended {job.state}, cannot "
                    f"be requeued) on {k} node(s) without {without}", **base)


def _relaunch(job: JobInfo, failed: tuple[str, ...], status: Mapping[str, Health],
              history: History, config: PolicyConfig, base: dict) -> Decision | None:
    """A running job that survives node loss (``--no-kill``) and relaunches its training in
    its own allocation: no requeue, no scheduling, no new job start.

    From the watcher: unreachable/unresponsive nodes are set DOWN (Slurm takes them out of the
    job) and drained, then the batch script gets ``RELAUNCH_SIGNAL``. Nodes that are only
    DEGRADED (slurmd dead, a health check failing) still run their ranks: they are drained,
    as a node health checker does, and the training is left alone. From the wrapper
    (``in_place``): its launcher already failed, so every failed node goes, or, with none
    failed (a rank crashed), the training restarts on the same nodes. Each relaunch counts
    against the retry budget. ``None``: not a relaunch; decide as for any job."""
    jid = job.job_id
    hand_off = None
    if not (job.state == "RUNNING" and is_relaunchable(job)):
        hand_off = f"job {jid} is {job.state}" + ("" if is_relaunchable(job) else
                                                  " and its wrapper does not relaunch")
    elif job.batch_host and job.batch_host in failed:
        hand_off = f"job {jid}'s batch host {job.batch_host} failed"
    if hand_off is not None:
        if config.in_place:
            return Decision(Outcome.HAND_OFF, message=f"{hand_off}: it needs a requeue", **base)
        return None
    hard = tuple(n for n in failed if config.in_place or status.get(n) is not Health.DEGRADED)
    if not hard and not config.in_place:
        new = tuple(n for n in failed if n not in history.excluded)
        if not new:
            return Decision(Outcome.ALREADY_DONE, message=f"job {jid}: degraded node(s) "
                            f"{', '.join(failed)} already drained; the job keeps running", **base)
        reason = (f"slurmft: degraded, drained; job {jid} keeps running on it "
                  "(it survives node loss)")
        return Decision(Outcome.DRAIN, actions=(DrainNodes(new, reason),),
                        message=f"job {jid}: {', '.join(new)} degraded but still running its "
                        "ranks: drained, the job left running",
                        plan=f"would drain {', '.join(new)} (degraded but still running the "
                        f"ranks of job {jid}) and leave the job running",
                        **{**base, "exclude": _merge(history.excluded, new)})
    used, nodes = base["retries_used"], candidate_nodes(job, history)
    k = len([n for n in nodes if n not in hard])
    base = {**base, "exclude": _merge(history.excluded, hard), "num_nodes": k}
    if used >= config.max_retry:
        if config.in_place:
            return Decision(Outcome.EXHAUSTED, message=f"job {jid}: retry budget spent "
                            f"({used}/{config.max_retry}); not relaunched", **base)
        return None          # hold it, as for any job
    if k < config.min_nodes:
        return Decision(Outcome.REFUSED, message=f"job {jid}: only {k} healthy node(s) left, "
                        f"below the minimum of {config.min_nodes}; not relaunched", **base)
    actions = _node_actions(jid, hard, status, config, down=True) if hard else []
    if not config.in_place:
        actions.append(SignalBatch(jid, RELAUNCH_SIGNAL))
    where = f"without {', '.join(hard)}" if hard else "(every node healthy: a rank failed)"
    return Decision(Outcome.RELAUNCH, actions=tuple(actions),
                    message=f"job {jid} relaunches its training on {k} node(s) {where}, "
                    "in the same allocation",
                    plan=f"would relaunch the training of job {jid} on {k} node(s) {where}, "
                    "in the same allocation", **base)


def _node_actions(jid: int, failed: tuple[str, ...], status: Mapping[str, Health],
                  config: PolicyConfig, *, down: bool) -> list[Action]:
    """DOWN (releases a running job at once) then DRAIN (keeps the node out afterwards)."""
    states = {status[n] for n in failed if n in status}
    reason = drain_reason(jid, states.pop() if len(states) == 1 else None)
    actions = []
    if down:
        actions.append(DownNodes(failed, reason))
    if config.drain:
        actions.append(DrainNodes(failed, reason))
    return actions
