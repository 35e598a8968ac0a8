"""A rank crashes on a healthy node: the job wrapper relaunches the training in its own
allocation from its checkpoint (no node to exclude, no requeue), within the retry budget. Real
cluster, real mpirun or srun --mpi=pmix + train.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurmft.observe.report import read_progress
from slurmft.recovery.state import StateStore
from tests.integration.waiting import wait_for
from tests.integration.wrapper_job import write_wrapper

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.mark.parametrize("launcher", ["mpirun", "srun"])
def test_rank_crash_on_a_healthy_node_relaunches_in_place(cluster, cluster_run, launcher):
    work = Path(cluster.shared_dir) / f"restart-in-place-{launcher}"
    progress = work / "progress.jsonl"
    work.mkdir(parents=True, exist_ok=True)
    script = write_wrapper(cluster, work, steps=120, nodes=2, name="rip", launcher=launcher)
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
