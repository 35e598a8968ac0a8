import json

import pytest

from slurmft.core.errors import SlurmFTError
from slurmft.observe.goodput import measure, step_time, world_size_seconds
from slurmft.observe.report import final_lineage, read_progress, summarize, timeline


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
    assert s.fault_free_step_s == 1.0          # its own 4-rank steps before the fault
    assert s.useful_steps == 40 and s.useful_s == 40.0
    assert s.wall_s == 26 + 10 + 20
    assert s.goodput == pytest.approx(40 / 56, abs=1e-4)
    assert s.world_sizes == [3, 4]
    assert s.world_size_seconds == {4: 26.0, 3: 20.0, 0: 10.0}
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


# ---- the goodput metric (slurmft.observe.goodput) on synthetic progress records ----------------------

SAMPLE_S = 1.0 / 12        # a 48-sample global batch on 4 ranks: 12 samples, 1 s per step
GLOBAL_BATCH = 48


class Trainer:
    """Progress records as slurmft/examples/train.py --sample-time writes them: a step on k ranks
    takes (global batch / k) x sample time; a save costs ``save_s``."""

    def __init__(self, save_every=20, save_s=0.02):
        self.t, self.recs, self.n = 0.0, [], 0
        self.save_every, self.save_s = save_every, save_s

    def start(self, world, resume_from=None):
        self.n += 1
        self.world = world
        self._rec("start", world_size=world)
        if resume_from is not None:
            self._rec("resume", from_step=resume_from, checkpoint=f"step_{resume_from}",
                      world_size=world)

    def steps(self, first, last):
        for s in range(first, last + 1):
            self.t += GLOBAL_BATCH / self.world * SAMPLE_S
            self._rec("step", step=s, loss=1.0 / (s + 1), world_size=self.world)
            if s % self.save_every == self.save_every - 1:
                self.t += self.save_s
                self._rec("save", step=s)

    def pause(self, seconds):
        self.t += seconds

    def done(self, step):
        self._rec("done", step=step, world_size=self.world)
        return self.recs

    def _rec(self, event, **fields):
        self.recs.append({"t": self.t, "event": event, "attempt": f"a{self.n}", **fields})


def test_no_fault_is_one_within_the_checkpoint_overhead():
    tr = Trainer()
    tr.start(4)
    tr.steps(0, 199)
    recs = tr.done(199)
    ff = step_time(recs)
    assert ff == pytest.approx(1.0)
    g = measure(recs, 200, ff)
    assert g.completed and g.useful_steps == 200
    overhead = 10 * 0.02 / g.wall_s                # 10 saves
    assert g.value == pytest.approx(1.0 - overhead, abs=1e-6)
    assert 0.99 < g.value < 1.0
    # Collected a while after it finished: the seconds end at `done`, as the wall does.
    s = summarize(recs, 200, end_t=tr.t + 30.0)
    assert s.world_size_seconds == {4: pytest.approx(s.wall_s)}


def test_half_the_ranks_for_half_the_run_at_the_same_global_batch_is_three_quarters():
    tr = Trainer(save_s=0.0)
    tr.start(4)
    tr.steps(0, 49)                      # 50 s on 4 ranks: 50 steps
    ff = step_time(tr.recs)
    tr.start(2, resume_from=49)
    tr.steps(50, 74)                     # 50 s on 2 ranks: 25 steps of 2 s
    recs = tr.done(74)
    g = measure(recs, 75, ff)
    assert g.completed and g.wall_s == pytest.approx(100.0)
    assert g.value == pytest.approx(0.75)
    assert world_size_seconds(recs) == {4: 50.0, 2: 50.0}
    # The old measure (each step's own duration is useful) called this run 100 % productive.
    s = summarize(recs, 75)
    assert s.fault_free_step_s == pytest.approx(1.0) and s.goodput == pytest.approx(0.75)


def test_steps_repeated_after_a_resume_count_once():
    tr = Trainer(save_every=10, save_s=0.0)
    tr.start(4)
    tr.steps(0, 29)                      # checkpoint at step 19, steps 20..29 then lost
    ff = step_time(tr.recs)
    tr.pause(5.0)
    tr.start(4, resume_from=19)
    tr.steps(20, 49)
    recs = tr.done(49)
    g = measure(recs, 50, ff)
    assert g.useful_steps == 50                    # not 60: steps 20..29 ran twice
    assert g.wall_s == pytest.approx(30 + 5 + 30)
    assert g.value == pytest.approx(50 / 65)
    s = summarize(recs, 50)
    assert s.steps_lost == 10 and s.goodput == pytest.approx(50 / 65, abs=1e-4)
    assert s.world_size_seconds == {4: 60.0, 0: 5.0}


def test_a_run_that_never_completes_is_not_completed_and_not_scored_above_what_it_trained():
    tr = Trainer(save_s=0.0)
    tr.start(4)
    tr.steps(0, 39)                      # 40 of 100 steps, then silence
    ff = step_time(tr.recs)
    given_up = tr.t + 60.0
    g = measure(tr.recs, 100, ff, end_t=given_up)
    assert not g.completed
    assert g.useful_steps == 40
    assert g.wall_s == pytest.approx(100.0)        # until it was given up, not its last record
    assert g.value == pytest.approx(40 * ff / 100.0)
    assert g.value <= g.useful_steps * ff / g.wall_s
    s = summarize(tr.recs, 100, fault_free_step_s=ff, end_t=given_up)
    assert not s.completed and s.goodput == pytest.approx(0.4)
    assert s.world_size_seconds == {4: 40.0, 0: 60.0}


def test_fault_free_step_time_ignores_saves_and_other_world_sizes():
    tr = Trainer(save_every=5, save_s=3.0)
    tr.start(4)
    tr.steps(0, 19)
    tr.start(2, resume_from=19)
    tr.steps(20, 39)
    assert step_time(tr.recs) == pytest.approx(1.0)               # 4 ranks, median
    assert step_time(tr.recs, world_size=2) == pytest.approx(2.0)
    assert step_time(tr.recs[:1]) is None


def test_unknown_fault_free_step_time_gives_no_goodput():
    recs = [{"t": 0.0, "event": "start", "world_size": 4},
            {"t": 1.0, "event": "step", "step": 0, "loss": 1.0, "world_size": 4}]
    s = summarize(recs, 10)
    assert s.goodput is None and s.useful_steps == 1 and not s.completed


def test_a_step_that_trained_part_of_the_batch_counts_as_that_part():
    # per-step mode: 4 steps with both replica groups, 4 with one of two (half the batch)
    recs = [{"t": 0.0, "event": "start", "world_size": 2}]
    recs += [{"t": 1.0 + i, "event": "step", "step": i, "world_size": 2, "batch_share": 1.0}
             for i in range(4)]
    recs += [{"t": 5.0 + i, "event": "step", "step": 4 + i, "world_size": 1, "batch_share": 0.5}
             for i in range(4)]
    recs.append({"t": 8.0, "event": "done", "step": 7})
    g = measure(recs, 8, fault_free_step_s=1.0)
    assert g.useful_steps == pytest.approx(6.0)          # 4 x 1 + 4 x 0.5
    assert g.value == pytest.approx(6.0 / 8.0)
    whole = [{k: v for k, v in r.items() if k != "batch_share"} for r in recs]
    assert measure(whole, 8, 1.0).useful_steps == 8 and isinstance(
        measure(whole, 8, 1.0).useful_steps, int)        # restart mode: a plain step count
    odd = [*recs[:-1], {"t": 9.0, "event": "step", "step": 8, "batch_share": "x"}]
    assert measure(odd, 9, 1.0).useful_steps == pytest.approx(7.0)   # unreadable: counts 1
