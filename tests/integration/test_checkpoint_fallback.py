"""A real job falls back past its corrupted newest checkpoint, saves again (the same step as
the corrupt one), ends, and the resubmitted job resumes from the fallback run's own newest
save, never from the first run's abandoned data (issue 19). Real cluster, the job wrapper,
mpirun + slurmft/examples/train.py on one node."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurmft.checkpoint.store import DATA, Store, parse_name, step_name
from slurmft.observe.report import read_progress
from tests.integration.wrapper_job import write_wrapper

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_resume_follows_the_run_that_fell_back(cluster, cluster_run):
    work = Path(cluster.shared_dir) / "checkpoint-fallback"
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "ckpt"
    progress = work / "progress.jsonl"

    def job(steps: int) -> list[dict]:
        """Run the wrapper job to its end; the progress records it added."""
        before = len(read_progress(progress)) if progress.exists() else 0
        script = write_wrapper(cluster, work, steps=steps, nodes=1, name="ckpt-fallback")
        cp = cluster_run(["sbatch", "--wait", "--parsable", "-w", "node1", script], timeout=150,
                         env={"SLURMFT_RESCHEDULE_STATE_DIR": str(work / "state")})
        out = (work / "job.out").read_text() if (work / "job.out").exists() else "(no job.out)"
        assert cp.returncode == 0, f"{cp.stderr}\njob.out:\n{out[-3000:]}"
        return read_progress(progress)[before:]

    # Run 1: saves every 10 steps, the last at step 60; then its newest is corrupted.
    recs = job(61)
    assert recs[-1]["event"] == "done" and recs[-1]["step"] == 60
    store = Store(ckpt)
    assert store.latest_name() == step_name(60)
    data = ckpt / step_name(60) / DATA
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))

    # Run 2 falls back to 50 and saves step 60 again: under a new name, and it is latest.
    recs = job(61)
    [resume] = [r for r in recs if r["event"] == "resume"]
    assert resume["checkpoint"] == step_name(50)
    run2_newest = store.latest_name()
    assert run2_newest != step_name(60) and parse_name(run2_newest) == 60
    info = store.verify(run2_newest)
    assert info.parent == step_name(50) and info.run
    lineage = store.lineage()
    assert step_name(60) not in {i.name for i in lineage.branch}    # run 1's 60: abandoned
    assert store.find_valid().name == run2_newest                   # verify agrees with load

    # Run 3 (resubmitted) resumes from run 2's own newest save and finishes.
    recs = job(71)
    [resume] = [r for r in recs if r["event"] == "resume"]
    assert resume["checkpoint"] == run2_newest and resume["from_step"] == 60
    assert recs[-1]["event"] == "done" and recs[-1]["step"] == 70
    assert store.verify(store.latest_name()).parent == run2_newest
