"""Spares back (``supervise.refill``): a job whose spare was used takes an idle node into its
allocation again through Slurm's job expansion. The policy with a fake Slurm, the commands and
the client's expansion sequence with a scripted runner, and the supervisor's hook (a pool
server on the node taken in)."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass

import pytest

from slurmft.core.errors import SlurmCommandError, UsageError
from slurmft.slurm import commands as scli
from slurmft.slurm import parse as sparse
from slurmft.slurm.client import CommandSlurmClient
from slurmft.slurm.records import NodeInfo
from slurmft.slurm.runner import CommandResult
from slurmft.supervise.refill import SpareRefill, after_batch_host, refill_candidates

NOT_PERMITTED = ("Job submit/allocate failed: Requested operation not supported on this "
                 "system")


def run_now(fn):
    """The refill's look at once, on this thread (the default is a worker thread)."""
    fut = Future()
    fut.set_result(fn())
    return fut


def node(name, state="idle", flags=(), partitions=("main",)):
    return NodeInfo(name=name, state=state, flags=tuple(flags), partitions=tuple(partitions))


@dataclass
class Clock:
    t: float = 0.0

    def __call__(self) -> float:
        return self.t


class FakeSlurm:
    def __init__(self, held, listed, fail=None):
        self.held, self.listed, self.fail = list(held), list(listed), fail
        self.state, self.restarts, self.batch_host = "RUNNING", 0, ""
        self.expanded: list[str] = []
        self.reads = {"allocation": 0, "nodes": 0}

    def allocation(self, job_id):
        self.reads["allocation"] += 1
        return list(self.held)

    def job(self, job_id):
        from types import SimpleNamespace
        return SimpleNamespace(state=self.state, restart_count=self.restarts,
                               batch_host=self.batch_host)

    def nodes(self):
        self.reads["nodes"] += 1
        return self.listed

    def expand(self, job_id, name, partition=""):
        if self.fail:
            raise SlurmCommandError(f"Slurm command failed: {self.fail} (salloc ...)")
        self.expanded.append(name)
        self.held.append(name)


def test_candidates_are_idle_unflagged_nodes_of_the_partition_the_job_does_not_hold():
    listed = [node("node5"), node("node1"), node("node2", "allocated"),
              node("node3", flags=("DRAIN",)), node("node4", "down"),
              node("node6", partitions=("other",)), node("node7"), node("node8")]
    assert refill_candidates(listed, ["node1"], "main", ["node8"]) == ["node5", "node7"]
    assert refill_candidates(listed, [], "", []) == ["node1", "node5", "node6", "node7",
                                                     "node8"]


def test_a_missing_spare_is_refilled_with_an_idle_node_once_per_interval(caplog):
    clock = Clock()
    slurm = FakeSlurm(["node1", "node2", "node3"], [node("node4"), node("node5")])
    refill = SpareRefill(7, 4, slurm, partition="main", interval=10, clock=clock,
                         submit=run_now)
    assert refill.poll() == [] and slurm.reads["allocation"] == 0     # not before the interval
    clock.t = 10
    assert refill.poll() == ["node4"] and slurm.expanded == ["node4"]
    assert "node4 idle again, taken into the job as spare(s) (4 of 4" in caplog.text
    clock.t = 15
    assert refill.poll() == []                                           # not yet
    clock.t = 20
    assert refill.poll() == [] and slurm.reads == {"allocation": 2, "nodes": 1}   # full


def test_only_nodes_slurm_lists_after_the_batch_host_are_taken(caplog):
    # slurmctld keeps a batch job alive through its first node's registrations only: a job
    # grown by a node before its batch host was requeued at the batch host's next one
    assert after_batch_host(["node1", "node5"], ["node1", "node2", "node5"], "node2") == (
        ["node5"], ["node1"])
    assert after_batch_host(["node1"], ["node1", "node2"], "") == (["node1"], [])
    clock = Clock()
    slurm = FakeSlurm(["node2", "node3", "node4"], [node("node1"), node("node2", "allocated"),
                                                    node("node3", "allocated"),
                                                    node("node4", "allocated"), node("node5")])
    slurm.batch_host = "node2"
    refill = SpareRefill(7, 5, slurm, interval=10, clock=clock, submit=run_now)
    clock.t = 10
    assert refill.poll() == ["node5"] and slurm.expanded == ["node5"]
    assert "idle node1 not taken as spare(s): Slurm lists them before the batch host node2" \
        in caplog.text
    slurm.held.remove("node5")                    # lost again: node1 still is never taken
    slurm.listed[-1] = node("node5", "down")
    caplog.clear()
    clock.t = 20
    assert refill.poll() == [] and slurm.expanded == ["node5"]
    assert "node1 not taken" not in caplog.text   # said once


def test_a_slow_expansion_runs_beside_the_supervisor_s_loop_which_never_waits_for_it():
    # the restart benchmark: salloc held the loop ~4 s and a relaunch started 5.4 s late
    clock, entered, go = Clock(), threading.Event(), threading.Event()
    slurm = FakeSlurm(["node1", "node2"], [node("node3")])
    expand = slurm.expand

    def slow_expand(job_id, name, partition=""):
        entered.set()
        assert go.wait(10)
        expand(job_id, name, partition)
    slurm.expand = slow_expand
    refill = SpareRefill(7, 3, slurm, interval=10, clock=clock)      # the default: a thread
    clock.t = 10
    assert refill.poll() == []                  # the look started, the loop goes on
    assert entered.wait(10)
    assert refill.poll() == [] and refill.poll() == []     # still in salloc: no second look
    go.set()
    for _ in range(1000):
        added = refill.poll()
        if added:
            break
        threading.Event().wait(0.01)
    assert added == ["node3"] and slurm.expanded == ["node3"] and refill.added == ["node3"]
    assert refill.next_look == 20               # the next look an interval after this one


def test_without_job_expansion_the_run_goes_on_and_stops_asking(caplog):
    clock = Clock()
    slurm = FakeSlurm(["node1"], [node("node2")], fail=NOT_PERMITTED)
    refill = SpareRefill(7, 2, slurm, interval=10, clock=clock, submit=run_now)
    clock.t = 10
    assert refill.poll() == [] and not refill.enabled
    assert "SchedulerParameters=permit_job_expansion" in caplog.text
    clock.t = 100
    assert refill.poll() == [] and slurm.reads["allocation"] == 1


def test_a_node_taken_meanwhile_is_tried_again_at_the_next_look(caplog):
    clock = Clock()
    slurm = FakeSlurm(["node1"], [node("node2")], fail="Requested node config unavailable")
    refill = SpareRefill(7, 2, slurm, interval=10, clock=clock, submit=run_now)
    clock.t = 10
    assert refill.poll() == [] and refill.enabled
    assert "could not take the idle node node2" in caplog.text
    slurm.fail, clock.t = None, 20
    assert refill.poll() == ["node2"]


@pytest.mark.parametrize("state, restarts", [("PENDING", 1), ("COMPLETING", 0),
                                             ("RUNNING", 1)])
def test_a_job_requeued_or_ending_is_never_grown(state, restarts):
    # seen in the goodput bench: a job requeued (its batch host's slurmd killed) and grown by
    # the old copy's refill meanwhile ended FAILED
    clock = Clock()
    slurm = FakeSlurm(["node2", "node3"], [node("node1")])
    slurm.state, slurm.restarts = state, restarts
    refill = SpareRefill(7, 3, slurm, interval=10, clock=clock, submit=run_now)
    clock.t = 10
    assert refill.poll() == [] and slurm.expanded == []


def test_a_requeue_landing_during_the_expansion_is_reported_and_nothing_warmed(caplog):
    clock = Clock()
    slurm = FakeSlurm(["node2", "node3"], [node("node1")])
    expand = slurm.expand

    def requeued_meanwhile(job_id, name, partition=""):
        expand(job_id, name, partition)
        slurm.state, slurm.restarts = "PENDING", 1
    slurm.expand = requeued_meanwhile
    refill = SpareRefill(7, 3, slurm, interval=10, clock=clock, submit=run_now)
    clock.t = 10
    assert refill.poll() == [] and slurm.expanded == ["node1"]
    assert "requeued while node1 was taken in" in caplog.text


def test_the_supervisor_s_benched_nodes_are_not_taken_back():
    clock = Clock()
    slurm = FakeSlurm(["node1"], [node("node2"), node("node3")])
    refill = SpareRefill(7, 2, slurm, interval=10, clock=clock, submit=run_now,
                         avoid=lambda: ["node2"])
    clock.t = 10
    assert refill.poll() == ["node3"]


def test_expansion_commands_are_validated():
    assert scli.build_expand_alloc_argv(42, "node4", "main", 10) == [
        "salloc", "--no-shell", "--immediate=10", "--nodes=1", "--nodelist=node4",
        "--dependency=expand:42", "--job-name=slurmft-spare-42", "--partition=main"]
    assert scli.build_resize_argv(43, "0")[-2:] == ["JobId=43", "NumNodes=0"]
    with pytest.raises(UsageError):
        scli.build_expand_alloc_argv(42, "node4;rm -rf /")
    with pytest.raises(UsageError):
        scli.build_expand_alloc_argv(42, "node4", "main;x")
    with pytest.raises(UsageError):
        scli.build_resize_argv(43, "3")
    assert sparse.parse_salloc_granted("salloc: Granted job allocation 57\n") == 57
    with pytest.raises(Exception, match="not a granted allocation"):
        sparse.parse_salloc_granted("salloc: error: Unable to allocate resources")


class ScriptedRunner:
    """Answers each command by its first words; records every argv."""

    def __init__(self, answers):
        self.answers, self.calls = answers, []

    def run(self, argv, timeout):
        self.calls.append(list(argv))
        key = " ".join(argv[:2]) if argv[0] != "scontrol" else " ".join(argv[::len(argv) - 1])
        rc, out, err = self.answers.get(key, (0, "", ""))
        return CommandResult(tuple(argv), rc, out, err)


def test_the_client_merges_the_helper_s_node_and_cancels_the_helper():
    runner = ScriptedRunner({"salloc --no-shell": (0, "", "salloc: Granted job allocation 9\n"),
                             "scontrol NumNodes=ALL": (1, "", "Unexpected message received")})
    CommandSlurmClient(runner=runner, timeout=5).expand(7, "node4", "main")
    assert [c[0] for c in runner.calls] == ["salloc", "scontrol", "scancel", "scontrol"]
    assert runner.calls[1][-2:] == ["JobId=9", "NumNodes=0"]
    assert runner.calls[2] == ["scancel", "9"]
    assert runner.calls[3][-2:] == ["JobId=7", "NumNodes=ALL"]     # 22.05 refuses it: fine


def test_a_helper_that_cannot_give_its_node_up_is_cancelled_and_the_error_raised():
    runner = ScriptedRunner({"salloc --no-shell": (0, "", "salloc: Granted job allocation 9\n"),
                             "scontrol NumNodes=0": (1, "", "Job expansion not permitted")})
    with pytest.raises(SlurmCommandError):
        CommandSlurmClient(runner=runner, timeout=5).expand(7, "node4")
    assert runner.calls[-1] == ["scancel", "9"]


def test_slurm_refusing_the_expansion_leaves_nothing_behind():
    runner = ScriptedRunner({"salloc --no-shell": (1, "", f"salloc: error: {NOT_PERMITTED}")})
    with pytest.raises(SlurmCommandError, match="not supported on this system"):
        CommandSlurmClient(runner=runner, timeout=5).expand(7, "node4")
    assert len(runner.calls) == 1


class RefillOnce:
    """A refill for the supervisor's loop: ``nodes`` taken in at its first poll, then none."""

    def __init__(self, nodes):
        self.nodes, self.polls = list(nodes), 0

    def poll(self):
        self.polls += 1
        return self.nodes if self.polls == 1 else []


def test_the_supervisor_gives_a_node_taken_in_a_pool_server(tmp_path):
    from tests.unit.test_warm import warm_supervisor

    sup, procs, slurm = warm_supervisor(tmp_path, launches=[[None, None, 0], [None]])
    pool_steps = slurm.steps

    def steps(job_id):          # the second pool srun's step shows up once it started
        pools = sum(1 for argv, _env, text in procs.started
                    if "serve" in argv or "serve" in (text or ""))
        return pool_steps(job_id) + ([5] if pools >= 2 else [])
    sup.pool._steps = steps
    sup.refill = RefillOnce(["node4"])
    assert sup.run() == 0
    pools = [argv for argv, _env, _in in procs.started if "serve" in argv]
    assert len(pools) == 2 and "--nodelist=node4" in pools[1]
    assert sup.pool.steps == frozenset({0, 5})      # never stopped with the training's
    assert sup.refill.polls >= 2


def test_run_keeps_the_job_at_its_training_nodes_plus_its_spares(monkeypatch):
    from slurmft.cli.run import _refill

    slurm = FakeSlurm([], [])
    monkeypatch.setenv("SLURM_JOB_PARTITION", "main")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "node[1-5]")
    first = _refill(slurm, 7, 1, None)
    assert (first.target, first.partition) == (5, "main")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "node[1-4]")     # requeued one node short
    assert _refill(slurm, 7, 1, 4).target == 5
    assert _refill(slurm, 7, 0, None) is None                 # no spares: nothing to refill
    assert _refill(object(), 7, 1, None) is None              # a client that cannot grow a job


def test_a_helper_granted_without_an_id_is_cancelled_by_its_name():
    runner = ScriptedRunner({"salloc --no-shell": (0, "", "salloc: something unexpected\n")})
    with pytest.raises(Exception, match="not a granted allocation"):
        CommandSlurmClient(runner=runner, timeout=5).expand(7, "node4")
    assert runner.calls[-1] == ["scancel", "--name=slurmft-spare-7"]
