"""inject hang: SIGSTOP of one training rank (never a launcher), its undo (SIGCONT on the
job's nodes), and the cluster faults hang/unhang run for real against a process tree this
test starts (sh -> python launcher -> sh -> python rank)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from slurmft.core.errors import ClusterError, SlurmFTError, UsageError
from slurmft.recovery.state import StateStore
from slurmft.slurm.client import CommandSlurmClient
from slurmft.testbed import Fault, procs
from slurmft.testbed import remote
from slurmft.testbed.inject import (
    ExecResult, InjectRequest, Injector, kill_argv, list_procs_argv, rank_candidates,
)
from slurmft.testbed.remote import parse_procs

from tests.fakes.fake_slurm import FakeSlurm

NODES = ("node1", "node2")
LISTING = ("90 - /usr/bin/mpirun -np 2 python train.py\n"
           "91 - /venv/bin/python /venv/bin/slurmft run -- python train.py\n"
           "92 - sh -c python train.py\n"
           "101 - python train.py --steps 10\n"
           "102 - /venv/bin/python3 train.py --steps 10\n")


class Runner:
    def __init__(self, listing: str = LISTING, rc: int = 0) -> None:
        self.listing, self.rc = listing, rc
        self.calls: list[tuple[str, list[str]]] = []

    def run(self, node, argv, timeout):
        self.calls.append((node, list(argv)))
        if argv[:3] == ["sh", "-c", remote.LIST_SH]:
            return ExecResult(0, self.listing)
        return ExecResult(self.rc, "", "boom" if self.rc else "")


def make(tmp_path, runner):
    fake = FakeSlurm()
    job = fake.add_job("RUNNING", NODES)
    return Injector(slurm=CommandSlurmClient(runner=fake), runner=runner,
                    store=StateStore(tmp_path / "state")), job


def test_rank_candidates_leave_out_launchers_and_wrappers():
    ranks = rank_candidates(parse_procs(LISTING))
    assert [p.pid for p in ranks] == [101, 102]


def test_hang_stops_one_seeded_rank_and_is_audited(tmp_path):
    picks = set()
    for seed in range(6):
        runner = Runner()
        injector, job = make(tmp_path, runner)
        res = injector.inject(InjectRequest("hang", job, node="node2", seed=seed))
        assert res.pid in (101, 102) and res.node == "node2"
        assert runner.calls == [("node2", list_procs_argv("train.py")),
                                ("node2", kill_argv(res.pid, "STOP"))]
        assert res.detail.startswith(f"stopped pid {res.pid} on node2 (SIGSTOP")
        assert res.extra["candidates"] == [101, 102]
        picks.add(res.pid)
    assert picks == {101, 102}
    again = make(tmp_path, Runner())[0].inject(InjectRequest("hang", job, node="node2", seed=3))
    assert again.pid == make(tmp_path, Runner())[0].inject(
        InjectRequest("hang", job, node="node2", seed=3)).pid
    audit = [a for a in StateStore(tmp_path / "state").audit_lines() if a["event"] == "inject"]
    assert audit[-1]["action"] == "hang" and audit[-1]["pid"] == again.pid


def test_hang_refuses_when_only_launchers_match(tmp_path):
    runner = Runner(listing="90 - mpirun -np 2 python train.py\n")
    injector, job = make(tmp_path, runner)
    with pytest.raises(SlurmFTError, match="no training rank matching 'train.py' on node1 .*"
                                           "only launchers: mpirun -np 2.*nothing stopped"):
        injector.inject(InjectRequest("hang", job, node="node1"))
    assert len(runner.calls) == 1
    with pytest.raises(UsageError, match="--match"):
        injector.inject(InjectRequest("hang", job, match="a\nb"))
    with pytest.raises(SlurmFTError, match="SIGSTOP of pid 101 on node1 failed: boom"):
        make(tmp_path, Runner("101 - python train.py\n", rc=1))[0].inject(
            InjectRequest("hang", job, node="node1"))


def test_hang_undo_continues_the_jobs_processes_on_every_node(tmp_path):
    runner = Runner(listing="101 - python train.py\n102 - python train.py\n")
    injector, job = make(tmp_path, runner)
    res = injector.inject(InjectRequest("hang", job, undo=True))
    cont = ["kill", "-s", "CONT", "--", "101", "102"]
    assert runner.calls == [("node1", list_procs_argv("train.py")), ("node1", cont),
                            ("node2", list_procs_argv("train.py")), ("node2", cont)]
    assert res.extra["continued"] == {"node1": [101, 102], "node2": [101, 102]}
    assert "SIGCONT to pid 101 102 on node1" in res.detail
    runner = Runner(listing="")
    res = make(tmp_path, runner)[0].inject(InjectRequest("hang", job, node="node2", undo=True))
    assert runner.calls == [("node2", list_procs_argv("train.py"))]
    assert "nothing to continue" in res.detail
    dry = make(tmp_path, Runner())[0].inject(InjectRequest("hang", job, undo=True, dry_run=True))
    assert dry.dry_run and "would send SIGCONT" in dry.detail


def test_hang_dry_run_runs_nothing(tmp_path):
    runner = Runner()
    injector, job = make(tmp_path, runner)
    res = injector.inject(InjectRequest("hang", job, node="node1", dry_run=True))
    assert res.dry_run and runner.calls == []
    assert res.commands[1] == ["kill", "-s", "STOP", "--", "<PID>"]


TREE = textwrap.dedent("""
    import subprocess, sys, time
    # a Python launcher (like slurmft run): sh below it, the rank below that
    subprocess.Popen(["sh", "-c", '"$0" -c "import time; time.sleep(60)"; true', sys.executable])
    print("up", flush=True)
    time.sleep(60)
""")


def test_cluster_faults_hang_and_unhang_stop_the_rank_not_the_launcher():
    """procs.stop_rank/continue_procs, what both backends' hang/unhang run on job_pids()."""
    assert {Fault.HANG.value, Fault.UNHANG.value} == {"hang", "unhang"}
    top = subprocess.Popen(["sh", "-c", '"$0" -c "$1"; true', sys.executable, TREE],
                           stdout=subprocess.PIPE, text=True)
    try:
        assert top.stdout.readline().strip() == "up"
        deadline = time.monotonic() + 10
        while True:
            tree = sorted(procs.descendants([top.pid]))
            kinds = [procs.comm(p) for p in tree]
            if sum(k.startswith("python") for k in kinds) == 2 and "sh" in kinds:
                break
            assert time.monotonic() < deadline, kinds
            time.sleep(0.05)
        pids = [top.pid, *tree]
        ranks = procs.training_ranks(pids)
        assert len(ranks) == 1
        rank = ranks[0]
        assert procs.comm(procs.parents()[rank]) == "sh"           # below the inner sh
        msg = procs.stop_rank("node1", pids)
        assert msg.startswith(f"stopped rank pid {rank} on node1 (SIGSTOP)")
        rec = procs.Proc(rank, procs.start_time(rank))
        assert procs.state(rec) == "stopped"
        assert procs.continue_procs("node1", pids).startswith(
            f"continued 1 job process(es) on node1 (SIGCONT): {rank}")
        assert procs.wait_for_state(rec, "running", 5)
        assert procs.continue_procs("node1", pids) == "no stopped job process on node1"
        with pytest.raises(ClusterError, match="no training rank"):
            procs.stop_rank("node1", [top.pid])
    finally:
        for pid in sorted(procs.descendants([top.pid]), reverse=True):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        top.kill()
        top.wait()


@pytest.mark.parametrize("args, code, message", [
    (["--job", "x"], 2, "Invalid value for '--job'"),
    (["--job", "1", "--match", ""], 2, "--match must be one non-empty line"),
    (["--job", "1", "--seed", "-1"], 2, "--seed"),
    (["--job", "1", "--cluster", "sft-nothere"], 1, "cluster sft-nothere is not up"),
])
def test_inject_hang_rejects_bad_input_with_one_line(args, code, message):
    from click.testing import CliRunner

    from slurmft.cli import cli

    res = CliRunner().invoke(cli, ["inject", "hang", *args])
    assert res.exit_code == code, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("slurmft: ") and message in lines[0]
    assert "Traceback" not in res.output
