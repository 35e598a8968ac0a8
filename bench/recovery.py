#!/usr/bin/env python3
"""Recovery benchmark: one node's link goes down under a running 4-node job.

Measured in the same run, on the same local cluster (5 nodes: the job takes 4, one is spare):

  slurmft watch   active probing + the requeuehold/down/drain/exclude/release fast path
  slurm alone     the same requeueable job, no slurmft: Slurm's own node-failure handling
  classic recipe  the seed's bash script (ping; scontrol update MinNodes=.. ExcNodeList=..;
                  mpirun ...) run right after the fault, with the failed node given to it

For each: detection time (fault -> the failure is noticed) and time to RUNNING again on
healthy nodes (fault -> job RUNNING without the failed node). Target: detection <= 2 s and
RUNNING again <= 5 s. Needs root; builds its own cluster and tears it down on exit.

    .venv/bin/python bench/recovery.py [--trials 3] [--skip-slurm] [--ssh]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slurmft.core.nodeset import expand  # noqa: E402
from slurmft.testbed import Cluster  # noqa: E402

JOB_NODES = 4
CLUSTER_NODES = 5
LOOP = """#!/bin/bash
#SBATCH --requeue
#SBATCH --open-mode=append
echo "start job=$SLURM_JOB_ID restarts=${SLURM_RESTART_COUNT:-0} nodes=$SLURM_JOB_NODELIST"
srun bash -c 'while true; do sleep 1; done'
"""
# The seed's script, with only the training launch replaced by an echo (it would start the
# training outside any Slurm allocation; the point is what happens to the job).
CLASSIC = """#!/bin/bash
SLURM_JOB_ID=$1
FAILED_NODE=$2
SLURM_NODELIST=$3
ORIGINAL_NODES=4
if ping -c 1 $FAILED_NODE >/dev/null; then
    echo "Node $FAILED_NODE alive but not responding"
else
    echo "Node $FAILED_NODE is down"
fi
scontrol update jobid=$SLURM_JOB_ID \\
    MinNodes=$((ORIGINAL_NODES-1)) \\
    ExcNodeList=$FAILED_NODE
echo "scontrol rc=$?"
echo "would run: mpirun -np $((ORIGINAL_NODES-1)) -hostfile <(scontrol show hostnames \\
$SLURM_NODELIST | grep -v $FAILED_NODE) python train.py --resume checkpoint_latest.pt"
"""


@dataclass
class Trial:
    scenario: str
    node: str
    detect_s: float | None = None
    running_s: float | None = None
    notes: list[str] = field(default_factory=list)


class Bench:
    def __init__(self, name: str, limit: float, probe_timeout: float, interval: float,
                 ssh: bool) -> None:
        self.cluster = Cluster(name)
        self.limit = limit
        self.env = {**os.environ, "SLURMFT_PROBE_TIMEOUT": str(probe_timeout),
                    "SLURMFT_PROBE_SSH": "true" if ssh else "false"}
        self.interval = interval
        self.jobs: list[int] = []

    # ----------------------------------------------------------------- cluster helpers
    def run(self, argv: list[str], check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(self.cluster.exec_argv(argv), env={**self.cluster.env(),
                              **{k: v for k, v in self.env.items() if k.startswith("SLURMFT_P")}},
                              capture_output=True, text=True, timeout=60, check=check)

    def job_state(self, jid: int) -> tuple[str, list[str]]:
        out = self.run(["squeue", "-h", "-j", str(jid), "-o", "%T|%N"]).stdout.strip()
        if "|" not in out:
            return "", []
        state, nodes = out.split("|", 1)
        return state, expand(nodes) if nodes and "(" not in nodes else []

    def node_state(self, node: str) -> str:
        return self.run(["sinfo", "-h", "-N", "-n", node, "-o", "%T"]).stdout.strip()

    def submit(self) -> tuple[int, list[str]]:
        shared = Path(self.cluster.shared_dir)
        script = shared / "bench-loop.sh"
        script.write_text(LOOP)
        script.chmod(0o755)
        out = self.run(["sbatch", "--parsable", f"-N{JOB_NODES}", "-J", "bench",
                        f"--chdir={shared}", "--output=/dev/null", str(script)], check=True)
        jid = int(out.stdout.strip().split(";")[0])
        self.jobs.append(jid)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state, nodes = self.job_state(jid)
            if state == "RUNNING" and len(nodes) == JOB_NODES:
                return jid, nodes
            time.sleep(0.2)
        raise RuntimeError(f"job {jid} did not start")

    def restore(self, node: str) -> None:
        self.cluster.fault(node, "link-up")
        for jid in self.jobs:
            self.run(["scancel", str(jid)])
        self.jobs.clear()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            states = [self.node_state(n) for n in self.cluster.nodes]
            for n, st in zip(self.cluster.nodes, states):
                if st.startswith(("drain", "down")):
                    self.run(["scontrol", "update", f"nodename={n}", "state=resume"])
            if all(st == "idle" for st in states):
                return
            time.sleep(0.5)
        raise RuntimeError(f"nodes did not come back idle: {states}")

    def wait_running(self, jid: int, failed: str, t0: float, trial: Trial,
                     detect=None) -> None:
        """Poll until RUNNING without ``failed``; ``detect()`` may report detection time."""
        deadline = t0 + self.limit
        while time.time() < deadline:
            if detect and trial.detect_s is None:
                trial.detect_s = detect()
            state, nodes = self.job_state(jid)
            if state == "RUNNING" and nodes and failed not in nodes:
                trial.running_s = time.time() - t0
                trial.notes.append(f"RUNNING on {len(nodes)} nodes")
                return
            time.sleep(0.1)
        state, nodes = self.job_state(jid)
        if not state:      # squeue no longer lists it: ask scontrol how it ended
            out = self.run(["scontrol", "show", "job", "-o", str(jid)]).stdout
            kv = dict(x.split("=", 1) for x in out.split() if "=" in x)
            state = f"{kv.get('JobState', 'gone')} {kv.get('Reason', '')}".strip()
        trial.notes.append(f"not RUNNING within {self.limit:g}s (state {state})")

    def note_batch_host(self, jid: int, node: str, trial: Trial) -> None:
        host = self.run(["squeue", "-h", "-j", str(jid), "-o", "%B"]).stdout.strip()
        if host == node:
            trial.notes.append("failed node is the batch host")

    def slurm_detect(self, node: str, t0: float):
        def check() -> float | None:
            st = self.node_state(node)
            return time.time() - t0 if st.endswith("*") or st.startswith("down") else None
        return check

    # ----------------------------------------------------------------- scenarios
    def watch(self, node: str) -> Trial:
        trial = Trial("slurmft watch", node)
        jid, _ = self.submit()
        self.note_batch_host(jid, node, trial)
        lines: list[tuple[float, str]] = []
        proc = subprocess.Popen(
            self.cluster.exec_argv([sys.executable, "-m", "slurmft", "watch", "--job", str(jid),
                                    "--interval", str(self.interval)]),
            env={**self.cluster.env(), **{k: v for k, v in self.env.items()
                                          if k.startswith("SLURMFT_P")}},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True)

        def read() -> None:
            for line in proc.stderr:
                lines.append((time.time(), line.rstrip()))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            time.sleep(max(1.0, 2 * self.interval))      # a few healthy cycles first
            t0 = time.time()
            self.cluster.fault(node, "link-down")

            def detect() -> float | None:
                for ts, line in list(lines):
                    if "failed node(s)" in line:
                        return ts - t0
                return None

            self.wait_running(jid, node, t0, trial, detect)
            if trial.detect_s is None:
                trial.detect_s = detect()
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
            reader.join(timeout=5)
        errors = [line for _, line in lines if "ERROR" in line or "Traceback" in line]
        if errors:
            trial.notes.append(f"watch errors: {errors[:2]}")
        self.restore(node)
        return trial

    def slurm_alone(self, node: str) -> Trial:
        trial = Trial("slurm alone", node)
        jid, _ = self.submit()
        self.note_batch_host(jid, node, trial)
        t0 = time.time()
        self.cluster.fault(node, "link-down")
        self.wait_running(jid, node, t0, trial, self.slurm_detect(node, t0))
        trial.notes.append("on the spare node (Slurm cannot shrink a job)")
        self.restore(node)
        return trial

    def classic(self, node: str) -> Trial:
        trial = Trial("classic recipe", node)
        jid, nodes = self.submit()
        self.note_batch_host(jid, node, trial)
        script = Path(self.cluster.shared_dir) / "bench-classic.sh"
        script.write_text(CLASSIC)
        t0 = time.time()
        self.cluster.fault(node, "link-down")
        res = self.run(["bash", str(script), str(jid), node, ",".join(nodes)])
        took = time.time() - t0
        out = " | ".join(x for x in (res.stdout + res.stderr).splitlines() if x.strip())
        trial.notes.append(f"script {took:.1f}s: {out[:300]}")
        # It has no detector of its own: what notices the failure is Slurm (as above).
        self.wait_running(jid, node, t0, trial, self.slurm_detect(node, t0))
        self.restore(node)
        return trial


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def table(trials: list[Trial]) -> str:
    rows = []
    by: dict[str, list[Trial]] = {}
    for t in trials:
        by.setdefault(t.scenario, []).append(t)
    head = f"{'scenario':<16} {'n':>2} {'detect s (med/max)':>20} {'RUNNING s (med/max)':>21}  notes"
    rows.append(head)
    rows.append("-" * len(head))
    for name, ts in by.items():
        d = [t.detect_s for t in ts if t.detect_s is not None]
        r = [t.running_s for t in ts if t.running_s is not None]
        dcol = f"{fmt(statistics.median(d)) if d else '-'}/{fmt(max(d)) if d else '-'}"
        rcol = f"{fmt(statistics.median(r)) if r else '-'}/{fmt(max(r)) if r else '-'}"
        if len(r) < len(ts):
            rcol += f" ({len(ts) - len(r)} never)"
        bh = [t for t in ts if "failed node is the batch host" in t.notes]
        note = ts[-1].notes[-1] if ts[-1].notes else ""
        if bh:
            note += f"; batch host failed in {len(bh)}: RUNNING {', '.join(fmt(t.running_s) for t in bh)}s"
        rows.append(f"{name:<16} {len(ts):>2} {dcol:>20} {rcol:>21}  {note}")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", default="sft-bench", help="cluster name (built and torn down)")
    ap.add_argument("--trials", type=int, default=1, help="trials of each scenario")
    ap.add_argument("--limit", type=float, default=90.0, help="seconds to wait for RUNNING")
    ap.add_argument("--interval", type=float, default=0.5, help="watch interval")
    ap.add_argument("--probe-timeout", type=float, default=1.0)
    ap.add_argument("--ssh", action="store_true",
                    help="probe with SSH too (default: ping only; a link-down is a ping failure, "
                         "and SSH to a loaded shared host can stall on login scripts)")
    ap.add_argument("--skip-slurm", action="store_true",
                    help="skip the two Slurm-only baselines (each takes ~30 s)")
    ap.add_argument("--json", dest="json_out", default=None, help="also write results here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/recovery.py needs root (it builds a cluster in network namespaces)",
              file=sys.stderr)
        return 2
    bench = Bench(args.name, args.limit, args.probe_timeout, args.interval, args.ssh)
    c = bench.cluster
    c.down()
    trials: list[Trial] = []
    try:
        t = time.time()
        c.up(nodes=CLUSTER_NODES)
        print(f"cluster {args.name}: {CLUSTER_NODES} nodes up in {time.time() - t:.1f}s; "
              f"job: {JOB_NODES} nodes, requeueable; fault: link-down", flush=True)
        victims = ["node2", "node3", "node1", "node4"]
        for i in range(args.trials):
            node = victims[i % len(victims)]
            scenarios = [bench.watch] + ([] if args.skip_slurm else [bench.slurm_alone,
                                                                     bench.classic])
            for scenario in scenarios:
                tr = scenario(node)
                trials.append(tr)
                print(f"  {tr.scenario:<15} {node}: detect {fmt(tr.detect_s)}s, RUNNING "
                      f"{fmt(tr.running_s)}s  {'; '.join(tr.notes)}", flush=True)
    finally:
        c.down()
    print()
    print(table(trials))
    w = [t for t in trials if t.scenario == "slurmft watch"]
    met = [t for t in w if t.detect_s is not None and t.detect_s <= 2.0
           and t.running_s is not None and t.running_s <= 5.0]
    print(f"\ntarget (detect <= 2 s and RUNNING <= 5 s) for slurmft watch: met in "
          f"{len(met)}/{len(w)} trials")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps([t.__dict__ for t in trials], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
