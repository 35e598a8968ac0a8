"""A rank crashes on a healthy node: the job wrapper relaunches the training in its own
allocation from its checkpoint (no node to exclude, no requeue), within the retry budget. Real
cluster, real mpirun or srun --mpi=pmix + train.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from slurmft.config import RescheduleConfig
from slurmft.demo import EXAMPLE_TRAIN, mpirun_args
from slurmft.recovery_report import read_progress
from slurmft.render import render
from slurmft.rescheduler import job_context
from slurmft.state import StateStore
from tests.integration.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.mark.parametrize("launcher", ["mpirun", "srun"])
def test_rank_crash_on_a_healthy_node_relaunches_in_place(cluster, cluster_run, launcher):
    work = Path(cluster.shared_dir) / f"restart-in-place-{launcher}"
    ckpt, progress = work / "ckpt", work / "progress.jsonl"
    work.mkdir(parents=True, exist_ok=True)
    cfg = RescheduleConfig(state_dir=str(work / "state"), slots=1, mpirun_args=mpirun_args(cluster),
                           ssh_args=f"-F {cluster.ssh_config_path}", launcher=launcher)
    train = [sys.executable, str(EXAMPLE_TRAIN), "--steps", "120", "--step-time", "0.05",
             "--step-interval", "10", "--checkpoint-dir", str(ckpt), "--log-jsonl", str(progress)]
    script = work / "job.sh"
    script.write_text(render("job.sh.j2", job_context(
        cfg, train_cmd=train, checkpoint_dir=str(ckpt), job_name="rip", nodes=2,
        work_dir=str(work), output=str(work / "job.out"),
        slurmft_cmd=[sys.executable, "-m", "slurmft"], reschedule_log=str(work / "resched.log"))))
    # srun's ranks read Open MPI's settings from the environment (mpirun gets mpirun_args)
    mca = {"OMPI_MCA_btl": "self,tcp", "OMPI_MCA_btl_tcp_if_include": str(cluster.subnet),
           "OMPI_MCA_oob_tcp_if_include": str(cluster.subnet), "OMPI_MCA_mpi_yield_when_idle": "1"}
    cp = cluster_run(["sbatch", "--parsable", "-w", "node1,node2", script],
                     env={"SLURMFT_RESCHEDULE_STATE_DIR": str(work / "state"), **mca})
    assert cp.returncode == 0, cp.stderr
    jid = int(cp.stdout.strip())
    client = cluster.slurm_client()
    try:
        wait_for(lambda: any(r["event"] == "save" and r["step"] >= 30 for r in read_progress(progress))
              if progress.exists() else False, 120, "a checkpoint at step 30")
        out = cluster.fault("node2", "kill-job-procs")       # the rank on node2 dies
        assert "killed" in out
        def diagnose() -> str:
            j = client.job(jid)
            tail = lambda p: p.read_text()[-1500:] if p.exists() else "(none)"  # noqa: E731
            return (f"state {j.state} reason {j.reason} restarts {j.restart_count}\n"
                    f"reschedule log:\n{tail(work / 'resched.log')}\njob.out:\n{tail(work / 'job.out')}")

        job = wait_for(lambda: (j := client.job(jid)).state == "COMPLETED" and j, 200,
                       "the job to complete after its restart", show=diagnose)
        assert job.restart_count == 0                          # relaunched, not requeued
        assert sorted(job.nodes) == ["node1", "node2"]        # in place: nothing excluded
        assert not job.excluded_nodes
        out = (work / "job.out").read_text()
        assert "relaunching the training on node[1-2]" in out
        assert "cannot ssh" not in out                         # launched from the peer, node2
        [attempt] = StateStore(str(work / "state")).load(jid).attempts   # one retry spent
        assert attempt.outcome == "relaunch" and attempt.failed == []
        recs = read_progress(progress)
        resumes = [r for r in recs if r["event"] == "resume"]
        assert len(resumes) == 1 and resumes[0]["from_step"] >= 30
        assert recs[-1]["event"] == "done" and recs[-1]["step"] == 119
        nodes = {n.name: n for n in client.nodes()}
        assert "DRAIN" not in nodes["node2"].flags             # a healthy node is not drained
    finally:
        cluster_run(["scancel", str(jid)])
