"""The in-job supervisor (slurmft run) with fake processes, a fake Slurm view and a fake
hang monitor: no processes, no sleeps. The rendered wrapper run end to end with stand-in
binaries is in test_render_scripts.py."""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from slurmft.core.envfile import RESTART_ENV, format_env_file
from slurmft.core.errors import ExitCode, SlurmCommandError, SlurmFTError
from slurmft.observe.events import RunTransition, parse_event
from slurmft.supervise.launch import (
    LaunchSettings, choose_nodes, launch_argv, on_peer_argv, peer_script, pick_peer, rank_node,
    slurm_env,
)
from slurmft.supervise.supervisor import RunOptions, RunState, Supervisor, exit_code


class FakeProc:
    def __init__(self, pid: int, script: list) -> None:
        self.pid = pid
        self.script = script          # poll() answers, one per call; then the last forever
        self.rc: int | None = None
        self.signals: list[str] = []

    def poll(self):
        if self.rc is None and self.script:
            self.rc = self.script.pop(0)
        return self.rc

    def terminate(self):
        self.signals.append("TERM")
        self.rc = -15

    def kill(self):
        self.signals.append("KILL")
        self.rc = -9

    def wait(self, timeout=None):
        return -15 if self.rc is None else self.rc


@dataclass
class FakeProcesses:
    launches: list[list] = field(default_factory=list)     # poll scripts, one per launch
    calls_rc: list[int] = field(default_factory=list)       # answers of slurmft reschedule
    started: list[tuple[list[str], dict, str | None]] = field(default_factory=list)
    procs: list[FakeProc] = field(default_factory=list)
    called: list[list[str]] = field(default_factory=list)
    detached: list[list[str]] = field(default_factory=list)
    outputs: list = field(default_factory=list)             # answers of output(), in order
    asked: list[list[str]] = field(default_factory=list)
    on_poll: object = None

    def start(self, argv, env, stdin_text=None):
        self.started.append((list(argv), dict(env), stdin_text))
        proc = FakeProc(100 + len(self.procs), self.launches.pop(0) if self.launches else [0])
        self.procs.append(proc)
        return proc

    def call(self, argv, env, log_path, timeout):
        self.called.append(list(argv))
        return self.calls_rc.pop(0) if self.calls_rc else 0

    def detach(self, argv, env, log_path):
        self.detached.append(list(argv))

    def output(self, argv, env, timeout):
        self.asked.append(list(argv))
        return self.outputs.pop(0) if self.outputs else None


@dataclass
class FakeSlurm:
    allocations: list[list[str]] = field(default_factory=list)
    step_ids: list[int] = field(default_factory=lambda: [0])
    killed: list[list[int]] = field(default_factory=list)
    signalled: list[tuple[str, list[int]]] = field(default_factory=list)
    fail: bool = False
    state: str = "RUNNING"
    restarts: int = 0

    def job(self, job_id):
        from types import SimpleNamespace
        return SimpleNamespace(state=self.state, restart_count=self.restarts)

    def allocation(self, job_id):
        if self.fail:
            raise SlurmCommandError("squeue failed")
        # one answer per read; the last one stands from then on
        if len(self.allocations) > 1:
            return self.allocations.pop(0)
        return list(self.allocations[0]) if self.allocations else []

    def steps(self, job_id):
        return list(self.step_ids)

    def signal_steps(self, job_id, steps, signal="KILL"):
        if signal == "KILL":
            self.killed.append(list(steps))
        else:
            self.signalled.append((signal, list(steps)))


@dataclass
class Stuck:
    rank: int
    last_step: int | None = 41
    seconds_without_progress: float = 61.0
    stacks: str | None = 'File "train.py", line 9 in allreduce'


class FakeMonitor:
    step_time = None

    def __init__(self, answers: list[list[Stuck]], done: bool = False) -> None:
        self.answers = answers
        self.done = done
        self.resets: list[int] = []

    def finished(self):
        return self.done

    def reset(self, world_size):
        self.resets.append(world_size)

    def poll(self):
        return self.answers.pop(0) if self.answers else []


def make(tmp_path: Path, *, launches=None, calls_rc=None, allocations=None, monitor=None,
         launch_from="batch", environ=None, spares=0, train_nodes=None, **settings):
    procs = FakeProcesses(launches=launches or [[0]], calls_rc=calls_rc or [])
    slurm = FakeSlurm(allocations=allocations or [])
    events: list[RunTransition] = []
    opts = RunOptions(job_id=7, checkpoint_dir=tmp_path / "ck", here="node1", cwd=str(tmp_path),
                      slurmft_cmd=("slurmft",), reschedule_log=tmp_path / "r.log",
                      train_cmd_line="train --x 1", kill_grace=0.0, spares=spares,
                      train_nodes=train_nodes)
    sup = Supervisor(LaunchSettings(train_cmd=("train", "--x", "1"), launch_from=launch_from,
                                    **settings),
                     opts, slurm, procs, monitor=monitor, emit=events.append,
                     environ=environ or {"SLURM_JOB_NODELIST": "node[1-2]", "FOO": "bar"},
                     sleep=lambda s: None, clock=iter(range(10**6)).__next__)
    return sup, procs, slurm, events


def test_a_training_that_succeeds_is_launched_once_and_ends_done(tmp_path):
    sup, procs, slurm, events = make(tmp_path)
    assert sup.run() == 0
    [(argv, env, stdin)] = procs.started
    assert argv == ["mpirun", "-np", "2", "--mca", "plm_slurm_args", "--no-kill --overlap",
                    "train", "--x", "1"]
    assert env["SLURM_JOB_NODELIST"] == "node[1-2]" and env["FOO"] == "bar"
    assert env["CHECKPOINT_PATH"] == str(tmp_path / "ck") and stdin is None
    assert [e.state for e in events] == ["launching", "running", "done"]
    assert procs.called == [] and procs.detached == [] and slurm.killed == []


def test_a_finished_training_leaves_no_notes_of_its_runs_but_other_jobs_notes_stay(tmp_path):
    sup, procs, slurm, events = make(tmp_path)
    ck = tmp_path / "ck"
    for kind in (".slurmft-peer/7/0", ".slurmft-peer/7/1", ".slurmft-peer/8/0",
                 ".slurmft-warm/7"):
        (ck / kind).mkdir(parents=True)
        (ck / kind / "node2.123").touch()
    (ck / "step_000000000020").mkdir()
    assert sup.run() == 0 and events[-1].state == "done"
    assert sorted(p.relative_to(ck).as_posix() for p in ck.rglob("*")) == [
        ".slurmft-peer", ".slurmft-peer/8", ".slurmft-peer/8/0", ".slurmft-peer/8/0/node2.123",
        "step_000000000020"]


def test_a_failed_launcher_asks_in_place_kills_the_steps_and_relaunches_resuming(tmp_path):
    # node1 is still in the job when the launcher exits; the in-place reschedule takes it out
    sup, procs, slurm, events = make(tmp_path, launches=[[None, 255], [0]],
                                     allocations=[["node1", "node2"], ["node2"]])
    assert sup.run() == 0
    assert procs.called == [["slurmft", "reschedule", "7", "--in-place", "--restart-count", "0",
                             "--checkpoint-dir", str(tmp_path / "ck")]]
    assert slurm.killed == [[0]]
    second = procs.started[1]
    assert second[0][:3] == ["mpirun", "-np", "1"]
    assert second[0][-2:] == ["--resume", str(tmp_path / "ck")]
    assert second[1]["SLURM_JOB_NODELIST"] == "node2" and second[1]["SLURM_NTASKS"] == "1"
    assert [e.state for e in events] == ["launching", "running", "asking", "relaunching",
                                         "launching", "running", "done"]
    assert [e.launch for e in events if e.state == "launching"] == [1, 2]


def test_needs_requeue_hands_off_to_a_detached_reschedule_with_the_launchers_code(tmp_path):
    sup, procs, _, events = make(tmp_path, launches=[[3]],
                                 calls_rc=[int(ExitCode.NEEDS_REQUEUE)])
    assert sup.run() == 3
    assert procs.detached == [["slurmft", "reschedule", "7", "--settle", "30",
                               "--restart-failed", "--restart-count", "0", "--nodes",
                               "node[1-2]", "--checkpoint-dir",
                               str(tmp_path / "ck"), "--train-cmd", "train --x 1"]]
    assert events[-1].state == "handing-off" and events[-1].rc == 3


def test_a_stale_copy_stops_without_handing_off(tmp_path):
    sup, procs, _, events = make(tmp_path, launches=[[3]], calls_rc=[int(ExitCode.STALE_COPY)])
    assert sup.run() == 3
    assert procs.detached == [] and events[-1].state == RunState.STALE.value


def test_sigusr2_stops_the_launcher_and_relaunches_without_asking(tmp_path):
    sup, procs, slurm, _ = make(tmp_path, launches=[[None] * 1000, [0]],
                                allocations=[["node2"]])
    sup.sleep = lambda s: sup.on_relaunch_signal()        # SIGUSR2 arrives while it runs
    assert sup.run() == 0
    assert procs.procs[0].signals == ["TERM"] and procs.called == []
    assert slurm.killed == [[0]] and procs.started[1][1]["SLURM_JOB_NODELIST"] == "node2"


@pytest.mark.parametrize("rc", [0, 137])
def test_a_launcher_that_exits_after_its_node_left_the_job_is_relaunched_without_asking(
        tmp_path, caplog, rc):
    # slurmft set node2 DOWN: its step ends (srun with 0, even) before the SIGUSR2 comes
    sup, procs, slurm, events = make(tmp_path, launches=[[None, rc], [0]],
                                     allocations=[["node1"]])
    assert sup.run() == 0
    assert [e.state for e in events if e.state in ("relaunching", "done")] == [
        "relaunching", "done"]
    assert procs.called == []       # taken out and counted by slurmft: not asked again
    assert slurm.killed             # the old steps are ended before the relaunch
    assert procs.started[1][1]["SLURM_JOB_NODELIST"] == "node1"
    assert f"exited with {rc} and node2 left the job" in caplog.text


def test_a_node_lost_after_every_rank_closed_does_not_restart_a_finished_training(tmp_path):
    # the goodput run: node5's slurmd killed near the end, Slurm removed node5 from the job
    # after the last step was saved; mpirun exited 0, every heartbeat said done: no relaunch
    sup, procs, _, events = make(tmp_path, launches=[[None, 0], [0]],
                                 allocations=[["node1"]], monitor=FakeMonitor([], done=True))
    assert sup.run() == 0
    assert len(procs.started) == 1 and events[-1].state == "done"
    # not every rank closed: the same exit is a lost node, relaunched
    sup, procs, _, events = make(tmp_path, launches=[[None, 0], [0]],
                                 allocations=[["node1"]], monitor=FakeMonitor([], done=False))
    assert sup.run() == 0 and len(procs.started) == 2


def test_a_copy_requeued_meanwhile_asks_and_stops_instead_of_relaunching(tmp_path):
    # the job was requeued (restart 1) while this copy ran: its nodes "left"; it must not
    # launch onto the new allocation but ask, and stop on the answer
    sup, procs, slurm, events = make(tmp_path, launches=[[None, 1]], calls_rc=[6],
                                     allocations=[["node3"]])
    slurm.restarts = 1
    assert sup.run() == 1
    assert len(procs.started) == 1 and procs.called[0][3] == "--in-place"
    assert events[-1].state == "stale"


def test_a_launcher_that_exits_0_with_every_node_in_the_job_is_done(tmp_path):
    sup, procs, _, events = make(tmp_path, launches=[[None, 0]],
                                 allocations=[["node1", "node2"]])
    assert sup.run() == 0
    assert len(procs.started) == 1 and events[-1].state == "done"


def test_sigusr1_is_passed_to_the_trainings_steps_and_it_trains_on(tmp_path):
    sup, procs, slurm, _ = make(tmp_path, launches=[[None, None, None, 0]])
    slurm.step_ids = [0, 1]
    asked = iter([True, False, False])
    sup.sleep = lambda s: next(asked, False) and sup.on_save_signal()
    assert sup.run() == 0
    assert slurm.signalled == [("USR1", [0, 1])] and slurm.killed == []
    assert len(procs.started) == 1


def test_sigterm_waits_for_the_training_and_never_relaunches(tmp_path):
    sup, procs, slurm, events = make(tmp_path, launches=[[None, None, -15]])
    sup.sleep = lambda s: sup.on_stop_signal(signal.SIGTERM)
    assert sup.run() == 143
    assert len(procs.started) == 1 and procs.called == [] and procs.detached == []
    assert procs.procs[0].signals == []         # Slurm signals the training itself
    assert events[-1].state == "stopped"


def test_a_hung_rank_is_reported_at_error_with_its_node_and_the_training_relaunched(
        tmp_path, caplog):
    monitor = FakeMonitor([[], [Stuck(rank=3)]])
    sup, procs, slurm, events = make(tmp_path, launches=[[None] * 1000, [0]], slots=2,
                                     monitor=monitor, allocations=[["node1", "node2"]])
    with caplog.at_level(logging.ERROR):
        assert sup.run() == 0
    assert procs.procs[0].signals == ["TERM"]
    hung = [r for r in caplog.records if "made no progress" in r.getMessage()]
    assert hung and "rank 3 on node2" in hung[0].getMessage()
    assert hung[0].failed == ["node2"]          # the failed_node= field of the log line
    assert any("allreduce" in r.getMessage() for r in caplog.records)
    assert procs.called[0][3] == "--in-place"         # slurmft probes the nodes first
    assert monitor.resets == [4, 4]                     # 2 nodes x 2 slots, each launch
    assert [e.reason for e in events if e.state == "asking"] == ["a rank hung"]


def test_a_rank_that_left_no_stacks_is_said_to_be_maybe_stopped(tmp_path, caplog):
    monitor = FakeMonitor([[Stuck(rank=0, stacks=None)]])
    sup, *_ = make(tmp_path, launches=[[None] * 10, [0]], monitor=monitor,
                   allocations=[["node1"]])
    with caplog.at_level(logging.ERROR):
        sup.run()
    assert any("left no stacks" in r.getMessage() for r in caplog.records)


def test_the_restart_env_file_is_read_before_every_launch(tmp_path):
    sup, procs, _, _ = make(tmp_path, launches=[[1], [0]],
                            allocations=[["node1", "node2"], ["node1"]])
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / RESTART_ENV).write_text(format_env_file({"CUDA_VISIBLE_DEVICES": "0,1"}))
    orig_call = procs.call

    def call(argv, env, log_path, timeout):        # mask-gpu between the two launches
        (tmp_path / "ck" / RESTART_ENV).write_text(format_env_file({"CUDA_VISIBLE_DEVICES": "1"}))
        return orig_call(argv, env, log_path, timeout)
    procs.call = call
    assert sup.run() == 0
    assert [s[1]["CUDA_VISIBLE_DEVICES"] for s in procs.started] == ["0,1", "1"]


def test_first_launch_resumes_only_when_the_directory_holds_a_checkpoint(tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / RESTART_ENV).write_text("")            # slurmft's own file is not a checkpoint
    sup, procs, _, _ = make(tmp_path)
    sup.run()
    assert "--resume" not in procs.started[0][0]
    (ck / "step_000000000010.abc").mkdir()
    sup, procs, _, _ = make(tmp_path)
    sup.run()
    assert procs.started[0][0][-2:] == ["--resume", str(ck)]


def test_an_unreadable_allocation_hands_off(tmp_path):
    sup, procs, slurm, events = make(tmp_path, launches=[[9]])
    slurm.fail = True
    assert sup.run() == 9
    assert procs.detached and events[-1].state == "handing-off"


def test_outside_a_job_is_a_clear_error(tmp_path):
    sup, *_ = make(tmp_path, environ={"PATH": "/bin"})
    with pytest.raises(SlurmFTError, match="inside a Slurm job"):
        sup.run()


def test_peer_launch_checks_ssh_once_then_pipes_the_script(tmp_path):
    sup, procs, _, _ = make(tmp_path, launch_from="peer", launches=[[1], [0]],
                            allocations=[["node1", "node2"]])
    assert sup.run() == 0
    checks = [c for c in procs.called if c[-1].startswith("cd ")]
    assert len(checks) == 1 and checks[0][-2] == "node2"        # once per peer
    argv, env, script = procs.started[1]
    assert argv[-3:] == ["node2", "bash", "-s"]
    assert "exec srun --jobid=7 --overlap --no-kill --nodes=1 --ntasks=1 --nodelist=node2 env" \
        in script and "--resume" in script


def test_when_ssh_to_the_peer_fails_the_launcher_runs_here_from_then_on(tmp_path, caplog):
    sup, procs, _, _ = make(tmp_path, launch_from="peer", calls_rc=[255])
    with caplog.at_level(logging.WARNING):
        assert sup.run() == 0
    assert procs.started[0][0][0] == "mpirun"
    assert any("cannot ssh to node2" in r.getMessage() for r in caplog.records)


def test_run_events_round_trip_through_the_audit_reader(tmp_path):
    sup, _, _, events = make(tmp_path)
    sup.run()
    back = parse_event(events[0].to_record())
    assert back == RunTransition(job_id=7, state="launching", previous="starting",
                                 reason="mpirun on 2 node(s)", nodes=("node1", "node2"),
                                 launch=1)


# --------------------------------------------------------------------------- spares

FOUR = {"SLURM_JOB_NODELIST": "node[1-4]"}


def test_with_a_spare_the_training_runs_on_the_others_and_a_lost_node_is_replaced(tmp_path):
    sup, procs, _, events = make(tmp_path, spares=1, environ=FOUR, launches=[[5], [0]],
                                 allocations=[["node1", "node3", "node4"]])
    assert sup.run() == 0
    first, second = (s[1]["SLURM_JOB_NODELIST"] for s in procs.started)
    assert first == "node[1-3]"                       # node4 idle
    assert second == "node[1,3-4]"                    # node2 lost, node4 in: world size kept
    assert procs.started[1][0][:3] == ["mpirun", "-np", "3"]
    [relaunch] = [e for e in events if e.state == "relaunching"]
    assert "0 spare(s) left" in relaunch.reason


def test_when_the_spares_are_used_up_the_run_shrinks(tmp_path):
    sup, procs, _, events = make(tmp_path, spares=1, environ=FOUR, launches=[[5], [5], [0]],
                                 allocations=[["node1", "node2", "node3", "node4"],  # at exit
                                              ["node1", "node3", "node4"],   # after the ask
                                              ["node1", "node3", "node4"],   # at exit
                                              ["node1", "node4"]])           # after the ask
    assert sup.run() == 0
    assert [s[1]["SLURM_JOB_NODELIST"] for s in procs.started] == [
        "node[1-3]", "node[1,3-4]", "node[1,4]"]
    assert "spares used up: 2 of 3" in [e for e in events if e.state == "relaunching"][-1].reason


def test_a_spare_that_leaves_the_job_does_not_stop_the_training(tmp_path):
    sup, procs, slurm, _ = make(tmp_path, spares=1, environ=FOUR,
                                launches=[[None, None, None, 0]],
                                allocations=[["node1", "node2", "node3"]])   # node4 drained
    asked = iter([True])
    sup.sleep = lambda s: next(asked, False) and sup.on_relaunch_signal()
    assert sup.run() == 0
    assert len(procs.started) == 1 and procs.procs[0].signals == [] and slurm.killed == []


def test_a_relaunch_signal_reads_the_allocation_once(tmp_path):
    """SIGUSR2 with spares: the read that tells a training node left is the one the relaunch
    uses (one Slurm call less between the signal and the new launch)."""
    sup, procs, slurm, _ = make(tmp_path, spares=1, environ=FOUR, launches=[[None, None], [0]],
                                allocations=[["node1", "node3", "node4"], ["node9"]])
    asked = iter([True])
    sup.sleep = lambda s: next(asked, False) and sup.on_relaunch_signal()
    assert sup.run() == 0
    assert procs.started[1][1]["SLURM_JOB_NODELIST"] == "node[1,3-4]"   # not node9
    assert slurm.allocations == [["node9"]]                           # read once


def test_after_a_requeue_with_one_node_less_the_training_uses_every_node(tmp_path):
    # rendered for 3 training nodes + 1 spare; requeued without a lost node: 3 nodes left
    sup, procs, _, _ = make(tmp_path, spares=1, train_nodes=3,
                            environ={"SLURM_JOB_NODELIST": "node[2-4]"})
    assert sup.run() == 0
    assert procs.started[0][1]["SLURM_JOB_NODELIST"] == "node[2-4]"
    sup, procs, _, _ = make(tmp_path, spares=1, train_nodes=3, environ=FOUR)
    sup.run()
    assert procs.started[0][1]["SLURM_JOB_NODELIST"] == "node[1-3]"     # node4 the spare


def test_a_job_too_small_for_its_spares_is_a_clear_error(tmp_path):
    sup, *_ = make(tmp_path, spares=2, environ={"SLURM_JOB_NODELIST": "node[1-2]"})
    with pytest.raises(SlurmFTError, match="not enough for --spares 2"):
        sup.run()


def test_choose_nodes_keeps_the_training_nodes_and_fills_up_in_order():
    assert choose_nodes(["a", "b", "c"], [], None) == ["a", "b", "c"]
    assert choose_nodes(["a", "b", "c", "d"], [], 3) == ["a", "b", "c"]
    assert choose_nodes(["a", "c", "d"], ["a", "b", "c"], 3) == ["a", "c", "d"]
    assert choose_nodes(["b", "d"], ["a", "b", "c"], 3) == ["b", "d"]


def test_choose_nodes_swaps_a_node_to_avoid_for_a_spare_and_uses_it_only_when_none_is_left():
    # b's warm server is gone: the spare d trains in its place, b becomes the spare
    assert choose_nodes(["a", "b", "c", "d"], ["a", "b", "c"], 3, avoid=["b"]) == ["a", "c", "d"]
    # the spare's server is gone too: b keeps training (a spare as cold as b gains nothing)
    assert choose_nodes(["a", "b", "c", "d"], ["a", "b", "c"], 3, avoid=["b", "d"]) == [
        "a", "b", "c"]
    # no spare: b trains, cold, rather than the run shrinking
    assert choose_nodes(["a", "b", "c"], ["a", "b", "c"], 3, avoid=["b"]) == ["a", "b", "c"]
    assert choose_nodes(["a", "b"], ["a", "b"], None, avoid=["b"]) == ["a", "b"]


# --------------------------------------------------------------------------- launch builders

def test_srun_launch_names_the_nodes_and_the_slots():
    s = LaunchSettings(train_cmd=("t",), launcher="srun", slots=4)
    assert launch_argv(s, ["n1", "n2", "n3"], ["--resume", "/c"]) == [
        "srun", "--mpi=pmix", "--no-kill", "--overlap", "--kill-on-bad-exit=1", "--nodes=3",
        "--nodelist=n[1-3]", "--ntasks-per-node=4", "t", "--resume", "/c"]
    assert on_peer_argv(s, 7, "n2", ["n1", "n2"], ["srun", "x"]) == ["srun", "x"]


def test_slurm_env_describes_the_allocation():
    assert slurm_env(["a1", "a3"], 2) == {
        "SLURM_JOB_NODELIST": "a[1,3]", "SLURM_NODELIST": "a[1,3]", "SLURM_NNODES": "2",
        "SLURM_JOB_NUM_NODES": "2", "SLURM_TASKS_PER_NODE": "2(x2)", "SLURM_NTASKS": "4",
        "SLURM_NPROCS": "4"}


def test_peer_script_quotes_values_and_leaves_host_variables_out():
    text = peer_script({"FOO": "a 'b' $c; d", "HOME": "/root", "SSH_AUTH_SOCK": "x",
                        "bad-name": "y", "SLURM_JOB_ID": "7"}, "/w d", ["mpirun", "-np", "2"])
    assert text.splitlines() == ["export FOO='a '\"'\"'b'\"'\"' $c; d'", "export SLURM_JOB_ID=7",
                                 "cd '/w d' || exit 1", "exec mpirun -np 2"]


def test_pick_peer_and_rank_node():
    assert pick_peer(["node1", "node2"], "node1") == "node2"
    assert pick_peer(["node1"], "node1") is None
    assert pick_peer(["-x", "node3"], "node1") == "node3"
    assert [rank_node(r, ["a", "b"], 2) for r in range(5)] == ["a", "a", "b", "b", "?"]


def test_settings_refuse_what_cannot_launch():
    with pytest.raises(ValueError):
        LaunchSettings(train_cmd=())
    with pytest.raises(ValueError):
        LaunchSettings(train_cmd=("t",), launcher="torchrun")


def test_exit_code_of_a_signalled_child_is_the_shells():
    assert exit_code(-9) == 137 and exit_code(3) == 3 and exit_code(None) is None


@pytest.mark.parametrize("step_time, reads", [(None, 3), (0.1, 10)])
def test_the_heartbeats_are_read_every_two_steps_once_the_step_time_is_known(
        tmp_path, step_time, reads):
    monitor = FakeMonitor([])
    monitor.step_time = step_time
    polls = []
    orig = monitor.poll
    monitor.poll = lambda: polls.append(1) or orig()
    sup, *_ = make(tmp_path, launches=[[None] * 30 + [0]], monitor=monitor,
                   allocations=[["node1", "node2"]])
    now = [0.0]
    sup.clock = lambda: now[0]
    sup.sleep = lambda s: now.__setitem__(0, now[0] + s)     # 30 polls of 0.1 s: 3 s
    assert sup.run() == 0
    # 1 s apart (no step time yet), else 0.25 s apart: every third 0.1 s poll of the launcher
    assert len(polls) == reads
