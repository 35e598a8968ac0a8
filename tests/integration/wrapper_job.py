"""The job wrapper around slurmft/examples/train.py, rendered for the test cluster (the integration
tests of the wrapper's recovery submit it)."""

from __future__ import annotations

import sys
from pathlib import Path

from slurmft.core.config import RescheduleConfig
from slurmft.core.selfcmd import slurmft_argv
from slurmft.recovery.rescheduler import job_context
from slurmft.render import render
from slurmft.testbed.demo import EXAMPLE_TRAIN, mpirun_args, sample_time


def write_wrapper(cluster, work: Path, *, steps: int, nodes: int, name: str,
                  train_args: tuple[str, ...] = (), hang_timeout: str = "auto",
                  spares: int = 0, straggler_action: str = "", total_steps: int | None = None,
                  warm: bool = False, **config) -> Path:
    """``work/job.sh``: ``steps`` training steps of 0.05 s on ``nodes`` nodes (longer on
    fewer: compute is per sample), a checkpoint
    every 10 steps into ``work/ckpt``, progress in ``work/progress.jsonl``, output in
    ``work/job.out``; slurmft's state in ``work/state``. ``config``: RescheduleConfig fields.
    ``straggler_action``: ``slurmft run --straggler-action`` (empty: its default); ``warm``:
    ``slurmft run --warm``."""
    ckpt = work / "ckpt"
    cfg = RescheduleConfig(state_dir=str(work / "state"), slots=1,
                           mpirun_args=mpirun_args(cluster),
                           ssh_args=f"-F {cluster.ssh_config_path}", **config)
    train = [sys.executable, str(EXAMPLE_TRAIN), "--steps", str(steps),
             "--sample-time", str(sample_time(0.05, nodes, 48)), "--global-batch", "48",
             "--step-interval", "10", "--checkpoint-dir", str(ckpt),
             "--log-jsonl", str(work / "progress.jsonl"), *train_args]
    script = work / "job.sh"
    script.write_text(render("job.sh.j2", job_context(
        cfg, train_cmd=train, checkpoint_dir=str(ckpt), job_name=name, nodes=nodes,
        work_dir=str(work), output=str(work / "job.out"),
        slurmft_cmd=slurmft_argv(), reschedule_log=str(work / "resched.log"),
        hang_timeout=hang_timeout, spares=spares, straggler_action=straggler_action,
        total_steps=total_steps, warm=warm)))
    return script
