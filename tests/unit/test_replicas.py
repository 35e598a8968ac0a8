"""Per-step mode (``slurmft run --replicas R``): the pure builders, and the replica-group
supervisor with fake processes and a fake Slurm (no torchft, no srun): a crashed group is
relaunched alone on its own nodes, a group that lost a node gets a spare, no spare means one
group less, everyone lost means everyone restarts (from their checkpoints), no group left
means a requeue."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurmft.core.errors import SlurmFTError
from slurmft.observe.events import RunTransition
from slurmft.supervise.launch import LaunchSettings
from slurmft.supervise.replicas import (
    ReplicaSettings, ReplicaSupervisor, group_argv, group_env, lighthouse_argv, replace_lost,
    split_groups,
)
from slurmft.supervise.supervisor import RunOptions
from tests.unit.test_supervisor import FakeProcesses, FakeSlurm

FOREVER = [None] * 10_000


def test_nodes_split_into_equal_groups_in_order():
    assert split_groups(["n1", "n2", "n3", "n4"], 2) == [["n1", "n2"], ["n3", "n4"]]
    assert split_groups(["n1", "n2", "n3"], 3) == [["n1"], ["n2"], ["n3"]]
    with pytest.raises(SlurmFTError, match="do not split into 2 replica groups"):
        split_groups(["n1", "n2", "n3"], 2)
    with pytest.raises(SlurmFTError):
        split_groups(["n1"], 2)


def test_a_lost_node_is_replaced_by_a_free_one_in_allocation_order():
    alloc = ["n1", "n2", "n3", "n5", "n6"]          # n4 left the job
    assert replace_lost(["n3", "n4"], alloc, busy=["n1", "n2"]) == ["n3", "n5"]
    assert replace_lost(["n3", "n4"], alloc, busy=["n1", "n2"], benched=["n5"]) == ["n3", "n6"]
    assert replace_lost(["n1", "n2"], alloc, busy=["n3", "n4"]) == ["n1", "n2"]   # nothing lost
    assert replace_lost(["n3", "n4"], ["n1", "n2", "n3"], busy=["n1", "n2"]) is None


def test_the_group_step_and_its_environment():
    rs = ReplicaSettings(replicas=2, lighthouse_port=29510, store_port=29600)
    settings = LaunchSettings(train_cmd=("python", "train_torchft.py"), slots=2)
    argv = group_argv(settings, 1, ["n3", "n4"])
    assert argv[0] == "srun" and "--no-kill" not in argv       # a lost node ends the group
    assert "--kill-on-bad-exit=1" in argv and "--nodelist=n[3-4]" in argv
    assert "--ntasks-per-node=2" in argv and argv[-2:] == ["python", "train_torchft.py"]
    env = group_env({"PATH": "/bin"}, rs, 1, ["n3", "n4"], "n1", 2)
    assert env["TORCHFT_LIGHTHOUSE"] == "http://n1:29510"
    assert env["REPLICA_GROUP_ID"] == "1" and env["NUM_REPLICA_GROUPS"] == "2"
    assert env["MASTER_ADDR"] == "n3" and env["MASTER_PORT"] == "29601"
    assert env["SLURM_JOB_NODELIST"] == "n[3-4]" and env["SLURM_NTASKS"] == "4"
    assert env["PATH"] == "/bin"
    lh = lighthouse_argv(rs)
    assert lh[0] == "torchft_lighthouse" and "0.0.0.0:29510" in lh
    assert lh[lh.index("--min_replicas") + 1] == "1"


@pytest.mark.parametrize("kw, msg", [
    ({"replicas": 0}, "replicas must be >= 1"),
    ({"replicas": 2, "min_replicas": 3}, "min_replicas"),
    ({"replicas": 2, "lighthouse_port": 29601, "store_port": 29600}, "lighthouse port"),
    ({"replicas": 2, "store_port": 80}, "port 80"),
])
def test_bad_replica_settings_are_refused(kw, msg):
    with pytest.raises(ValueError, match=msg):
        ReplicaSettings(**kw)


def make(tmp_path: Path, *, launches, allocations=(), calls_rc=(), replicas=2, spares=0,
         nodelist="node[1-4]", train_nodes=None):
    procs = FakeProcesses(launches=[FOREVER, *launches], calls_rc=list(calls_rc))  # [0]: lighthouse
    slurm = FakeSlurm(allocations=[list(a) for a in allocations])
    events: list[RunTransition] = []
    opts = RunOptions(job_id=7, checkpoint_dir=tmp_path / "ck", here="node1", cwd=str(tmp_path),
                      slurmft_cmd=("slurmft",), reschedule_log=tmp_path / "r.log",
                      kill_grace=0.0, spares=spares, train_nodes=train_nodes)
    sup = ReplicaSupervisor(LaunchSettings(train_cmd=("train",)), opts, slurm, procs,
                            emit=events.append, environ={"SLURM_JOB_NODELIST": nodelist},
                            sleep=lambda s: None, clock=iter(range(10**6)).__next__,
                            replica=ReplicaSettings(replicas=replicas))
    return sup, procs, slurm, events


def groups_started(procs):
    """(replica id, nodelist) of every group step started, in order."""
    return [(env["REPLICA_GROUP_ID"], env["SLURM_JOB_NODELIST"])
            for argv, env, _ in procs.started if argv[0] == "srun"]


def test_all_groups_finish_then_the_lighthouse_is_stopped(tmp_path):
    sup, procs, _, events = make(tmp_path, launches=[[None, 0], [None, None, 0]])
    assert sup.run() == 0
    assert procs.started[0][0][0] == "torchft_lighthouse"
    assert groups_started(procs) == [("0", "node[1-2]"), ("1", "node[3-4]")]
    assert procs.procs[0].signals == ["TERM"]          # the lighthouse, at the end
    assert procs.called == []                          # nothing failed: nothing asked
    assert events[-1].state == "done"


def test_a_crashed_group_is_relaunched_alone_on_its_own_nodes(tmp_path):
    # group 1 crashes (rc 1); slurmft probes (all healthy) and it is relaunched on node[3-4]
    sup, procs, _, events = make(tmp_path, launches=[[None] * 6 + [0], [None, 1], [None, 0]],
                                 allocations=[["node1", "node2", "node3", "node4"]])
    assert sup.run() == 0
    assert groups_started(procs) == [("0", "node[1-2]"), ("1", "node[3-4]"),
                                     ("1", "node[3-4]")]
    assert procs.procs[1].signals == []               # group 0 was never touched
    assert procs.called[0][2:4] == ["7", "--in-place"]
    relaunch = [e for e in events if e.state == "relaunching"]
    assert [(e.replica, e.launch) for e in relaunch] == [(1, 2)]


def test_a_group_that_lost_a_node_gets_the_spare(tmp_path):
    sup, procs, _, _ = make(tmp_path, nodelist="node[1-5]", spares=1,
                            launches=[[None] * 6 + [0], [None, 137], [None, 0]],
                            allocations=[["node1", "node2", "node3", "node5"]])
    assert sup.run() == 0
    assert groups_started(procs) == [("0", "node[1-2]"), ("1", "node[3-4]"),
                                     ("1", "node[3,5]")]


def test_without_a_spare_the_run_goes_on_with_one_group_less(tmp_path, caplog):
    sup, procs, _, events = make(tmp_path, launches=[[None] * 6 + [0], [None, 137]],
                                 allocations=[["node1", "node2", "node3"]])
    assert sup.run() == 0
    assert len(groups_started(procs)) == 2
    assert any(e.replica == 1 and e.state == "stopped" for e in events)
    assert "goes on with 1 group(s)" in caplog.text


def test_when_no_group_survives_every_group_restarts(tmp_path, caplog):
    sup, procs, _, _ = make(tmp_path, launches=[[None, 1], [None, 1], [0], [0]],
                            allocations=[["node1", "node2", "node3", "node4"]])
    assert sup.run() == 0
    assert groups_started(procs)[2:] == [("0", "node[1-2]"), ("1", "node[3-4]")]
    assert "no replica group survived" in caplog.text
    assert len(procs.called) == 1                      # one probe for both


def test_no_group_left_hands_the_job_to_a_requeue(tmp_path):
    # slurmft reschedule answers 4 (needs a requeue: retry budget spent)
    sup, procs, _, events = make(tmp_path, launches=[[None, 1], [None, 1]], calls_rc=[4])
    assert sup.run() == 1
    assert procs.detached and procs.detached[0][1] == "reschedule"
    assert events[-1].state == "handing-off"


def test_sigusr2_ends_only_the_group_on_the_node_that_left(tmp_path):
    # srun ended with TERM may exit 0: the group is relaunched all the same, never "done"
    sup, procs, _, _ = make(tmp_path, nodelist="node[1-5]", spares=1,
                            launches=[[None] * 8 + [0], [None] * 3 + [0], [None, 0]],
                            allocations=[["node1", "node2", "node3", "node5"],   # at SIGUSR2
                                         ["node1", "node2", "node3", "node5"]])  # after probe
    asked = iter([True])

    def sleep(_):
        if next(asked, False):
            group1 = procs.procs[2]
            group1.terminate = lambda: (group1.signals.append("TERM"),
                                        setattr(group1, "rc", 0))
            sup.on_relaunch_signal()
    sup.sleep = sleep
    assert sup.run() == 0
    assert procs.procs[2].signals == ["TERM"]         # group 1 (node4 left) was ended
    assert procs.procs[1].signals == []
    assert groups_started(procs)[-1] == ("1", "node[3,5]")


def test_a_group_whose_step_ends_0_after_its_node_left_gets_the_spare_not_done(
        tmp_path, caplog):
    # Slurm set node4 DOWN: group 1's srun ends 0 before slurmft's SIGUSR2 comes (seen in
    # CI under load: the group was taken as finished and never relaunched)
    sup, procs, slurm, events = make(tmp_path, nodelist="node[1-5]", spares=1,
                                     launches=[[None] * 8 + [0], [None, 0], [None, 0]],
                                     allocations=[["node1", "node2", "node3", "node5"]])
    assert sup.run() == 0
    assert groups_started(procs)[-1] == ("1", "node[3,5]")
    assert not any(e.replica == 1 and e.state == "done" and e.launch == 1 for e in events)
    assert "exited with 0 and node4 left the job" in caplog.text
    assert procs.called == []         # slurmft took node4 out and counted it: not asked again
    assert slurm.signalled[0][0] == "URG"     # group 0 told to end the step it waits in


def test_a_copy_requeued_meanwhile_asks_before_relaunching_a_group(tmp_path):
    # node4 "left" because the job was requeued (restart 1): ask, and stop on STALE_COPY
    sup, procs, slurm, events = make(tmp_path, nodelist="node[1-5]", spares=1, calls_rc=[6],
                                     launches=[[None] * 8 + [0], [None, 0]],
                                     allocations=[["node2", "node3", "node5"]])
    slurm.restarts = 1
    assert sup.run() == 1
    assert procs.called and procs.called[0][3] == "--in-place"
    assert len(groups_started(procs)) == 2 and events[-1].state == "stale"


def test_the_groups_that_stay_are_told_to_end_their_step_before_the_lost_one_ends(tmp_path):
    """A host cut off sends no reset: without a word the survivors wait out their collective
    timeout. SIGURG goes to the job's steps (group 0's, 1's) before group 1's srun is ended."""
    sup, procs, slurm, _ = make(tmp_path, nodelist="node[1-5]", spares=1,
                                launches=[[None] * 8 + [0], [None] * 3 + [0], [None, 0]],
                                allocations=[["node1", "node2", "node3", "node5"]] * 2)
    slurm.step_ids = [0, 1]
    order = []
    signal_steps = slurm.signal_steps
    slurm.signal_steps = lambda job, steps, sig="KILL": (order.append(("signal", sig, steps)),
                                                         signal_steps(job, steps, sig))
    asked = iter([True])

    def sleep(_):
        if next(asked, False):
            group1 = procs.procs[2]
            group1.terminate = lambda: (order.append(("end", "group 1")),
                                        setattr(group1, "rc", 0))
            sup.on_relaunch_signal()
    sup.sleep = sleep
    assert sup.run() == 0
    assert order == [("signal", "URG", [0, 1]), ("end", "group 1")]
    assert procs.procs[1].signals == []               # group 0 trains on


def test_no_word_when_every_running_group_lost_its_node(tmp_path):
    sup, procs, slurm, _ = make(tmp_path, nodelist="node[1-6]", spares=2,
                                launches=[[None] * 3 + [0], [None] * 3 + [0], [None, 0], [0]],
                                allocations=[["node1", "node3", "node5", "node6"]] * 3)
    asked = iter([True])

    def sleep(_):
        if next(asked, False):
            sup.on_relaunch_signal()
    sup.sleep = sleep
    sup.run()
    assert procs.procs[1].signals == ["TERM"] and procs.procs[2].signals == ["TERM"]
    assert slurm.signalled == []


def test_a_lighthouse_that_dies_is_started_again(tmp_path, caplog):
    sup, procs, _, _ = make(tmp_path, launches=[[None, None, None, 0], [None, None, None, 0],
                                                FOREVER])
    procs.launches.insert(0, [None, 1])      # the first lighthouse exits at its second poll
    procs.launches.pop(1)
    assert sup.run() == 0
    lighthouses = [argv for argv, _, _ in procs.started if argv[0] == "torchft_lighthouse"]
    assert len(lighthouses) == 2
    assert "lighthouse exited with 1; starting it again" in caplog.text


def test_a_lighthouse_that_keeps_dying_ends_the_run(tmp_path, caplog):
    sup, procs, _, events = make(tmp_path, launches=[FOREVER, FOREVER] + [[1] for _ in range(10)])
    procs.launches[0] = [1]
    assert sup.run() == 1
    assert sum(argv[0] == "torchft_lighthouse" for argv, _, _ in procs.started) == 5
    assert procs.procs[1].signals == ["TERM"] and procs.procs[2].signals == ["TERM"]
    assert "cannot go on" in caplog.text and events[-1].state == "stopped"


# ---- the command line: slurmft run --replicas, render job --replicas ------------------------

def _run_cli(args, tmp_path, monkeypatch, nodelist="node[1-5]"):
    from click.testing import CliRunner

    from slurmft.cli import cli

    monkeypatch.setenv("SLURM_JOB_ID", "5")
    monkeypatch.setenv("SLURM_JOB_NODELIST", nodelist)
    monkeypatch.setenv("SLURMD_NODENAME", "node1")
    return CliRunner().invoke(cli, ["run", "--checkpoint-dir", str(tmp_path / "ck"), *args,
                                    "--", "python", "t.py"])


def test_run_dry_run_shows_the_lighthouse_and_one_step_per_group(tmp_path, monkeypatch):
    import json

    res = _run_cli(["--replicas", "2", "--spares", "1", "--dry-run", "--json"], tmp_path,
                   monkeypatch)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert Path(doc["argv"][0]).name == "torchft_lighthouse"
    assert [g["nodes"] for g in doc["replica_groups"]] == [["node1", "node2"],
                                                           ["node3", "node4"]]
    assert doc["spares"] == ["node5"]
    assert doc["heartbeat"] == {}               # per-step mode: no per-rank heartbeats
    assert "--job-name=slurmft-replica-1" in doc["replica_groups"][1]["argv"]


@pytest.mark.parametrize("args, msg", [
    (["--replicas", "3"], "do not split into 3 replica groups"),
    (["--replicas", "2", "--lighthouse-port", "29601"], "one of the groups' store ports"),
])
def test_run_refuses_replicas_that_cannot_work_in_one_line(tmp_path, monkeypatch, args, msg):
    res = _run_cli([*args, "--dry-run"], tmp_path, monkeypatch, nodelist="node[1-4]")
    assert res.exit_code != 0
    assert msg in res.output and "Traceback" not in res.output


def test_run_without_the_lighthouse_says_what_to_install(tmp_path, monkeypatch):
    import slurmft.cli.run as run_mod

    monkeypatch.setattr(run_mod.os, "access", lambda *a: False)
    monkeypatch.setenv("PATH", str(tmp_path))
    res = _run_cli(["--replicas", "2", "--dry-run"], tmp_path, monkeypatch, nodelist="node[1-4]")
    assert res.exit_code != 0 and "pip install 'slurmft[torchft]'" in res.output


def test_render_job_with_replicas_tells_the_supervisor_and_checks_the_split():
    from click.testing import CliRunner

    from slurmft.cli import cli

    ok = CliRunner().invoke(cli, ["render", "job", "--nodes", "4", "--spares", "1",
                                  "--replicas", "2", "--train-cmd", "python t.py",
                                  "--checkpoint-dir", "/c"])
    assert ok.exit_code == 0, ok.output
    assert "#SBATCH --nodes=5" in ok.output and " --replicas 2 " in ok.output
    bad = CliRunner().invoke(cli, ["render", "job", "--nodes", "3", "--replicas", "2",
                                   "--train-cmd", "t", "--checkpoint-dir", "/c"])
    assert bad.exit_code != 0 and "multiple of 2" in bad.output


def test_a_group_that_fails_after_another_finished_is_not_relaunched(tmp_path, caplog):
    # group 0 finishes; group 1 then fails: a relaunch would redo steps alone
    sup, procs, _, events = make(tmp_path, launches=[[None, 0], [None, None, None, 1]],
                                 allocations=[["node1", "node2", "node3", "node4"]] * 2)
    assert sup.run() == 0
    assert len(groups_started(procs)) == 2
    assert "another replica group finished the training" in caplog.text
    assert events[-1].state == "done"


def test_a_group_that_dies_while_the_first_is_probed_shares_the_probe(tmp_path, caplog):
    # group 0 exits at its 2nd poll; group 1 at its 3rd, i.e. while group 0's probe runs
    sup, procs, _, _ = make(tmp_path, launches=[[None, 1], [None, None, 1], [0], [0]],
                            allocations=[["node1", "node2", "node3", "node4"]])
    assert sup.run() == 0
    assert len(procs.called) == 1                      # one probe for both
    assert groups_started(procs)[2:] == [("0", "node[1-2]"), ("1", "node[3-4]")]
    assert "no replica group survived" in caplog.text


def test_a_stale_copy_stops_every_group_and_hands_nothing_off(tmp_path):
    from slurmft.core.errors import ExitCode

    sup, procs, _, events = make(tmp_path, launches=[FOREVER, [None, 1]],
                                 calls_rc=[int(ExitCode.STALE_COPY)])
    assert sup.run() == 1
    assert procs.procs[1].signals == ["TERM"]         # the survivor of this copy is ended
    assert procs.detached == [] and events[-1].state == "stale"
