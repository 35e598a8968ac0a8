"""The Slurm client protocol and its records.

Records are plain dataclasses so policy code can be tested without Slurm. State names are
Slurm's upper-case base states (RUNNING, PENDING, COMPLETING, NODE_FAIL, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from slurmft.core.errors import InvalidNodeError

ENDED_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
     "DEADLINE", "OUT_OF_MEMORY"}
)


@dataclass(frozen=True)
class JobInfo:
    job_id: int
    name: str
    state: str
    user: str = ""
    user_id: int | None = None
    reason: str = ""
    nodes: tuple[str, ...] = ()
    node_count: int = 0
    excluded_nodes: tuple[str, ...] = ()
    required_nodes: tuple[str, ...] = ()   # sbatch -w/--nodelist: the job runs only with these
    requeue: bool = False
    restart_count: int = 0
    exit_code: int | None = None
    partition: str = ""
    work_dir: str = ""
    stdout: str = ""
    command: str = ""
    submit_time: int | None = None
    start_time: int | None = None
    batch_host: str = ""
    comment: str = ""              # --comment (slurmft's wrapper marks itself here)
    tasks: int = 0                 # NumTasks
    tasks_per_node: int = 0        # --ntasks-per-node; 0: not set
    cpus_per_task: int = 1

    @property
    def is_running(self) -> bool:
        return self.state in ("RUNNING", "COMPLETING", "CONFIGURING")

    @property
    def is_pending(self) -> bool:
        return self.state == "PENDING"

    @property
    def has_ended(self) -> bool:
        return self.state in ENDED_STATES


@dataclass(frozen=True)
class NodeInfo:
    name: str
    state: str  # lower-case base state as sinfo reports it: idle, allocated, mixed, down ...
    address: str = ""
    flags: tuple[str, ...] = ()  # DRAIN, NOT_RESPONDING, ...
    reason: str = ""
    cpus: int = 0
    partitions: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_drained(self) -> bool:
        return "DRAIN" in self.flags or self.state in ("drained", "draining")

    @property
    def is_down(self) -> bool:
        return self.state == "down"


def select_nodes(nodes: Sequence[NodeInfo], names: Sequence[str] | None) -> list[NodeInfo]:
    """All ``nodes``, or only ``names`` in that order (unknown ones skipped): what a client's
    ``nodes(names)`` answers, from one listing."""
    if names is None:
        return list(nodes)
    by_name = {n.name: n for n in nodes}
    return [by_name[n] for n in names if n in by_name]


def only_node(found: Sequence[NodeInfo], name: str) -> NodeInfo:
    """The one node a client's ``node(name)`` answers; InvalidNodeError (Slurm's own text)
    when the listing has none of that name."""
    if not found:
        raise InvalidNodeError(f"no such node: {name}",
                               slurm_message="Invalid node name specified")
    return found[0]


class SlurmClient(Protocol):
    def job(self, job_id: int) -> JobInfo: ...
    def jobs(self) -> list[JobInfo]: ...
    def steps(self, job_id: int) -> list[int]: ...
    def nodes(self) -> list[NodeInfo]: ...
    def drain(self, nodes: Sequence[str], reason: str) -> None: ...
    def down(self, nodes: Sequence[str], reason: str) -> None: ...
    def resume(self, nodes: Sequence[str]) -> None: ...
    def hold(self, job_id: int) -> None: ...
    def release(self, job_id: int) -> None: ...
    def requeue(self, job_id: int) -> None: ...
    def requeue_hold(self, job_id: int) -> None: ...
    def signal_batch(self, job_id: int, signal: str) -> None: ...
    def signal_steps(self, job_id: int, steps: Sequence[int], signal: str = "KILL") -> None: ...
    def kill_job(self, job_id: int, steps: Sequence[int] | None = None) -> None: ...
    def update_job(self, job_id: int, *, exclude: Sequence[str] | None = None,
                   num_nodes: tuple[int, int] | None = None,
                   num_tasks: int | None = None, num_cpus: int | None = None,
                   start_now: bool = False, required: Sequence[str] | None = None,
                   comment: str | None = None) -> None: ...
    def submit(self, script: str, args: Sequence[str] = ()) -> int: ...
