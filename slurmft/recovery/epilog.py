"""Entry for Slurm's ``Epilog``/``EpilogSlurmctld``: hand the job to a detached rescheduler.

Slurm's docs say epilog scripts should not call Slurm commands, and a failing node Epilog
drains the node. So this hook only reads SLURM_* variables, starts
``slurmft reschedule <job> --settle S --nodes <nodelist>`` in its own session (it outlives the
hook and asks Slurm for the job's real state: the epilog's exit code is 0 even on NODE_FAIL),
and returns at once. It never raises, never prints a traceback, and always returns 0. A job
that ended normally (COMPLETED) leaves no line in the audit log: the rescheduler writes none
for it (rescheduler.ended_normally).

Use it from slurm.conf through a small script, e.g.::

    #!/bin/sh
    export SLURMFT_CONFIG=/etc/slurmft.yaml
    exec /opt/slurmft/bin/python -m slurmft epilog
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from slurmft.core.log import get_logger
from slurmft.core.nodeset import expand
from slurmft.core.selfcmd import slurmft_argv

log = get_logger(__name__)

#: Variables the epilogs set for the nodes of a job (slurmctld's has SLURM_JOB_NODELIST).
NODELIST_VARS = ("SLURM_JOB_NODELIST", "SLURM_NODELIST")


@dataclass(frozen=True)
class EpilogResult:
    job_id: int | None
    spawned: bool
    argv: tuple[str, ...] = ()
    pid: int | None = None
    message: str = ""


def reschedule_argv(env: Mapping[str, str], slurmft_cmd: Sequence[str],
                    settle: float = 30.0) -> tuple[int, list[str]] | None:
    """The detached command for this epilog's job, or None if the env names no usable job."""
    raw = env.get("SLURM_JOB_ID", "").strip()
    if not raw.isdigit() or int(raw) <= 0:
        return None
    job_id = int(raw)
    argv = [*slurmft_cmd, "reschedule", str(job_id), "--settle", f"{settle:g}"]
    for var in NODELIST_VARS:
        nodes = env.get(var, "").strip()
        if nodes:
            try:
                expand(nodes)          # only a valid hostlist goes on the command line
            except Exception:          # noqa: BLE001 - the hook never fails
                continue
            argv += ["--nodes", nodes]
            break
    return job_id, argv


def run_epilog(env: Mapping[str, str] | None = None, *, slurmft_cmd: Sequence[str] = (),
               log_file: str | os.PathLike | None = None, settle: float = 30.0,
               spawn: Callable[..., subprocess.Popen] = subprocess.Popen) -> EpilogResult:
    """Start the detached rescheduler for the job in ``env``; never raises."""
    env = dict(os.environ if env is None else env)
    try:
        cmd = list(slurmft_cmd) or slurmft_argv()
        found = reschedule_argv(env, cmd, settle)
        if found is None:
            return EpilogResult(None, False, message="no valid SLURM_JOB_ID: nothing to do")
        job_id, argv = found
        out = subprocess.DEVNULL
        fh = None
        if log_file:
            try:
                Path(log_file).parent.mkdir(parents=True, exist_ok=True)
                fh = open(log_file, "ab")  # noqa: SIM115 - handed to the child, closed below
                out = fh
            except OSError:
                out = subprocess.DEVNULL
        try:
            proc = spawn(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                         start_new_session=True, close_fds=True, env=env)
        finally:
            if fh is not None:
                fh.close()
        log.info("epilog: job %s handed to detached reschedule (pid %s)", job_id, proc.pid,
                 extra={"job": str(job_id)})
        return EpilogResult(job_id, True, tuple(argv), proc.pid,
                            f"job {job_id}: reschedule started (pid {proc.pid})")
    except Exception as exc:  # noqa: BLE001 - a failing epilog would drain the node
        log.error("epilog: could not start reschedule: %s", exc)
        return EpilogResult(None, False, message=f"could not start reschedule: {exc}")
