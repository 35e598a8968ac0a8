"""The relaunch policy: a running job of slurmft's wrapper (--no-kill) keeps its allocation."""

from __future__ import annotations

from slurmft.probe.records import Health
from slurmft.recovery.actions import SignalBatch
from slurmft.recovery.policy import (
    RELAUNCH_MARK,
    RELAUNCH_SIGNAL,
    History,
    Outcome,
    PolicyConfig,
    decide,
    is_relaunchable,
)
from slurmft.slurm.records import JobInfo

NODES = ("node1", "node2", "node3", "node4")
H, U, R, D = Health.HEALTHY, Health.UNREACHABLE, Health.UNRESPONSIVE, Health.DEGRADED
CFG = PolicyConfig(max_retry=3, min_nodes=1, drain=True)
IN_PLACE = PolicyConfig(max_retry=3, min_nodes=1, drain=True, in_place=True)


def job(state="RUNNING", nodes=NODES, comment=RELAUNCH_MARK, **kw):
    return JobInfo(job_id=7, name="train", state=state, nodes=tuple(nodes),
                   node_count=len(nodes), requeue=True, batch_host="node1", comment=comment,
                   **kw)


def health(**states):
    return {**{n: H for n in NODES}, **states}


def ops(d):
    return [a.op for a in d.actions]


def test_the_mark_makes_a_job_relaunchable():
    assert is_relaunchable(job())
    assert not is_relaunchable(job(comment="my run"))


def test_watcher_downs_drains_and_signals_instead_of_requeueing():
    d = decide(job(), health(node3=U), History(), CFG)
    assert d.outcome is Outcome.RELAUNCH
    assert ops(d) == ["down", "drain", "signal_batch"]
    assert d.actions[0].nodes == ("node3",) and d.actions[1].nodes == ("node3",)
    assert d.actions[2] == SignalBatch(7, RELAUNCH_SIGNAL)
    assert d.num_nodes == 3 and d.exclude == ("node3",)
    assert "requeue" not in " ".join(ops(d))


def test_a_job_without_the_mark_is_requeued_as_before():
    d = decide(job(comment=""), health(node3=U), History(), CFG)
    assert d.outcome is Outcome.REQUEUE and ops(d)[:2] == ["kill_job", "requeue_hold"]


def test_a_failed_batch_host_still_means_a_requeue():
    d = decide(job(), health(node1=U), History(), CFG)
    assert d.outcome is Outcome.REQUEUE and ops(d)[:2] == ["kill_job", "requeue_hold"]


def test_degraded_nodes_are_drained_and_the_job_left_running():
    d = decide(job(), health(node2=D), History(), CFG)
    assert d.outcome is Outcome.DRAIN
    assert ops(d) == ["drain"] and d.actions[0].nodes == ("node2",)
    assert "keeps running" in d.actions[0].reason
    again = decide(job(), health(node2=D), History(excluded=("node2",)), CFG)
    assert again.outcome is Outcome.ALREADY_DONE and not again.actions


def test_unreachable_and_degraded_together_relaunch_without_the_unreachable_one():
    d = decide(job(), health(node2=D, node3=R), History(), CFG)
    assert d.outcome is Outcome.RELAUNCH and d.actions[0].nodes == ("node3",)


def test_in_place_takes_every_failed_node_out_and_sends_no_signal():
    d = decide(job(), health(node2=D, node4=U), History(), IN_PLACE)
    assert d.outcome is Outcome.RELAUNCH and ops(d) == ["down", "drain"]
    assert d.actions[0].nodes == ("node2", "node4") and d.num_nodes == 2


def test_in_place_with_every_node_healthy_restarts_on_the_same_nodes():
    d = decide(job(), health(), History(), IN_PLACE)
    assert d.outcome is Outcome.RELAUNCH and not d.actions and d.num_nodes == 4


def test_in_place_hands_off_what_needs_a_requeue():
    assert decide(job(), health(node1=U), History(), IN_PLACE).outcome is Outcome.HAND_OFF
    assert decide(job(comment=""), health(node3=U), History(), IN_PLACE).outcome \
        is Outcome.HAND_OFF
    assert decide(job("COMPLETING"), health(), History(), IN_PLACE).outcome is Outcome.HAND_OFF


def test_relaunches_spend_the_retry_budget():
    spent = History(attempts=3, attempts_on_job=3)
    d = decide(job(), health(), spent, IN_PLACE)
    assert d.outcome is Outcome.EXHAUSTED and not d.actions
    # from the watcher the job is held, as any job whose budget is spent
    held = decide(job(), health(node3=U), spent, CFG)
    assert held.outcome is Outcome.EXHAUSTED and ops(held)[0] == "requeue_hold"


def test_too_few_nodes_left_is_refused():
    cfg = PolicyConfig(max_retry=3, min_nodes=4)
    d = decide(job(), health(node3=U), History(), cfg)
    assert d.outcome is Outcome.REFUSED and not d.actions


def test_a_wrapper_copy_from_before_a_requeue_is_told_to_stop():
    stale = PolicyConfig(max_retry=3, in_place=True, caller_restarts=0)
    d = decide(job(restart_count=1), health(), History(), stale)
    assert d.outcome is Outcome.STALE and not d.actions
    current = PolicyConfig(max_retry=3, in_place=True, caller_restarts=1)
    assert decide(job(restart_count=1), health(), History(), current).outcome is Outcome.RELAUNCH


def test_a_hand_off_from_a_copy_cut_off_before_a_requeue_leaves_the_new_run_alone():
    """A supervisor whose batch host was cut off hands off once its launcher dies; Slurm has
    requeued the job meanwhile: the detached reschedule must not requeue the new run again or
    take its nodes out, running or still pending."""
    stale = PolicyConfig(max_retry=3, restart_failed=True, caller_restarts=0)
    for now in (job(restart_count=1), job(restart_count=1, state="PENDING")):
        d = decide(now, health(node3=U), History(), stale)
        assert d.outcome is Outcome.STALE and not d.actions
    # the same hand-off from the current copy goes ahead (the failed node is moved off)
    current = PolicyConfig(max_retry=3, restart_failed=True, caller_restarts=1)
    d = decide(job(restart_count=1), health(node3=U), History(), current)
    assert d.outcome is not Outcome.STALE and d.actions
