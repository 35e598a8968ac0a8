"""Hot spares (`slurmft run --spares 1`): the job holds 3 nodes and trains on 2. A training node
is cut off; `slurmft watch` takes it out of the job and signals the supervisor, which relaunches
on the node left plus the spare: the world size stays 2, no requeue. The used spare is then
refilled while the training runs: the cluster's idle fourth node is taken into the job (Slurm's
job expansion; the test cluster's slurm.conf permits it). Real cluster, real mpirun + train.py,
the real watcher."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurmft.observe.report import read_progress
from tests.integration.test_replicas import bring_back
from tests.integration.waiting import wait_for
from tests.integration.watching import stop_watcher, submit_and_watch, watch_env
from tests.integration.wrapper_job import write_wrapper

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

STEPS = 500


def test_a_lost_node_is_replaced_by_the_spare_and_the_world_size_kept(cluster, cluster_run):
    work = Path(cluster.shared_dir) / "spares"
    progress, state = work / "progress.jsonl", work / "state"
    work.mkdir(parents=True, exist_ok=True)
    script = write_wrapper(cluster, work, steps=STEPS, nodes=2, spares=1, name="spare")
    env = watch_env(cluster, state)
    jid, watcher = submit_and_watch(cluster, cluster_run, script, "node1,node2,node3", env,
                                    work / "watch.log")
    client = cluster.slurm_client()
    lost = ""
    try:
        wait_for(lambda: progress.exists() and any(
            r["event"] == "save" and r["step"] >= 30 for r in read_progress(progress)),
            120, "a checkpoint at step 30")
        first = client.job(jid)
        training = [n for n in first.nodes if n != first.batch_host]
        lost = training[0]                      # a training node that is not the batch host
        cluster.fault(lost, "link-down")

        def tail(path: Path) -> str:
            return path.read_text()[-1500:] if path.exists() else "(none)"

        def diagnose() -> str:
            j = client.job(jid)
            return (f"state {j.state} on {j.nodes} restarts {j.restart_count}\nwatch.log:\n"
                    f"{tail(work / 'watch.log')}\njob.out:\n{tail(work / 'job.out')}")

        spare = next(n for n in ("node1", "node2", "node3", "node4") if n not in first.nodes)
        # the used spare is refilled with the idle node, the training going on meanwhile
        refilled = wait_for(lambda: (j := client.job(jid)).state == "RUNNING"
                            and spare in j.nodes and j, 60, f"{spare} taken in as a spare",
                            show=diagnose)
        assert lost not in refilled.nodes and len(refilled.nodes) == 3
        assert not any(r["event"] == "done" for r in read_progress(progress)), diagnose()
        job = wait_for(lambda: (j := client.job(jid)).state == "COMPLETED" and j, 200,
                       "the job to complete on the spare", show=diagnose)
        assert job.restart_count == 0                          # relaunched in place
        assert lost not in job.nodes and spare in job.nodes
        node = next(n for n in client.nodes() if n.name == lost)
        assert node.is_drained and "slurmft" in node.reason
        recs = read_progress(progress)
        starts = [r["world_size"] for r in recs if r["event"] == "start"]
        assert starts == [2, 2], diagnose()                    # the world size was kept
        [resume] = [r for r in recs if r["event"] == "resume"]
        assert resume["from_step"] >= 30 and resume["world_size"] == 2
        assert recs[-1]["event"] == "done" and recs[-1]["step"] == STEPS - 1
        text = (work / "job.out").read_text()
        assert "0 spare(s) left" in text
        assert f"{spare} idle again, taken into the job as spare(s) (3 of 3" in text
    finally:
        stop_watcher(watcher)
        cluster_run(["scancel", str(jid)])
        if lost:
            bring_back(cluster, cluster_run, lost)


GROW_STEPS = 1500


def test_a_run_that_shrank_grows_back_in_place_when_a_node_returns(cluster, cluster_run):
    """Two losses and one spare: the run shrinks to one rank. The cluster's fourth node
    (drained so far, so no refill could take it) comes back: the refill takes it in and the
    run relaunches on two ranks again at its next checkpoint, in the same allocation."""
    work = Path(cluster.shared_dir) / "grow"
    progress = work / "progress.jsonl"
    work.mkdir(parents=True, exist_ok=True)
    script = write_wrapper(cluster, work, steps=GROW_STEPS, nodes=2, spares=1, name="grow")
    env = watch_env(cluster, work / "state")
    cluster_run(["scontrol", "update", "nodename=node4", "state=drain", "reason=test-held"],
                check=True)
    jid, watcher = submit_and_watch(cluster, cluster_run, script, "node1,node2,node3", env,
                                    work / "watch.log")
    client = cluster.slurm_client()
    cut: list[str] = []

    def starts() -> list[int]:
        if not progress.exists():
            return []
        return [r["world_size"] for r in read_progress(progress) if r["event"] == "start"]

    def saved_since_the_last_start() -> bool:
        recs = read_progress(progress)
        last = max(i for i, r in enumerate(recs) if r["event"] == "start")
        return any(r["event"] == "save" for r in recs[last:])

    def diagnose() -> str:
        j = client.job(jid)
        out = (work / "job.out").read_text()[-2500:] if (work / "job.out").exists() else ""
        return f"state {j.state} on {j.nodes}; starts {starts()}\njob.out:\n{out}"

    try:
        wait_for(lambda: starts() == [2], 120, "the training started on 2 ranks", show=diagnose)
        for node, left in (("node2", [2, 2]), ("node3", [2, 2, 1])):
            wait_for(saved_since_the_last_start, 60, "a checkpoint of this launch",
                     show=diagnose)
            cluster.fault(node, "link-down")
            cut.append(node)
            wait_for(lambda left=left: starts() == left, 90,
                     f"relaunched on {left[-1]} rank(s) without {node}", show=diagnose)
        cluster_run(["scontrol", "update", "nodename=node4", "state=resume"], check=True)
        wait_for(lambda: starts() == [2, 2, 1, 2], 90, "back on 2 ranks", show=diagnose)
        job = wait_for(lambda: (j := client.job(jid)).state == "COMPLETED" and j, 200,
                       "the job to complete", show=diagnose)
        assert job.restart_count == 0 and "node4" in job.nodes       # in place, on node4
        text = (work / "job.out").read_text()
        assert "node4 idle again, taken into the job" in text, diagnose()
        assert "relaunching on full size" in text, diagnose()
        recs = read_progress(progress)
        assert recs[-1]["event"] == "done" and recs[-1]["step"] == GROW_STEPS - 1
        resumes = [r for r in recs if r["event"] == "resume"]
        assert len(resumes) == 3 and resumes[-1]["world_size"] == 2
    finally:
        stop_watcher(watcher)
        cluster_run(["scancel", str(jid)])
        cluster_run(["scontrol", "update", "nodename=node4", "state=resume"])
        for node in cut:
            bring_back(cluster, cluster_run, node)
