"""The warm pool (`slurmft run --warm`) on the real cluster: real srun, mpirun, mpi4py, torch.

The job holds 3 nodes and trains on 2 (one spare), launched by mpirun (its daemons through
srun, the ranks' PMIx from them) or by `srun --mpi=pmix` (PMIx from slurmstepd). The pool step
puts one pre-imported Python on each of the 3 nodes; every rank of the first launch is forked
from its node's server (the job output names each fork). The pool's srun runs on the launcher's
peer, the training node that is then cut off (the batch host's loss would otherwise hold up the
requeue); the watcher takes it out and the supervisor relaunches on the node left plus the
spare: those ranks are forked again (seen in the process tree: the servers' output went with
the lost srun), from servers that imported torch and mpi4py at the job's start, and the job
completes. Prints launch -> the training's start record for both launches.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from slurmft.observe.report import read_progress
from slurmft.testbed import procs
from tests.integration.test_replicas import bring_back
from tests.integration.waiting import wait_for
from tests.integration.watching import stop_watcher, submit_and_watch, watch_env
from tests.integration.wrapper_job import write_wrapper

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

STEPS = 300


def forked_ranks(cluster, node: str) -> list[int]:
    """The training ranks on ``node`` that a pool server forked (they show its command line)."""
    return [p for p in procs.training_ranks(cluster.job_pids(node))
            if "slurmft.supervise.warm serve" in procs.cmdline(p)]


def diagnosis(client, jid: int, out: Path):
    """What a failed wait shows: the job's state and nodes, the end of its output."""
    def show() -> str:
        j = client.job(jid)
        return (f"state {j.state} on {j.nodes}\njob.out:\n"
                f"{out.read_text()[-2500:] if out.exists() else '(none)'}")
    return show


def wait_checkpoint(progress: Path, step: int, seconds: float, show) -> None:
    wait_for(lambda: progress.exists() and any(
        r["event"] == "save" and r["step"] >= step for r in read_progress(progress)),
        seconds, f"a checkpoint at step {step}", show=show)


@pytest.mark.parametrize("launcher", ["mpirun", "srun"])
def test_ranks_start_from_the_warm_pool_and_again_after_a_node_loss(cluster, cluster_run,
                                                                    launcher):
    work = Path(cluster.shared_dir) / f"warm-{launcher}"
    progress, state = work / "progress.jsonl", work / "state"
    work.mkdir(parents=True, exist_ok=True)
    script = write_wrapper(cluster, work, steps=STEPS, nodes=2, spares=1, name="warm",
                           warm=True, launcher=launcher)
    env = watch_env(cluster, state)
    jid, watcher = submit_and_watch(cluster, cluster_run, script, "node1,node2,node3", env,
                                    work / "watch.log")
    client = cluster.slurm_client()
    lost = ""
    out = work / "job.out"

    diagnose = diagnosis(client, jid, out)
    try:
        wait_checkpoint(progress, 30, 120, diagnose)
        first = client.job(jid)
        lost = next(n for n in first.nodes if n != first.batch_host
                    and f"{n}: rank" in out.read_text())      # a training node, not the batch host
        forks_before = len(re.findall(r"slurmft warm: \S+: rank \S+ forked", out.read_text()))
        cluster.fault(lost, "link-down")
        cut_at = time.time()

        def relaunch_trains() -> bool:
            recs = read_progress(progress)
            start = next((r["t"] for r in recs if r["event"] == "start" and r["t"] > cut_at), None)
            return start is not None and any(r["event"] == "step" and r["t"] > start
                                              for r in recs)

        wait_for(relaunch_trains, 120, "a step of the relaunch", show=diagnose)
        again = client.job(jid).nodes
        # the relaunch trains on the node left and the spare (a node taken in afterwards as
        # a new spare runs no rank)
        forked = {n: forked_ranks(cluster, n) for n in again if n in first.nodes}
        assert lost not in again and len(forked) == 2 and all(forked.values()), (
            forked, diagnose())
        job = wait_for(lambda: (j := client.job(jid)).state == "COMPLETED" and j, 200,
                       "the job to complete on the spare", show=diagnose)
        assert job.restart_count == 0 and lost not in job.nodes
        text = out.read_text()
        # every node's server came up with the default preload imported (node4 too when it
        # was taken in as a new spare meanwhile: its server comes with it)
        ready = re.findall(r"slurmft warm: (\S+) ready in [\d.]+ s \(preloaded torch, "
                           r"torch\._dynamo, mpi4py\)", text)
        assert {"node1", "node2", "node3"} <= set(ready) <= {"node1", "node2", "node3",
                                                             "node4"}, diagnose()
        assert forks_before == 2, diagnose()          # both ranks of the first launch
        recs = read_progress(progress)
        starts = [r for r in recs if r["event"] == "start"]
        assert [r["world_size"] for r in starts] == [2, 2]
        assert recs[-1]["event"] == "done" and recs[-1]["step"] == STEPS - 1
        audit = [json.loads(ln) for ln in (state / "audit.jsonl").read_text().splitlines()]
        launching = [e["time"] for e in audit if e.get("event") == "run"
                     and e.get("state") == "launching" and e.get("job_id") == jid]
        print("launch -> training start: " + ", ".join(
            f"{s['t'] - t:.2f} s" for t, s in zip(launching, starts)))
    finally:
        stop_watcher(watcher)
        cluster_run(["scancel", str(jid)])
        if lost:
            bring_back(cluster, cluster_run, lost)


def test_killed_ranks_relaunch_warm_on_the_spare_and_their_node_gets_a_new_server(
        cluster, cluster_run):
    """kill-job-procs on a training node kills its rank and its pool server. The in-place
    reschedule finds the node healthy; before relaunching, the supervisor asks every node's
    server (one short step): the spare, whose server answers, trains in that node's place
    (its rank forked, not started cold), and the node gets a new server and becomes the
    spare. Prints the launch -> training start of the relaunch."""
    work = Path(cluster.shared_dir) / "warm-killed"
    progress, state, out = work / "progress.jsonl", work / "state", work / "job.out"
    work.mkdir(parents=True, exist_ok=True)
    script = write_wrapper(cluster, work, steps=3 * STEPS, nodes=3, spares=1, name="warmkill",
                           warm=True, launcher="mpirun")
    jid, watcher = submit_and_watch(cluster, cluster_run, script, "node1,node2,node3,node4",
                                    watch_env(cluster, state), work / "watch.log")
    client = cluster.slurm_client()

    diagnose = diagnosis(client, jid, out)
    try:
        wait_checkpoint(progress, 30, 150, diagnose)
        # a server younger than the pool's ready wait (30 s) may be importing still: the
        # supervisor would not start it again; kill once the servers are older
        started = next(r["t"] for r in read_progress(progress) if r["event"] == "start")
        time.sleep(max(0.0, started + 32 - time.time()))
        first = client.job(jid)
        text = out.read_text()
        trained = [n for n in first.nodes if f"{n}: rank" in text]
        spare = next(n for n in first.nodes if n not in trained)
        victim = trained[-1]                  # neither the batch host nor the launcher's peer
        assert victim != first.batch_host and len(trained) == 3, diagnose()
        cluster.fault(victim, "kill-job-procs")
        killed_at = time.time()

        def relaunch_trains() -> bool:
            recs = read_progress(progress)
            start = next((r["t"] for r in recs if r["event"] == "start"
                          and r["t"] > killed_at), None)
            return start is not None and any(r["event"] == "step" and r["t"] > start
                                              for r in recs)

        wait_for(relaunch_trains, 120, "a step of the relaunch", show=diagnose)
        assert forked_ranks(cluster, spare), diagnose()          # warm on the spare
        assert not procs.training_ranks(cluster.job_pids(victim)), diagnose()
        wait_for(lambda: len(re.findall(rf"slurmft warm: {victim} ready in", out.read_text()))
                 == 2, 60, f"a new server on {victim}", show=diagnose)
        job = wait_for(lambda: (j := client.job(jid)).state == "COMPLETED" and j, 200,
                       "the job to complete", show=diagnose)
        assert job.restart_count == 0 and victim in job.nodes
        assert f"no server answers on {victim}" in out.read_text(), diagnose()
        recs = read_progress(progress)
        starts = [r for r in recs if r["event"] == "start"]
        assert [r["world_size"] for r in starts] == [3, 3]
        assert recs[-1]["event"] == "done" and recs[-1]["step"] == 3 * STEPS - 1
        audit = [json.loads(ln) for ln in (state / "audit.jsonl").read_text().splitlines()]
        launching = [e for e in audit if e.get("event") == "run"
                     and e.get("state") == "launching" and e.get("job_id") == jid]
        assert [victim in e["nodes"] for e in launching] == [True, False]
        assert spare in launching[1]["nodes"]
        print(f"relaunch after kill-job-procs on {victim}: launch -> training start "
              f"{starts[1]['t'] - launching[1]['time']:.2f} s, kill -> first step "
              f"{next(r['t'] for r in recs if r['event'] == 'step' and r['t'] > starts[1]['t']) - killed_at:.2f} s")
    finally:
        stop_watcher(watcher)
        cluster_run(["scancel", str(jid)])
