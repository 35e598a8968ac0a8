"""Stragglers (`slurmft run --spares 1 --straggler-action swap`): the job holds 3 nodes and
trains on 2; one training rank is slowed to about half speed (`cluster fault NODE slow`: a
SIGSTOP/SIGCONT duty cycle). The supervisor names its node and rank at ERROR within 30 of its
steps, leaves the node out and relaunches on the other node plus the spare: the world size
stays 2 and the step rate comes back to >= 95 % of the rate before the fault within 60 s.
Real cluster, real mpirun + train.py."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest

from slurmft.observe.report import read_progress
from tests.integration.waiting import wait_for
from tests.integration.wrapper_job import write_wrapper

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

STEPS = 1600
WINDOW = 20           # steps per rate sample


def rates(steps: list[dict]) -> list[tuple[float, float]]:
    """(time of the window's last step, steps per second) over windows of WINDOW steps."""
    out = []
    for i in range(WINDOW, len(steps)):
        dt = steps[i]["t"] - steps[i - WINDOW]["t"]
        if dt > 0:
            out.append((steps[i]["t"], WINDOW / dt))
    return out


def audit(state: Path) -> list[dict]:
    path = state / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_slowed_rank_is_named_and_its_node_swapped_for_the_spare(cluster, cluster_run):
    work = Path(cluster.shared_dir) / "straggler"
    progress, state = work / "progress.jsonl", work / "state"
    shutil.rmtree(work, ignore_errors=True)          # a run before this one
    work.mkdir(parents=True)
    script = write_wrapper(cluster, work, steps=STEPS, nodes=2, spares=1, name="strag",
                           straggler_action="swap")
    env = {**cluster.env(), "SLURMFT_RESCHEDULE_STATE_DIR": str(state)}
    cp = cluster_run(["sbatch", "--parsable", "-w", "node1,node2,node3", script], env=env)
    assert cp.returncode == 0, cp.stderr
    jid = int(cp.stdout.strip())
    client = cluster.slurm_client()
    slowed = "node2"                               # trains (node1, node2); node3 is the spare

    def tail(path: Path) -> str:
        return path.read_text()[-2000:] if path.exists() else "(none)"

    def diagnose() -> str:
        j = client.job(jid)
        return f"state {j.state} on {j.nodes}\njob.out:\n{tail(work / 'job.out')}"

    try:
        wait_for(lambda: progress.exists() and any(
            r["event"] == "step" and r["step"] >= 150 for r in read_progress(progress)),
            180, "step 150", show=diagnose)
        first = [r for r in read_progress(progress) if r["event"] == "step"]
        print(cluster.fault(slowed, "slow"))
        fault_at = first[-1]["t"]
        fault_step = max(r["step"] for r in read_progress(progress) if r["event"] == "step")
        named = wait_for(lambda: [a for a in audit(state) if a["event"] == "straggler"], 60,
                         "the straggler to be named", show=diagnose)[0]
        assert named["node"] == slowed and named["action"] == "swap", named
        assert named["spare"] == "node3"
        out = (work / "job.out").read_text()
        [line] = [ln for ln in out.splitlines() if "is a straggler" in ln]
        assert "ERROR" in line and f"on {slowed} is a straggler" in line
        assert f"rank {named['rank']} " in line and f"failed_node={slowed}" in line, line
        steps_to_name = named["at_step"] - fault_step
        assert steps_to_name <= 30, (steps_to_name, fault_step, json.dumps(named))
        print(f"named after {steps_to_name} steps ({named['seconds']:.1f} s of streak; "
              f"ratio {named['ratio']:.2f}, {named['busy_ms']:.1f} vs {named['peers_ms']:.1f} ms)")

        job = wait_for(lambda: (j := client.job(jid)).state == "COMPLETED" and j, 240,
                       "the job to complete on the spare", show=diagnose)
        assert job.restart_count == 0
        recs = read_progress(progress)
        assert [r["world_size"] for r in recs if r["event"] == "start"] == [2, 2]
        [resume] = [r for r in recs if r["event"] == "resume"]
        assert resume["world_size"] == 2
        assert recs[-1]["event"] == "done" and recs[-1]["step"] == STEPS - 1
        runs = [a for a in audit(state) if a["event"] == "run" and a["state"] == "launching"]
        assert set(runs[-1]["nodes"]) == {"node1", "node3"}, runs      # node2 left out

        attempts = list(dict.fromkeys(r["attempt"] for r in recs if r["event"] == "step"))
        before = statistics.median(
            rate for t, rate in rates([r for r in recs if r["event"] == "step"
                                       and r["attempt"] == attempts[0]]) if t <= fault_at)
        after_steps = [r for r in recs if r["event"] == "step" and r["attempt"] == attempts[-1]]
        named_at = named["time"]
        back = next(((t, rate) for t, rate in rates(after_steps) if rate >= 0.95 * before),
                    None)
        assert back is not None, (before, rates(after_steps)[:10])
        print(f"rate before {before:.1f} steps/s; >= 95 % again {back[0] - named_at:.1f} s "
              f"after the straggler was named ({back[1]:.1f} steps/s); median after "
              f"{statistics.median(r for _, r in rates(after_steps)):.1f} steps/s")
        assert back[0] - named_at <= 60
    finally:
        try:
            cluster.fault(slowed, "unslow")
        finally:
            cluster_run(["scancel", str(jid)])
