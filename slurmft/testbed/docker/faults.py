"""Faults on a docker cluster's node, one handler per ``Fault``.

link-down/up = ``docker network disconnect/connect``; node-down/up = ``docker stop/start``;
kill/restart-slurmd, stop/start/freeze/thaw-sshd = ``docker exec CTR pkill -SIG -F PIDFILE``
(or starting the daemon again); kill-job-procs = SIGKILL to the container's job processes,
found from this machine's process table; hang/unhang = SIGSTOP to one training rank among
them, SIGCONT to the stopped ones; slow/unslow = a SIGSTOP/SIGCONT duty cycle on one
training rank by a helper process on this machine (``procs.slow_rank``), and its end.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from slurmft.testbed import procs
from slurmft.testbed.backend import Fault
from slurmft.testbed.docker.client import Docker

if TYPE_CHECKING:
    from slurmft.testbed.docker.cluster import DockerCluster

SSHD_PID = "/run/sshd.pid"                   # inside the containers
# Wait (5 s at most) until the process in pid file $1 is gone. Constant text; the path is $1.
WAIT_GONE_SH = ('for i in $(seq 50); do pkill -0 -F "$1" 2>/dev/null || exit 0; sleep 0.1; '
                'done; echo "still running" >&2; exit 1')


@dataclass(frozen=True)
class NodeTarget:
    """The node a fault hits, as Docker names it."""

    docker: Docker
    fault: Fault
    node: str
    container: str
    network: str
    ip: str
    slurmd_pid: str               # slurmd's pid file inside the container

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.docker.run(*args, check=check, what=f"{self.fault} {self.node}")

    def in_node(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.docker.run("exec", self.container, *argv, check=check,
                               what=f"{self.fault} on {self.node}")


def link_down(c: DockerCluster, t: NodeTarget) -> str:
    t.run("network", "disconnect", "-f", t.network, t.container)
    return f"link of {t.node} down (disconnected from {t.network})"


def link_up(c: DockerCluster, t: NodeTarget) -> str:
    if c.links().get(t.node) == "up":
        return f"link of {t.node} already up"
    t.run("network", "connect", "--ip", t.ip, t.network, t.container)
    t.in_node("ip", "route", "del", "default", check=False)   # Docker re-adds it
    return f"link of {t.node} up"


def node_down(c: DockerCluster, t: NodeTarget) -> str:
    t.run("stop", "-t", "1", t.container)
    return f"container {t.container} stopped"


def node_up(c: DockerCluster, t: NodeTarget) -> str:
    t.run("start", t.container)
    return f"container {t.container} started"


def kill_slurmd(c: DockerCluster, t: NodeTarget) -> str:
    t.in_node("pkill", "-KILL", "-F", t.slurmd_pid)
    return f"killed slurmd on {t.node}"


def restart_slurmd(c: DockerCluster, t: NodeTarget) -> str:
    t.in_node("pkill", "-TERM", "-F", t.slurmd_pid, check=False)
    t.in_node("sh", "-c", WAIT_GONE_SH, "sh", t.slurmd_pid)
    t.in_node("/usr/sbin/slurmd")
    return f"started slurmd on {t.node}"


def stop_sshd(c: DockerCluster, t: NodeTarget) -> str:
    t.in_node("pkill", "-CONT", "-F", SSHD_PID, check=False)
    t.in_node("pkill", "-TERM", "-F", SSHD_PID)
    t.in_node("sh", "-c", WAIT_GONE_SH, "sh", SSHD_PID)
    return f"stopped sshd on {t.node}"


def start_sshd(c: DockerCluster, t: NodeTarget) -> str:
    if t.in_node("pkill", "-0", "-F", SSHD_PID, check=False).returncode == 0:
        return f"sshd on {t.node} already running"
    t.in_node("/usr/sbin/sshd")
    return f"started sshd on {t.node}"


def freeze_sshd(c: DockerCluster, t: NodeTarget) -> str:
    t.in_node("pkill", "-STOP", "-F", SSHD_PID)
    return f"froze sshd on {t.node} (SIGSTOP)"


def thaw_sshd(c: DockerCluster, t: NodeTarget) -> str:
    t.in_node("pkill", "-CONT", "-F", SSHD_PID)
    return f"thawed sshd on {t.node} (SIGCONT)"


def kill_job_procs(c: DockerCluster, t: NodeTarget) -> str:
    return procs.kill_job_procs(t.node, c.job_pids(t.node))


def hang(c: DockerCluster, t: NodeTarget) -> str:
    return procs.stop_rank(t.node, c.job_pids(t.node))


def unhang(c: DockerCluster, t: NodeTarget) -> str:
    return procs.continue_procs(t.node, c.job_pids(t.node))


def slow(c: DockerCluster, t: NodeTarget) -> str:
    return procs.slow_rank(t.node, c.job_pids(t.node))


def unslow(c: DockerCluster, t: NodeTarget) -> str:
    return procs.unslow_ranks(t.node, c.job_pids(t.node))


FAULT_HANDLERS: dict[Fault, Callable[[DockerCluster, NodeTarget], str]] = {
    Fault.KILL_SLURMD: kill_slurmd, Fault.RESTART_SLURMD: restart_slurmd,
    Fault.LINK_DOWN: link_down, Fault.LINK_UP: link_up,
    Fault.STOP_SSHD: stop_sshd, Fault.START_SSHD: start_sshd,
    Fault.FREEZE_SSHD: freeze_sshd, Fault.THAW_SSHD: thaw_sshd,
    Fault.KILL_JOB_PROCS: kill_job_procs, Fault.HANG: hang, Fault.UNHANG: unhang,
    Fault.SLOW: slow, Fault.UNSLOW: unslow,
    Fault.NODE_DOWN: node_down, Fault.NODE_UP: node_up,
}
