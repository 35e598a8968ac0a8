"""The pure restart policy, driven by scripted health sequences."""

from __future__ import annotations

import pytest

from slurmft.core.errors import SlurmCommandError
from slurmft.probe.records import Health, ProbeResult
from slurmft.recovery.actions import KillJob, UpdateJob, with_kill_steps
from slurmft.recovery.policy import (History, Outcome, PolicyConfig, decide, drain_reason,
                                     retries_used)
from slurmft.slurm.records import JobInfo

NODES = ("node1", "node2", "node3", "node4")
H, U, R = Health.HEALTHY, Health.UNREACHABLE, Health.UNRESPONSIVE
CFG = PolicyConfig(max_retry=3, min_nodes=1, drain=True)


def job(state="RUNNING", nodes=NODES, **kw):
    return JobInfo(job_id=42, name="train", state=state, nodes=tuple(nodes),
                   node_count=len(nodes) or 4, requeue=kw.pop("requeue", True), **kw)


def health(**states):
    out = {n: H for n in NODES}
    out.update(states)
    return out


def ops(decision):
    return [a.op for a in decision.actions]


def test_nothing_failed_changes_nothing():
    d = decide(job(), health(), History(), CFG)
    assert d.outcome is Outcome.NOTHING
    assert d.actions == ()
    assert "no failed node" in d.message


def test_running_with_failed_node_takes_the_measured_fast_path():
    d = decide(job(), health(node3=U), History(), CFG)
    assert d.outcome is Outcome.REQUEUE
    # an unreachable node cannot join a save-on-signal: kill at once, do not sit out KillWait
    assert ops(d) == ["kill_job", "requeue_hold", "down", "drain", "update_job", "release",
                      "update_job"]
    assert d.failed == ("node3",)
    assert d.healthy == ("node1", "node2", "node4")
    update = d.actions[4]
    assert update == UpdateJob(42, exclude=("node3",), num_nodes=(3, 3))
    assert d.actions[6] == UpdateJob(42, start_now=True)
    assert d.actions[2].nodes == ("node3",)
    assert "slurmft" in d.actions[3].reason and "42" in d.actions[3].reason


def test_the_kill_takes_its_steps_from_the_watcher_s_one_listing():
    d = decide(job(), health(node3=U), History(), CFG)
    assert d.actions[0] == KillJob(42)                      # steps: the client lists them
    asked = []
    listed = with_kill_steps(d, lambda jid: asked.append(jid) or [0, 3])
    assert listed.actions[0] == KillJob(42, steps=(0, 3)) and asked == [42]
    assert listed.actions[1:] == d.actions[1:]

    def unreadable(jid):
        raise SlurmCommandError("squeue: error: Unable to contact slurm controller")
    assert with_kill_steps(d, unreadable).actions[0] == KillJob(42)   # the client lists them


def test_a_degraded_node_lets_the_job_save_on_sigterm_before_the_requeue():
    d = decide(job(), health(node3=Health.DEGRADED), History(), CFG)
    assert d.outcome is Outcome.REQUEUE and ops(d)[0] == "requeue_hold"


def test_probe_results_are_accepted_as_well_as_health_values():
    res = {n: ProbeResult(n, H) for n in NODES}
    res["node2"] = ProbeResult("node2", R, reason="ssh timeout")
    d = decide(job(), res, History(), CFG)
    assert d.failed == ("node2",)


def test_exclusions_merge_with_earlier_ones_from_slurm_and_history():
    d = decide(job(nodes=("node1", "node2", "node4"), excluded_nodes=("node5",)),
               {"node1": H, "node2": U, "node4": H}, History(excluded=("node3",)), CFG)
    assert d.exclude == ("node2", "node3", "node5")      # one NodeSet: natural order
    assert d.num_nodes == 2


def test_no_drain_keeps_down_for_a_running_job():
    d = decide(job(), health(node3=U), History(), PolicyConfig(drain=False))
    assert ops(d) == ["kill_job", "requeue_hold", "down", "update_job", "release", "update_job"]


def test_below_minimum_is_refused_without_actions():
    d = decide(job(), health(node1=U, node2=U), History(), PolicyConfig(min_nodes=3))
    assert d.outcome is Outcome.REFUSED and d.outcome.is_error
    assert d.actions == ()
    assert "minimum of 3" in d.message


def test_pending_job_is_updated_and_started():
    d = decide(job("PENDING", nodes=(), restart_count=1, reason="BeginTime"), health(node3=U),
               History(last_nodes=NODES), CFG)
    assert d.outcome is Outcome.UPDATE_PENDING
    assert ops(d) == ["drain", "update_job", "update_job"]
    assert d.actions[1].num_nodes == (3, 3)


def test_held_pending_job_is_released():
    d = decide(job("PENDING", nodes=(), reason="JobHeldUser"), health(node3=U),
               History(last_nodes=NODES), CFG)
    assert ops(d)[-2:] == ["release", "update_job"]


def test_pending_job_that_already_excludes_the_node_is_not_requeued_again():
    d = decide(job("PENDING", nodes=NODES, excluded_nodes=("node3",), reason="Resources"),
               health(node3=U), History(), CFG)
    assert d.outcome is Outcome.ALREADY_DONE
    assert d.actions == ()


def test_a_requeue_still_completing_is_not_requeued_again_by_a_second_caller():
    # the CI: two `slurmft reschedule` at once; the second got the lock while the first's
    # requeue was still COMPLETING (the old run listed on its nodes, node2 among them, and
    # already excluded) and requeued again, a second retry spent
    completing = job("COMPLETING", excluded_nodes=("node2",), restart_count=1)
    d = decide(completing, health(node2=U), History(attempts=1, excluded=("node2",)), CFG)
    assert d.outcome is Outcome.ALREADY_DONE and d.actions == ()
    assert "being requeued" in d.message and d.retries_after == 1
    # a job COMPLETING for any other reason, the failed node not excluded: moved off it
    d = decide(job("COMPLETING"), health(node2=U), History(), CFG)
    assert d.outcome is Outcome.REQUEUE and "requeue_hold" in ops(d)


def test_a_node_excluded_once_and_taken_back_in_is_not_excluded_again():
    # the goodput bench: node1 lost (excluded, requeue), later taken back into the running
    # job as a spare (refill); then node2's slurmd died: the requeue asked for 4 nodes while
    # still excluding node1, and the job stayed pending (BadConstraints)
    five = ("node1", "node2", "node3", "node4", "node5")
    held = job("RUNNING", nodes=five, excluded_nodes=("node1",), restart_count=1)
    status = {n: H for n in five}
    status["node2"] = Health.DEGRADED
    d = decide(held, status, History(attempts=1, excluded=("node1",)), CFG)
    assert d.outcome is Outcome.REQUEUE
    assert d.exclude == ("node2",) and d.num_nodes == 4
    update = next(a for a in d.actions if a.op == "update_job" and a.exclude)
    assert update.exclude == ("node2",)


def test_ended_not_requeueable_gets_a_restart_job():
    d = decide(job("NODE_FAIL", requeue=False), health(node4=U), History(), CFG)
    assert d.outcome is Outcome.RESUBMIT
    assert ops(d) == ["drain", "submit_restart"]
    sub = d.actions[-1]
    assert sub.nodes == ("node1", "node2", "node3")
    assert (sub.exclude, sub.num_nodes) == (("node4",), 3)


def test_ended_requeueable_is_requeued():
    d = decide(job("FAILED", requeue=True), health(node4=U), History(), CFG)
    assert d.outcome is Outcome.REQUEUE
    assert ops(d)[0] == "requeue_hold"


@pytest.mark.parametrize("state", ["COMPLETED", "CANCELLED", "TIMEOUT"])
def test_states_we_must_not_touch(state):
    d = decide(job(state), health(node1=U), History(), CFG)
    assert d.outcome is Outcome.NOTHING and d.actions == ()


def test_slurms_own_requeues_do_not_use_the_retry_budget():
    # Slurm requeued the job twice on its own (restart count 2): slurmft has spent nothing
    assert retries_used(job(restart_count=2), History()) == 0
    assert retries_used(job(restart_count=5), History(attempts=1, attempts_on_job=1)) == 1
    # two attempts on an earlier job id, then a resubmission restarted once by Slurm
    assert retries_used(job(restart_count=1), History(attempts=2, attempts_on_job=0)) == 2
    d = decide(job(restart_count=3), health(node2=U), History(), CFG)
    assert d.outcome is Outcome.REQUEUE and (d.retries_used, d.retries_after) == (0, 1)


def test_spent_budget_holds_the_running_job_with_a_reason():
    d = decide(job(), health(node2=U), History(attempts=3, attempts_on_job=3), CFG)
    assert d.outcome is Outcome.EXHAUSTED and d.outcome.is_error
    assert ops(d) == ["requeue_hold", "down", "drain", "update_job"]
    assert "retry budget spent (3/3)" in d.actions[-1].comment
    assert d.retries_after == 3          # holding spends no retry


def test_every_acting_decision_has_a_would_do_wording_for_dry_runs():
    d = decide(job(), health(node2=U), History(), CFG)
    assert d.message.startswith("job 42 requeued on")
    assert d.plan.startswith("would requeue job 42 on 3 node(s) without node2")


def test_spent_budget_holds_a_pending_job():
    d = decide(job("PENDING", nodes=()), health(node2=U),
               History(attempts=3, last_nodes=NODES), CFG)
    assert ops(d) == ["hold", "drain", "update_job"]


def test_zero_budget_never_reschedules():
    d = decide(job(), health(node2=U), History(), PolicyConfig(max_retry=0))
    assert d.outcome is Outcome.EXHAUSTED


def test_a_node_that_keeps_failing_does_not_drive_a_loop():
    """Scripted sequence: the same node fails after every restart; the budget ends it."""
    hist = History()
    outcomes = []
    nodes = list(NODES)
    for restart in range(6):
        d = decide(job(nodes=nodes, restart_count=restart), {n: U if n == nodes[-1] else H
                                                             for n in nodes}, hist, CFG)
        outcomes.append(d.outcome)
        if d.outcome.is_error:
            break
        hist = History(attempts=hist.attempts + 1, attempts_on_job=hist.attempts_on_job + 1,
                       excluded=d.exclude)
        nodes = list(d.healthy) + [f"spare{restart}"]
    assert outcomes == [Outcome.REQUEUE] * 3 + [Outcome.EXHAUSTED]


def test_held_after_exhaustion_reports_it():
    d = decide(job("PENDING", nodes=(), reason="JobHeldUser"), health(),
               History(last_nodes=NODES, exhausted=True), CFG)
    assert d.outcome is Outcome.NOTHING and "budget" in d.message


def test_decision_serialises():
    d = decide(job(), health(node3=U), History(), CFG).to_dict()
    assert d["outcome"] == "requeue"
    assert d["actions"][4] == {"op": "update_job", "job_id": 42, "exclude": ["node3"],
                               "num_nodes": [3, 3]}


def test_drain_reason_names_slurmft_and_the_job():
    assert drain_reason(7) == "slurmft: failed health probe, excluded from job 7"
    assert drain_reason(7, Health.UNREACHABLE) == "slurmft: unreachable, excluded from job 7"


def test_shrink_keeps_tasks_per_node_jobs_schedulable():
    """Seen on Slurm 22.05: a --ntasks-per-node job requeued with only NumNodes=3-3 stays
    PENDING (BadConstraints) until NumTasks and NumCPUs shrink too."""
    from slurmft.recovery.policy import shrink_params
    from slurmft.slurm.records import JobInfo

    plain = JobInfo(job_id=1, name="j", state="RUNNING", node_count=4)
    assert shrink_params(plain, 3) == {"num_nodes": (3, 3)}
    per_node = JobInfo(job_id=1, name="j", state="RUNNING", node_count=4, tasks=8,
                       tasks_per_node=2, cpus_per_task=3)
    assert shrink_params(per_node, 3) == {"num_nodes": (3, 3), "num_tasks": 6, "num_cpus": 18}


def _failed_job(requeue=True):
    return JobInfo(job_id=9, name="j", state="FAILED", nodes=("n1", "n2"), node_count=2,
                   requeue=requeue)


def test_failed_on_healthy_nodes_is_requeued_in_place_only_when_asked():
    healthy = {"n1": Health.HEALTHY, "n2": Health.HEALTHY}
    plain = decide(_failed_job(), healthy, History(), PolicyConfig())
    assert plain.outcome is Outcome.NOTHING and not plain.actions
    asked = decide(_failed_job(), healthy, History(), PolicyConfig(restart_failed=True))
    assert asked.outcome is Outcome.REQUEUE
    assert [a.op for a in asked.actions] == ["requeue", "update_job"]
    assert not asked.failed
    no_requeue = decide(_failed_job(requeue=False), healthy, History(), PolicyConfig(restart_failed=True))
    assert no_requeue.outcome is Outcome.NOTHING


def test_restart_in_place_respects_the_retry_budget():
    healthy = {"n1": Health.HEALTHY, "n2": Health.HEALTHY}
    job = JobInfo(job_id=9, name="j", state="FAILED", nodes=("n1", "n2"), node_count=2,
                  requeue=True, restart_count=1)
    d = decide(job, healthy, History(attempts=3), PolicyConfig(restart_failed=True, max_retry=3))
    assert d.outcome is Outcome.EXHAUSTED and not d.actions


def test_a_one_node_job_that_loses_its_node_is_requeued_at_its_size_elsewhere():
    """One replica group of per-step mode (render job --group-jobs) holds one node: losing it
    leaves no healthy node to shrink to. It is requeued at one node, the failed one excluded
    (Slurm gives it an idle one), not refused."""
    d = decide(job(nodes=("node2",)), health(node2=U), History(), CFG)
    assert d.outcome is Outcome.REQUEUE and d.num_nodes == 1 and d.exclude == ("node2",)
    assert "on 1 node(s) without node2" in d.message
    assert ops(d)[:3] == ["kill_job", "requeue_hold", "down"]


def test_a_job_whose_every_node_failed_keeps_its_size_or_is_refused_below_the_minimum():
    d = decide(job(), health(node1=U, node2=U, node3=U, node4=U), History(), CFG)
    assert d.outcome is Outcome.REQUEUE and d.num_nodes == 4
    assert d.exclude == NODES
    small = decide(job(nodes=("node2",)), health(node2=U), History(),
                   PolicyConfig(min_nodes=2))
    assert small.outcome is Outcome.REFUSED and not small.actions
    assert "no healthy node left and its size, 1 node(s), is below the minimum of 2" in small.message


def test_an_ended_job_that_cannot_be_requeued_with_no_healthy_node_is_refused():
    """Its restart job would be pinned to the healthy nodes: there are none."""
    d = decide(job("NODE_FAIL", nodes=("node2",), requeue=False), health(node2=U), History(),
               CFG)
    assert d.outcome is Outcome.REFUSED and not d.actions
    assert "no healthy node left to pin a restart job to" in d.message
