"""Regaining full size (issue 22 item 4): the arithmetic, the watch the supervisor keeps while
shrunk, the rescheduler's REGAIN decision and the supervisor handing the job to it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from slurmft.probe.records import Health
from slurmft.recovery.actions import ReleaseJob, RequeueHoldJob, UpdateJob
from slurmft.recovery.policy import History, Outcome, PolicyConfig, RELAUNCH_MARK, decide
from slurmft.slurm.records import JobInfo
from slurmft.supervise.regain import Regainer, idle_nodes, regain_decision


# ---- the arithmetic ------------------------------------------------------------------------

def test_it_pays_when_the_steps_left_save_more_than_a_requeue_costs():
    d = regain_decision(step=499, total_steps=1500, step_s=0.1, nodes_now=1, nodes_full=2,
                        restart_s=20.0)
    assert d.remaining == 1000 and d.step_s_full == pytest.approx(0.05)
    assert d.saved_s == pytest.approx(50.0) and d.pays
    assert "1000 steps left" in d.describe() and "50.0 s saved > 20.0 s" in d.describe()
    late = regain_decision(step=1299, total_steps=1500, step_s=0.1, nodes_now=1,
                           nodes_full=2, restart_s=20.0)
    assert late.saved_s == pytest.approx(10.0) and not late.pays
    assert "<= 20.0 s" in late.describe()
    assert not regain_decision(step=0, total_steps=10**6, step_s=0.1, nodes_now=2,
                               nodes_full=2, restart_s=1.0).pays       # not shrunk


@dataclass
class Node:
    name: str
    state: str = "idle"
    flags: tuple = ()


def test_only_idle_unflagged_nodes_outside_the_job_count():
    nodes = [Node("n1", "allocated"), Node("n2"), Node("n3", "idle", ("DRAIN",)), Node("n4")]
    assert idle_nodes(nodes, busy=["n1", "n4"]) == ["n2"]


# ---- the watch -------------------------------------------------------------------------------

@dataclass
class Beat:
    step: int
    done: bool = False


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def watch(latest, nodes_listed):
    clock = Clock()
    r = Regainer(total_steps=1500, nodes_full=2, list_nodes=lambda: nodes_listed,
                 latest_checkpoint=lambda: latest[0], requeue_cost_s=15.0, interval_s=10.0,
                 clock=clock)
    return r, clock


def test_it_asks_once_at_the_first_checkpoint_after_it_paid():
    latest = ["step_000400"]
    r, clock = watch(latest, [Node("node1", "allocated"), Node("node2")])
    r.launched()
    assert r.check(["node1"], {0: Beat(400)}, 0.1) is None
    clock.t = 4.0
    assert r.check(["node1"], {0: Beat(420)}, 0.1) is None       # first step: 4 s relaunch
    assert r.relaunch_s == pytest.approx(4.0)
    clock.t = 11.0
    assert r.check(["node1"], {0: Beat(490)}, 0.1) is None        # pays: armed, waits
    assert r.last.pays and r.last.restart_s == pytest.approx(19.0)
    assert r.check(["node1"], {0: Beat(495)}, 0.1) is None        # same checkpoint still
    latest[0] = "step_000500"
    d = r.check(["node1"], {0: Beat(501)}, 0.1)
    assert d is not None and d.nodes_full == 2
    assert r.check(["node1"], {0: Beat(502)}, 0.1) is None and r.asked   # once


def test_no_ask_without_enough_idle_nodes_or_when_at_full_size():
    r, clock = watch(["a"], [Node("node1", "allocated"), Node("node2", "down")])
    r.launched()
    for t in (0.0, 11.0, 22.0):
        clock.t = t
        assert r.check(["node1"], {0: Beat(int(t))}, 0.1) is None
    assert r.last is None                     # never even weighed: no node came back
    full, clock2 = watch(["a"], [Node("node3")])
    assert full.check(["node1", "node2"], {0: Beat(5)}, 0.1) is None and full.last is None


def test_a_broken_node_listing_is_not_fatal():
    def boom():
        raise OSError("sinfo failed")
    r = Regainer(total_steps=10, nodes_full=2, list_nodes=boom, latest_checkpoint=lambda: None)
    assert r.check(["n1"], {0: Beat(1)}, 0.1) is None


# ---- the rescheduler's decision ------------------------------------------------------------

def job(nodes=("node1",), excluded=("node2",), state="RUNNING"):
    return JobInfo(job_id=7, name="train", state=state, nodes=tuple(nodes),
                   node_count=len(nodes), requeue=True, batch_host="node1",
                   comment=RELAUNCH_MARK, excluded_nodes=tuple(excluded))


def test_regain_requeues_at_full_size_with_the_healthy_nodes_back():
    hist = History(excluded=("node2", "node3"))
    d = decide(job(excluded=("node2", "node3")),
               {"node1": Health.HEALTHY, "node2": Health.HEALTHY, "node3": Health.UNREACHABLE},
               hist, PolicyConfig(regain_nodes=3, idle=("node2", "node3", "node5")))
    assert d.outcome is Outcome.REGAIN and d.num_nodes == 3      # node2 back, node5 idle
    assert d.exclude == ("node3",) and not d.spends_retry          # node3 is still out
    assert [type(a) for a in d.actions] == [RequeueHoldJob, UpdateJob, ReleaseJob, UpdateJob]
    update = d.actions[1]
    assert update.exclude == ("node3",) and update.num_nodes == (3, 3)
    assert "node2 healthy again" in d.message


@pytest.mark.parametrize("j, health, why", [
    (job(state="PENDING"), {}, "not regaining"),
    (job(), {"node1": Health.HEALTHY, "node2": Health.UNREACHABLE}, "cannot take it"),
    (job(nodes=("node1", "node4")), {"node1": Health.HEALTHY, "node4": Health.HEALTHY},
     "nothing to regain"),
    (job(nodes=("node1", "node4")), {"node1": Health.HEALTHY, "node4": Health.UNREACHABLE,
                                     "node2": Health.HEALTHY}, "recover first"),
])
def test_regain_changes_nothing_when_it_cannot_help(j, health, why):
    d = decide(j, health, History(excluded=("node2",)),
               PolicyConfig(regain_nodes=2, idle=("node2",)))
    assert d.outcome is Outcome.NOTHING and not d.actions and why in d.message


# ---- the supervisor hands the job to `slurmft reschedule --regain` ---------------------------

class FakeRegainer:
    nodes_full = 2

    def __init__(self, answers):
        self.answers, self.last, self.launches = answers, None, 0

    def launched(self):
        self.launches += 1

    def check(self, nodes, beats, step_s):
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None and not answer.pays:
            self.last = answer
            return None
        return answer


def test_the_supervisor_asks_for_full_size_through_the_rescheduler(tmp_path, caplog):
    import logging

    from tests.unit.test_supervisor import FakeMonitor, make

    monitor = FakeMonitor([])
    monitor.beats = lambda: {0: Beat(500)}
    no = regain_decision(step=1400, total_steps=1500, step_s=0.1, nodes_now=1, nodes_full=2,
                         restart_s=20.0)
    yes = regain_decision(step=500, total_steps=1500, step_s=0.1, nodes_now=1, nodes_full=2,
                          restart_s=20.0)
    sup, procs, _, events = make(tmp_path, launches=[[None] * 6 + [0]], monitor=monitor,
                                 allocations=[["node1"]],
                                 environ={"SLURM_JOB_NODELIST": "node1"})   # shrunk to 1 of 2
    sup.regainer = FakeRegainer([no, None, yes])
    with caplog.at_level(logging.INFO, logger="slurmft"):
        assert sup.run() == 0
    assert procs.detached == [["slurmft", "reschedule", "7", "--regain", "2",
                               "--checkpoint-dir", str(tmp_path / "ck")]]
    assert "does not pay" in caplog.text and "requeueing at full size" in caplog.text
    assert any(e.state == "handing-off" and "999 steps left" in e.reason for e in events)
    assert sup.regainer.launches == 1


def test_run_and_render_take_total_steps(tmp_path, monkeypatch):
    import json

    from click.testing import CliRunner

    from slurmft.cli import cli

    rendered = CliRunner().invoke(cli, ["render", "job", "--nodes", "2", "--total-steps", "900",
                                        "--train-cmd", "python t.py", "--checkpoint-dir", "/c"])
    assert rendered.exit_code == 0, rendered.output
    assert "--train-nodes 2 --total-steps 900" in rendered.output
    bad = CliRunner().invoke(cli, ["reschedule", "5", "--regain", "2", "--in-place"])
    assert bad.exit_code == 2 and "does not go with --in-place" in bad.output


def test_a_regain_whose_caller_died_with_the_requeue_is_finished_by_the_next_reschedule():
    held = JobInfo(job_id=7, name="train", state="PENDING", reason="job_requeued_in_held_state",
                   node_count=1, requeue=True, comment=RELAUNCH_MARK)
    d = decide(held, {}, History(regain_nodes=2, regain_exclude=("node3",)), PolicyConfig())
    assert d.outcome is Outcome.REGAIN and d.num_nodes == 2
    assert [type(a) for a in d.actions] == [UpdateJob, ReleaseJob, UpdateJob]
    assert d.actions[0].num_nodes == (2, 2) and d.actions[0].exclude == ("node3",)
    # without a regain in flight, a held job is left alone (an operator may have held it)
    d = decide(held, {}, History(), PolicyConfig())
    assert d.outcome is not Outcome.REGAIN and not any(isinstance(a, ReleaseJob)
                                                       for a in d.actions)


def test_the_regain_in_flight_survives_in_the_retry_record(tmp_path):
    from slurmft.recovery.state import RetryRecord

    rec = RetryRecord(original_job_id=7, regain_nodes=2, regain_exclude=["node3"])
    again = RetryRecord.from_dict(rec.to_dict())
    h = again.history(7)
    assert h.regain_nodes == 2 and h.regain_exclude == ("node3",)
    old = RetryRecord.from_dict({"original_job_id": 7})          # written before regains
    assert old.history(7).regain_nodes is None


# ---- a failure requeue takes the job's own nodes back --------------------------------------

def shrunk(nodes=("node2", "node3", "node4")):
    """A job that lost node1 before and runs shrunk on three nodes; its batch host failed."""
    return JobInfo(job_id=7, name="train", state="RUNNING", nodes=tuple(nodes),
                   node_count=len(nodes), requeue=True, batch_host=nodes[0],
                   excluded_nodes=("node1",))


HURT = {"node2": Health.UNREACHABLE, "node3": Health.HEALTHY, "node4": Health.HEALTHY}


def test_a_failure_requeue_takes_back_its_excluded_nodes_idle_and_healthy_again():
    d = decide(shrunk(), {**HURT, "node1": Health.HEALTHY},
               History(excluded=("node1",), full_nodes=4, attempts=1),
               PolicyConfig(idle=("node1", "node5")))
    assert d.outcome is Outcome.REQUEUE and d.spends_retry
    assert d.num_nodes == 3 and d.exclude == ("node2",)       # node3, node4 and node1 back
    update = next(a for a in d.actions if isinstance(a, UpdateJob) and a.num_nodes)
    assert update.num_nodes == (3, 3) and update.exclude == ("node2",)
    assert "without node2 (node1 healthy again, taken back)" in d.message
    # node5 was never the job's: a loss shrinks the job, it does not pull in other nodes
    assert "node5" not in d.message and "node5" not in d.exclude


@pytest.mark.parametrize("node1, idle, full, why", [
    (Health.UNREACHABLE, ("node1",), 4, "probed bad again"),
    (Health.HEALTHY, (), 4, "not idle (drained, or another job has it)"),
    (None, ("node1",), 4, "not probed"),
])
def test_a_failure_requeue_leaves_an_excluded_node_out_otherwise(node1, idle, full, why):
    health = {**HURT, **({"node1": node1} if node1 else {})}
    d = decide(shrunk(), health, History(excluded=("node1",), full_nodes=full),
               PolicyConfig(idle=idle))
    assert d.outcome is Outcome.REQUEUE, why
    assert d.num_nodes == 2 and d.exclude == ("node1", "node2"), why


def test_taking_back_stops_at_the_full_size():
    job = shrunk(nodes=("node3", "node4"))
    d = decide(job, {"node3": Health.UNREACHABLE, "node4": Health.HEALTHY,
                     "node1": Health.HEALTHY, "node2": Health.HEALTHY},
               History(excluded=("node1", "node2"), full_nodes=2),
               PolicyConfig(idle=("node1", "node2")))
    assert d.num_nodes == 2 and d.exclude == ("node2", "node3")     # node1 back, node2 not
