"""The main job end to end: a 4-node training run loses a node and finishes anyway.

Runs the real demo (its own cluster, not the session one): real slurmctld/slurmd, real mpirun
over SSH, real PyTorch + mpi4py, the slurmft job wrapper and `slurmft watch`.
"""

from __future__ import annotations

import os

import pytest

from slurmft.observe.report import read_progress
from slurmft.testbed.demo import Demo, DemoOptions

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

STEPS = 120


@pytest.fixture(scope="module")
def demo_result(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the demo builds a cluster in network namespaces and needs root")
    out = tmp_path_factory.mktemp("demo")
    opts = DemoOptions(name=f"sft-e2e{os.getpid() % 10000}", nodes=4, steps=STEPS,
                       step_time=0.05, step_interval=10, fault_after_step=30,
                       out_dir=str(out), timeout=420)
    return Demo(opts).run()


def test_job_completed_all_planned_steps(demo_result):
    s = demo_result.summary
    assert demo_result.final_state == "COMPLETED"
    assert s.completed and s.final_step == STEPS - 1


def test_exactly_the_failed_node_was_excluded_and_drained(demo_result):
    r = demo_result
    assert r.excluded == [r.fault_node]
    assert r.fault_node not in r.final_nodes
    assert sorted(r.final_nodes) == sorted(n for n in r.initial_nodes if n != r.fault_node)
    assert "DRAIN" in r.fault_node_state.upper()
    assert "slurmft" in r.fault_node_reason and str(r.job_id) in r.fault_node_reason


def test_resumed_from_a_checkpoint_not_from_scratch(demo_result):
    s = demo_result.summary
    assert s.resumes == 1
    assert s.resumed_from[0] >= 30          # the checkpoint that existed when the fault hit
    assert s.world_sizes == [3, 4]
    assert s.detection_s is not None and s.running_again_s is not None
    assert s.detection_s <= s.running_again_s


def test_loss_continues_across_the_restart(demo_result):
    records = read_progress(demo_result.files["progress.jsonl"])
    resume_at = next(i for i, r in enumerate(records) if r["event"] == "resume")
    before = {r["step"]: r["loss"] for r in records[:resume_at] if r["event"] == "step"}
    after = {r["step"]: r["loss"] for r in records[resume_at:] if r["event"] == "step"}
    first_after = min(after)
    assert first_after == demo_result.summary.resumed_from[0] + 1
    # Steps are world-size invariant: a step redone on 3 ranks gives the 4-rank loss again.
    redone = sorted(set(before) & set(after))
    for step in redone:
        assert after[step] == pytest.approx(before[step], rel=1e-4)
    # And the curve continues from where it was, far below the untrained loss.
    assert after[first_after] < 0.5 * before[0]


def test_goodput_counts_the_lost_rank(demo_result):
    s = demo_result.summary
    # Measured on its own 4-rank steps before the fault: 0.05 s of compute plus the real work.
    assert s.fault_free_step_s is not None and s.fault_free_step_s >= 0.05
    assert s.useful_steps == STEPS
    assert s.goodput == pytest.approx(min(1.0, STEPS * s.fault_free_step_s / s.wall_s), abs=1e-3)
    # Seconds at each world size: 4 ranks, then 3 (each step a third longer), the outage as 0.
    assert {4, 3} <= set(s.world_size_seconds)
    assert sum(s.world_size_seconds.values()) == pytest.approx(s.wall_s, abs=0.01)
    records = read_progress(demo_result.files["progress.jsonl"])
    after = [r["t"] for r in records if r["event"] == "step" and r["world_size"] == 3]
    gaps = sorted(b - a for a, b in zip(after, after[1:]))
    assert gaps[len(gaps) // 2] > s.fault_free_step_s


def test_report_files_written(demo_result):
    files = demo_result.files
    with open(files["loss.png"], "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    timeline = open(files["timeline.txt"]).read()
    for label in ("fault injected", "failure detected", "resumed from checkpoint", "training done",
                  "World size over time: 4 ranks"):
        assert label in timeline
