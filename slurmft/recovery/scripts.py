"""Variables for the job scripts slurmft renders: the job wrapper (templates/job.sh.j2) and
the restart job (templates/restart.sh.j2, which extends it).

The wrapper has no control flow of its own: it execs ``slurmft run`` (slurmft/supervise/) with
these settings.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slurmft.core import nodeset as hosts
from slurmft.core.config import RescheduleConfig
from slurmft.core.errors import RenderError
from slurmft.core.selfcmd import python_target, slurmft_argv
from slurmft.recovery.policy import GROUP_MARK, RELAUNCH_MARK
from slurmft.slurm.records import JobInfo

_SBATCH_SAFE = re.compile(r"^[A-Za-z0-9_.,:/%+=@-]+$")


def sbatch_value(name: str, value: Any) -> str:
    """A value for an ``#SBATCH`` line (sbatch reads those itself: no quoting helps there)."""
    text = str(value)
    if text and not _SBATCH_SAFE.match(text):
        raise RenderError(f"{name} {text!r} cannot go on an #SBATCH line: use letters, digits "
                          "and _.,:/%+=@- only")
    return text


def safe_job_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64] or "slurmft"


def job_context(config: RescheduleConfig, *, train_cmd: str | Sequence[str], checkpoint_dir: str,
                job_name: str = "train", nodes: int = 1, partition: str = "",
                time_limit: str = "", work_dir: str = "", output: str = "",
                slurmft_cmd: Sequence[str] = (), reschedule_log: str = "",
                hang_timeout: str = "auto", spares: int = 0,
                straggler_action: str = "", straggler_factor: float | None = None,
                straggler_steps: int | None = None, replicas: int = 0,
                total_steps: int | None = None, group_jobs: bool = False,
                lighthouse: str = "", warm: bool = False) -> dict[str, Any]:
    """Variables for templates/job.sh.j2 (the job wrapper). ``hang_timeout``: auto, off or
    seconds, for ``slurmft run --hang-timeout``. ``spares``: extra nodes the job holds
    (``--nodes`` is then nodes + spares) to replace a lost one. ``straggler_*``: ``slurmft
    run --straggler-action/--straggler-factor/--straggler-steps`` (empty/None: its
    defaults, no option written). ``replicas``: per-step mode with torchft (``slurmft run
    --replicas``; 0: restart mode). ``total_steps``: ``slurmft run --total-steps`` (a job
    that shrank regains full size when it pays; None: not written). ``group_jobs``: one
    job per replica group, submitted once per group (``slurmft run --group-id``), torchft's
    lighthouse at ``lighthouse`` (checked by the caller). ``warm``: ``slurmft run --warm``
    (ranks forked from a pre-imported Python per node; restart mode, a Python command)."""
    if straggler_action not in ("", "report", "swap", "off"):
        raise RenderError(f"straggler action {straggler_action!r}: use report, swap or off")
    words = shlex.split(train_cmd) if isinstance(train_cmd, str) else list(train_cmd)
    if not words:
        raise RenderError("a training command is required (--train-cmd)")
    if replicas and (int(nodes) < replicas or int(nodes) % replicas):
        raise RenderError(f"{nodes} training node(s) do not split into {replicas} replica "
                          f"groups of equal size: give a multiple of {replicas}")
    if not checkpoint_dir:
        raise RenderError("a checkpoint directory is required (--checkpoint-dir)")
    if group_jobs and not (replicas and lighthouse):
        raise RenderError("one job per replica group needs --replicas R and --lighthouse "
                          "http://HOST:PORT")
    if warm and (replicas or python_target(words) is None):
        raise RenderError("--warm starts the ranks of restart mode from a warm Python: it "
                          "needs a `python SCRIPT ...` or `python -m MODULE ...` training "
                          "command and no --replicas")
    slurmft = list(slurmft_cmd) or slurmft_argv()
    return {
        "job_name": safe_job_name(job_name),
        "nodes": int(nodes),
        "slots": int(config.slots),
        "partition": sbatch_value("partition", partition),
        "time_limit": sbatch_value("time limit", time_limit),
        "work_dir": sbatch_value("work dir", work_dir),
        "output": sbatch_value("output", output),
        "launcher": "srun" if group_jobs else config.launcher,   # a group's ranks: srun's
        "launch_from": config.launch_from,
        # shell lines `slurmft run` splits again (shlex): quoting inside them survives
        "mpirun_args_line": shlex.join(shlex.split(config.mpirun_args)),
        "ssh_args_line": shlex.join(shlex.split(config.ssh_args)),
        "train_cmd": words,
        "checkpoint_dir": checkpoint_dir,
        "slurmft_cmd": slurmft,
        "slurmft_cmd_line": shlex.join(slurmft),
        "reschedule_log": reschedule_log or str(Path(config.state_dir) / "reschedule.log"),
        # --comment: the wrapper relaunches itself; a group job also names its run
        "comment": sbatch_value("lighthouse", f"{RELAUNCH_MARK},{GROUP_MARK}{lighthouse}")
        if group_jobs else RELAUNCH_MARK,
        "resume": "auto",
        "hang_timeout": hang_timeout,
        "spares": int(spares),
        "replicas": int(replicas),
        "total_steps": int(total_steps) if total_steps else 0,
        "group_jobs": bool(group_jobs),
        "lighthouse": lighthouse,
        "warm": bool(warm),
        # slurmft run's straggler options, as argv words (none given: its defaults)
        "straggler_args": [
            *(["--straggler-action", straggler_action] if straggler_action else []),
            *(["--straggler-factor", f"{float(straggler_factor):g}"]
              if straggler_factor is not None else []),
            *(["--straggler-steps", str(int(straggler_steps))]
              if straggler_steps is not None else [])],
    }


def restart_context(job: JobInfo, healthy: Sequence[str], exclude: Sequence[str],
                    train_cmd: str | Sequence[str], checkpoint_dir: str,
                    config: RescheduleConfig, *, slurmft_cmd: Sequence[str] = (),
                    reschedule_log: str = "") -> dict[str, Any]:
    """Variables for templates/restart.sh.j2: job.sh.j2's plus the pinned healthy nodes."""
    ctx = job_context(config, train_cmd=train_cmd, checkpoint_dir=checkpoint_dir,
                      job_name=job.name or f"job{job.job_id}", nodes=len(healthy),
                      partition=job.partition, work_dir=job.work_dir, output=job.stdout,
                      slurmft_cmd=slurmft_cmd, reschedule_log=reschedule_log)
    ctx.update(original_job_id=job.job_id, resume="always",
               node_names=[hosts.validate_hostname(n) for n in healthy],
               exclude=[hosts.validate_hostname(n) for n in exclude])
    return ctx
