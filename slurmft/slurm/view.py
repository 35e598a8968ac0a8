"""A cached view of Slurm for one watch cycle: what the watcher and the rescheduler read.

``slurmft watch`` looks at every running job each cycle. Asking Slurm per job (``squeue
--json`` to find one job, ``squeue --steps`` per job, the rescheduler reading the job again
and polling it after a requeue) made its load on slurmctld grow with the number of jobs.
``CachedSlurmClient`` wraps a client and, between two explicit ``refresh()`` calls, answers
from one snapshot:

    refresh()          ONE job listing (``squeue --all --json``): ``jobs()``, ``job(id)``
    nodes(names)       node states, read at most ONCE per refresh (``sinfo --json``)
    steps(id)          every job's steps, read at most ONCE per refresh (one ``squeue
                       --steps`` for all jobs), only in a cycle that needs them (a job acted
                       on, or one waiting for its restarted training's first step)
    fresh_job(id)      NOT cached: this one job now (``scontrol show job -o <id>``), for the
                       re-read under the rescheduler's lock; its cost does not grow with jobs

Writes are not the view's business: callers send them through their own client and call
``changed(id)`` after acting on a job, so a later ``job(id)`` in that cycle reads it again
instead of answering with what it was before the action. Node states are Slurm's as of the
first ``nodes()`` call of the cycle; node writes made in the cycle are not folded in (their
one reader, the rescheduler's ``slurm_health``, only adds failures the prober missed; a node
slurmft set DOWN or DRAIN in this cycle was found failed by the probe already).

``reads`` counts what the view asked of Slurm since the last refresh (``watch --json``
prints it per cycle). No global state: each watcher owns its view.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

from slurmft.core.errors import SlurmFTError
from slurmft.slurm.commands import check_job_id
from slurmft.slurm.records import JobInfo, NodeInfo, only_node, select_nodes


class SlurmReader(Protocol):
    """The reads a view needs of the client it wraps (``CommandSlurmClient`` has them all;
    ``read_job`` and ``all_steps`` are optional: without them the view falls back on
    ``job`` and ``steps``)."""

    def jobs(self) -> list[JobInfo]: ...
    def job(self, job_id: int) -> JobInfo: ...
    def nodes(self) -> list[NodeInfo]: ...
    def steps(self, job_id: int) -> list[int]: ...


@dataclass(frozen=True)
class SlurmSnapshot:
    """The jobs one listing returned, and when (wall time)."""

    taken: float
    jobs: tuple[JobInfo, ...]
    by_id: Mapping[int, JobInfo] = field(repr=False, compare=False)

    @classmethod
    def of(cls, jobs: Sequence[JobInfo], taken: float) -> SlurmSnapshot:
        return cls(taken, tuple(jobs), {j.job_id: j for j in jobs})


@dataclass
class ViewReads:
    """What a view asked of Slurm since its last refresh."""

    listings: int = 0       # squeue --all --json (the refresh itself)
    node_states: int = 0    # sinfo --json
    step_listings: int = 0  # squeue --steps (every job's steps, or one job's without all_steps)
    job_reads: int = 0      # one job alone (scontrol show job -o <id>)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class CachedSlurmClient:
    """The read side of the SlurmClient protocol, answered from one snapshot per
    ``refresh()`` (see the module's docstring for what each read costs)."""

    def __init__(self, client: SlurmReader, *,
                 wall: Callable[[], float] = time.time) -> None:
        self.client = client
        self.wall = wall
        self.reads = ViewReads()
        self._snapshot: SlurmSnapshot | None = None
        self._changed: set[int] = set()
        # None: not read this cycle; an exception: the read failed (not retried this cycle)
        self._nodes: list[NodeInfo] | SlurmFTError | None = None
        self._steps: dict[int, list[int]] | SlurmFTError | None = None

    # ------------------------------------------------------------------ the cycle
    def refresh(self) -> SlurmSnapshot:
        """Start a cycle: drop everything cached, list the jobs once. On failure the view
        holds no snapshot (nothing stale is answered) and the error is raised."""
        self._snapshot, self._nodes, self._steps = None, None, None
        self._changed.clear()
        self.reads = ViewReads(listings=1)
        self._snapshot = SlurmSnapshot.of(self.client.jobs(), self.wall())
        return self._snapshot

    @property
    def snapshot(self) -> SlurmSnapshot:
        """This cycle's snapshot (taken now if no refresh was made yet)."""
        return self._snapshot if self._snapshot is not None else self.refresh()

    def changed(self, job_id: int) -> None:
        """``job_id`` was acted on this cycle: ``job(job_id)`` reads it again from now on."""
        self._changed.add(int(job_id))

    # ------------------------------------------------------------------ reads
    def jobs(self) -> list[JobInfo]:
        """Every job of this cycle's listing (as listed, also those acted on since)."""
        return list(self.snapshot.jobs)

    def job(self, job_id: int) -> JobInfo:
        """The job as this cycle's listing shows it; read alone (``fresh_job``) when it is
        not in the listing or was acted on since."""
        job_id = check_job_id(job_id)
        found = self.snapshot.by_id.get(job_id)
        if found is None or job_id in self._changed:
            return self.fresh_job(job_id)
        return found

    def fresh_job(self, job_id: int) -> JobInfo:
        """This one job now, never from the cache."""
        self.reads.job_reads += 1
        read_one = getattr(self.client, "read_job", None)
        return read_one(job_id) if read_one is not None else self.client.job(job_id)

    def nodes(self, names: Sequence[str] | None = None) -> list[NodeInfo]:
        """Node states (read once this cycle), all or ``names`` in that order (unknown ones
        skipped), like ``CommandSlurmClient.nodes``."""
        if self._nodes is None:
            self.reads.node_states += 1
            try:
                self._nodes = list(self.client.nodes())
            except SlurmFTError as exc:
                self._nodes = exc
                raise
        if isinstance(self._nodes, SlurmFTError):
            raise self._nodes
        return select_nodes(self._nodes, names)

    def node(self, name: str) -> NodeInfo:
        return only_node(self.nodes([name]), name)

    def steps(self, job_id: int) -> list[int]:
        """The job's numbered steps: from one listing of every job's steps, taken the first
        time a step is asked for this cycle (before any action of the cycle on the job that
        asks: each job is acted on at most once per cycle, after its own question)."""
        job_id = check_job_id(job_id)
        list_all = getattr(self.client, "all_steps", None)
        if list_all is None:                    # a client that can only ask per job
            self.reads.step_listings += 1
            return list(self.client.steps(job_id))
        if self._steps is None:
            self.reads.step_listings += 1
            try:
                self._steps = dict(list_all())
            except SlurmFTError as exc:
                self._steps = exc
                raise
        if isinstance(self._steps, SlurmFTError):
            raise self._steps
        return list(self._steps.get(job_id, ()))
