"""Per-step mode (`slurmft run --replicas 2 --spares 1`) on the real cluster, with real torchft:
the job holds 3 nodes, trains 2 replica groups of one node each (torchft's lighthouse on the
batch host) and keeps the third as a spare.

* a group's process is killed: the other group trains on alone (steps committed with one
  replica), the dead group is relaunched on its own node and rejoins by live recovery;
* then that group's node is cut off: the watcher takes the node out of the job and signals the
  supervisor, which relaunches the group on the spare; the job finishes with no requeue and the
  lost node drained;
* every group is killed at once: each comes back from its latest verified checkpoint.
"""

from __future__ import annotations

import json
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
from slurmft.testbed import procs
from tests.integration.waiting import wait_for
from tests.integration.watching import start_watcher, stop_watcher

torchft = pytest.importorskip("torchft")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

TRAIN = Path(__file__).resolve().parents[2] / "slurmft" / "examples" / "train_torchft.py"
STEPS = 1500          # about 90 s at full speed: room for a kill, a rejoin and a lost node


def write_job(cluster, work: Path, *, steps: int, name: str) -> Path:
    ckpt = work / "ckpt"
    cfg = RescheduleConfig(state_dir=str(work / "state"), slots=1)
    train = [sys.executable, str(TRAIN), "--steps", str(steps), "--sample-time",
             f"{0.05 / 24:.9g}", "--global-batch", "48", "--step-interval", "10",
             "--checkpoint-dir", str(ckpt), "--log-jsonl", str(work / "progress.jsonl")]
    script = work / "job.sh"
    script.write_text(render("job.sh.j2", job_context(
        cfg, train_cmd=train, checkpoint_dir=str(ckpt), job_name=name, nodes=2, spares=1,
        replicas=2, work_dir=str(work), output=str(work / "job.out"),
        slurmft_cmd=slurmft_argv(), reschedule_log=str(work / "resched.log"))))
    return script


def audit(state: Path) -> list[dict]:
    path = state / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def steps(progress: Path) -> list[dict]:
    return [r for r in read_progress(progress) if r["event"] == "step"] if progress.exists() else []


def group_launches(state: Path, replica: int) -> list[list[str]]:
    """The nodes of every launch of one replica group, in order."""
    return [a["nodes"] for a in audit(state) if a["event"] == "run" and a.get("replica") == replica
            and a["state"] in ("launching", "relaunching")]


def kill_ranks(cluster, node: str) -> list[int]:
    """SIGKILL the training processes (not srun, not the batch script) on ``node``."""
    pids = wait_for(lambda: procs.training_ranks(cluster.job_pids(node)), 20,
                    f"a training process on {node}")
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def bring_back(cluster, cluster_run, node: str) -> None:
    """Link up and resume a node a test cut off, until Slurm lists it idle (the next test
    needs every node), and end what the test's job left running there: a rank cut off with
    its node can outlive the job (once in CI a later test slowed such a leftover instead of
    its own rank)."""
    cluster.fault(node, "link-up")

    def idle() -> bool:
        cluster_run(["scontrol", "update", f"nodename={node}", "state=resume"])
        return cluster_run(["sinfo", "-h", "-n", node, "-o", "%T"]).stdout.strip() == "idle"
    wait_for(idle, 90, f"{node} idle again")
    for pid in cluster.job_pids(node):      # the job is gone: these are its leftovers
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Run:
    """One submitted job, with the watcher on it (taken down by ``close``)."""

    def __init__(self, cluster, cluster_run, name: str, steps_: int, watch: bool) -> None:
        self.cluster, self.cluster_run = cluster, cluster_run
        self.work = Path(cluster.shared_dir) / name
        subprocess.run(["rm", "-rf", str(self.work)], check=False)
        self.work.mkdir(parents=True)
        self.progress, self.state = self.work / "progress.jsonl", self.work / "state"
        script = write_job(cluster, self.work, steps=steps_, name=name)
        self.env = {**cluster.env(), "SLURMFT_RESCHEDULE_STATE_DIR": str(self.state),
                    "SLURMFT_PROBE_SSH": "false", "SLURMFT_PROBE_TIMEOUT": "2",
                    "SLURMFT_PROBE_PING_TIMEOUT": "0.5"}
        cp = cluster_run(["sbatch", "--parsable", "-w", "node1,node2,node3", script], env=self.env)
        assert cp.returncode == 0, cp.stderr
        self.jid = int(cp.stdout.strip())
        self.client = cluster.slurm_client()
        self.watcher = None
        if watch:
            self.watcher = start_watcher(cluster, self.env, self.work / "watch.log", "--job",
                                         str(self.jid))

    def tail(self, name: str) -> str:
        """The end of one of the run's files, without the watcher's healthy-probe lines."""
        path = self.work / name
        if not path.exists():
            return "(none)"
        lines = [x for x in path.read_text().splitlines() if " 0 unhealthy" not in x]
        return "\n".join(lines)[-2500:]

    def diagnose(self) -> str:
        j = self.client.job(self.jid)
        runs = [f"{a.get('replica', '-')} {a['state']} {a.get('nodes')} {a.get('reason', '')}"
                for a in audit(self.state) if a["event"] == "run"]
        return (f"state {j.state} on {j.nodes} restarts {j.restart_count}\n"
                f"supervisor (replica, state, nodes, reason):\n" + "\n".join(runs[-12:]) +
                f"\nresched.log:\n{self.tail('resched.log')}"
                f"\njob.out:\n{self.tail('job.out')}\nwatch.log:\n{self.tail('watch.log')}")

    def wait_step(self, at_least: int, timeout: float, after: float = 0.0, **match) -> dict:
        def found():
            return next((r for r in steps(self.progress) if r["step"] >= at_least
                         and r["t"] > after and all(r.get(k) == v for k, v in match.items())),
                        None)
        return wait_for(found, timeout, f"a step >= {at_least} {match or ''}", show=self.diagnose)

    def completed(self, timeout: float):
        return wait_for(lambda: (j := self.client.job(self.jid)).state == "COMPLETED" and j,
                        timeout, "the job to complete", show=self.diagnose)

    def close(self) -> None:
        if self.watcher is not None:
            stop_watcher(self.watcher)
        self.cluster_run(["scancel", str(self.jid)])


def test_a_lost_group_is_relaunched_alone_while_the_other_trains_on(cluster, cluster_run):
    run = Run(cluster, cluster_run, "replicas", STEPS, watch=True)
    lost = ""
    try:
        run.wait_step(60, 180, replicas=2)
        # 1. group 1's process dies: group 0 commits steps alone, group 1 comes back on node2
        killed_at = time.time()
        # every job process on node2 (group 1's rank and anything it started; the batch
        # script lives on node1)
        what = cluster.fault("node2", "kill-job-procs")
        assert what.startswith("killed"), (what, run.diagnose())
        alone = run.wait_step(0, 60, after=killed_at, replicas=1)
        back = run.wait_step(0, 120, after=alone["t"], replicas=2)
        assert group_launches(run.state, 1) == [["node2"], ["node2"]]
        assert group_launches(run.state, 0) == [["node1"]]          # never touched
        gap = max(b["t"] - a["t"] for a, b in zip(steps(run.progress), steps(run.progress)[1:])
                  if a["t"] >= killed_at - 1)
        print(f"process kill: group 0 alone from +{alone['t'] - killed_at:.1f} s, both again "
              f"+{back['t'] - killed_at:.1f} s; longest pause between steps {gap:.2f} s")

        # 2. node2 is cut off: the watcher takes it out, group 1 moves to the spare node3
        lost = "node2"
        cut_at = time.time()
        cluster.fault(lost, "link-down")
        wait_for(lambda: group_launches(run.state, 1)[-1:] == [["node3"]], 150,
                 "group 1 relaunched on the spare", show=run.diagnose)
        rejoined = run.wait_step(0, 120, after=time.time(), replicas=2)
        # group 0 trains alone once told of the loss (SIGURG, when the supervisor ends
        # group 1), not after its allreduce's --timeout (10 s), unless group 1 is back first
        around = sorted((r for r in steps(run.progress) if cut_at - 1 <= r["t"] <= rejoined["t"]),
                        key=lambda r: r["t"])
        gap = max((b["t"] - a["t"] for a, b in zip(around, around[1:])), default=0.0)
        alone = [r for r in around if r["t"] > cut_at + 0.5 and r.get("replicas") == 1]
        alone_from = f"+{alone[0]['t'] - cut_at:.1f} s" if alone else "- (no step alone)"
        print(f"node cut off: group 0 alone from {alone_from}, both groups again "
              f"+{rejoined['t'] - cut_at:.1f} s (on node3); longest pause {gap:.2f} s")
        assert gap < 9, (f"group 0 paused {gap:.1f} s: it waited out its collective timeout "
                         f"(10 s) instead of being told of the loss\n{run.diagnose()}")
        job = run.completed(240)
        assert job.restart_count == 0 and lost not in job.nodes
        node = next(n for n in run.client.nodes() if n.name == lost)
        assert node.is_drained and "slurmft" in node.reason
        recs = read_progress(run.progress)
        assert recs[-1]["event"] == "done" and recs[-1]["step"] == STEPS - 1
    finally:
        run.close()
        if lost:
            bring_back(cluster, cluster_run, lost)


def test_when_every_group_dies_each_resumes_from_its_checkpoint(cluster, cluster_run):
    run = Run(cluster, cluster_run, "replicas-all", 500, watch=False)
    try:
        run.wait_step(60, 180, replicas=2)
        saved = max(r["step"] for r in read_progress(run.progress) if r["event"] == "save")
        killed = kill_ranks(cluster, "node1") + kill_ranks(cluster, "node2")
        assert len(killed) == 2, run.diagnose()
        run.completed(240)
        recs = read_progress(run.progress)
        resumes = [r for r in recs if r["event"] == "resume"]
        assert resumes and min(r["from_step"] for r in resumes) >= saved - 10 > 0, resumes
        assert recs[-1]["event"] == "done" and recs[-1]["step"] == 499
        assert len(group_launches(run.state, 0)) == 2 and len(group_launches(run.state, 1)) == 2
        assert "no replica group survived" in (run.work / "job.out").read_text()
    finally:
        run.close()
