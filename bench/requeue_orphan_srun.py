#!/usr/bin/env python3
"""Does a requeued job survive its old run's srun? The kill before a requeue, two ways.

A 4-node requeueable job runs its training stand-in as one srun step (a `sleep` loop on every
node). node2's link goes down, and the job is requeued without node2 by the same commands
slurmft's rescheduler runs (requeue-hold, node2 DOWN, ExcNodeList + NumNodes=3-3, release,
StartTime=now), after one of two kills:

  whole    the kill slurmft ran until 2026-12-03 (the baseline): the step SIGKILLed by number
           (`scancel --ctld --signal=KILL J.0`), then the whole job (`scancel --signal=KILL
           --full J`, which Slurm carries out as SIGTERM, SIGKILL KillWait later)
  batch    the kill now (`CommandSlurmClient.kill_job`): the steps by number, newest first,
           then the batch script's process group (`scancel --batch --full --signal=KILL J`)

Counted per trial: the old run's srun outlived its script (it prints "Timed out waiting for job
step to complete" into the job's output when its KillWait + 2 s wait ends, then cancels "step 0"),
and the requeued run did not survive that (not RUNNING, restart count 1, KillWait + 3 s after it
started; it FAILED with exit 137 when the cancel hit its step 0). Also fault -> RUNNING again.
Needs root; builds its own 4-node cluster and tears it down on exit (about 25 s a trial).

    .venv/bin/python bench/requeue_orphan_srun.py [--trials 6] [--json FILE]
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

from cluster_trials import ClusterBench, run_trials, trial_args

from slurmft.slurm import commands as scli
from slurmft.slurm.client import CommandSlurmClient
from slurmft.slurm.runner import CommandResult

MODES = ("whole", "batch")
BASELINE = "whole"
LOST = "node2"
KILL_WAIT = 5            # the local cluster's slurm.conf (templates/slurm.conf.j2)
JOB = """#!/bin/bash
echo "start restarts=${SLURM_RESTART_COUNT:-0}"
srun bash -c 'while true; do sleep 1; done'
"""
ORPHAN_LINE = "Timed out waiting for job step to complete"


class ClusterRunner:
    """The slurm client's runner: each command in the cluster's controller namespace."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def run(self, argv, timeout: float) -> CommandResult:
        cp = subprocess.run(self.cluster.exec_argv(list(argv)), env=self.cluster.env(),
                            capture_output=True, text=True, timeout=timeout, check=False)
        return CommandResult(list(argv), cp.returncode, cp.stdout, cp.stderr)


class Bench(ClusterBench):
    poll = 0.2

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.client = CommandSlurmClient(ClusterRunner(self.cluster))

    def kill(self, mode: str, jid: int) -> None:
        """The kill before the requeue. A job that ended meanwhile: the requeue follows."""
        if mode == "batch":
            self.client.kill_job(jid)                     # what the rescheduler runs now
            return
        steps = self.client.steps(jid)
        if steps:
            self.run(scli.build_signal_steps_argv(jid, steps, "KILL"))
        self.run(["scancel", "--signal=KILL", "--full", str(jid)])

    def job(self, jid: int) -> dict[str, str]:
        out = self.run(["scontrol", "show", "job", "-o", str(jid)]).stdout
        return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)

    def requeue(self, mode: str, jid: int) -> None:
        """The kill, then the rescheduler's requeue without LOST."""
        self.kill(mode, jid)
        for argv in (scli.build_job_action_argv("requeuehold", jid),
                     scli.build_node_update_argv([LOST], "DOWN", "bench: link down"),
                     scli.build_update_job_argv(jid, exclude=[LOST], num_nodes=(3, 3)),
                     scli.build_job_action_argv("release", jid),
                     scli.build_update_job_argv(jid, start_now=True)):
            if argv[:2] == ["scontrol", "release"]:
                # as the rescheduler does (_credential_gap): slurmd refuses a credential made
                # in the second the requeue revoked the old one (the run FAILS, exit 1)
                time.sleep(max(0.0, math.floor(held) + 1.05 - time.time()))
            cp = self.run(argv)
            if argv[:2] == ["scontrol", "requeuehold"]:
                held = time.time()
            if cp.returncode != 0 and "StartTime=now" not in argv:
                raise RuntimeError(f"{' '.join(argv)}: {cp.stderr.strip()}")

    def running_again(self, jid: int) -> bool:
        """The requeued run started: RUNNING, or already ended (killed within a poll)."""
        j = self.job(jid)
        if j.get("JobState") == "PENDING" and j.get("Reason") == "BeginTime":
            self.run(scli.build_update_job_argv(jid, start_now=True))    # the watcher's nudge
        return j.get("Restarts") == "1" and j.get("JobState") in (
            "RUNNING", "FAILED", "COMPLETED", "CANCELLED", "NODE_FAIL")

    def trial(self, mode: str) -> dict:
        shared = Path(self.cluster.shared_dir)
        script = shared / "bench-orphan.sh"
        script.write_text(JOB)
        script.chmod(0o755)
        out = self.run(["sbatch", "--parsable", "--requeue", "-N4", f"--chdir={shared}",
                        f"--output={shared}/bench-orphan-%j.out", "--open-mode=append",
                        str(script)])
        if out.returncode != 0:
            raise RuntimeError(f"sbatch: {out.stderr.strip()}")
        jid = int(out.stdout.strip().split(";")[0])
        try:
            self.wait("the job to run", lambda: self.job(jid).get("JobState") == "RUNNING", 90)
            self.wait("its step to start", lambda: f"{jid}.0" in self.run(
                ["squeue", "-h", "-s", "-j", str(jid), "-o", "%i"]).stdout.split())
            time.sleep(1.0)
            self.cluster.fault(LOST, "link-down")
            t0 = time.monotonic()
            self.requeue(mode, jid)
            back = self.wait("the job to run again", lambda: self.running_again(jid), 60)
            time.sleep(max(0.0, back + KILL_WAIT + 3 - time.monotonic()))
            j = self.job(jid)
            survived = (j.get("JobState"), j.get("Restarts")) == ("RUNNING", "1")
            text = (shared / f"bench-orphan-{jid}.out").read_text()
            return {"job": jid, "fault_to_running_s": round(back - t0, 2),
                    "old_srun_survived": ORPHAN_LINE in text, "requeued_run_survived": survived,
                    "state_after": j.get("JobState"), "exit_code": j.get("ExitCode")}
        finally:
            self.run(["scancel", str(jid)])
            self.cluster.fault(LOST, "link-up")
            self.wait("the job to end", lambda: self.job(jid).get("JobState") not in
                      ("RUNNING", "PENDING", "COMPLETING", "CONFIGURING"), 60, poll=0.5)
            self.wait("every node idle again", self.nodes_back, 120, poll=1.0)

    def nodes_back(self) -> bool:
        """Resume the nodes (node2 drained, or "Kill task failed") until all are idle."""
        for node in self.cluster.nodes:
            self.run(["scontrol", "update", f"nodename={node}", "state=resume"])
        states = self.run(["sinfo", "-h", "-N", "-o", "%t"]).stdout.split()
        return bool(states) and all(s == "idle" for s in states)     # not "idle*": no job yet


def main(argv: list[str] | None = None) -> int:
    a = trial_args(__doc__, argv, trials=6, name="bench-orphan",
                   trials_help="trials per kill (default 6)")
    bench = Bench(a.name)

    def say(i: int, mode: str, r: dict) -> None:
        print(f"trial {i + 1} {mode:5s} job {r['job']}: RUNNING again after "
              f"{r['fault_to_running_s']:.1f} s; old srun survived: "
              f"{r['old_srun_survived']}; requeued run survived: "
              f"{r['requeued_run_survived']} ({r['state_after']}, exit {r['exit_code']})",
              flush=True)

    results = run_trials(bench, MODES, a.trials, bench.trial, say)
    if results is None:
        return 1
    print(f"\n{'kill before the requeue':<34}{'trials':>7}{'old srun alive':>16}"
          f"{'requeued run killed':>21}{'fault -> RUNNING (median)':>27}")
    for mode, label in (("whole", "steps, then whole job (baseline)"),
                        ("batch", "steps, then batch pgid (slurmft)")):
        rs = results[mode]
        print(f"{label:<34}{len(rs):>7}{sum(r['old_srun_survived'] for r in rs):>16}"
              f"{sum(not r['requeued_run_survived'] for r in rs):>21}"
              f"{statistics.median(r['fault_to_running_s'] for r in rs):>25.1f} s")
    if a.json:
        Path(a.json).write_text(json.dumps({"trials": a.trials, "kill_wait_s": KILL_WAIT,
                                            "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
