"""Per-step mode with one job per replica group (`render job --group-jobs`, `slurmft run
--group-id`, `slurmft lighthouse`) on the real cluster, with real torchft: a job array of two
one-node groups, the lighthouse on the controller host (as on a login node), the watcher on.

A group's node is cut off: the other group trains on alone (steps committed with one replica),
the watcher requeues the lost group's job without that node, the group starts on an idle node,
heals from its peer and both finish; the array's other job is never requeued and the lost node
is drained.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slurmft.core.config import RescheduleConfig
from slurmft.core.selfcmd import slurmft_argv
from slurmft.observe.report import read_progress
from slurmft.recovery.scripts import job_context
from slurmft.render import render
from tests.integration.test_replicas import TRAIN, steps
from tests.integration.waiting import wait_for
from tests.integration.watching import start_watcher, stop_watcher

torchft = pytest.importorskip("torchft")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

STEPS = 1500
PORT = 29710


def array_tasks(cluster_run, array_id: int) -> dict[int, dict[str, str]]:
    """Array task id -> scontrol's fields of that task's job."""
    out = cluster_run(["scontrol", "show", "job", "-o", str(array_id)]).stdout
    tasks = {}
    for line in out.splitlines():
        fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        if fields.get("ArrayTaskId", "").isdigit():
            tasks[int(fields["ArrayTaskId"])] = fields
    return tasks


def test_a_group_that_loses_its_node_is_requeued_alone(cluster, cluster_run):
    work = Path(cluster.shared_dir) / "group-jobs"
    subprocess.run(["rm", "-rf", str(work)], check=False)
    work.mkdir(parents=True)
    ckpt, progress, state = work / "ckpt", work / "progress.jsonl", work / "state"
    train = [sys.executable, str(TRAIN), "--steps", str(STEPS), "--sample-time",
             f"{0.05 / 24:.9g}", "--global-batch", "48", "--step-interval", "10",
             "--checkpoint-dir", str(ckpt), "--log-jsonl", str(progress)]
    script = work / "job.sh"
    script.write_text(render("job.sh.j2", job_context(
        RescheduleConfig(state_dir=str(state), slots=1), train_cmd=train,
        checkpoint_dir=str(ckpt), job_name="groups", nodes=2, replicas=2, group_jobs=True,
        lighthouse=f"http://ctl:{PORT}", work_dir=str(work), output=str(work / "job-%a.out"),
        slurmft_cmd=slurmft_argv(), reschedule_log=str(work / "resched.log"))))
    env = {**cluster.env(), "SLURMFT_RESCHEDULE_STATE_DIR": str(state),
           "SLURMFT_PROBE_SSH": "false", "SLURMFT_PROBE_TIMEOUT": "2",
           "SLURMFT_PROBE_PING_TIMEOUT": "0.5"}
    with open(work / "lighthouse.log", "ab") as log:
        lighthouse = subprocess.Popen(
            cluster.exec_argv([sys.executable, "-m", "slurmft", "lighthouse", "--port",
                               str(PORT)]),
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    cp = cluster_run(["sbatch", "--parsable", script], env=env)
    assert cp.returncode == 0, cp.stderr
    array_id = int(cp.stdout.strip().split(";")[0])
    watcher = start_watcher(cluster, env, work / "watch.log")
    lost = ""

    def tail(name: str) -> str:
        path = work / name
        return f"{name}:\n{path.read_text()[-2000:] if path.exists() else '(none)'}\n"

    def diagnose() -> str:
        return (f"{array_tasks(cluster_run, array_id)}\n" + tail("job-0.out")
                + tail("job-1.out") + tail("watch.log") + tail("lighthouse.log"))

    def step_after(t: float, replicas: int, timeout: float) -> dict:
        return wait_for(lambda: next((r for r in steps(progress) if r["t"] > t
                                      and r.get("replicas") == replicas), None),
                        timeout, f"a step with {replicas} replica(s)", show=diagnose)

    try:
        step_after(0, 2, 180)
        tasks = array_tasks(cluster_run, array_id)
        assert sorted(tasks) == [0, 1], diagnose()
        lost, other = tasks[1]["NodeList"], tasks[0]["NodeList"]
        cut_at = time.time()
        cluster.fault(lost, "link-down")
        alone = step_after(cut_at, 1, 60)
        back = step_after(alone["t"], 2, 150)
        tasks = array_tasks(cluster_run, array_id)
        assert tasks[1]["NodeList"] not in (lost, other) and int(tasks[1]["Restarts"]) >= 1
        assert tasks[0]["Restarts"] == "0" and tasks[0]["NodeList"] == other
        print(f"node of group 1 cut off: group 0 alone from +{alone['t'] - cut_at:.1f} s, "
              f"both again +{back['t'] - cut_at:.1f} s on {tasks[1]['NodeList']}")

        def both_done():
            now = array_tasks(cluster_run, array_id)
            return all(t.get("JobState") == "COMPLETED" for t in now.values()) and now
        wait_for(both_done, 240, "both groups' jobs to complete", show=diagnose)
        recs = read_progress(progress)
        assert max(r["step"] for r in recs if r["event"] == "step") == STEPS - 1
        node = next(n for n in cluster.slurm_client().nodes() if n.name == lost)
        assert node.is_drained and "slurmft" in node.reason, (node, diagnose())
    finally:
        stop_watcher(watcher)
        subprocess.run(["cp", "-r", str(work), "/tmp/gj-debug"], check=False)
        cluster_run(["scancel", str(array_id)])
        try:
            os.killpg(lighthouse.pid, signal.SIGTERM)
            lighthouse.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(lighthouse.pid, signal.SIGKILL)
        if lost:
            cluster.fault(lost, "link-up")

            def idle() -> bool:
                cluster_run(["scontrol", "update", f"nodename={lost}", "state=resume"])
                return cluster_run(["sinfo", "-h", "-n", lost, "-o", "%T"]).stdout.strip() == "idle"
            wait_for(idle, 90, f"{lost} idle again")
