"""The batch host of a wrapper job (pinned to its nodes with -w) is cut off. `slurmft watch`
requeues the job without it and the training resumes on the nodes left, from its newest
verified checkpoint. mpirun ran on a peer node (reschedule.launch_from=peer), so no step of the
job reported to the lost host. Real cluster, real mpirun + train.py, the real watcher."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurmft.observe.report import read_progress
from slurmft.recovery.state import StateStore
from tests.integration.test_replicas import bring_back
from tests.integration.waiting import wait_for
from tests.integration.watching import stop_watcher, submit_and_watch, watch_env
from tests.integration.wrapper_job import write_wrapper

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

STEPS = 400


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm-spare"])
def test_lost_batch_host_requeues_and_resumes_on_the_nodes_left(cluster, cluster_run, warm):
    """warm-spare: 3 training nodes, a spare, the warm pool. The first run's srun clients on
    its peer outlive the requeue (their ssh sessions came from the lost host) and would send
    their steps a last kill by number 7 s after the requeue's kill, when the new run's pool
    is step 0 again: the new run stops them first."""
    work = Path(cluster.shared_dir) / f"batch-host-loss-{'warm' if warm else 'cold'}"
    progress, state = work / "progress.jsonl", work / "state"
    work.mkdir(parents=True, exist_ok=True)
    script = write_wrapper(cluster, work, steps=STEPS, nodes=3, name="bhl", warm=warm,
                           spares=1 if warm else 0)
    env = watch_env(cluster, state)
    # pinned with -w: the requeue must also drop the lost node from the required nodes
    pinned = "node1,node2,node3,node4" if warm else "node1,node2,node3"
    jid, watcher = submit_and_watch(cluster, cluster_run, script, pinned, env,
                                    work / "watch.log")
    client = cluster.slurm_client()
    lost = ""
    try:
        wait_for(lambda: progress.exists() and any(
            r["event"] == "save" and r["step"] >= 30 for r in read_progress(progress)),
            120, "a checkpoint at step 30")
        first = client.job(jid)
        lost = first.batch_host
        assert lost in first.nodes
        cluster.fault(lost, "link-down")

        def tail(path: Path) -> str:
            return path.read_text()[-1500:] if path.exists() else "(none)"

        def diagnose() -> str:
            j = client.job(jid)
            return (f"state {j.state} on {j.nodes} restarts {j.restart_count}\nwatch.log:\n"
                    f"{tail(work / 'watch.log')}\njob.out:\n{tail(work / 'job.out')}")

        job = wait_for(lambda: (j := client.job(jid)).state == "COMPLETED" and j, 200,
                       "the job to complete after the requeue", show=diagnose)
        assert job.restart_count == 1                          # requeued once
        left = 3 if warm else 2                                # the spare trains now
        assert lost not in job.nodes and len(job.nodes) == left
        node = next(n for n in client.nodes() if n.name == lost)
        assert node.is_drained and "slurmft" in node.reason
        out = (work / "job.out").read_text()
        assert "cannot ssh" not in out                         # mpirun did run on a peer
        if warm:
            assert "stopping the srun clients the run before this requeue left on" in out
            assert "no warm pool server on" not in out, out[-3000:]   # its pool lived
        recs = read_progress(progress)
        [resume] = [r for r in recs if r["event"] == "resume"]
        assert resume["from_step"] >= 30 and resume["world_size"] == left
        assert recs[-1]["event"] == "done" and recs[-1]["step"] == STEPS - 1
        # the watcher saw the requeued run's first job step (squeue --steps on 22.05)
        audit = StateStore(str(state)).audit_lines()
        [recovered] = [r for r in audit if r["event"] == "recovered" and r["job_id"] == jid]
        assert recovered["step"].startswith(f"{jid}.") and recovered["recovery_seconds"] > 0
    finally:
        stop_watcher(watcher)
        cluster_run(["scancel", str(jid)])
        if lost:
            bring_back(cluster, cluster_run, lost)
