#!/usr/bin/env python3
"""Watcher scale bench (issue 16 item 3): what one ``slurmft watch`` cycle costs Slurm and this
machine with 100, 1,000 and 2,000 running jobs on a 10,000-node cluster, the cached view
against the code before it, measured in the same run.

    .venv/bin/python bench/watcher_scale.py [--jobs 100,1000,2000] [--nodes 10000]
                                            [--cycles 5] [--failed-jobs 3] [--json FILE]

Slurm is the stateful fake (tests/fakes/fake_slurm.py) holding copies of the job and node
records captured from the real Slurm 22.05, so each command costs what producing and parsing
its real JSON costs (2,000 jobs: ~10 MB of squeue JSON; 10,000 nodes: ~10 MB of sinfo JSON).
The prober is a stub (every node healthy, or the chosen ones failed): the prober's own cost is
bench/scale.py's part. Each job runs 5 nodes and one job step (srun/mpirun).

Each variant runs in its own process (its peak RSS is its own): ``cached`` is this tree;
``before`` is the tree at ``--baseline-rev`` (the commit before the cached view, extracted with
git archive), driven by the same script and the same fake. Per variant and job count:

  healthy cycle   Slurm commands (squeue among them) and wall time, median of --cycles cycles;
                  tracemalloc peak of one such cycle (what the cycle allocates, the fake's JSON
                  text included, as squeue's stdout would be)
  failure cycle   a node fails in --failed-jobs jobs: commands, wall time, and the seconds the
                  cycle would sleep on a real cluster (simulated here: the credential gap
                  before a release, and before the cache the wait for each requeued job to run,
                  ``watch --wait 3`` by default, polling squeue every 0.2 s)
  follow-up       the next cycle once Slurm runs them again (waiting for their new step)
  RSS             the process's peak resident set (the fake's 12,000 records included)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The commit before the cached view (slurm/view.py): the watcher as it was.
BASELINE_REV = "37f37c167875227c804e3f46e943c2e4d16cd2eb"
PER_JOB = 5


# ----------------------------------------------------------------------------- one variant

class Sleeps:
    """The rescheduler's sleep and clock: time moves only when it sleeps (nothing really
    sleeps; what a real cycle would sleep is summed in ``total``)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.total = 0.0

    def sleep(self, seconds: float) -> None:
        self.total += seconds
        self.now += seconds

    def clock(self) -> float:
        return self.now


def _counts(calls) -> dict:
    from tests.fakes.scale import slurm_command

    c = Counter(slurm_command(a) for a in calls)
    return {"total": sum(c.values()), "squeue": c["squeue"] + c["squeue-steps"],
            "listings": c["squeue"], "sinfo": c["sinfo"], "show_job": c["show-job"],
            "writes": sum(n for k, n in c.items()
                          if k not in ("squeue", "squeue-steps", "sinfo", "show-job"))}


def worker(jobs: int, nodes: int, cycles: int, failed_jobs: int) -> dict:
    """Run the scenario with whatever ``slurmft`` is first on sys.path; one JSON dict."""
    logging.disable(logging.CRITICAL)           # the failures are logged at ERROR on purpose
    import slurmft
    from slurmft.core.config import RescheduleConfig
    from slurmft.probe.records import Health
    from slurmft.recovery.rescheduler import Rescheduler
    from slurmft.recovery.state import StateStore
    from slurmft.recovery.watcher import Watcher
    from slurmft.slurm.client import CommandSlurmClient
    from tests.fakes.scale import CountingProber, node_name, scale_cluster

    fake = scale_cluster(jobs, nodes, PER_JOB)
    for jid in list(fake.jobs):
        fake.start_step(jid)
    prober = CountingProber()
    sleeps = Sleeps()
    state = tempfile.mkdtemp(prefix="sft-watch-bench-")
    client = CommandSlurmClient(runner=fake)
    r = Rescheduler(client, prober, StateStore(state), RescheduleConfig(state_dir=state),
                    uid=0, sleep=sleeps.sleep, clock=sleeps.clock, start_wait=3.0,
                    wall=lambda: 2000.5)
    w = Watcher(client, prober, r, interval=1.0)

    def timed_cycle() -> tuple[float, dict, object]:
        n, t0 = len(fake.calls), time.perf_counter()
        res = w.cycle()
        return time.perf_counter() - t0, _counts(fake.calls[n:]), res

    timed_cycle()                                            # warm-up: every job seen once
    healthy = [timed_cycle() for _ in range(cycles)]
    tracemalloc.start()
    timed_cycle()
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    step = max(1, jobs // failed_jobs)
    victims = {k + 1: node_name(k * PER_JOB + 2) for k in range(0, step * failed_jobs, step)}
    prober.failed = {n: Health.UNREACHABLE for n in victims.values()}
    slept = sleeps.total
    fail_s, fail_counts, res = timed_cycle()
    acted = len(res.reports)
    fail_sleep = sleeps.total - slept

    prober.failed = {}
    for jid in victims:
        fake.start_pending(jid)                              # Slurm runs them again
    follow_s, follow_counts, _ = timed_cycle()
    return {
        "variant": "cached" if hasattr(w, "view") else "before",
        "slurmft": str(Path(slurmft.__file__).parent),
        "jobs": jobs, "nodes": nodes, "cycles": cycles,
        "healthy_commands": healthy[-1][1],
        "healthy_commands_max": max(h[1]["total"] for h in healthy),
        "healthy_cycle_s": statistics.median(h[0] for h in healthy),
        "failed_jobs": len(victims), "acted": acted,
        "failure_commands": fail_counts, "failure_cycle_s": fail_s,
        "failure_sleep_s": fail_sleep,
        "followup_commands": follow_counts, "followup_cycle_s": follow_s,
        "tracemalloc_peak_mb": traced_peak / 2**20,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# ----------------------------------------------------------------------------- the run

def extract(rev: str, into: Path) -> Path:
    """The ``slurmft`` package as of ``rev`` under ``into`` (git archive, no checkout)."""
    archive = into / "slurmft.tar"
    with open(archive, "wb") as out:
        subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "slurmft"],
                       stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


def run_variant(pythonpath: list[Path], args: argparse.Namespace, jobs: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in pythonpath)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--jobs", str(jobs),
           "--nodes", str(args.nodes), "--cycles", str(args.cycles),
           "--failed-jobs", str(args.failed_jobs)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False,
                         timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"watcher_scale: the {jobs}-job run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cmds(c: dict) -> str:
    return f"{c['total']:>3} ({c['squeue']:>2} sq)"


def table(rows: list[dict]) -> str:
    head = (f"{'jobs':>5} {'variant':<7} | {'healthy cycle':^24} | {'failure cycle':^34} | "
            f"{'follow-up':^11} | {'trace':>6} {'RSS':>5}\n"
            f"{'':>5} {'':<7} | {'commands':>12} {'median s':>11} | {'commands':>12} "
            f"{'s':>6} {'+sleeps s':>12} | {'commands':>11} | {'MB':>6} {'MB':>5}")
    lines = [head, "-" * len(head.splitlines()[1])]
    for r in rows:
        lines.append(
            f"{r['jobs']:>5} {r['variant']:<7} | {cmds(r['healthy_commands']):>12} "
            f"{r['healthy_cycle_s']:>11.3f} | {cmds(r['failure_commands']):>12} "
            f"{r['failure_cycle_s']:>6.2f} {r['failure_sleep_s']:>12.2f} | "
            f"{cmds(r['followup_commands']):>11} | {r['tracemalloc_peak_mb']:>6.1f} "
            f"{r['rss_mb']:>5.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", default="100,1000,2000",
                   help="comma-separated job counts (default 100,1000,2000)")
    p.add_argument("--nodes", type=int, default=10_000)
    p.add_argument("--cycles", type=int, default=5, help="healthy cycles timed (median)")
    p.add_argument("--failed-jobs", type=int, default=3,
                   help="jobs that lose a node in the failure cycle")
    p.add_argument("--baseline-rev", default=BASELINE_REV,
                   help="the commit whose watcher is the baseline ('' to skip it)")
    p.add_argument("--json", dest="json_file", help="also write the figures here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        counts = [int(x) for x in args.jobs.split(",") if x.strip()]
    except ValueError:
        p.error(f"--jobs: not a list of numbers: {args.jobs!r}")
    if not counts or min(counts) < 1 or max(counts) * PER_JOB > args.nodes:
        p.error(f"--jobs: each count must be >= 1 and fit {PER_JOB} nodes per job on "
                f"--nodes {args.nodes}")
    if args.cycles < 1 or args.failed_jobs < 1 or args.failed_jobs > min(counts):
        p.error("--cycles and --failed-jobs must be >= 1 (and --failed-jobs <= every --jobs)")
    if args.worker:
        print(json.dumps(worker(counts[0], args.nodes, args.cycles, args.failed_jobs)))
        return 0

    t0 = time.perf_counter()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="sft-watch-bench-") as tmp:
        variants = [("cached", [ROOT])]
        if args.baseline_rev:
            try:
                variants.insert(0, ("before", [extract(args.baseline_rev, Path(tmp)), ROOT]))
            except (OSError, subprocess.CalledProcessError) as exc:
                print(f"watcher_scale: no baseline ({exc}); measuring this tree only",
                      file=sys.stderr)
        for jobs in counts:
            for name, path in variants:
                row = run_variant(path, args, jobs)
                if row["variant"] != name:
                    raise SystemExit(f"watcher_scale: the {name} run loaded {row['slurmft']}")
                rows.append(row)
                print(f"  {jobs} jobs, {name}: done", file=sys.stderr, flush=True)
    print(f"watch cycle on {args.nodes} nodes, {PER_JOB} per job, one step each; "
          f"failure cycle: a node lost in {args.failed_jobs} jobs "
          f"(commands: all Slurm commands, 'sq' of them squeue)")
    print(table(rows))
    print(f"({time.perf_counter() - t0:.0f} s; baseline: {args.baseline_rev[:12] or 'none'}; "
          "sleeps are simulated, a real cycle would add them)")
    if args.json_file:
        Path(args.json_file).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
