"""Spares back: a job that used a spare takes an idle node into its allocation again.

With ``slurmft run --spares K`` a lost node is replaced at once by a spare of the allocation;
once the K spares are used, the next loss shrinks the run (or needs a requeue). Nodes come
back meanwhile (an admin resumes the drained node after its repair, ``ReturnToService``
returns it). Slurm can grow a running job: an allocation of the idle node with
``--dependency=expand:JOB``, that helper job sized to 0 nodes (its node moves into the job)
and cancelled, then the job sized to ALL (``SlurmClient.expand``). It needs
``SchedulerParameters=permit_job_expansion`` in slurm.conf (AWS HyperPod's auto-resume needs
the same); without it Slurm answers "Requested operation not supported on this system" and
the run goes on without refills (one WARNING). Nothing of the training stops: the node is a
spare again for the next loss.

At most one look every ``interval`` seconds (one squeue; sinfo only when a spare is missing),
on a worker thread: the expansion's ``salloc`` can take seconds, and the supervisor's loop,
which answers a relaunch, must not wait for it (seen in the restart benchmark: a relaunch
5.4 s late behind a refill).
Only a node Slurm shows ``idle`` with no flag (not drained, not down, responding) in the job's
partition, not one the supervisor benched, is taken; the watcher probes it with the job's
other nodes from then on, as any spare.

And only a node Slurm lists after the job's batch host. slurmctld keeps a batch job marked
alive through the registrations of the first node of its node bitmap (the lowest in its node
table, slurm.conf order), which is the batch host unless the job grew by a lower node; when the
batch host registers and the mark is older than BatchStartTimeout + MessageTimeout, the job is
requeued "due to node failure" ("Batch JobId=.. missing from batch node"; job_mgr.c,
validate_jobs_on_node and _purge_missing_jobs, 22.05 to 26.05). A job grown by a
node before its batch host (the old batch host, repaired, after a requeue) was requeued that
way at its batch host's next periodic registration, 49 s after the refill in the benchmark.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Protocol

from slurmft.core.errors import SlurmFTError
from slurmft.core.log import get_logger
from slurmft.core.nodeset import fold

log = get_logger(__name__)

#: Seconds between two looks at the allocation while a spare is missing.
REFILL_INTERVAL_S = 10.0
#: Slurm's answer when job expansion is not permitted (SchedulerParameters).
NOT_PERMITTED = "not supported on this system"


class ExpandingSlurm(Protocol):
    """The part of the Slurm client a refill uses."""

    def allocation(self, job_id: int) -> list[str]: ...
    def job(self, job_id: int) -> Any: ...
    def nodes(self) -> Sequence[Any]: ...
    def expand(self, job_id: int, node: str, partition: str = "") -> None: ...


def in_thread(fn: Callable[[], list[str]]) -> Future:
    """Run ``fn`` on a daemon thread (one that hangs in salloc never holds the exit up)."""
    fut: Future = Future()

    def run() -> None:
        try:
            fut.set_result(fn())
        except BaseException as exc:     # handed to the caller through the future
            fut.set_exception(exc)
    threading.Thread(target=run, name="slurmft-refill", daemon=True).start()
    return fut


def refill_candidates(nodes: Sequence[Any], holding: Sequence[str], partition: str,
                      avoid: Sequence[str]) -> list[str]:
    """Idle nodes (no flag: not drained, not down, responding) of ``partition`` (any when
    empty) that the job does not hold and the supervisor does not ``avoid``, by name."""
    taken = set(holding) | set(avoid)
    return sorted(n.name for n in nodes
                  if n.state == "idle" and not n.flags and n.name not in taken
                  and (not partition or not n.partitions or partition in n.partitions))


def after_batch_host(candidates: Sequence[str], listed: Sequence[str],
                     batch_host: str) -> tuple[list[str], list[str]]:
    """``candidates`` split into those Slurm lists (``listed``: its node table order) after
    ``batch_host`` and those before it (which would make Slurm requeue the job: module
    docstring). All are usable when the batch host is unknown or not listed."""
    index = {name: i for i, name in enumerate(listed)}
    if batch_host not in index:
        return list(candidates), []
    first = index[batch_host]
    return ([c for c in candidates if index.get(c, -1) > first],
            [c for c in candidates if index.get(c, -1) <= first])


class SpareRefill:
    """Keeps a job at ``target`` nodes (training nodes + spares) by growing it with idle
    nodes; ``poll()`` from the supervisor's loop starts a ``look`` when one is due (on
    ``submit``'s worker: a thread by default) and returns the nodes a finished look added."""

    def __init__(self, job_id: int, target: int, slurm: ExpandingSlurm, *,
                 restart_count: int = 0, partition: str = "",
                 interval: float = REFILL_INTERVAL_S,
                 avoid: Callable[[], Sequence[str]] = tuple,
                 clock: Callable[[], float] = time.monotonic,
                 submit: Callable[[Callable[[], list[str]]], Future] = in_thread) -> None:
        self.job_id, self.target, self.slurm = job_id, target, slurm
        self.restart_count = restart_count
        self.partition, self.interval, self.avoid, self.clock = partition, interval, avoid, clock
        self.submit = submit
        self.next_look = clock() + interval
        self.enabled = target > 0
        self.added: list[str] = []
        self._skipped: list[str] = []        # idle nodes last left out (logged once)
        self._look: Future | None = None

    def poll(self) -> list[str]:
        """The nodes taken in by a look that finished since the last call (never waits)."""
        if self.enabled and self._look is None and self.clock() >= self.next_look:
            self._look = self.submit(self.look)
        if self._look is None or not self._look.done():
            return []
        look, self._look = self._look, None
        self.next_look = self.clock() + self.interval
        try:
            return look.result()
        except Exception as exc:          # look() handles Slurm's errors; anything else
            log.error("job %s: the spare refill failed: %s", self.job_id, exc,
                      extra={"job": str(self.job_id)})
            return []

    def look(self) -> list[str]:
        """One look: grow the job by the idle nodes it misses; the nodes it took."""
        try:
            holding = self.slurm.allocation(self.job_id)
            missing = self.target - len(holding)
            if not holding or missing <= 0:
                return []
            listed = self.slurm.nodes()
            idle = refill_candidates(listed, holding, self.partition, self.avoid())
            if not idle:
                return []
            job = self.slurm.job(self.job_id)
            if not self._is_this_run(job):
                return []
            idle, before = after_batch_host(idle, [n.name for n in listed], job.batch_host)
            if before and before != self._skipped:
                log.warning("job %s: idle %s not taken as spare(s): Slurm lists them before "
                            "the batch host %s, and it requeues a grown job whose first node is "
                            "not its batch host", self.job_id, fold(before), job.batch_host,
                            extra={"job": str(self.job_id)})
            self._skipped = before
        except SlurmFTError as exc:
            log.warning("job %s: cannot look for a node to refill its spares: %s", self.job_id,
                        exc, extra={"job": str(self.job_id)})
            return []
        added = []
        for node in idle[:missing]:
            try:
                self.slurm.expand(self.job_id, node, self.partition)
            except SlurmFTError as exc:
                if NOT_PERMITTED in str(exc).lower():
                    self.enabled = False
                    log.warning("job %s: Slurm does not let a running job grow (slurm.conf "
                                "needs SchedulerParameters=permit_job_expansion): used spares "
                                "are not refilled in this run", self.job_id,
                                extra={"job": str(self.job_id)})
                    break
                log.warning("job %s: could not take the idle node %s as a spare: %s",
                            self.job_id, node, exc, extra={"job": str(self.job_id)})
                continue
            added.append(node)
        try:
            requeued = bool(added) and not self._same_run()
        except SlurmFTError:
            requeued = False
        if requeued:                 # this copy is stale now: nothing of it to warm up
            log.error("job %s: requeued while %s was taken in: check its node count "
                      "(scontrol show job %s)", self.job_id, fold(added), self.job_id,
                      extra={"job": str(self.job_id)})
            return []
        if added:
            self.added += added
            log.warning("job %s: %s idle again, taken into the job as spare(s) (%s of %s "
                        "node(s) held)", self.job_id, fold(added), len(holding) + len(added),
                        self.target, extra={"job": str(self.job_id)})
        return added

    def _same_run(self) -> bool:
        return self._is_this_run(self.slurm.job(self.job_id))

    def _is_this_run(self, job: Any) -> bool:
        """Grow only the run this copy belongs to: RUNNING, not requeued since it started
        (a job requeued meanwhile and grown was seen to end FAILED)."""
        return job.state == "RUNNING" and job.restart_count == self.restart_count


__all__ = ["ExpandingSlurm", "REFILL_INTERVAL_S", "SpareRefill", "after_batch_host", "in_thread",
           "refill_candidates"]
