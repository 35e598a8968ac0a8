#!/usr/bin/env python3
"""What a relaunch of the training costs from mpirun's start to the training's first step.

Inside one 4-node job on a local cluster, the batch script launches the example training
(`slurmft/examples/train.py`, 3 steps, a fresh checkpoint directory each time) with mpirun, one
rank per node, `--trials` times in each mode:

  cold          the ranks start as new interpreters (no pool)
  warm-torch    forked by a pool server that preloaded torch,mpi4py (slurmft before: baseline)
  warm          forked by a pool server with slurmft's default preload
                (torch,torch._dynamo,mpi4py: torch imports torch._dynamo at the first optimizer)

Measured from the progress records: mpirun started -> the training's `start` record (model,
optimizer, checkpoint manager built; MPI initialised) and -> its first step. A warm mode whose
ranks were not all forked by the pool is an error, not a cold figure. Needs root; builds its
own cluster and tears it down on exit.

    .venv/bin/python bench/warm_start.py [--trials 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slurmft.core.errors import SlurmFTError  # noqa: E402
from slurmft.supervise.warm import DEFAULT_PRELOAD  # noqa: E402
from slurmft.testbed import Cluster  # noqa: E402
from slurmft.testbed.demo import mpirun_args  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "slurmft" / "examples" / "train.py"
MODES = {"cold": None, "warm-torch": ("torch", "mpi4py"), "warm": DEFAULT_PRELOAD}
BASELINE = "warm-torch"
NODES = 4


def job_script(work: Path, mpirun: str, trials: int) -> str:
    """The batch script: for each mode, (a pool,) ``trials`` launches, each line of its
    launch times on stdout as ``LAUNCH mode trial epoch``."""
    py = shlex.quote(sys.executable)
    train = f"{py} {shlex.quote(str(TRAIN))} --steps 3 --global-batch 48 --sample-time 0.002"
    lines = ["#!/bin/bash", f"cd {shlex.quote(str(work))} || exit 1", "set -u"]
    for mode, preload in MODES.items():
        if preload is not None:
            lines += [f"srun --overlap --no-kill --kill-on-bad-exit=0 --nodes={NODES} "
                      f"--ntasks-per-node=1 {py} -m slurmft.supervise.warm serve --preload "
                      f"{','.join(preload)} 2>pool-{mode}.err &", "pool=$!",
                      # ready: every server said so
                      f"for _ in $(seq 600); do [ \"$(grep -c ' ready in ' pool-{mode}.err)\" "
                      f"-ge {NODES} ] && break; sleep 0.1; done"]
        client = (f"{py} -m slurmft.supervise.warm run -- " if preload is not None else "")
        for t in range(trials):
            tag = f"{mode}-{t}"
            lines += [f"echo LAUNCH {mode} {t} $(date +%s.%N)",
                      f"mpirun -np {NODES} {mpirun} {client}{train} --checkpoint-dir ck-{tag} "
                      f"--log-jsonl progress-{tag}.jsonl >out-{tag}.txt 2>&1 "
                      f"|| echo FAILED {tag}"]
        if preload is not None:
            lines += ["kill $pool; wait $pool 2>/dev/null"]
    return "\n".join(lines + ["exit 0"]) + "\n"


def first(path: Path, event: str) -> float | None:
    for line in path.read_text().splitlines() if path.exists() else ():
        rec = json.loads(line)
        if rec.get("event") == event:
            return float(rec["t"])
    return None


def measure(cluster: Cluster, trials: int) -> dict[str, dict[str, list[float]]]:
    work = Path(cluster.shared_dir) / "bench-warm-start"
    subprocess.run(["rm", "-rf", str(work)], check=False)
    work.mkdir(parents=True)
    script = work / "job.sh"
    script.write_text(job_script(work, mpirun_args(cluster), trials))
    script.chmod(0o755)
    out = subprocess.run(cluster.exec_argv(
        ["sbatch", "--parsable", "--wait", f"-N{NODES}", "--ntasks-per-node=1",
         f"--output={work / 'job.out'}", str(script)]), env=cluster.env(),
        capture_output=True, text=True, timeout=900, check=False)
    log = (work / "job.out").read_text() if (work / "job.out").exists() else ""
    if out.returncode != 0 or "FAILED" in log:
        raise RuntimeError(f"the job failed ({out.stderr.strip()}): {log[-1500:]}")
    results: dict[str, dict[str, list[float]]] = {}
    for line in log.splitlines():
        if not line.startswith("LAUNCH "):
            continue
        _, mode, t, at = line.split()
        tag = f"{mode}-{t}"
        prog = work / f"progress-{tag}.jsonl"
        start, step = first(prog, "start"), first(prog, "step")
        if start is None or step is None:
            raise RuntimeError(f"{tag}: no start or step record in {prog}")
        r = results.setdefault(mode, {"to_start_s": [], "to_first_step_s": []})
        r["to_start_s"].append(round(start - float(at), 3))
        r["to_first_step_s"].append(round(step - float(at), 3))
    for mode, preload in MODES.items():
        if preload is None:
            continue
        forks = (work / f"pool-{mode}.err").read_text().count(" forked as pid ")
        if forks != NODES * trials:
            raise RuntimeError(f"{mode}: the pool forked {forks} of {NODES * trials} ranks "
                               "(the rest started cold): not a warm figure")
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--name", default="bench-warm", help="the local cluster's name")
    ap.add_argument("--json", default="", metavar="FILE", help="also write the results here")
    a = ap.parse_args(argv)
    if a.trials < 1:
        ap.error("--trials must be at least 1")
    cluster = Cluster(a.name)
    cluster.down()
    t0 = time.monotonic()
    try:
        cluster.up(nodes=NODES)
        results = measure(cluster, a.trials)
    except (RuntimeError, SlurmFTError, subprocess.TimeoutExpired) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        cluster.down()
    base = statistics.median(results[BASELINE]["to_first_step_s"])
    print(f"\n{NODES} ranks, one per node, mpirun; {a.trials} launches each "
          f"({time.monotonic() - t0:.0f} s)")
    print(f"{'ranks started':<44}{'-> start (s)':<22}{'-> first step (s)':<22}{'median':>8}"
          f"{'vs baseline':>13}")
    labels = {"cold": "as new interpreters",
              "warm-torch": "forked, torch,mpi4py preloaded (baseline)",
              "warm": f"forked, {','.join(DEFAULT_PRELOAD)}"}
    for mode, label in labels.items():
        r = results[mode]
        med = statistics.median(r["to_first_step_s"])
        print(f"{label:<44}{', '.join(f'{x:.2f}' for x in r['to_start_s']):<22}"
              f"{', '.join(f'{x:.2f}' for x in r['to_first_step_s']):<22}{med:>8.2f}"
              f"{med - base:>+12.2f}s")
    if a.json:
        Path(a.json).write_text(json.dumps({"trials": a.trials, "nodes": NODES,
                                            "preload": {m: p and list(p)
                                                        for m, p in MODES.items()},
                                            "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
