"""What every local test cluster offers, whatever runs it: the ``ClusterBackend`` protocol,
the ``Fault`` names (the one list), and ``open_cluster`` that picks a backend by name.

Two backends implement the protocol: ``netns`` (``slurmft.testbed.netns.Cluster``: network
namespaces on this machine) and ``docker`` (``slurmft.testbed.docker.DockerCluster``:
containers). Callers (the CLI, the demo, the benchmarks) hold a ``ClusterBackend`` and never
ask which one it is; a backend that cannot inject a fault leaves it out of its ``faults``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from slurmft.core.errors import UsageError

BACKENDS = ("netns", "docker")
DEFAULT_BACKEND = "netns"


class Fault(str, Enum):
    """A fault a local cluster can inject on one node (``cluster fault NODE FAULT``)."""

    KILL_SLURMD = "kill-slurmd"          # SIGKILL slurmd
    RESTART_SLURMD = "restart-slurmd"    # stop slurmd (TERM, then KILL) and start it again
    LINK_DOWN = "link-down"              # cut the node's link to the cluster network
    LINK_UP = "link-up"                  # restore it
    STOP_SSHD = "stop-sshd"
    START_SSHD = "start-sshd"
    FREEZE_SSHD = "freeze-sshd"          # SIGSTOP: ping answers, SSH hangs
    THAW_SSHD = "thaw-sshd"              # SIGCONT
    KILL_JOB_PROCS = "kill-job-procs"    # SIGKILL the job's tasks and MPI ranks on the node
    HANG = "hang"                        # SIGSTOP one training rank on the node: it hangs
    UNHANG = "unhang"                    # SIGCONT the node's stopped job processes
    SLOW = "slow"                        # one training rank stopped half the time (duty cycle)
    UNSLOW = "unslow"                    # end the duty cycle; SIGCONT the node's job processes
    NODE_DOWN = "node-down"              # the whole node stops (docker: its container)
    NODE_UP = "node-up"

    def __str__(self) -> str:
        return self.value

    @property
    def needs_slurm(self) -> bool:
        return self in (Fault.KILL_SLURMD, Fault.RESTART_SLURMD)

    @classmethod
    def parse(cls, text: str | Fault, allowed: Sequence[Fault] | None = None) -> Fault:
        """The Fault named ``text``; UsageError naming the choices if it is none of
        ``allowed`` (default: every fault)."""
        choices = list(cls) if allowed is None else list(allowed)
        try:
            fault = cls(text)
        except ValueError:
            fault = None
        if fault is None or fault not in choices:
            raise UsageError(f"unknown fault {str(text)!r}: use one of "
                             f"{', '.join(f.value for f in choices)}")
        return fault


#: Faults that need the node to keep running as a whole (every backend can do these).
PROCESS_FAULTS: tuple[Fault, ...] = tuple(f for f in Fault
                                          if f not in (Fault.NODE_DOWN, Fault.NODE_UP))


@runtime_checkable
class ClusterBackend(Protocol):
    """The public surface that both local cluster backends share.

    Paths (``shared_dir``, ``slurm_conf_path``, ``ssh_config_path``...) name places as the
    commands run by ``exec_argv`` see them. ``env()`` is the environment to run those argv
    with. ``fault`` returns one line saying what was done.
    """

    name: str
    backend: str
    faults: tuple[Fault, ...]

    def up(self, nodes: int = 4, *, slurm: bool = True, epilog: str = "",
           subnet: str | None = None, timeout: float = 90.0) -> Any: ...

    def down(self) -> list[str]: ...

    def is_up(self) -> bool: ...

    def status(self) -> dict: ...

    def fault(self, node: str, fault: Fault | str) -> str: ...

    def job_pids(self, node: str) -> list[int]: ...

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]: ...

    def exec_argv(self, argv: Sequence[str]) -> list[str]: ...

    def node_exec_argv(self, node: str, argv: Sequence[str]) -> list[str]: ...

    def run(self, argv: Sequence[str], *, check: bool = False, timeout: float = 60.0,
            input: str | None = None, cwd: str | os.PathLike | None = None) -> Any: ...

    def execvpe(self, argv: Sequence[str]) -> None: ...

    def log_path(self, what: str) -> Path: ...

    def ip(self, node: str) -> str: ...

    @property
    def nodes(self) -> list[str]: ...

    @property
    def subnet(self) -> str: ...

    @property
    def shared_dir(self) -> Path: ...

    @property
    def slurm_conf_path(self) -> Path: ...

    @property
    def ssh_config_path(self) -> Path: ...

    @property
    def ssh_key_path(self) -> Path: ...

    @property
    def known_hosts_path(self) -> Path: ...

    @property
    def state_dir(self) -> Path: ...


def open_cluster(backend: str, name: str, **options: Any) -> ClusterBackend:
    """The cluster ``name`` of ``backend`` (``netns`` or ``docker``; empty: netns).

    ``options`` go to the backend's constructor (e.g. ``root=``). Nothing is started: call
    ``up()`` to build it, or use it as is when it already runs.
    """
    backend = backend or DEFAULT_BACKEND
    if backend == "netns":
        from slurmft.testbed.netns import Cluster
        return Cluster(name, **options)
    if backend == "docker":
        from slurmft.testbed.docker import DockerCluster
        return DockerCluster(name, **options)
    raise UsageError(f"unknown cluster backend {backend!r}: use one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "DEFAULT_BACKEND", "PROCESS_FAULTS", "ClusterBackend", "Fault",
           "open_cluster"]
