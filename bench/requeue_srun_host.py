#!/usr/bin/env python3
"""Where a job step's srun runs decides how fast Slurm requeues a job whose batch host is lost.

A 3-node requeueable job on a 4-node local cluster runs, besides its batch script, one job step
(`sleep` on the two other nodes) whose srun is started:

  none    no step at all
  batch   by the batch script, on the batch host (the warm pool before: the baseline)
  peer    over ssh on the first other node (slurmft's launcher and warm pool now)

The batch host's link goes down and `slurmft reschedule JOB` runs at once (requeue-hold, the node
DOWN then DRAIN, the node excluded, release, StartTime=now). Measured: fault -> the job RUNNING
again without the lost node. With the srun on the lost host, the other nodes' step daemons send
it the step's task exits until Slurm's MessageTimeout runs out, several times over, and the job
stays COMPLETING meanwhile. Needs root; builds its own cluster and tears it down on exit.

    .venv/bin/python bench/requeue_srun_host.py [--trials 2] [--json FILE]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from cluster_trials import ClusterBench, run_trials, trial_args

MODES = ("batch", "peer", "none")
BASELINE = "batch"
JOB = """#!/bin/bash
#SBATCH --requeue
#SBATCH --output=/dev/null
peers=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | grep -vx "$SLURMD_NODENAME" | paste -sd,)
case "$BENCH_MODE" in
  batch) srun --overlap -N2 --nodelist="$peers" sleep 1000 & ;;
  peer) ssh -F "$BENCH_SSH_CONFIG" -o BatchMode=yes "${peers%%,*}" env SLURM_CONF="$SLURM_CONF" \\
            srun --jobid="$SLURM_JOB_ID" --overlap -N2 --nodelist="$peers" sleep 1000 & ;;
esac
sleep 1000
"""


class Bench(ClusterBench):
    def state(self, jid: int) -> str:
        return self.run(["squeue", "-h", "-j", str(jid), "-o", "%T"]).stdout.strip()

    def trial(self, mode: str) -> float:
        script = Path(self.cluster.shared_dir) / "bench-requeue.sh"     # the cluster is up now
        script.write_text(JOB)
        script.chmod(0o755)
        out = self.run(["sbatch", "--parsable", "-N3", "-w", "node[1-3]", str(script)],
                       env={"BENCH_MODE": mode,
                            "BENCH_SSH_CONFIG": str(self.cluster.ssh_config_path)})
        if out.returncode != 0:
            raise RuntimeError(f"sbatch: {out.stderr.strip()}")
        jid = int(out.stdout.strip().split(";")[0])
        try:
            self.wait("the job to run", lambda: self.state(jid) == "RUNNING")
            if mode != "none":
                self.wait("its step to start", lambda: f"{jid}.0" in self.run(
                    ["squeue", "-h", "-s", "-j", str(jid), "-o", "%i"]).stdout.split())
            time.sleep(1.0)
            self.cluster.fault("node1", "link-down")          # node1: the batch host (-w order)
            t0 = time.monotonic()
            env = {**self.cluster.env(), "SLURMFT_PROBE_SSH": "false",
                   "SLURMFT_PROBE_PING_TIMEOUT": "0.5",
                   "SLURMFT_RESCHEDULE_STATE_DIR": str(Path(self.cluster.shared_dir) / "state")}
            resched = subprocess.Popen(self.cluster.exec_argv(
                [sys.executable, "-m", "slurmft", "reschedule", str(jid)]), env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.wait("the job to leave RUNNING", lambda: self.state(jid) != "RUNNING")
            back = self.wait("the job to run again", lambda: self.state(jid) == "RUNNING", 120)
            try:
                resched.wait(timeout=30)
            except subprocess.TimeoutExpired:
                resched.kill()
                resched.wait()
            return back - t0
        finally:
            self.run(["scancel", str(jid)])
            self.cluster.fault("node1", "link-up")
            self.wait("node1 idle again", self.node1_back, 90, poll=0.5)

    def node1_back(self) -> bool:
        """Resume node1 (drained by the reschedule) until Slurm shows it idle."""
        self.run(["scontrol", "update", "nodename=node1", "state=resume"])
        return self.run(["sinfo", "-h", "-n", "node1", "-o", "%T"]).stdout.strip() == "idle"


def main(argv: list[str] | None = None) -> int:
    a = trial_args(__doc__, argv, trials=2, name="bench-requeue")
    bench = Bench(a.name)
    results = run_trials(
        bench, MODES, a.trials, lambda mode: round(bench.trial(mode), 2),
        lambda _, mode, s: print(f"{mode:6s} fault -> RUNNING again {s:.1f} s", flush=True))
    if results is None:
        return 1
    base = statistics.median(results[BASELINE])
    print(f"\n{'srun of the step':<30}{'fault -> RUNNING again (s)':<30}{'median':>8}"
          f"{'vs baseline':>13}")
    for mode, label in (("batch", "on the batch host (baseline)"), ("peer", "on a peer (slurmft)"),
                        ("none", "no step")):
        med = statistics.median(results[mode])
        print(f"{label:<30}{', '.join(f'{x:.1f}' for x in results[mode]):<30}{med:>8.1f}"
              f"{med - base:>+12.1f}s")
    if a.json:
        Path(a.json).write_text(json.dumps({"trials": a.trials, "fault_to_running_s": results},
                                           indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
