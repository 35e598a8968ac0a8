import json

import pytest

from slurmft.errors import SlurmFTError
from slurmft.recovery_report import final_lineage, read_progress, summarize, timeline


def _run(fault_after=25, resume_from=19, steps=40):
    """A synthetic run: 4 ranks until step fault_after, then resume on 3 from resume_from."""
    recs, t = [{"t": 0.0, "event": "start", "world_size": 4}], 0.0
    for s in range(fault_after + 1):
        t += 1.0
        recs.append({"t": t, "event": "step", "step": s, "loss": 1.0 / (s + 1), "world_size": 4, "step_s": 1.0})
        if s % 10 == 9:
            recs.append({"t": t, "event": "save", "step": s})
    t += 10.0  # the outage
    recs.append({"t": t, "event": "start", "world_size": 3})
    recs.append({"t": t, "event": "resume", "from_step": resume_from, "checkpoint": "step_19", "world_size": 3})
    for s in range(resume_from + 1, steps):
        t += 1.0
        recs.append({"t": t, "event": "step", "step": s, "loss": 1.0 / (s + 1), "world_size": 3, "step_s": 1.0})
    recs.append({"t": t, "event": "done", "step": steps - 1, "world_size": 3})
    return recs


def test_lineage_drops_redone_steps():
    lineage = final_lineage(_run())
    assert sorted(lineage) == list(range(40))
    assert lineage[20]["world_size"] == 3  # step 20 was redone on 3 ranks
    assert lineage[19]["world_size"] == 4  # step 19 came from the checkpoint


def test_summary_numbers():
    s = summarize(_run(), planned_steps=40, events={"fault": 26.5, "detected": 27.5, "running_again": 30.0})
    assert s.completed and s.final_step == 39
    assert s.resumes == 1 and s.resumed_from == [19]
    assert s.steps_lost == 6  # steps 20..25 ran twice
    assert s.detection_s == 1.0 and s.running_again_s == 3.5
    assert s.useful_s == 40.0
    assert s.wall_s == 26 + 10 + 20
    assert s.goodput == pytest.approx(40 / 56, abs=1e-4)
    assert s.world_sizes == [3, 4]
    assert s.first_step_after_resume_s == pytest.approx(37.0 - 26.5)


def test_incomplete_run_is_not_completed():
    recs = [r for r in _run() if r["event"] != "done"]
    assert not summarize(recs, planned_steps=40).completed


def test_timeline_is_sorted_and_names_the_resume():
    tl = timeline(_run(), {"fault": 26.5, "detected": 27.5})
    assert [e.t for e in tl] == sorted(e.t for e in tl)
    names = [e.event for e in tl]
    assert "fault injected" in names and "resumed from checkpoint" in names
    last_ckpt = next(e for e in tl if e.event == "last checkpoint before the fault")
    assert last_ckpt.detail == "step 19"


def test_read_progress_skips_torn_line(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"t": 1, "event": "start"}) + "\n" + '{"t": 2, "ev')
    assert read_progress(p) == [{"t": 1, "event": "start"}]


def test_no_records_is_an_error():
    with pytest.raises(SlurmFTError, match="never started"):
        summarize([], planned_steps=1)
