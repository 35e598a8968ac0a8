"""Faults on a namespace cluster's node, one method per ``Fault`` (``NodeFaults``, mixed
into ``Cluster``) and ``FAULT_HANDLERS``, the one table that ``Cluster.fault`` dispatches on.

kill-slurmd, restart-slurmd; link-down, link-up (the controller-side veth); stop-sshd,
start-sshd, freeze-sshd, thaw-sshd (SIGSTOP/SIGCONT: ping answers, SSH hangs); kill-job-procs
(SIGKILL to the tasks under the node's slurmstepd and to non-sshd processes under its sshd,
e.g. MPI ranks; see ``Cluster.job_pids``); hang, unhang (SIGSTOP to one training rank among
those job processes, SIGCONT to the stopped ones: ``procs.stop_rank``); slow, unslow (a
SIGSTOP/SIGCONT duty cycle on one training rank by a helper process: ``procs.slow_rank``).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

from slurmft.core.errors import ClusterError
from slurmft.testbed import procs
from slurmft.testbed.backend import Fault
from slurmft.testbed.layout import Layout
from slurmft.testbed.procs import Proc


class NodeFaults:
    """The fault methods of ``Cluster`` (it provides ``_proc``, ``_start_*``, ``_wait``...)."""

    def _signal_daemon(self, key: str, sig: int) -> Proc:
        proc = self._proc(key)
        if proc is None or not procs.signal_proc(proc, sig):
            raise ClusterError(f"{key.replace(':', ' ')} is not running")
        return proc

    def kill_slurmd(self, lay: Layout, node: str) -> str:
        p = self._signal_daemon(f"{node}:slurmd", signal.SIGKILL)
        procs.wait_gone([p], 5)
        return f"killed slurmd on {node} (pid {p.pid})"

    def restart_slurmd(self, lay: Layout, node: str) -> str:
        old = self._proc(f"{node}:slurmd")
        if old and procs.signal_proc(old, signal.SIGTERM):
            if procs.wait_gone([old], 5):
                procs.signal_proc(old, signal.SIGKILL)
                procs.wait_gone([old], 5)
        self._start_slurmd(lay, node)
        time.sleep(0.1)
        self._check_alive(f"{node}:slurmd", lay.log(f"slurmd-{node}"))
        return f"started slurmd on {node} (pid {self._proc(f'{node}:slurmd').pid})"

    def link_down(self, lay: Layout, node: str) -> str:
        procs.run(["ip", "-n", lay.netns_ctl, "link", "set", lay.veth(node), "down"])
        return f"link of {node} down"

    def link_up(self, lay: Layout, node: str) -> str:
        procs.run(["ip", "-n", lay.netns_ctl, "link", "set", lay.veth(node), "up"])
        return f"link of {node} up"

    def stop_sshd(self, lay: Layout, node: str) -> str:
        p = self._proc(f"{node}:sshd")
        if p:
            procs.signal_proc(p, signal.SIGCONT)
        p = self._signal_daemon(f"{node}:sshd", signal.SIGTERM)
        procs.wait_gone([p], 5)
        return f"stopped sshd on {node} (pid {p.pid})"

    def start_sshd(self, lay: Layout, node: str) -> str:
        old = self._proc(f"{node}:sshd")
        if procs.alive(old):
            return f"sshd on {node} already running (pid {old.pid})"
        self._start_sshd(lay, node)
        self._wait(lambda: (lay.run_dir / f"sshd-{node}.pid").exists()
                   or not procs.alive(self._proc(f"{node}:sshd")), 10, f"sshd on {node}")
        self._check_alive(f"{node}:sshd", lay.log(f"sshd-{node}"))
        return f"started sshd on {node} (pid {self._proc(f'{node}:sshd').pid})"

    def freeze_sshd(self, lay: Layout, node: str) -> str:
        p = self._signal_daemon(f"{node}:sshd", signal.SIGSTOP)
        procs.wait_for_state(p, "stopped", 5)
        return f"froze sshd on {node} (pid {p.pid}, SIGSTOP)"

    def thaw_sshd(self, lay: Layout, node: str) -> str:
        p = self._signal_daemon(f"{node}:sshd", signal.SIGCONT)
        return f"thawed sshd on {node} (pid {p.pid}, SIGCONT)"

    def kill_job_procs(self, lay: Layout, node: str) -> str:
        return procs.kill_job_procs(node, self.job_pids(node))

    def hang(self, lay: Layout, node: str) -> str:
        return procs.stop_rank(node, self.job_pids(node))

    def unhang(self, lay: Layout, node: str) -> str:
        return procs.continue_procs(node, self.job_pids(node))

    def slow(self, lay: Layout, node: str) -> str:
        return procs.slow_rank(node, self.job_pids(node))

    def unslow(self, lay: Layout, node: str) -> str:
        return procs.unslow_ranks(node, self.job_pids(node))


FAULT_HANDLERS: dict[Fault, Callable[..., str]] = {
    Fault.KILL_SLURMD: NodeFaults.kill_slurmd,
    Fault.RESTART_SLURMD: NodeFaults.restart_slurmd,
    Fault.LINK_DOWN: NodeFaults.link_down,
    Fault.LINK_UP: NodeFaults.link_up,
    Fault.STOP_SSHD: NodeFaults.stop_sshd,
    Fault.START_SSHD: NodeFaults.start_sshd,
    Fault.FREEZE_SSHD: NodeFaults.freeze_sshd,
    Fault.THAW_SSHD: NodeFaults.thaw_sshd,
    Fault.KILL_JOB_PROCS: NodeFaults.kill_job_procs,
    Fault.HANG: NodeFaults.hang,
    Fault.UNHANG: NodeFaults.unhang,
    Fault.SLOW: NodeFaults.slow,
    Fault.UNSLOW: NodeFaults.unslow,
}
