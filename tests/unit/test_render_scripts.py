"""Golden-file tests for hostfile.j2, restart.sh.j2 and job.sh.j2; shellcheck on the scripts.

Regenerate the golden files after an intended change with
``SLURMFT_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_render_scripts.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from slurmft.config import RescheduleConfig
from slurmft.errors import HostNameError, RenderError
from slurmft.render import render
from slurmft.rescheduler import job_context, restart_context
from slurmft.slurm.api import JobInfo

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "golden"
CMD = ["/opt/slurmft/bin/slurmft"]
LOG = "/shared/slurmft/reschedule.log"
JOB = JobInfo(job_id=42, name="train-gpt", state="NODE_FAIL", nodes=("node1", "node2", "node3",
              "node4"), partition="main", work_dir="/shared/run1",
              stdout="/shared/run1/slurm-%j.out")


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("SLURMFT_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from its golden file"


def shellcheck(tmp_path: Path, text: str) -> None:
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck not installed")
    script = tmp_path / "s.sh"
    script.write_text(text)
    proc = subprocess.run(["shellcheck", "-s", "bash", str(script)], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hostfile_golden():
    text = render("hostfile.j2", {"nodes": ["node1", "node2", "node4"], "slots": 2})
    check_golden("hostfile.txt", text)
    assert text.splitlines() == ["node1 slots=2", "node2 slots=2", "node4 slots=2"]


def test_hostfile_refuses_bad_host_names():
    with pytest.raises(HostNameError):
        render("hostfile.j2", {"nodes": ["node1; rm -rf /"], "slots": 1})


def test_restart_mpirun_golden(tmp_path):
    cfg = RescheduleConfig(mpirun_args="--allow-run-as-root --mca btl self,tcp", slots=2)
    ctx = restart_context(JOB, ["node1", "node2", "node4"], ["node3"],
                          "python train.py --epochs 10 --name 'run one'", "/shared/ckpt run1",
                          cfg, slurmft_cmd=CMD, reschedule_log=LOG)
    text = render("restart.sh.j2", ctx)
    check_golden("restart_mpirun.sh", text)
    shellcheck(tmp_path, text)
    assert "#SBATCH --exclude=node3" in text
    assert "#SBATCH --nodelist=node1,node2,node4" in text
    assert "mpirun -np 6 --hostfile" in text
    assert "--mca plm rsh --mca ras '^slurm'" in text
    assert "export CHECKPOINT_PATH='/shared/ckpt run1'" in text
    assert "'run one'" in text


def test_restart_srun_golden(tmp_path):
    cfg = RescheduleConfig(launcher="srun")
    ctx = restart_context(JOB, ["node1", "node2", "node4"], ["node3"], "python train.py",
                          "/shared/ckpt", cfg, slurmft_cmd=CMD, reschedule_log=LOG)
    text = render("restart.sh.j2", ctx)
    check_golden("restart_srun.sh", text)
    shellcheck(tmp_path, text)
    assert "srun --mpi=pmix" in text and "mpirun" not in text.split("#SBATCH")[-1].split("srun")[0]


def test_job_wrapper_golden(tmp_path):
    cfg = RescheduleConfig(mpirun_args="--allow-run-as-root")
    ctx = job_context(cfg, train_cmd="python train.py --steps 1000", checkpoint_dir="/shared/ck",
                      job_name="train gpt", nodes=4, partition="main", time_limit="01:00:00",
                      slurmft_cmd=CMD, reschedule_log=LOG)
    text = render("job.sh.j2", ctx)
    check_golden("job_mpirun.sh", text)
    shellcheck(tmp_path, text)
    for line in ("#SBATCH --requeue", "#SBATCH --open-mode=append", "#SBATCH --nodes=4",
                 "#SBATCH --job-name=train_gpt", "export CHECKPOINT_PATH=/shared/ck"):
        assert line in text
    assert 'reschedule "$SLURM_JOB_ID"' in text


def test_job_wrapper_calls_reschedule_only_on_failure(tmp_path):
    """Run the rendered wrapper with stand-ins for mpirun, scontrol and slurmft."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls"
    for name, body in {"mpirun": 'echo "mpirun $*" >>"$CALLS"; exit "${MPI_RC:-0}"',
                       "scontrol": 'printf "node1\\nnode2\\n"',
                       "slurmft": 'echo "slurmft $*" >>"$CALLS"'}.items():
        (bindir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bindir / name).chmod(0o755)
    ckpt = tmp_path / "ck"
    ctx = job_context(RescheduleConfig(), train_cmd="train --x 1", checkpoint_dir=str(ckpt),
                      nodes=2, slurmft_cmd=[str(bindir / "slurmft")],
                      reschedule_log=str(tmp_path / "r.log"))
    script = tmp_path / "job.sh"
    script.write_text(render("job.sh.j2", ctx))
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "CALLS": str(calls), "SLURM_JOB_ID": "7",
           "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_JOB_NUM_NODES": "2", "TMPDIR": str(tmp_path)}

    ok = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True,
                        timeout=30, check=False)
    assert ok.returncode == 0
    assert calls.read_text().splitlines() == ["mpirun -np 2 --hostfile " +
                                              calls.read_text().split("--hostfile ")[1].split()[0]
                                              + " --mca plm rsh --mca ras ^slurm train --x 1"]
    calls.unlink()
    (ckpt / "step-1").mkdir()                   # a checkpoint exists now: the run resumes
    failed = subprocess.run(["bash", str(script)], env={**env, "MPI_RC": "255"},
                            capture_output=True, text=True, timeout=30, check=False)
    assert failed.returncode == 255
    for _ in range(50):                         # setsid -f returns before the child writes
        if calls.exists() and len(calls.read_text().splitlines()) == 2:
            break
        subprocess.run(["sleep", "0.1"], check=False)
    lines = calls.read_text().splitlines()
    assert lines[0].endswith(f"train --x 1 --resume {ckpt}")
    assert lines[1] == (f"slurmft reschedule 7 --settle 30 --restart-failed --nodes node[1-2] --checkpoint-dir "
                        f"{ckpt} --train-cmd train --x 1")


def test_unsafe_sbatch_values_are_refused():
    with pytest.raises(RenderError, match="#SBATCH"):
        job_context(RescheduleConfig(), train_cmd="t", checkpoint_dir="/c",
                    partition="main\n#SBATCH --uid=0")


def test_missing_train_command_is_a_clear_error():
    with pytest.raises(RenderError, match="training command"):
        job_context(RescheduleConfig(), train_cmd="", checkpoint_dir="/c")
