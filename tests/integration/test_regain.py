"""Regaining full size (`slurmft run --total-steps`, issue 22 item 4): a 2-node job with no
spare loses node2 and shrinks to node1 (relaunch in place); the other nodes are busy with
another job, so nothing is free. node2 comes back (link up, resumed): the supervisor weighs
the steps left at half speed against a requeue, logs the arithmetic, and at its next
checkpoint has the job requeued at 2 nodes (its own reschedule dies with the requeue-hold;
the watcher's next cycle resizes and releases the job from the retry record); it resumes
there and completes. Real cluster, real mpirun + train.py, the real watcher."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from slurmft.observe.report import read_progress
from tests.integration.waiting import wait_for
from tests.integration.watching import stop_watcher, submit_and_watch, watch_env
from tests.integration.wrapper_job import write_wrapper

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

STEPS = 1500


def test_a_shrunk_job_is_requeued_at_full_size_when_its_node_returns(cluster, cluster_run):
    work = Path(cluster.shared_dir) / "regain"
    subprocess.run(["rm", "-rf", str(work)], check=False)
    work.mkdir(parents=True)
    progress, state = work / "progress.jsonl", work / "state"
    script = write_wrapper(cluster, work, steps=STEPS, nodes=2, name="regain",
                           total_steps=STEPS)
    env = watch_env(cluster, state)
    blocker = cluster_run(["sbatch", "--parsable", "-w", "node3,node4", "-N", "2",
                           "-o", str(work / "blocker.out"), "--wrap", "sleep 600"], env=env)
    assert blocker.returncode == 0, blocker.stderr
    jid, watcher = submit_and_watch(cluster, cluster_run, script, "node1,node2", env,
                                    work / "watch.log")
    client = cluster.slurm_client()
    lost = "node2"
    down = False

    def tail(path: Path) -> str:
        return path.read_text()[-2500:] if path.exists() else "(none)"

    def diagnose() -> str:
        j = client.job(jid)
        show = cluster_run(["scontrol", "show", "job", str(jid)]).stdout
        return (f"state {j.state} on {j.nodes} restarts {j.restart_count}\n{show}\njob.out:\n"
                f"{tail(work / 'job.out')}\nresched.log:\n{tail(work / 'resched.log')}\n"
                f"watch.log:\n{tail(work / 'watch.log')}\nrecord:\n"
                f"{tail(state / 'jobs' / f'{jid}.json')}")

    def world_sizes() -> list[int]:
        recs = read_progress(progress) if progress.exists() else []
        return [r["world_size"] for r in recs if r["event"] == "start"]

    try:
        wait_for(lambda: progress.exists() and any(
            r["event"] == "save" and r["step"] >= 100 for r in read_progress(progress)),
            120, "a checkpoint at step 100", show=diagnose)
        cluster.fault(lost, "link-down")
        down = True
        wait_for(lambda: world_sizes()[-1:] == [1], 90, "the job shrunk to 1 node",
                 show=diagnose)
        cluster.fault(lost, "link-up")
        down = False

        def idle() -> bool:
            cluster_run(["scontrol", "update", f"nodename={lost}", "state=resume"])
            return cluster_run(["sinfo", "-h", "-n", lost, "-o", "%T"]).stdout.strip() == "idle"
        wait_for(idle, 90, f"{lost} idle again")
        wait_for(lambda: world_sizes()[-1:] == [2] and len(world_sizes()) >= 3, 150,
                 "the job back at 2 nodes", show=diagnose)
        job = wait_for(lambda: (j := client.job(jid)).state == "COMPLETED" and j, 240,
                       "the job to complete", show=diagnose)
        assert job.restart_count == 1, diagnose()     # one requeue: the regain
        # full size, shrunk, full size again; a launch at full size that failed on its own
        # after the requeue (once in CI: [2, 1, 2, 2]) is relaunched in place at full size
        sizes = world_sizes()
        assert sizes[:3] == [2, 1, 2] and set(sizes[2:]) == {2}, f"{sizes}\n{diagnose()}"
        recs = read_progress(progress)
        resumes = [r for r in recs if r["event"] == "resume"]
        assert len(resumes) == len(sizes) - 1 and resumes[-1]["world_size"] == 2
        assert recs[-1]["event"] == "done" and recs[-1]["step"] == STEPS - 1
        out = (work / "job.out").read_text()
        [line] = [ln for ln in out.splitlines() if "requeueing at full size" in ln]
        assert "steps left x" in line and "s saved >" in line, line
        print(line)
        audit = [json.loads(ln) for ln in (state / "audit.jsonl").read_text().splitlines()]
        regain = [a for a in audit if a["event"] == "decision" and a["outcome"] == "regain"]
        assert regain and regain[0]["job_id"] == jid
        # the job's own reschedule dies with the requeue-hold it asks for: the watcher's next
        # cycle finishes the regain from the retry record (size, release)
        print("; ".join(a["message"] for a in regain))
    finally:
        stop_watcher(watcher)
        if down:
            cluster.fault(lost, "link-up")
        cluster_run(["scancel", str(jid), blocker.stdout.strip()])

        def back() -> bool:
            cluster_run(["scontrol", "update", f"nodename={lost}", "state=resume"])
            return cluster_run(["sinfo", "-h", "-n", lost, "-o", "%T"]).stdout.strip() == "idle"
        wait_for(back, 90, f"{lost} idle again")
