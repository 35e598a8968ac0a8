"""Per-step mode with one job per replica group (`render job --group-jobs`, `slurmft run
--group-id`, `slurmft lighthouse`) on the real cluster, with real torchft: two one-node group
jobs (the rendered script submitted once per group), the lighthouse on the controller host (as
on a login node), the watcher on.

A group's node is cut off: the watcher confirms it and tells the other group (SIGURG to its
training step), which ends the step's allreduce with the lost peer at once and trains on alone,
long before its collective timeout; the watcher requeues the lost group's job without that
node, the group starts on an idle node, heals from its peer and both finish; the other group's
job is never requeued and the lost node is drained.
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
from tests.integration.test_replicas import TRAIN, bring_back, steps
from tests.integration.waiting import wait_for
from tests.integration.watching import start_watcher, stop_watcher, watch_env

torchft = pytest.importorskip("torchft")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

STEPS = 1500
PORT = 29710
TIMEOUT = 30     # the training's collective timeout


def groups(cluster_run, job_ids: list[int]) -> dict[int, dict[str, str]]:
    """Group id -> scontrol's fields of that group's job."""
    out = {}
    for gid, jid in enumerate(job_ids):
        line = cluster_run(["scontrol", "show", "job", "-o", str(jid)]).stdout
        out[gid] = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
    return out


def test_a_group_that_loses_its_node_is_requeued_alone(cluster, cluster_run):
    work = Path(cluster.shared_dir) / "group-jobs"
    subprocess.run(["rm", "-rf", str(work)], check=False)
    work.mkdir(parents=True)
    ckpt, progress, state = work / "ckpt", work / "progress.jsonl", work / "state"
    train = [sys.executable, str(TRAIN), "--steps", str(STEPS), "--sample-time",
             f"{0.05 / 24:.9g}", "--global-batch", "48", "--step-interval", "10",
             "--checkpoint-dir", str(ckpt), "--log-jsonl", str(progress),
             # long: only the watcher's word (SIGURG to the survivor) ends its step's
             # allreduce with the cut-off peer within the test's limit below
             "--timeout", str(TIMEOUT)]
    script = work / "job.sh"
    script.write_text(render("job.sh.j2", job_context(
        RescheduleConfig(state_dir=str(state), slots=1), train_cmd=train,
        checkpoint_dir=str(ckpt), job_name="groups", nodes=2, replicas=2, group_jobs=True,
        lighthouse=f"http://ctl:{PORT}", work_dir=str(work), output=str(work / "job-%j.out"),
        slurmft_cmd=slurmft_argv(), reschedule_log=str(work / "resched.log"))))
    env = watch_env(cluster, state)
    with open(work / "lighthouse.log", "ab") as log:
        lighthouse = subprocess.Popen(
            cluster.exec_argv([sys.executable, "-m", "slurmft", "lighthouse", "--port",
                               str(PORT)]),
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    job_ids = []
    for gid in (0, 1):                   # as the script's header says: once per group
        cp = cluster_run(["sbatch", "--parsable", f"--job-name=groups-{gid}", script, str(gid)],
                         env=env)
        assert cp.returncode == 0, cp.stderr
        job_ids.append(int(cp.stdout.strip().split(";")[0]))
    watcher = start_watcher(cluster, env, work / "watch.log")
    lost = ""

    def tail(name: str) -> str:
        path = work / name
        return f"{name}:\n{path.read_text()[-2000:] if path.exists() else '(none)'}\n"

    def diagnose() -> str:
        return (f"{groups(cluster_run, job_ids)}\n" + tail(f"job-{job_ids[0]}.out")
                + tail(f"job-{job_ids[1]}.out") + tail("watch.log") + tail("lighthouse.log"))

    def step_after(t: float, replicas: int, timeout: float) -> dict:
        return wait_for(lambda: next((r for r in steps(progress) if r["t"] > t
                                      and r.get("replicas") == replicas), None),
                        timeout, f"a step with {replicas} replica(s)", show=diagnose)

    try:
        step_after(0, 2, 180)
        tasks = groups(cluster_run, job_ids)
        lost, other = tasks[1]["NodeList"], tasks[0]["NodeList"]
        cut_at = time.time()
        cluster.fault(lost, "link-down")
        # The watcher confirms the loss and tells group 0, which ends the step's allreduce
        # with group 1 at once and trains alone, long before its own --timeout.
        alone = step_after(cut_at, 1, TIMEOUT - 10)

        def moved():
            now = groups(cluster_run, job_ids)[1]
            return (now.get("JobState") == "RUNNING" and int(now.get("Restarts", "0")) >= 1
                    and now.get("NodeList") not in ("", lost, other) and now)
        moved_job = wait_for(moved, 120, "group 1 running again on another node",
                             show=diagnose)
        restarted_at = time.time()
        back = step_after(restarted_at, 2, 150)
        tasks = groups(cluster_run, job_ids)
        assert tasks[0]["Restarts"] == "0" and tasks[0]["NodeList"] == other
        watch_log = (work / "watch.log").read_text()
        assert f"told its replica peers {job_ids[0]}" in watch_log, diagnose()
        print(f"node of group 1 cut off: group 0 alone from +{alone['t'] - cut_at:.1f} s "
              f"(its --timeout: {TIMEOUT} s), both again +{back['t'] - cut_at:.1f} s on "
              f"{moved_job['NodeList']}")

        def both_done():
            now = groups(cluster_run, job_ids)
            return all(t.get("JobState") == "COMPLETED" for t in now.values()) and now
        wait_for(both_done, 240, "both groups' jobs to complete", show=diagnose)
        recs = read_progress(progress)
        assert max(r["step"] for r in recs if r["event"] == "step") == STEPS - 1
        node = next(n for n in cluster.slurm_client().nodes() if n.name == lost)
        assert node.is_drained and "slurmft" in node.reason, (node, diagnose())
    finally:
        stop_watcher(watcher)
        cluster_run(["scancel", *map(str, job_ids)])
        try:
            os.killpg(lighthouse.pid, signal.SIGTERM)
            lighthouse.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(lighthouse.pid, signal.SIGKILL)
        if lost:
            bring_back(cluster, cluster_run, lost)
