"""Where the supervisor starts a launcher: on a peer node over ssh (``launch_from`` peer), or
on the batch host itself.

Each launch on a peer is one ``ssh PEER bash -s``. A fresh ssh connection costs a key
exchange and a login: 0.24 s on an idle node of the local cluster, more on a loaded one, and
every relaunch after a fault pays it. ``PeerLauncher`` keeps one master connection per peer
(OpenSSH's ``ControlMaster``) in a private directory of its own, so a relaunch opens a session
on a connection that is up already (0.016 s on the same node). The master lives while any
session on it does (the warm pool's step keeps one for the whole job) and ``ControlPersist``
seconds after; ``close()`` ends it. A user turns it off with ``--ssh-args "-o
ControlMaster=no"`` (ssh keeps the first value it is given, and the user's come first).

Each peer script leaves its pid for the next run (``supervise.strays``); a requeued run's first
act is ``stop_strays``.
"""

from __future__ import annotations

import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from slurmft.core.log import get_logger
from slurmft.supervise.launch import LaunchSettings, on_peer_argv, peer_script, pick_peer
from slurmft.supervise.processes import Launched, Processes
from slurmft.supervise.strays import (find_strays, forget, kill_command, log_found, note_dir,
                                      note_line)

log = get_logger(__name__)

#: Seconds a master connection outlives its last session.
CONTROL_PERSIST_S = 60
#: ``sun_path`` holds 108 bytes; ssh's ``%C`` is 40 characters and appends a suffix of ~20
#: while it sets the socket up. A longer directory (a deep ``$TMPDIR``) gets no multiplexing.
_MAX_CONTROL_DIR = 40


def multiplexed(ssh_cmd: Sequence[str], control_dir: str) -> list[str]:
    """``ssh_cmd`` with connection sharing through sockets in ``control_dir`` (options after
    the caller's, so that a ``-o ControlMaster=no`` there wins)."""
    return [*ssh_cmd, "-o", "ControlMaster=auto", "-o", f"ControlPath={control_dir}/%C",
            "-o", f"ControlPersist={CONTROL_PERSIST_S}"]


def private_dir() -> str | None:
    """A new directory only this user can enter, for the control sockets (None: none could
    be made short enough, or /tmp is not writable: ssh then connects afresh each time)."""
    for parent in (None, "/tmp"):
        try:
            path = tempfile.mkdtemp(prefix="slurmft-ssh-", dir=parent)
        except OSError:
            continue
        if len(path) <= _MAX_CONTROL_DIR:
            return path
        shutil.rmtree(path, ignore_errors=True)
    return None


class PeerLauncher:
    """Starts launchers on the first peer of the nodes (checked once per peer: ssh works and
    the working directory is there), or here once ssh to a peer failed."""

    def __init__(self, settings: LaunchSettings, options: Any, processes: Processes, *,
                 make_dir: Callable[[], str | None] = private_dir) -> None:
        self.settings, self.options, self.processes = settings, options, processes
        self._make_dir = make_dir
        self._ssh: list[str] | None = None     # ssh argv, with multiplexing once set up
        self._control_dir: str | None = None
        self.ok = True                         # False once ssh to a peer failed: launch here
        self._checked: str | None = None
        self._used: list[str] = []              # peers with a master connection to end

    def start(self, nodes: list[str], argv: list[str], env: Mapping[str, str], *,
              own_step: bool = False) -> Launched:
        """Start ``argv`` on a peer over ssh (``launch_from`` peer) or here. ``own_step``:
        ``argv`` is an srun that makes its own job step (the warm pool), run on the peer as
        it is; else the launcher, which ``on_peer_argv`` puts in a step when it needs one."""
        s, o = self.settings, self.options
        if s.launch_from == "peer":
            peer = pick_peer(nodes, o.here)
            if peer is not None and self.ok and peer != self._checked:
                self._check(peer, env)
            if peer is not None and self.ok:
                run = list(argv) if own_step else on_peer_argv(s, o.job_id, peer, nodes, argv)
                note = note_line(note_dir(o.checkpoint_dir, o.job_id, o.restart_count), peer)
                script = peer_script(env, o.cwd, run, note)
                return self.processes.start([*self.ssh(), peer, "bash", "-s"], env, script)
        return self.processes.start(argv, env)

    def ssh(self) -> list[str]:
        """The ssh command line (made, and its socket directory with it, at the first use)."""
        if self._ssh is None:
            self._control_dir = self._make_dir()
            self._ssh = (multiplexed(self.settings.ssh_cmd, self._control_dir)
                         if self._control_dir else list(self.settings.ssh_cmd))
        return self._ssh

    def _check(self, peer: str, env: Mapping[str, str]) -> None:
        """ssh works and this directory is there too (shared storage): once per peer. This
        first ssh also opens the master connection the launches share."""
        o = self.options
        rc = self.processes.call([*self.ssh(), peer, f"cd {shlex.quote(o.cwd)}"], env,
                                 o.reschedule_log, o.peer_check_timeout)
        if rc == 0:
            self._checked = peer
            if peer not in self._used:
                self._used.append(peer)
            return
        self.ok = False
        log.warning("cannot ssh to %s or no %s there: %s runs on the batch host %s", peer,
                    o.cwd, self.settings.launcher, o.here, extra={"job": str(o.job_id)})

    def stop_strays(self, env: Mapping[str, str], wait: float = 3.0) -> None:
        """Before a requeued run's first job step: SIGKILL the srun clients the runs before
        it left on peers (``supervise.strays``), over ssh, all nodes at once, for at most
        ``wait`` seconds (a node that does not answer is gone, and its sruns with it)."""
        o = self.options
        if self.settings.launch_from != "peer" or o.restart_count <= 0:
            return
        strays = find_strays(o.checkpoint_dir, o.job_id, o.restart_count)
        log_found(o.job_id, strays)
        procs = []
        for node, pids in strays.pids.items():
            procs.append(self.processes.start([*self.ssh(), node, kill_command(o.job_id, pids)],
                                              env))
            if node not in self._used:
                self._used.append(node)
        deadline = time.monotonic() + wait
        for proc in procs:
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            if proc.poll() is None:
                proc.kill()
        forget(strays)

    def close(self, env: Mapping[str, str]) -> None:
        """End the master connections and remove their directory (best effort: Slurm ends
        whatever is left with the job)."""
        if self._control_dir is None:
            return
        for peer in self._used:
            self.processes.call([*self.ssh(), "-O", "exit", peer], env,
                                self.options.reschedule_log, 5.0)
        shutil.rmtree(self._control_dir, ignore_errors=True)
        self._control_dir, self._used = None, []

