"""The side effects the restart policy plans, one typed record per kind.

Each action knows the one ``SlurmClient`` call that carries it out (``apply``); the argv that
call runs is built once, by ``slurm.commands``, and seen at the runner seam (a
``RecordingRunner`` records it for the audit log, or, in a dry run, instead of running it).
``op`` is the name the audit log and ``--json`` have always used for the action.
``SubmitRestart`` needs a rendered script, so the rescheduler carries it out itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from slurmft.core.errors import SlurmFTError


D = TypeVar("D")


@dataclass(frozen=True)
class Action:
    """Base of every planned side effect."""

    op: ClassVar[str] = ""

    def apply(self, client: Any) -> None:
        """Carry the action out through ``client`` (a SlurmClient)."""
        raise NotImplementedError(f"{type(self).__name__} is carried out by the rescheduler")

    def to_dict(self) -> dict:
        """``{"op": ..., field: value, ...}`` without unset fields (and without an empty
        ``nodes``); tuples as lists."""
        doc: dict[str, Any] = {"op": self.op}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or value is False or (f.name == "nodes" and not value):
                continue
            doc[f.name] = list(value) if isinstance(value, tuple) else value
        return doc


@dataclass(frozen=True)
class NodeAction(Action):
    nodes: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class DownNodes(NodeAction):
    """``State=DOWN``: releases a running job from the nodes at once."""

    op: ClassVar[str] = "down"

    def apply(self, client: Any) -> None:
        client.down(list(self.nodes), self.reason)


@dataclass(frozen=True)
class DrainNodes(NodeAction):
    """``State=DRAIN``: keeps the nodes out of new jobs until an operator resumes them."""

    op: ClassVar[str] = "drain"

    def apply(self, client: Any) -> None:
        client.drain(list(self.nodes), self.reason)


@dataclass(frozen=True)
class JobAction(Action):
    job_id: int


@dataclass(frozen=True)
class HoldJob(JobAction):
    op: ClassVar[str] = "hold"

    def apply(self, client: Any) -> None:
        client.hold(self.job_id)


@dataclass(frozen=True)
class ReleaseJob(JobAction):
    op: ClassVar[str] = "release"

    def apply(self, client: Any) -> None:
        client.release(self.job_id)


@dataclass(frozen=True)
class RequeueJob(JobAction):
    op: ClassVar[str] = "requeue"

    def apply(self, client: Any) -> None:
        client.requeue(self.job_id)


@dataclass(frozen=True)
class RequeueHoldJob(JobAction):
    op: ClassVar[str] = "requeue_hold"

    def apply(self, client: Any) -> None:
        client.requeue_hold(self.job_id)


@dataclass(frozen=True)
class KillJob(JobAction):
    """SIGKILL to the job's ``steps`` by number (None: those Slurm lists then), then to the
    whole job; a requeue follows (``SlurmClient.kill_job``)."""

    steps: tuple[int, ...] | None = None

    op: ClassVar[str] = "kill_job"

    def apply(self, client: Any) -> None:
        client.kill_job(self.job_id, steps=self.steps)


@dataclass(frozen=True)
class SignalBatch(JobAction):
    signal: str

    op: ClassVar[str] = "signal_batch"

    def apply(self, client: Any) -> None:
        client.signal_batch(self.job_id, self.signal)


@dataclass(frozen=True)
class UpdateJob(JobAction):
    """One ``scontrol update JobId=..`` request; unset fields are left alone."""

    exclude: tuple[str, ...] | None = None
    num_nodes: tuple[int, int] | None = None
    num_tasks: int | None = None
    num_cpus: int | None = None
    required: tuple[str, ...] | None = None
    start_now: bool = False
    comment: str | None = None

    op: ClassVar[str] = "update_job"

    @property
    def only_comment(self) -> bool:
        """Sets the comment and nothing else."""
        return self.comment is not None and not any(
            getattr(self, f.name) not in (None, False) for f in dataclasses.fields(self)
            if f.name not in ("job_id", "comment"))

    def apply(self, client: Any) -> None:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name != "job_id"}
        client.update_job(self.job_id, **{k: v for k, v in fields.items()
                                          if v is not None and v is not False})


@dataclass(frozen=True)
class SubmitRestart(JobAction):
    """A restart job for an ended job Slurm cannot requeue, pinned to ``nodes``."""

    nodes: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    num_nodes: int = 0

    op: ClassVar[str] = "submit_restart"


def with_kill_steps(decision: D, steps_of: Callable[[int], list[int]]) -> D:
    """``decision`` (a record with ``actions``) with each ``KillJob``'s steps read through
    ``steps_of`` (the watcher's one listing of every job's steps per cycle: no ``squeue
    --steps`` per killed job); a kill whose read fails lists its job's steps itself."""
    def resolved(action: Action) -> Action:
        if not isinstance(action, KillJob) or action.steps is not None:
            return action
        try:
            return dataclasses.replace(action, steps=tuple(steps_of(action.job_id)))
        except SlurmFTError:
            return action
    return dataclasses.replace(decision,
                               actions=tuple(resolved(a) for a in decision.actions))


def starts_job(action: Action) -> bool:
    """Whether ``action`` lets a held or pending job start."""
    return isinstance(action, ReleaseJob) or (isinstance(action, UpdateJob) and action.start_now)


def holds_job(action: Action) -> bool:
    return isinstance(action, (HoldJob, RequeueHoldJob))


def requeues_job(action: Action) -> bool:
    return isinstance(action, (RequeueJob, RequeueHoldJob))
