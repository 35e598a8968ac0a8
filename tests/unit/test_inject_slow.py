"""inject slow / unslow: the cluster faults that slow one training rank with a SIGSTOP/SIGCONT
duty cycle (a helper process), run for real against a rank this test starts whose compute is
a sleep (as examples/train.py's): it must run at about half speed, and at full speed again
after unslow. Plus the injector's routing and both backends' handlers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from slurmft.core.errors import ClusterError, UsageError
from slurmft.recovery.state import StateStore
from slurmft.slurm.client import CommandSlurmClient
from slurmft.testbed import Fault, procs
from slurmft.testbed.inject import InjectRequest, Injector
from tests.fakes.fake_slurm import FakeSlurm

# A launcher (python) -> sh -> the rank (python): it counts steps of 0.05 s of sleep in a file
# (replaced whole: a read between a truncate and a write once gave a negative rate).
TREE = textwrap.dedent("""
    import subprocess, sys, time
    rank = '''
    import os, sys, time
    n = 0
    while True:
        time.sleep(0.05)
        n += 1
        with open(sys.argv[1] + ".tmp", "w") as fh:
            fh.write(str(n))
        os.replace(sys.argv[1] + ".tmp", sys.argv[1])    # a reader never sees it empty
    '''
    subprocess.Popen(["sh", "-c", '"$0" -c "$1" "$2"; true', sys.executable, rank, sys.argv[1]])
    print("up", flush=True)
    time.sleep(120)
""")


def rate(path, seconds: float) -> float:
    """Steps per second the rank makes over ``seconds``."""
    def read():
        try:
            return int(path.read_text() or 0)
        except (OSError, ValueError):
            return 0
    a, t0 = read(), time.monotonic()
    time.sleep(seconds)
    return (read() - a) / (time.monotonic() - t0)


def test_slow_runs_a_sleeping_rank_at_about_half_speed_and_unslow_restores_it(tmp_path):
    counter = tmp_path / "steps"
    top = subprocess.Popen([sys.executable, "-c", TREE, str(counter)], stdout=subprocess.PIPE,
                           text=True)
    try:
        assert top.stdout.readline().strip() == "up"
        deadline = time.monotonic() + 30            # a loaded machine starts Python slowly
        while not counter.exists() or len(procs.training_ranks(
                [top.pid, *procs.descendants([top.pid])])) != 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        pids = [top.pid, *sorted(procs.descendants([top.pid]))]
        [rank] = procs.training_ranks(pids)
        before = rate(counter, 2.0)
        msg = procs.slow_rank("node1", pids)
        assert msg.startswith(f"slowed rank pid {rank} on node1: stopped 60% of every 0.1 s")
        deadline = time.monotonic() + 5
        while True:
            helpers = {h: t for h, t in procs.slow_helpers().items() if t == rank}
            if helpers or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(helpers) == 1, procs.slow_helpers()
        with pytest.raises(ClusterError, match="slowed already"):
            procs.slow_rank("node1", pids)
        slowed = rate(counter, 2.0)
        print(f"rate {before:.1f} -> slowed {slowed:.1f} steps/s")
        assert slowed <= 0.7 * before, (before, slowed)       # about half: ~0.5
        out = procs.unslow_ranks("node1", pids)
        assert out.startswith(f"unslowed rank pid {rank} on node1")
        assert not any(t == rank for t in procs.slow_helpers().values())
        rec = procs.Proc(rank, procs.start_time(rank))
        assert procs.wait_for_state(rec, "running", 5)
        after = rate(counter, 1.5)
        assert after >= 0.8 * before, (before, after)
        assert procs.unslow_ranks("node1", pids).startswith("no slowed rank on node1")
        with pytest.raises(ClusterError, match="no training rank"):
            procs.slow_rank("node1", [top.pid])
    finally:
        procs.unslow_ranks("node1", [top.pid, *procs.descendants([top.pid])])
        for pid in sorted(procs.descendants([top.pid]), reverse=True):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        top.kill()
        top.wait()


def test_the_helper_leaves_a_rank_that_exits_and_refuses_bad_cycles():
    with pytest.raises(ClusterError, match="0 < share < 1"):
        procs.slow_argv(1, 1, share=1.0)
    with pytest.raises(ClusterError, match="period"):
        procs.slow_argv(1, 1, period=0.0)
    target = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    helper = subprocess.Popen(procs.slow_argv(target.pid, procs.start_time(target.pid), 0.02))
    try:
        target.wait(timeout=10)                      # still finishes, stopped half the time
        assert helper.wait(timeout=5) == 0           # and the helper leaves once it is gone
    finally:
        helper.kill()
        target.kill()


def test_both_backends_handle_slow_and_unslow():
    from slurmft.testbed.docker.faults import FAULT_HANDLERS as DOCKER
    from slurmft.testbed.netns.faults import FAULT_HANDLERS as NETNS

    assert (Fault.SLOW.value, Fault.UNSLOW.value) == ("slow", "unslow")
    for table in (DOCKER, NETNS):
        assert Fault.SLOW in table and Fault.UNSLOW in table


def test_inject_slow_goes_to_the_clusters_fault_and_is_refused_over_ssh(tmp_path):
    fake = FakeSlurm()
    job = fake.add_job("RUNNING", ("node1", "node2"))
    calls = []

    def fault(node, action):
        calls.append((node, action))
        return f"{action} on {node}"
    inj = Injector(slurm=CommandSlurmClient(runner=fake), runner=None, fault=fault,
                   store=StateStore(tmp_path / "state"), cluster_name="sft-x")
    res = inj.inject(InjectRequest("slow", job, node="node2"))
    assert calls == [("node2", "slow")] and res.detail == "slow on node2"
    assert inj.inject(InjectRequest("unslow", job, node="node2")).detail == "unslow on node2"
    audit = [a for a in StateStore(tmp_path / "state").audit_lines() if a["event"] == "inject"]
    assert [a["action"] for a in audit] == ["slow", "unslow"]
    ssh = Injector(slurm=CommandSlurmClient(runner=fake), runner=None)
    with pytest.raises(UsageError, match="slow is refused without --cluster"):
        ssh.inject(InjectRequest("slow", job, node="node2"))
