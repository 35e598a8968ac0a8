"""Back to full size in place (``supervise.grow``): when a shrunk run relaunches on a node the
spare refill took in. The rule with a scripted clock and checkpoint, and the supervisor's
relaunch with fakes."""

from __future__ import annotations

from slurmft.supervise.grow import GrowInPlace


class Checkpoints:
    """The latest checkpoint's name as the training moves it on; counts the reads."""

    def __init__(self, name="step_000000000020"):
        self.name, self.reads = name, 0

    def __call__(self):
        self.reads += 1
        return self.name


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_a_growth_waits_for_the_node_s_warm_up_then_for_the_next_checkpoint():
    ck, clock = Checkpoints(), Clock()
    grow = GrowInPlace(ck, after_s=10, check_s=1, clock=clock)
    assert not grow.due() and ck.reads == 0              # nothing armed: no read at all
    clock.t = 100
    grow.node_added()
    assert grow.armed
    clock.t = 105
    ck.name = "step_000000000040"                         # a checkpoint during the warm-up
    assert not grow.due() and ck.reads == 0               # too early: its rank would start cold
    clock.t = 110
    assert not grow.due() and ck.reads == 1               # the checkpoint to wait past
    clock.t = 110.5
    ck.name = "step_000000000060"
    assert not grow.due() and ck.reads == 1               # at most one read a check_s
    clock.t = 111
    assert grow.due()                                     # it landed: relaunch, nothing redone


def test_arming_twice_keeps_the_first_arrival_and_a_launch_disarms():
    ck, clock = Checkpoints(), Clock()
    grow = GrowInPlace(ck, after_s=10, check_s=1, clock=clock)
    grow.node_added()
    clock.t = 8
    grow.node_added()                                     # a second node: same wait
    clock.t = 10
    assert not grow.due()
    grow.launched()                                       # the run relaunched (e.g. a fault)
    ck.name, clock.t = "step_000000000040", 20
    assert not grow.armed and not grow.due()


def test_no_checkpoint_yet_never_triggers():
    ck, clock = Checkpoints(None), Clock()
    grow = GrowInPlace(ck, after_s=0, check_s=0, clock=clock)
    grow.node_added()
    assert not grow.due() and not grow.due()


def test_a_shrunk_run_relaunches_on_full_size_once_a_refill_brought_a_node(tmp_path):
    from tests.unit.test_refill import RefillOnce
    from tests.unit.test_supervisor import make

    # trains on 3 (node[1-3]) + 1 spare slot; node2 lost with no spare: shrunk to 2 nodes; the
    # refill takes node4 in; the next checkpoint: relaunched on node1, node3, node4
    sup, procs, _, events = make(
        tmp_path, spares=1, train_nodes=3, environ={"SLURM_JOB_NODELIST": "node[1-3]"},
        launches=[[5], [None, None, None, None, None, 0], [0]],
        allocations=[["node1", "node3"], ["node1", "node3"], ["node1", "node3", "node4"]])
    names = iter(["step_000000000020", "step_000000000020", "step_000000000040"])
    sup.refill = RefillOnce(["node4"])
    sup.grow = GrowInPlace(lambda: next(names, "step_000000000040"), after_s=0, check_s=0,
                           clock=lambda: 0.0)
    assert sup.run() == 0
    assert [s[1]["SLURM_JOB_NODELIST"] for s in procs.started] == [
        "node[1-3]", "node[1,3]", "node[1,3-4]"]
    assert procs.procs[1].signals[:1] == ["TERM"]          # the shrunk launch was ended
    assert not sup.grow.armed                               # the full-size launch disarmed it
    relaunches = [e.reason for e in events if e.state == "relaunching"]
    assert relaunches == ["relaunch on the nodes left (spares used up: 2 of 3 node(s))",
                          "relaunch on full size again (0 spare(s) left)"]


def test_a_run_at_full_size_does_not_grow_when_a_spare_comes_back(tmp_path):
    from tests.unit.test_supervisor import make

    sup, procs, _, _ = make(tmp_path, spares=1, environ={"SLURM_JOB_NODELIST": "node[1-4]"},
                            launches=[[None, None, 0]], allocations=[["node1", "node2",
                                                                      "node3", "node4"]])
    sup.refill = type("R", (), {"poll": lambda self: ["node5"]})()
    sup.grow = GrowInPlace(lambda: "x", after_s=0, check_s=0, clock=lambda: 0.0)
    assert sup.run() == 0
    assert len(procs.started) == 1 and not sup.grow.armed
