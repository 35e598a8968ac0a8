"""The previous run's srun clients on peers, found and stopped before a requeued run makes
its first job step.

The supervisor starts its launcher's and its warm pool's ``srun`` on a peer node over ssh
(``supervise.peer``), outside any job step. When the batch host is lost, the job is requeued
and those sruns live on, on the peers, in ssh sessions nobody ends. Slurm kills their steps;
each srun then waits ``KillWait`` + 2 s for its tasks' exits, which never all come, and sends
its step a last SIGKILL by number (``Timed out waiting for job step to complete``). A requeued
job numbers its steps from 0 again: that kill hits the new run's step of the same number (seen
on the local cluster: the new warm pool, step 0, killed 7 s after the requeue's kill, and the
new launch's ranks waiting 30 s for servers that were gone). So each peer script leaves its
pid in ``<checkpoint dir>/.slurmft-peer/<job>/<restart>/<node>.<pid>`` before it execs srun,
and a requeued run first kills the earlier runs' sruns still there (checked on the node: an
srun of this job), then removes the notes.

Sites with ``pam_slurm_adopt`` put those ssh sessions in the job (Slurm ends them with it);
this changes nothing there.
"""

from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

from slurmft.core.log import get_logger
from slurmft.core.nodeset import is_valid_hostname

log = get_logger(__name__)

#: Under the checkpoint directory: one folder per job, one per run (SLURM_RESTART_COUNT).
PEER_DIR = ".slurmft-peer"
_NOTE = re.compile(r"^(?P<node>.+)\.(?P<pid>[1-9][0-9]{0,9})$")


def note_dir(checkpoint_dir: Path, job_id: int, restart_count: int) -> Path:
    """Where this run's peer scripts leave their pids."""
    return checkpoint_dir / PEER_DIR / str(int(job_id)) / str(int(restart_count))


@dataclass(frozen=True)
class Strays:
    """The earlier runs' srun pids per node, and the folders that named them."""

    pids: dict[str, list[int]]
    folders: list[Path]


def find_strays(checkpoint_dir: Path, job_id: int, restart_count: int) -> Strays:
    """The notes of runs before ``restart_count`` (a name that is not ``NODE.PID`` with a
    valid host name is ignored)."""
    root = checkpoint_dir / PEER_DIR / str(int(job_id))
    pids: dict[str, list[int]] = {}
    folders = []
    try:
        runs = [p for p in root.iterdir() if p.name.isdigit() and int(p.name) < restart_count]
    except OSError:
        return Strays({}, [])
    for run in sorted(runs):
        folders.append(run)
        try:
            names = sorted(p.name for p in run.iterdir())
        except OSError:
            continue
        for name in names:
            m = _NOTE.match(name)
            if m and is_valid_hostname(m["node"]):
                pids.setdefault(m["node"], []).append(int(m["pid"]))
    return Strays(pids, folders)


def kill_command(job_id: int, pids: list[int]) -> str:
    """The remote command that SIGKILLs each of ``pids`` that is still an srun of job
    ``job_id`` (its environment says so): a pid reused by anything else is left alone."""
    job = int(job_id)
    script = ("for p in " + " ".join(str(int(p)) for p in pids) + "; do "
              "case $(readlink /proc/$p/exe 2>/dev/null) in */srun) ;; *) continue;; esac; "
              f"tr '\\0' '\\n' < /proc/$p/environ 2>/dev/null | grep -qx 'SLURM_JOB_ID={job}' "
              "&& kill -KILL $p 2>/dev/null; done; exit 0")
    return shlex.join(["sh", "-c", script])


def forget(strays: Strays) -> None:
    """Remove the notes once their sruns were dealt with (best effort)."""
    for folder in strays.folders:
        shutil.rmtree(folder, ignore_errors=True)


def clear_job_notes(checkpoint_dir: Path, job_id: int, kinds: tuple[str, ...]) -> None:
    """A finished job's notes of every run, ``<checkpoint dir>/<kind>/<job>`` for each kind
    (best effort), and each ``<kind>`` folder left empty: nothing of them is read again."""
    for kind in kinds:
        shutil.rmtree(checkpoint_dir / kind / str(int(job_id)), ignore_errors=True)
        try:
            (checkpoint_dir / kind).rmdir()
        except OSError:
            pass                # another job's notes are there, or it never existed


def note_line(directory: Path, node: str) -> str:
    """The peer script's line that leaves its pid (``$$``: the srun it execs next)."""
    d = shlex.quote(str(directory))
    return f"mkdir -p {d} 2>/dev/null && : > {d}/{shlex.quote(node)}.$$ 2>/dev/null"


def log_found(job_id: int, strays: Strays) -> None:
    if strays.pids:
        log.warning("job %s: stopping the srun clients the run before this requeue left on "
                    "%s (a last kill from them would hit this run's steps of the same number)",
                    job_id, ",".join(sorted(strays.pids)), extra={"job": str(job_id)})
