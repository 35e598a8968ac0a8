"""A rank hangs inside a collective on the real cluster: `slurmft run` sees no progress for
--hang-timeout, logs the hung rank with its node and stacks at ERROR, relaunches the training
from its checkpoint in the same allocation (no requeue), and the job completes. Real Slurm,
real mpirun, real train.py with --hang-at-step (rank 1 sleeps instead of its allreduce)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from slurmft.observe.report import read_progress
from tests.integration.waiting import wait_for
from tests.integration.wrapper_job import write_wrapper

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

HANG_TIMEOUT = 8.0


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_a_rank_hung_in_a_collective_is_named_and_the_training_relaunched(cluster,
                                                                            cluster_run, warm):
    """``warm``: the ranks are forked by the warm pool (`slurmft run --warm`): the hung rank
    still writes its own stacks, and the relaunch's step kill reaches it through its client."""
    work = Path(cluster.shared_dir) / f"hang-recovery-{'warm' if warm else 'cold'}"
    progress = work / "progress.jsonl"
    work.mkdir(parents=True, exist_ok=True)
    script = write_wrapper(cluster, work, steps=100, nodes=2, name="hang",
                           train_args=("--hang-at-step", "45", "--hang-rank", "1"),
                           hang_timeout=str(HANG_TIMEOUT), warm=warm)
    cp = cluster_run(["sbatch", "--parsable", "-w", "node1,node2", script],
                     env={"SLURMFT_RESCHEDULE_STATE_DIR": str(work / "state")})
    assert cp.returncode == 0, cp.stderr
    jid = int(cp.stdout.strip())
    client = cluster.slurm_client()
    try:
        def diagnose() -> str:
            j = client.job(jid)
            tail = lambda p: p.read_text()[-2500:] if p.exists() else "(none)"  # noqa: E731
            return (f"state {j.state} reason {j.reason} restarts {j.restart_count}\n"
                    f"reschedule log:\n{tail(work / 'resched.log')}\njob.out:\n{tail(work / 'job.out')}")

        job = wait_for(lambda: (j := client.job(jid)).state == "COMPLETED" and j, 240,
                       "the job to complete after the hang", show=diagnose)
        assert job.restart_count == 0                          # relaunched in place
        out = (work / "job.out").read_text()
        # the hung rank first, on the node its heartbeat names (mpirun places the ranks)
        hung = [m for ln in out.splitlines() if " ERROR " in ln and (m := re.search(
            r"failed_node=(node\d) .*rank (\d) on (node\d) made no progress", ln))]
        assert hung and hung[0].group(2) == "1", out[-3000:]
        assert all(m.group(1) == m.group(3) for m in hung)
        assert "block_instead_of_allreduce" in out             # rank 1's own stacks
        # detected within the hang timeout + 5 s of the last step before the hang
        recs = read_progress(progress)
        first_launch = recs[:next(i for i, r in enumerate(recs) if r["event"] == "resume")]
        last_step_t = max(r["t"] for r in first_launch if r["event"] == "step")
        events = [json.loads(ln) for ln in (work / "state" / "audit.jsonl").read_text().splitlines()]
        asking = [e for e in events if e.get("event") == "run" and e.get("state") == "asking"]
        assert asking and asking[0]["reason"] == "a rank hung"
        assert asking[0]["time"] - last_step_t <= HANG_TIMEOUT + 5, (asking[0], last_step_t)
        assert recs[-1]["event"] == "done" and recs[-1]["step"] == 99
        nodes = {n.name: n for n in client.nodes()}
        assert "DRAIN" not in nodes["node2"].flags             # a hang drains no healthy node
    finally:
        cluster_run(["scancel", str(jid)])


def test_a_stopped_rank_is_a_hang_too(cluster, cluster_run):
    """`cluster fault NODE hang` (SIGSTOP of a training rank, as `slurmft inject hang` does):
    the stopped rank writes no stacks, the supervisor says so, relaunches, the job completes."""
    work = Path(cluster.shared_dir) / "hang-sigstop"
    progress = work / "progress.jsonl"
    work.mkdir(parents=True, exist_ok=True)
    script = write_wrapper(cluster, work, steps=100, nodes=2, name="stop",
                           hang_timeout=str(HANG_TIMEOUT))
    cp = cluster_run(["sbatch", "--parsable", "-w", "node1,node2", script],
                     env={"SLURMFT_RESCHEDULE_STATE_DIR": str(work / "state")})
    assert cp.returncode == 0, cp.stderr
    jid = int(cp.stdout.strip())
    client = cluster.slurm_client()
    try:
        wait_for(lambda: any(r["event"] == "save" and r["step"] >= 30
                             for r in read_progress(progress)) if progress.exists() else False,
                 120, "a checkpoint at step 30")
        assert "stopped" in cluster.fault("node2", "hang").lower()
        job = wait_for(lambda: (j := client.job(jid)).state == "COMPLETED" and j, 200,
                       "the job to complete after the stopped rank")
        assert job.restart_count == 0
        out = (work / "job.out").read_text()
        assert re.search(r" ERROR .*failed_node=node2 .*on node2 made no progress", out), out[-2500:]
        assert "left no stacks (the process may be stopped)" in out
        assert read_progress(progress)[-1]["event"] == "done"
    finally:
        cluster_run(["scancel", str(jid)])
