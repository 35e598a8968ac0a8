#!/usr/bin/env python3
"""Goodput benchmark: fixed training work on a 4-node local cluster under repeated faults.

A fault is injected every ``--fault-every`` seconds of the run (random kind among link-down,
kill-slurmd and kill-job-procs, random node of the job, ``--seed``); a faulted node is repaired
after ``--repair-after`` seconds (link-up / restart-slurmd, then ``scontrol update
nodename=X state=resume`` if it is drained or down) so the cluster does not run out of nodes.
Variants, each on its own fresh cluster, measured in the same run:

  slurmft   the job wrapper (templates/job.sh.j2) + ``slurmft watch --interval 1``
  slurm     a plain requeueable job script, no slurmft at all: Slurm notices failures itself
            (SlurmdTimeout=10 here) and requeues; the script resumes from the newest verified
            checkpoint
  classic   the seed guide's recipe inside the job: on launcher failure ping each host,
            ``scontrol update jobid=.. MinNodes=N-1 ExcNodeList=FAILED`` (rejected by Slurm 22.05:
            recorded), ``mpirun -np N-1`` on a hostfile without the failed node, ``--resume``;
            MAX_RETRY=3
  nofault   (always run, first) the wrapper with no fault: it measures the fault-free step
            time at full size that every variant of the same seed is scored with

Compute is modelled per sample (``slurmft/examples/train.py --sample-time``): ``--step-time`` is the
simulated compute of a step on all ``--nodes`` ranks, and a step on k ranks takes nodes/k as
long at the same global batch, as on real hardware.

Reported per variant: wall time, goodput as ``slurmft.observe.goodput`` defines it (steps of the final
lineage x the nofault run's step time / wall), seconds at each world size, recoveries and their
times (fault -> first step after the resume), steps lost, completed?, and resumes from a
checkpoint older than the newest verified one at the fault.

    .venv/bin/python bench/goodput.py --quick                 # one seed, a few minutes
    .venv/bin/python bench/goodput.py --json goodput.json     # 2400 steps, a fault every 120 s

Needs root. Clusters are named gp-slurmft, gp-slurm, gp-classic; a cluster of that name that is
already up is refused (never touched), and every cluster this bench built is torn down, also on
Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slurmft.checkpoint.store import Store
from slurmft.core.errors import SlurmFTError
from slurmft.core.nodeset import validate_hostname
from slurmft.observe.goodput import describe_world_sizes, step_time
from slurmft.observe.events import AuditFile, RunTransition
from slurmft.core.selfcmd import slurmft_argv
from slurmft.observe.report import RESTART_PHASES, read_progress, restart_phases, summarize
from slurmft.testbed import procs
from slurmft.testbed.demo import Demo, DemoOptions, mpirun_args

VARIANTS = ("slurmft", "slurm", "classic")
#: Run only when asked (--variants ...,spare): slurmft's wrapper with one hot spare (a cluster of
#: nodes + 1; the job trains on `nodes` and replaces the first lost node with the spare).
#: slurmft-torchft: per-step mode (`slurmft run --replicas NODES --spares 1`, one replica group
#: per node, torchft's lighthouse on the batch host) on nodes + 1, with the watcher.
#: torchft-runner: torchft's own way on Slurm (its examples/slurm/runner.py): each replica is a
#: one-node Slurm job, a loop resubmits a replica whose job is gone every 10 s, no health
#: check, no exclusion; the lighthouse on the controller host; nodes + 1 in the cluster.
#: slurmft-torchft-jobs: per-step mode with one job per replica group (`render job
#: --group-jobs`), `slurmft lighthouse` on the controller host, the watcher on every group's
#: job; nodes + 1 in the cluster (the idle node takes a lost group's requeue).
#: nofault-torchft: slurmft-torchft-jobs with no fault: torchft's own fault-free step time, a
#: second figure for the torchft variants (their throughput against torchft's, the price of
#: torchft's per-step quorum left out; the main figure keeps restart mode's nofault).
#: spare-warm: spare with `slurmft run --warm` (ranks forked from a pre-imported Python per
#: node: a relaunch skips the interpreter and torch/mpi4py imports).
#: spare-warm-srun: spare-warm launched by `srun --mpi=pmix` instead of mpirun (no ORTE
#: daemons to start and wire up on a relaunch).
EXTRA_VARIANTS = ("spare", "spare-warm", "spare-warm-srun", "slurmft-torchft", "torchft-runner",
                  "slurmft-torchft-jobs", "nofault-torchft")
TORCHFT_VARIANTS = ("slurmft-torchft", "torchft-runner", "slurmft-torchft-jobs",
                    "nofault-torchft")
TORCHFT_BASELINE = "nofault-torchft"
#: Variants whose job holds one spare node on top of --nodes (their cluster has nodes + 1).
WITH_SPARE = ("spare", "spare-warm", "spare-warm-srun", "slurmft-torchft")
#: torchft-runner's loop: seconds between two looks at the replicas' jobs (runner.py's sleep).
RUNNER_POLL_S = 10.0
LIGHTHOUSE_PORT = 29510
BASELINE = "nofault"         # the same wrapper, no fault: always run; its step time scores all
FAULT_KINDS = ("link-down", "kill-slurmd", "kill-job-procs")
#: Drawn only when asked (--faults ...,hang): SIGSTOP of one training rank, SIGCONT at repair.
#: Only slurmft's supervisor notices a hang before the stall limit; the default draw stays the
#: one the published figures used.
EXTRA_FAULT_KINDS = ("hang",)
REPAIR = {"link-down": "link-up", "kill-slurmd": "restart-slurmd", "hang": "unhang"}
MAX_RETRY = 3


@dataclass
class Fault:
    t: float
    kind: str
    node: str
    latest: str | None            # newest verified checkpoint when the fault was injected
    latest_step: int | None
    what: str = ""
    repaired_at: float | None = None
    resumed_at: float | None = None
    recovery_s: float | None = None      # fault -> first step after the resume that followed it
    downtime_s: float | None = None      # last step before that resume -> first step after it
    resumed_from: int | None = None
    steps_lost: int | None = None
    stale_resume: bool = False           # resumed from older than ``latest_step``
    phases: dict | None = None           # where the restart's seconds went (restart_phases)


@dataclass
class VariantResult:
    variant: str
    cluster: str
    seed: int = 1
    job_id: int | None = None
    final_state: str = ""
    completed: bool = False
    wall_s: float | None = None
    useful_steps: int = 0
    fault_free_step_s: float | None = None   # the step time every goodput of this seed uses
    fault_free_from: str = ""                # "nofault" (that run's steps) or "own" (fallback)
    useful_s: float | None = None            # useful_steps x fault_free_step_s
    goodput: float | None = None
    goodput_torchft: float | None = None     # torchft variants: at nofault-torchft's step time
    world_size_seconds: dict[int, float] = field(default_factory=dict)
    resumes: int = 0
    steps_lost: int = 0
    final_step: int | None = None
    faults: list[Fault] = field(default_factory=list)
    stale_resumes: int = 0
    notes: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def recoveries(self) -> list[float]:
        return [f.recovery_s for f in self.faults if f.recovery_s is not None]


# ---- the classic recipe, as a job script ----------------------------------------------------

def classic_script(*, nodes: int, work: Path, ckpt_dir: Path, mpirun_opts: str,
                   train: list[str]) -> str:
    """The seed guide's mpi_restart.sh made runnable inside the job (bash, argv-safe).

    Node names come from Slurm at run time and are used only as quoted words; every path and
    argument written here is shell-quoted."""
    q = shlex.quote
    return f"""#!/bin/bash
#SBATCH --job-name=gp-classic
#SBATCH --nodes={int(nodes)}
#SBATCH --ntasks-per-node=1
#SBATCH --open-mode=append
#SBATCH --chdir={work}
#SBATCH --output={work / 'job.out'}
# The seed guide's recovery recipe (mpi_restart.sh) run in the job, as users run it.
set -u
CKPT={q(str(ckpt_dir))}
MAX_RETRY={MAX_RETRY}
mapfile -t HOSTS < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
ORIGINAL_NODES=${{#HOSTS[@]}}
HOSTFILE="$(mktemp "${{TMPDIR:-/tmp}}/classic-hosts.XXXXXX")"
trap 'rm -f "$HOSTFILE"' EXIT
launch() {{
    printf '%s slots=1\\n' "${{HOSTS[@]}}" > "$HOSTFILE"
    mpirun -np "${{#HOSTS[@]}}" --hostfile "$HOSTFILE" --mca plm rsh --mca ras '^slurm' \\
        {mpirun_opts} {shlex.join(train)} "$@"
}}
resume=()
if [ -n "$(ls -A "$CKPT" 2>/dev/null)" ]; then resume=(--resume "$CKPT"); fi
launch "${{resume[@]}}"
rc=$?
retry=0
while [ "$rc" -ne 0 ] && [ "$retry" -lt "$MAX_RETRY" ]; do
    retry=$((retry + 1))
    echo "classic: mpirun exited $rc (retry $retry/$MAX_RETRY)"
    FAILED_NODE=""
    for h in "${{HOSTS[@]}}"; do
        if ping -c 1 -W 1 "$h" >/dev/null 2>&1; then
            continue
        fi
        FAILED_NODE="$h"
        break
    done
    if [ -n "$FAILED_NODE" ]; then
        echo "classic: Node $FAILED_NODE is down"
        out="$(scontrol update jobid="$SLURM_JOB_ID" MinNodes=$(( ${{#HOSTS[@]}} - 1 )) \\
               ExcNodeList="$FAILED_NODE" 2>&1)"
        echo "classic: scontrol update rc=$? ${{out//$'\\n'/ }}"
        keep=()
        for h in "${{HOSTS[@]}}"; do [ "$h" = "$FAILED_NODE" ] || keep+=("$h"); done
        HOSTS=("${{keep[@]}}")
    else
        echo "classic: every node answers ping (alive but not responding?): retrying on all"
    fi
    launch --resume "$CKPT"
    rc=$?
done
echo "classic: done rc=$rc after $retry retries (of $ORIGINAL_NODES nodes, $((${{#HOSTS[@]}})) left)"
exit "$rc"
"""


def slurm_script(*, nodes: int, work: Path, ckpt_dir: Path, mpirun_opts: str,
                 train: list[str]) -> str:
    """Slurm's own recovery alone: a requeueable job that resumes from the newest verified
    checkpoint when it runs again. Slurm notices a failed node itself (SlurmdTimeout) and
    requeues the job; nothing else helps."""
    q = shlex.quote
    return f"""#!/bin/bash
#SBATCH --job-name=gp-slurm
#SBATCH --nodes={int(nodes)}
#SBATCH --ntasks-per-node=1
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --chdir={work}
#SBATCH --output={work / 'job.out'}
set -u
CKPT={q(str(ckpt_dir))}
resume=()
if [ -n "$(ls -A "$CKPT" 2>/dev/null)" ]; then resume=(--resume "$CKPT"); fi
# Plain mpirun in sbatch: its daemons start through Slurm on the job's nodes.
mpirun -np "$SLURM_JOB_NUM_NODES" {mpirun_opts} {shlex.join(train)} "${{resume[@]}}"
"""


# ---- analysis (pure) -------------------------------------------------------------------------

def analyse(records: list[dict], faults: list[Fault], steps: int, end_t: float,
            fault_free_step_s: float | None = None) -> dict:
    """Attach recovery time, resume point and steps lost to each fault; summarize the run.

    Goodput uses ``fault_free_step_s`` (the nofault run's step time); without it, the run's
    own steps at full size before the first fault. A fault is matched with the first resume
    record after it (and before the next fault); a fault that no resume followed did not stop
    the training (or it was never recovered)."""
    out: dict = {}
    if not records:
        return {"error": "no progress records"}
    s = summarize(records, steps, {"fault": faults[0].t} if faults else None,
                  fault_free_step_s=fault_free_step_s, end_t=end_t)
    out.update(completed=s.completed, wall_s=round(s.wall_s, 1), useful_steps=s.useful_steps,
               fault_free_step_s=s.fault_free_step_s, useful_s=s.useful_s, goodput=s.goodput,
               world_size_seconds=s.world_size_seconds, resumes=s.resumes,
               steps_lost=s.steps_lost, final_step=s.final_step)
    resumes = [(i, r) for i, r in enumerate(records) if r["event"] == "resume"]
    for k, f in enumerate(faults):
        nxt = faults[k + 1].t if k + 1 < len(faults) else float("inf")
        match = next(((i, r) for i, r in resumes if f.t < r["t"] < nxt), None)
        if match is None:
            continue
        i, r = match
        f.resumed_at = r["t"]
        f.resumed_from = int(r["from_step"])
        before = [x for x in records[:i] if x["event"] == "step"]
        f.steps_lost = max(0, int(before[-1]["step"]) - f.resumed_from) if before else 0
        first = next((x["t"] for x in records[i:] if x["event"] == "step"), None)
        f.recovery_s = None if first is None else round(first - f.t, 2)
        if first is not None and before:
            f.downtime_s = round(first - before[-1]["t"], 2)
        f.stale_resume = f.latest_step is not None and f.resumed_from < f.latest_step
    out["stale_resumes"] = sum(f.stale_resume for f in faults)
    return out


def attach_phases(faults: list[Fault], records: list[dict], audit: Path) -> None:
    """Each fault's restart phases, from the supervisor's LAUNCHING events in the audit file
    and the progress records (variants without `slurmft run` have none)."""
    launches = [e.time for e in AuditFile(audit).events()
                if isinstance(e, RunTransition) and e.state == "launching" and e.time]
    for k, f in enumerate(faults):
        nxt = faults[k + 1].t if k + 1 < len(faults) else float("inf")
        f.phases = restart_phases(f.t, records, launches, until=nxt)


def phase_table(results: list[VariantResult]) -> list[str]:
    """Median seconds of each restart phase, per variant and fault kind."""
    rows = []
    for v in dict.fromkeys(r.variant for r in results):
        by_kind: dict[str, list[dict]] = {}
        for r in results:
            if r.variant == v:
                for f in r.faults:
                    if f.phases:
                        by_kind.setdefault(f.kind, []).append(f.phases)
        for kind, ps in sorted(by_kind.items()):
            cols = " ".join(f"{statistics.median(p[k] for p in ps):>9.2f}"
                            for k in (*RESTART_PHASES, "total_s"))
            rows.append(f"{v:<15} {kind:<15} {len(ps):>3} {cols}")
    if not rows:
        return []
    head = " ".join(f"{k.removesuffix('_s'):>9}" for k in (*RESTART_PHASES, "total_s"))
    return [f"{'variant':<15} {'fault':<15} {'n':>3} {head}", *rows,
            *(f"  {k}: {what}" for k, what in RESTART_PHASES.items())]


@dataclass
class Measured:
    """What a variant left behind, kept for scoring once the seed's nofault run is in."""
    result: VariantResult
    records: list[dict]
    end_t: float


def score(runs: list[Measured], steps: int) -> None:
    """Goodput of every run at the fault-free step time of the nofault run of its seed (the
    run's own full-size steps before its first fault where there is none)."""
    ceiling = {m.result.seed: step_time(m.records) for m in runs
               if m.result.variant == BASELINE and m.records}
    for m in runs:
        r = m.result
        ff = ceiling.get(r.seed)
        info = analyse(m.records, r.faults, steps, m.end_t, fault_free_step_s=ff)
        if "error" in info:
            if info["error"] not in r.notes:
                r.notes.append(info["error"])
            continue
        for k, v in info.items():
            setattr(r, k, v)
        r.fault_free_from = BASELINE if ff is not None else "own"
    own = {m.result.seed: step_time(m.records) for m in runs
           if m.result.variant == TORCHFT_BASELINE and m.records}
    for m in runs:
        if m.result.variant in TORCHFT_VARIANTS and own.get(m.result.seed) is not None:
            info = analyse(m.records, m.result.faults, steps, m.end_t,
                           fault_free_step_s=own[m.result.seed])
            m.result.goodput_torchft = info.get("goodput")


# ---- one variant ----------------------------------------------------------------------------

class Run:
    """One variant on its own fresh cluster: submit, inject faults, repair, follow, tear down."""

    def __init__(self, variant: str, a: argparse.Namespace, rng: random.Random) -> None:
        self.v = variant
        self.a = a
        self.rng = rng
        self.demo = Demo(DemoOptions(name=f"gp-{variant}", nodes=a.nodes, steps=a.steps,
                                     spares=1 if variant in (*WITH_SPARE,
                                                             *TORCHFT_VARIANTS) else 0,
                                     replicas=a.nodes if variant == "slurmft-torchft" else 0,
                                     step_time=a.step_time, step_interval=a.step_interval,
                                     watch_interval=a.watch_interval,
                                     probe_timeout=a.probe_timeout,
                                     warm=variant in ("spare-warm", "spare-warm-srun"),
                                     launcher="srun" if variant == "spare-warm-srun"
                                     else "mpirun"))
        self.cluster = self.demo.cluster
        self.result = VariantResult(variant, self.cluster.name, seed=a.seed)
        self.measured = Measured(self.result, [], time.time())

    def say(self, msg: str) -> None:
        print(f"[{self.v} {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def execute(self) -> VariantResult:
        if self.cluster.is_up():
            self.result.error = (f"cluster {self.cluster.name} is already up (not built by this run): "
                                 f"skipped; if it is a leftover: slurmft cluster down --name {self.cluster.name}")
            self.say(self.result.error)
            return self.result
        try:
            self._execute()
        except SlurmFTError as exc:
            self.result.error = str(exc)
            self.say(f"ERROR: {exc}")
        finally:
            self.demo.teardown()                   # the watcher (its process group), the cluster
        return self.result

    def _script(self, work: Path, ckpt: Path, progress: Path) -> str:
        if self.v in ("slurmft", *WITH_SPARE, BASELINE):   # nofault: the same wrapper, no fault
            return self.demo.job_script(work, ckpt, progress)
        a = self.a
        train = self.demo.train_command(ckpt, progress, torchft=False)
        make = slurm_script if self.v == "slurm" else classic_script
        return make(nodes=a.nodes, work=work, ckpt_dir=ckpt,
                    mpirun_opts=shlex.join(shlex.split(mpirun_args(self.cluster))), train=train)

    def _execute(self) -> None:
        a, c, res = self.a, self.cluster, self.result
        up = self.demo.bring_up()
        self.say(f"cluster up in {up.seconds:.1f} s: {', '.join(up.nodes)}")
        work = c.shared_dir / "gp"
        ckpt, progress = work / "checkpoints", work / "progress.jsonl"
        work.mkdir(parents=True, exist_ok=True)
        ckpt.mkdir(exist_ok=True)
        script = work / "job.sh"
        script.write_text(self._script(work, ckpt, progress))
        cp = c.run(["sbatch", "--parsable", str(script)], timeout=30)
        if cp.returncode != 0:
            raise SlurmFTError(f"sbatch failed: {cp.stderr.strip()}")
        job_id = res.job_id = int(cp.stdout.strip().split(";")[0])
        if self.v in ("slurmft", *WITH_SPARE):
            self.demo.start_watcher(job_id, work / "watch.log")
        self.say(f"job {job_id} submitted ({a.steps} steps, step time {a.step_time:g} s, "
                 f"checkpoint every {a.step_interval} steps)")
        try:
            self._follow(job_id, ckpt, progress)
        finally:
            end_t = time.time()
            self._collect(work, progress, end_t)

    def _follow(self, job_id: int, ckpt: Path, progress: Path) -> None:
        a, c, res = self.a, self.cluster, self.result
        client = c.slurm_client()
        store = Store(ckpt)
        deadline = time.monotonic() + a.variant_timeout
        next_fault: float | None = None
        repairs: list[tuple[float, Fault]] = []
        to_resume: dict[str, float] = {}          # node -> give up resuming it after this time
        last_report = 0.0
        state = ""
        ended_since: float | None = None
        last_fault_t = 0.0
        while True:
            now = time.time()
            if time.monotonic() > deadline:
                res.notes.append(f"hard timeout {a.variant_timeout:g} s (state {state})")
                self.say(f"hard timeout: cancelling job {job_id}")
                c.run(["scancel", str(job_id)], timeout=30)
                return
            try:
                job = client.job(job_id)
            except SlurmFTError as exc:             # a transient hiccup while Slurm reconfigures
                self.say(f"  (squeue: {exc})")
                time.sleep(1)
                continue
            state = job.state
            if job.has_ended:
                # A failed launcher hands over to `slurmft reschedule --settle 30`, which may
                # requeue the ended job: it is final only when it stays ended for end_grace s.
                if ended_since is None:
                    ended_since = now
                    self.say(f"job {job_id} ended {job.state}; waiting {a.end_grace:g} s for a requeue")
                if now - ended_since >= a.end_grace or job.state == "COMPLETED":
                    res.final_state = job.state
                    self.say(f"job {job_id} ended {job.state}")
                    return
            elif ended_since is not None:
                self.say(f"job {job_id} is {job.state} again (restarts {job.restart_count})")
                ended_since = None
            recs = _records(progress)
            if recs and now - max(recs[-1]["t"], last_fault_t) > a.stall and ended_since is None:
                res.notes.append(f"stalled: no progress for {a.stall:g} s, job {job.state} "
                                 f"({job.reason or '-'}), restarts {job.restart_count}")
                self.say(f"stalled ({job.state}, {job.reason}): cancelling job {job_id}")
                c.run(["scancel", str(job_id)], timeout=30)
                res.final_state = f"stalled {job.state}"
                return
            first = next((r["t"] for r in recs if r["event"] == "step"), None)
            if next_fault is None and first is not None:
                next_fault = first + a.fault_every
            last_fault = last_fault_t = res.faults[-1].t if res.faults else 0.0
            due = (next_fault is not None and now >= next_fault and self.v != BASELINE
                   and job.state == "RUNNING"
                   and job.nodes and _training_live(recs, job.restart_count, last_fault, now))
            next_fault = self._faults_and_repairs(now, due, job, store, next_fault, repairs,
                                                  to_resume)
            if now - last_report >= 15:
                last_report = now
                self.say(f"  job {job.state} on {','.join(job.nodes) or '-'}; "
                         f"{_last_step_line(recs)}; latest ckpt {latest_checkpoint(store)[0]}")
            time.sleep(0.5)

    def _faults_and_repairs(self, now: float, due: bool, job, store: Store,
                            next_fault: float | None, repairs: list[tuple[float, Fault]],
                            to_resume: dict[str, float]) -> float | None:
        """Inject a fault on ``job``'s nodes when one is ``due``, then the repairs whose time
        has come; returns when the next fault is due."""
        if due:
            f = self._inject(job, store)
            if f is not None:
                self.result.faults.append(f)
                if f.kind in REPAIR:
                    repairs.append((f.t + self.a.repair_after, f))
                next_fault = now + self.a.fault_every
        for when, f in list(repairs):
            if now >= when:
                repairs.remove((when, f))
                self._repair(f)
                to_resume[f.node] = now + 90
        if to_resume:
            self._resume_drained(to_resume)
        return next_fault

    def _inject(self, job, store: Store) -> Fault | None:
        kind = self.rng.choice(self.a.faults)
        # kill-job-procs on the batch host would kill the batch script itself, not a rank.
        spare = kind == "kill-job-procs" or self.a.spare_batch_host
        nodes = [n for n in job.nodes if not (spare and n == job.batch_host)]
        if self.a.batch_host_only and kind != "kill-job-procs":
            nodes = [n for n in nodes if n == job.batch_host]
        if self.v in WITH_SPARE:    # a fault costs something only on a node that trains
            training = self._training_nodes()
            nodes = [n for n in nodes if n in training] if training else nodes
        if not nodes:
            return None
        node = validate_hostname(self.rng.choice(sorted(nodes)))
        latest, latest_step = latest_checkpoint(store)
        t = time.time()
        try:
            what = self._fault(node, kind)
        except SlurmFTError as exc:
            what = f"fault failed: {exc}"
        self.say(f"FAULT {kind} on {node} ({what}); latest verified checkpoint {latest}")
        return Fault(t, kind, node, latest, latest_step, what)

    def _fault(self, node: str, kind: str) -> str:
        return self.cluster.fault(node, kind)

    def _training_nodes(self) -> set[str]:
        """The nodes of the supervisor's latest launch (its `run` events in the audit file);
        per-step mode: of every replica group's latest launch."""
        audit = AuditFile(self.cluster.shared_dir / "slurmft" / "audit.jsonl")
        launches = [e for e in audit.events() if isinstance(e, RunTransition)
                    and e.state in ("launching", "relaunching") and e.nodes]
        per_group = {e.replica: e.nodes for e in launches if e.replica is not None}
        if per_group:
            return {n for nodes in per_group.values() for n in nodes}
        plain = [e for e in launches if e.state == "launching"]
        return set(plain[-1].nodes) if plain else set()

    def _repair(self, f: Fault) -> None:
        try:
            what = self.cluster.fault(f.node, REPAIR[f.kind])
        except SlurmFTError as exc:
            what = f"repair failed: {exc}"
        f.repaired_at = time.time()
        self.say(f"repair {f.node}: {what}")

    def _resume_drained(self, to_resume: dict[str, float]) -> None:
        """``state=resume`` for repaired nodes Slurm or slurmft left drained/down, right after
        the repair, as an operator does. Waiting until slurmctld sees the node respond again
        held it out for a minute: a node cut off while it ran a step of the job that excised it
        is marked responding 38 s after link-up (22.05, local cluster; ~50 s in the goodput
        run, the repaired node came back as a spare just as the next fault came, before it had
        a warm pool server), 3 s without such a step; after a resume slurmctld asks it to
        register at once (responding 0.1 s later, its stale step killed).
        """
        try:
            nodes = {n.name: n for n in self.cluster.slurm_client().nodes()}
        except SlurmFTError:
            return
        now = time.time()
        for name, until in list(to_resume.items()):
            n = nodes.get(name)
            if n is None or now > until:
                to_resume.pop(name)
                continue
            drained = "DRAIN" in n.flags or n.state.startswith(("drain", "down"))
            if drained:
                cp = self.cluster.run(["scontrol", "update", f"nodename={name}", "state=resume"],
                                      timeout=30)
                self.say(f"resume {name} (was {n.state}{'+' + '+'.join(n.flags) if n.flags else ''})"
                         f": rc {cp.returncode} {cp.stderr.strip()}")
                if cp.returncode == 0:
                    to_resume.pop(name)
            elif n.state in ("idle", "allocated", "mixed") and not n.flags:
                to_resume.pop(name)

    def _collect(self, work: Path, progress: Path, end_t: float) -> None:
        res = self.result
        try:
            records = read_progress(progress)
        except FileNotFoundError:
            records = []
        self.measured = Measured(res, records, end_t)
        score([self.measured], self.a.steps)     # provisional: main() rescores with nofault
        job_out = work / "job.out"
        if job_out.exists():
            lines = job_out.read_text(errors="replace").splitlines()
            res.notes += [ln[:200] for ln in lines if ln.startswith("classic:")][:12]
        out = Path(self.a.out).with_suffix("") if self.a.out else None
        if out is not None:
            keep = Path(keep_dir(out, self.v, self.a.seed, len(self.a.seeds)))
            keep.mkdir(parents=True, exist_ok=True)
            for name in ("progress.jsonl", "job.out", "watch.log", "reschedule.log", "job.sh",
                         "lighthouse.log"):
                if (work / name).exists():
                    (keep / name).write_bytes((work / name).read_bytes())
            audit = self.cluster.shared_dir / "slurmft" / "audit.jsonl"
            if audit.exists():
                (keep / "audit.jsonl").write_bytes(audit.read_bytes())
            self._keep_daemon_logs(keep)
        attach_phases(res.faults, records, self.cluster.shared_dir / "slurmft" / "audit.jsonl")

    def _keep_daemon_logs(self, keep: Path) -> None:
        """slurmctld's and each slurmd's log next to the run's own files: what Slurm did
        between slurmft's actions (a requeue nobody asked for is only explained there)."""
        for what in ("slurmctld", *(f"slurmd-{n}" for n in self.cluster.nodes)):
            try:
                (keep / f"{what}.log").write_bytes(self.cluster.log_path(what).read_bytes())
            except OSError:
                continue                 # a daemon that wrote no log


def runner_script(*, replica: int, replicas: int, work: Path, train: list[str]) -> str:
    """One replica of torchft-runner: a one-node job that runs the training itself."""
    q = shlex.quote
    return f"""#!/bin/bash
#SBATCH --job-name=tft-replica-{int(replica)}
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --no-requeue
#SBATCH --open-mode=append
#SBATCH --output={q(str(work / 'job.out'))}
#SBATCH --chdir={q(str(work))}
MASTER_ADDR="$(hostname)"
export MASTER_ADDR TORCHFT_LIGHTHOUSE=http://ctl:{LIGHTHOUSE_PORT} REPLICA_GROUP_ID={int(replica)}
export NUM_REPLICA_GROUPS={int(replicas)} MASTER_PORT={29600 + int(replica)}
exec {shlex.join(train)}
"""


class RunnerRun(Run):
    """torchft-runner: torchft's own Slurm runner, as its examples/slurm/runner.py does it
    (one job per replica, a loop that resubmits a replica whose job is not there, every
    ``RUNNER_POLL_S``), with the same training script, fault schedule and repairs. A replica
    job PENDING counts as alive (runner.py counts only RUNNING ones and would submit
    duplicates)."""

    def _execute(self) -> None:
        a, c = self.a, self.cluster
        up = self.demo.bring_up()
        self.say(f"cluster up in {up.seconds:.1f} s: {', '.join(up.nodes)}")
        work = c.shared_dir / "gp"
        ckpt, progress = work / "checkpoints", work / "progress.jsonl"
        ckpt.mkdir(parents=True, exist_ok=True)
        train = self.demo.train_command(ckpt, progress, torchft=True)
        with open(work / "lighthouse.log", "ab") as log:
            self.lighthouse = subprocess.Popen(
                c.exec_argv(self._lighthouse_argv()), env=c.env(), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._prepare(work, train)
            self._follow_runner(ckpt, progress)
        finally:
            end_t = time.time()
            try:
                os.killpg(self.lighthouse.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            self._collect(work, progress, end_t)

    #: the replica jobs' names: PREFIX-<replica id>
    PREFIX = "tft-replica"
    #: runner.py's monitor loop: resubmit a replica whose job is gone
    RESUBMIT = True

    def _lighthouse_argv(self) -> list[str]:
        return [str(Path(sys.executable).parent / "torchft_lighthouse"), "--min_replicas", "1",
                "--bind", f"0.0.0.0:{LIGHTHOUSE_PORT}", "--join_timeout_ms", "1000",
                "--quorum_tick_ms", "100", "--heartbeat_timeout_ms", "2000"]

    def _prepare(self, work: Path, train: list[str]) -> None:
        a = self.a
        self.scripts = []
        for i in range(a.nodes):
            path = work / f"replica-{i}.sh"
            path.write_text(runner_script(replica=i, replicas=a.nodes, work=work, train=train))
            self.scripts.append(path)
        self.say(f"lighthouse pid {self.lighthouse.pid} on ctl; {a.nodes} replica jobs, "
                 f"resubmitted every {RUNNER_POLL_S:g} s when gone")

    def _alive(self, client) -> dict[int, object]:
        """replica id -> its job, for the replicas with a job pending or running."""
        out = {}
        for j in client.jobs():
            if j.name.startswith(f"{self.PREFIX}-") and not j.has_ended:
                out[int(j.name.rsplit("-", 1)[1])] = j
        return out

    def _ended_states(self, client) -> list[str]:
        """The states of this variant's jobs, when every one of them has ended (else [])."""
        mine = [j for j in client.jobs() if j.name.startswith(f"{self.PREFIX}-")]
        return [j.state for j in mine] if mine and all(j.has_ended for j in mine) else []

    def _follow_runner(self, ckpt: Path, progress: Path) -> None:
        from types import SimpleNamespace

        a, c, res = self.a, self.cluster, self.result
        client = c.slurm_client()
        store = Store(ckpt)
        deadline = time.monotonic() + a.variant_timeout
        next_poll, next_fault, last_report = 0.0, None, 0.0
        repairs: list[tuple[float, Fault]] = []
        to_resume: dict[str, float] = {}
        while True:
            now = time.time()
            recs = _records(progress)
            if any(r["event"] == "done" for r in recs):
                res.final_state = "COMPLETED"
                self.say("training done")
                break
            if time.monotonic() > deadline:
                res.notes.append(f"hard timeout {a.variant_timeout:g} s")
                break
            last_t = recs[-1]["t"] if recs else 0.0
            if recs and now - max(last_t, res.faults[-1].t if res.faults else 0.0) > a.stall:
                res.notes.append(f"stalled: no progress for {a.stall:g} s")
                res.final_state = "stalled"
                break
            try:
                alive = self._alive(client)
                ended = self._ended_states(client) if recs and not alive else []
            except SlurmFTError as exc:
                self.say(f"  (squeue: {exc})")
                time.sleep(1)
                continue
            if ended and not self.RESUBMIT:      # nothing will run again: the run is over
                res.final_state = "/".join(sorted(set(ended)))
                res.notes.append(f"every group job ended ({res.final_state}) without a "
                                 "'done' record")
                self.say(f"group jobs ended: {res.final_state}")
                break
            if now >= next_poll and self.RESUBMIT:   # runner.py's monitor(): resubmit what is gone
                next_poll = now + RUNNER_POLL_S
                for i, script in enumerate(self.scripts):
                    if i not in alive:
                        cp = c.run(["sbatch", "--parsable", str(script)], timeout=30)
                        self.say(f"  replica {i}: no job; sbatch -> "
                                 f"{cp.stdout.strip() or cp.stderr.strip()}")
            first = next((r["t"] for r in recs if r["event"] == "step"), None)
            if next_fault is None and first is not None:
                next_fault = first + a.fault_every
            running = sorted({n for j in alive.values() if j.state == "RUNNING" for n in j.nodes})
            due = (next_fault is not None and now >= next_fault and bool(running)
                   and self.v != TORCHFT_BASELINE)
            next_fault = self._faults_and_repairs(
                now, due, SimpleNamespace(nodes=running, batch_host=None), store, next_fault,
                repairs, to_resume)
            if now - last_report >= 15:
                last_report = now
                self.say(f"  replicas alive {sorted(alive)} on {','.join(running) or '-'}; "
                         f"{_last_step_line(recs)}; latest ckpt {latest_checkpoint(store)[0]}")
            time.sleep(0.5)
        for j in self._alive(client).values():
            c.run(["scancel", str(j.job_id)], timeout=30)


class GroupJobsRun(RunnerRun):
    """slurmft-torchft-jobs: per-step mode with one job per replica group (`slurmft render
    job --group-jobs`, each job `slurmft run --group-id I`), `slurmft lighthouse` on the
    controller host (as on a login node), the watcher on every group's job: a group whose node
    is lost is requeued without it (on the idle node) while the others train on. Nothing
    resubmits. kill-job-procs kills a group's training process, not its supervisor (what
    the other slurmft variants spare the batch host for)."""

    PREFIX = "tft-group"
    RESUBMIT = False

    def _lighthouse_argv(self) -> list[str]:
        return [*slurmft_argv(), "lighthouse", "--port", str(LIGHTHOUSE_PORT)]

    def _prepare(self, work: Path, train: list[str]) -> None:
        a, c = self.a, self.cluster
        script = work / "job.sh"
        script.write_text(self.demo.job_script(work, work / "checkpoints",
                                               work / "progress.jsonl",
                                               lighthouse=f"http://ctl:{LIGHTHOUSE_PORT}"))
        job_ids = []
        for i in range(a.nodes):
            cp = c.run(["sbatch", "--parsable", f"--job-name={self.PREFIX}-{i}", str(script),
                        str(i)], timeout=30)
            if cp.returncode != 0:
                raise SlurmFTError(f"sbatch failed: {cp.stderr.strip()}")
            job_ids.append(int(cp.stdout.strip().split(";")[0]))
        self.result.job_id = job_ids[0]
        self.demo.start_watcher(job_ids, work / "watch.log")
        self.say(f"lighthouse pid {self.lighthouse.pid} on ctl; group jobs {job_ids}, "
                 "the watcher on them")

    def _fault(self, node: str, kind: str) -> str:
        if kind != "kill-job-procs":
            return self.cluster.fault(node, kind)
        return procs.kill_job_procs(node, procs.training_ranks(self.cluster.job_pids(node)))


def latest_checkpoint(store: Store) -> tuple[str | None, int | None]:
    """(name, step) of the newest checkpoint ``latest`` names: the store's own, else (per-step
    mode: one directory per replica group, ``replica-<id>``) the newest over the groups."""
    found: list[tuple[int, str]] = []
    for s in [store, *(Store(d) for d in sorted(store.root.glob("replica-*")) if d.is_dir())]:
        name = s.latest_name()
        if name is not None:
            try:
                found.append((s.read_manifest(name).step, name))
            except SlurmFTError:
                continue
        if s is store and found:
            break
    if not found:
        return None, None
    step, name = max(found)
    return name, step


def keep_dir(out: Path, variant: str, seed: int, n_seeds: int) -> str:
    """Where a variant's logs are kept next to the --out file."""
    return f"{out}-{variant}" if n_seeds <= 1 else f"{out}-{variant}-s{seed}"


def _records(progress: Path) -> list[dict]:
    try:
        return read_progress(progress)
    except FileNotFoundError:
        return []


def _training_live(recs: list[dict], restarts: int, since: float, now: float) -> bool:
    """The current incarnation of the job is training: its start record is there (same Slurm
    restart count), and it recorded a step in the last 3 s, after ``since`` (the last fault).
    Faults are injected only then, so each recovery is measured from one fault."""
    starts = [i for i, r in enumerate(recs) if r["event"] == "start"]
    if not starts or int(recs[starts[-1]].get("restarts", 0)) != restarts:
        return False
    steps = [r["t"] for r in recs[starts[-1]:] if r["event"] == "step"]
    return bool(steps) and steps[-1] > since and now - steps[-1] < 3.0


def _last_step_line(recs: list[dict]) -> str:
    steps = [r for r in recs if r["event"] == "step"]
    return f"step {steps[-1]['step']} on {steps[-1]['world_size']} ranks" if steps else "no step yet"


# ---- report ---------------------------------------------------------------------------------

def _f(x, fmt="{:.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def table(results: list[VariantResult]) -> str:
    head = (f"{'variant':<15} {'seed':>4} {'wall s':>7} {'goodput':>8} {'faults':>6} {'recov':>5} "
            f"{'med rec s':>9} {'max rec s':>9} {'lost':>5} {'done':>5} {'stale':>5}  final; "
            f"seconds at each world size")
    rows = [head, "-" * len(head)]
    for r in results:
        rec = r.recoveries
        rows.append(
            f"{r.variant:<15} {r.seed:>4} {_f(r.wall_s):>7} {_f(r.goodput, '{:.1%}'):>8} {len(r.faults):>6} "
            f"{len(rec):>5} {_f(statistics.median(rec) if rec else None):>9} "
            f"{_f(max(rec) if rec else None):>9} {r.steps_lost:>5} "
            f"{'yes' if r.completed else 'NO':>5} {r.stale_resumes:>5}  "
            f"{r.final_state or '-'} step {r.final_step if r.final_step is not None else '-'}; "
            f"{describe_world_sizes(r.world_size_seconds)}"
            f"{' ERROR: ' + r.error if r.error else ''}")
    steps = {(r.seed, r.fault_free_step_s, r.fault_free_from) for r in results
             if r.fault_free_step_s is not None}
    for seed, ff, source in sorted(steps, key=lambda x: (x[0], x[2])):
        rows.append(f"seed {seed}: fault-free step {ff:.4f} s at full size "
                    f"({'measured by the nofault run' if source == BASELINE else 'own steps before the first fault: no nofault run'})")
    return "\n".join(rows)


def fault_lines(r: VariantResult) -> list[str]:
    out = []
    for f in r.faults:
        out.append(f"  {r.variant:<15} s{r.seed:<3} {f.kind:<15} {f.node:<6} latest ckpt step "
                   f"{_f(f.latest_step, '{}'):>5} -> resumed from {_f(f.resumed_from, '{}'):>5}, "
                   f"recovery {_f(f.recovery_s, '{:.1f}'):>6} s (no step for "
                   f"{_f(f.downtime_s, '{:.1f}'):>5} s), lost {_f(f.steps_lost, '{}'):>3}"
                   f"{'  STALE' if f.stale_resume else ''}")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"comma-separated subset of {','.join(VARIANTS + EXTRA_VARIANTS)} "
                         f"({BASELINE} always "
                         "runs first: it measures the fault-free step time)")
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--step-time", type=float, default=0.1,
                    help="simulated compute of a step on all --nodes ranks, seconds; on k ranks "
                         "a step takes nodes/k as long (same global batch)")
    ap.add_argument("--step-interval", type=int, default=20, help="checkpoint every N steps")
    ap.add_argument("--fault-every", type=float, default=120.0, help="seconds between faults")
    ap.add_argument("--repair-after", type=float, default=60.0)
    ap.add_argument("--faults", default=",".join(FAULT_KINDS),
                    help=f"fault kinds to draw from (also: {', '.join(EXTRA_FAULT_KINDS)})")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--seeds", default="",
                    help="comma-separated seeds: run every variant once per seed (a fault "
                         "sequence each) and report the mean; default: --seed alone")
    ap.add_argument("--spare-batch-host", action="store_true",
                    help="never fault the job's batch host (default: only kill-job-procs spares it)")
    ap.add_argument("--batch-host-only", action="store_true",
                    help="fault only the job's batch host (a requeue each time: measures its "
                         "restart; kill-job-procs still spares it)")
    ap.add_argument("--watch-interval", type=float, default=1.0)
    ap.add_argument("--probe-timeout", type=float, default=2.0,
                    help="SLURMFT_PROBE_TIMEOUT for the watcher")
    ap.add_argument("--variant-timeout", type=float, default=0.0,
                    help="hard limit per variant in s (default: 4x the fault-free time + 180)")
    ap.add_argument("--stall", type=float, default=240.0,
                    help="give a variant up when its training makes no progress for this long")
    ap.add_argument("--end-grace", type=float, default=45.0,
                    help="a job that ended is final only if not requeued within this many s")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: one seed, 300 steps, a fault every 25 s, repair after 20 s")
    ap.add_argument("--json", "--out", dest="out", metavar="FILE", default="goodput.json",
                    help="JSON result file ('' for none); per run: variant, seed, goodput, "
                         "completed, faults, world_size_seconds, fault_free_step_s, ...; the "
                         "logs of each run are kept next to it")
    ap.add_argument("--report", metavar="JSON", default="",
                    help="no run: re-analyse an earlier --out file (and the per-variant progress "
                         "files saved next to it) and print its table")
    a = ap.parse_args(argv)
    if a.quick:
        a.steps, a.fault_every, a.repair_after = 300, 25.0, 20.0
    variants = [v for v in a.variants.split(",") if v]
    try:
        a.seeds = [int(x) for x in a.seeds.split(",") if x.strip()] or [a.seed]
    except ValueError:
        ap.error(f"--seeds takes integers, not {a.seeds!r}")
    if a.quick:
        a.seeds = a.seeds[:1]
    a.faults = [k for k in a.faults.split(",") if k]
    bad = ([v for v in variants if v not in VARIANTS + EXTRA_VARIANTS + (BASELINE,)]
           + [k for k in a.faults if k not in FAULT_KINDS + EXTRA_FAULT_KINDS])
    if bad or not variants or not a.faults:
        ap.error(f"unknown or missing variant/fault: {', '.join(bad) or '(none given)'}")
    if a.step_time <= 0:
        ap.error("--step-time must be > 0 (goodput is measured against it)")
    a.variants = [BASELINE] + [v for v in dict.fromkeys(variants) if v != BASELINE]
    if not a.variant_timeout:
        a.variant_timeout = 4 * a.steps * (a.step_time + 0.05) + 180
    return a


def print_report(results: list[VariantResult], fault_every: float) -> None:
    print(table(results))
    print()
    for r in results:
        for line in fault_lines(r):
            print(line)
        for n in r.notes:
            print(f"  {r.variant:<15} note: {n}")
    print()
    phases = phase_table(results)
    if phases:
        print("where a restart's seconds go (median s, fault -> first step after the resume):")
        print("\n".join(phases))
        print()
    for v in dict.fromkeys(r.variant for r in results):
        runs = [r for r in results if r.variant == v]
        goodputs = [r.goodput for r in runs if r.goodput is not None]
        if goodputs:
            print(f"{v:<15} mean goodput {statistics.mean(goodputs):.1%} over {len(goodputs)} "
                  f"run(s) (min {min(goodputs):.1%}, max {max(goodputs):.1%}); completed "
                  f"{sum(r.completed for r in runs)}/{len(runs)}; stale resumes "
                  f"{sum(r.stale_resumes for r in runs)}")
    for v in dict.fromkeys(r.variant for r in results if r.goodput_torchft is not None):
        own = [r.goodput_torchft for r in results if r.variant == v
               and r.goodput_torchft is not None]
        print(f"{v:<15} at torchft's own fault-free step time ({TORCHFT_BASELINE}): mean "
              f"{statistics.mean(own):.1%} over {len(own)} run(s) "
              f"({', '.join(f'{g:.1%}' for g in own)})")
    mine = [r for r in results if r.variant == "slurmft"]
    if mine and all(r.goodput is not None for r in mine):
        # No fixed target here: in fault-free time a job that shrinks and never grows back
        # cannot reach the old 90 % (issue 21); the figure to beat is the baselines' in the
        # same run, and slurmft must complete every run with no stale resume.
        mean = statistics.mean(r.goodput for r in mine)
        others = [statistics.mean(r.goodput for r in results if r.variant == v
                                  and r.goodput is not None)
                  for v in ("slurm", "classic")
                  if any(r.variant == v and r.goodput is not None for r in results)]
        safe = all(r.completed and r.stale_resumes == 0 for r in mine)
        beat = (f"; best baseline {max(others):.1%} ({(mean - max(others)) * 100:+.1f} points)"
                if others else "")
        print(f"\nslurmft: mean goodput {mean:.1%} with a fault every {fault_every:g} s{beat}; "
              f"{'all runs completed, no stale resume' if safe else 'NOT all runs completed cleanly'}")


def reanalyse(path: str) -> int:
    """Rebuild the results of an earlier run from its JSON and saved progress files."""
    doc = json.loads(Path(path).read_text())
    results, runs = [], []
    for d in doc["results"]:
        d.pop("recoveries", None)
        faults = [Fault(**{k: v for k, v in f.items() if k in Fault.__dataclass_fields__})
                  for f in d.pop("faults")]
        r = VariantResult(**{k: v for k, v in d.items() if k in VariantResult.__dataclass_fields__},
                          faults=faults)
        seeds = doc["args"].get("seeds") or [doc["args"].get("seed", 1)]
        prog = Path(keep_dir(Path(path).with_suffix(""), r.variant, r.seed, len(seeds))) / "progress.jsonl"
        recs = _records(prog)
        if recs:
            runs.append(Measured(r, recs, recs[0]["t"] + (r.wall_s or 0)))
        results.append(r)
    score(runs, doc["args"]["steps"])
    print_report(results, doc["args"]["fault_every"])
    return 0


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.report:
        return reanalyse(a.report)
    if os.geteuid() != 0:
        print("bench/goodput.py needs root (it builds clusters in network namespaces)",
              file=sys.stderr)
        return 2
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    old_term = signal.signal(signal.SIGTERM, _interrupt)
    print(f"goodput bench: {a.steps} steps x {a.step_time:g} s on {a.nodes} nodes ({a.nodes}/k x "
          f"as long on k), a fault every "
          f"{a.fault_every:g} s ({', '.join(a.faults)}), repair after {a.repair_after:g} s, "
          f"seeds {','.join(map(str, a.seeds))}, hard limit {a.variant_timeout:.0f} s per variant",
          flush=True)
    results: list[VariantResult] = []
    runs: list[Run] = []
    t0 = time.time()
    try:
        for seed in a.seeds:
            a.seed = seed
            for v in a.variants:
                kind = {"torchft-runner": RunnerRun, "slurmft-torchft-jobs": GroupJobsRun,
                        TORCHFT_BASELINE: GroupJobsRun}.get(v, Run)
                run = kind(v, a, random.Random(seed))   # the same fault sequence for each
                results.append(run.result)
                runs.append(run)
                run.execute()
    except KeyboardInterrupt:
        print("interrupted: clusters torn down", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, old_term)
    score([r.measured for r in runs], a.steps)   # every seed at its nofault run's step time
    print()
    print_report(results, a.fault_every)
    if a.out:
        doc = {"args": {k: v for k, v in vars(a).items()}, "total_s": round(time.time() - t0, 1),
               "results": [{**asdict(r), "recoveries": r.recoveries} for r in results]}
        Path(a.out).write_text(json.dumps(doc, indent=1))
        print(f"results: {a.out}")
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
