"""CommandSlurmClient round trips against the stateful FakeSlurm (no process is started)."""

from __future__ import annotations

import pytest

from slurmft.core.errors import (
    ControllerUnreachableError,
    InvalidJobError,
    InvalidNodeError,
    JobNotPendingError,
    JobPendingError,
    NodeStateError,
    RequeueDisabledError,
    SlurmBusyError,
    UnsatisfiableRequestError,
    UsageError,
)
from slurmft.slurm.client import KILL_GRACE_S, KILL_ONE_BY_ONE, CommandSlurmClient
from slurmft.slurm.runner import SubprocessRunner
from tests.fakes.fake_slurm import FakeSlurm


@pytest.fixture
def fake() -> FakeSlurm:
    return FakeSlurm()


@pytest.fixture
def client(fake) -> CommandSlurmClient:
    return CommandSlurmClient(runner=fake, timeout=7)


def test_job_from_captured_squeue(client, fake):
    job = client.job(1)
    assert job.state == "RUNNING" and job.nodes == ("node1", "node2", "node3", "node4")
    assert client.node_names(1) == ["node1", "node2", "node3", "node4"]
    assert fake.calls == [("squeue", "--all", "--states=all", "--json")] * 2
    assert fake.timeouts == [7.0, 7.0]


def test_job_falls_back_to_scontrol(client, fake):
    fake.set_job_state(1, "NODE_FAIL", "NodeDown")
    fake.forget(1)
    job = client.job(1)
    assert job.state == "NODE_FAIL" and job.nodes == ("node1", "node2", "node3", "node4")
    assert fake.calls[-1] == ("scontrol", "show", "job", "-o", "1")


def test_unknown_job(client):
    with pytest.raises(InvalidJobError) as exc:
        client.job(99)
    assert "Invalid job id specified" in exc.value.slurm_message
    with pytest.raises(InvalidJobError):
        client.requeue(99)
    with pytest.raises(InvalidJobError):
        client.update_job(99, start_now=True)


def test_bad_job_id_runs_nothing(client, fake):
    with pytest.raises(UsageError):
        client.requeue_hold("1; reboot")
    assert fake.calls == []


def test_nodes_and_drain_resume(client, fake):
    assert [n.name for n in client.nodes()] == ["node1", "node2", "node3", "node4"]
    client.drain(["node3"], "probe: UNREACHABLE")
    n3 = client.node("node3")
    assert n3.is_drained and n3.reason == "probe: UNREACHABLE"
    assert fake.calls[-2] == ("scontrol", "update", "NodeName=node3", "State=DRAIN",
                              "Reason=probe: UNREACHABLE")
    client.resume(["node3"])
    assert not client.node("node3").is_drained
    with pytest.raises(NodeStateError) as exc:
        client.resume(["node3"])  # idle/mixed node, not drained
    assert "Invalid node state specified" in exc.value.slurm_message


def test_drain_needs_reason(client, fake):
    with pytest.raises(UsageError):
        client.drain(["node1"], "")
    assert fake.calls == []
    # Slurm itself refuses too, with its own words:
    res = fake.run(["scontrol", "update", "NodeName=node1", "State=DRAIN"], 5)
    assert res.returncode == 1 and "You must specify a reason" in res.stderr


def test_unknown_node(client):
    with pytest.raises(InvalidNodeError):
        client.down(["node9"], "x")
    with pytest.raises(InvalidNodeError):
        client.node("node9")


def test_running_job_update_refused(client):
    with pytest.raises(JobNotPendingError) as exc:
        client.update_job(1, exclude=["node3"], num_nodes=(3, 3))
    assert "no longer pending" in exc.value.slurm_message


def test_requeue_pending_job_refused(client, fake):
    client.requeue_hold(1)
    with pytest.raises(JobPendingError):
        client.requeue(1)


def test_fast_path_back_to_running(client, fake):
    """requeuehold, down, update ExcNodeList+NumNodes, release, StartTime=now."""
    client.requeue_hold(1)
    assert client.job(1).state == "PENDING" and client.job(1).reason == "JobHeldUser"
    client.down(["node3"], "slurmft: UNREACHABLE")
    client.drain(["node3"], "slurmft: UNREACHABLE")
    client.update_job(1, exclude=["node3"], num_nodes=(3, 3))
    client.release(1)
    client.update_job(1, start_now=True)
    job = client.job(1)
    assert job.excluded_nodes == ("node3",) and job.node_count == 3 and job.restart_count == 1
    fake.start_pending(1)
    job = client.job(1)
    assert job.state == "RUNNING" and job.nodes == ("node1", "node2", "node4")
    node3 = client.node("node3")
    assert node3.is_down and node3.is_drained


DB_INDEX_BUSY = ("slurm_update error: Job update not available right now, the DB index is being "
                 "set, try again in a bit for job 1")   # 22.05, an update right after a requeue


def test_an_update_slurm_asks_to_try_again_is_sent_again_after_a_short_pause(fake):
    slept = []
    client = CommandSlurmClient(runner=fake, timeout=7, sleep=slept.append)
    client.requeue_hold(1)
    fake.fail_next(DB_INDEX_BUSY)
    fake.fail_next(DB_INDEX_BUSY)
    client.update_job(1, exclude=["node3"], num_nodes=(3, 3))
    assert client.job(1).excluded_nodes == ("node3",) and client.job(1).node_count == 3
    updates = [c for c in fake.calls if c[:2] == ("scontrol", "update")]
    assert len(updates) == 3 and len(set(updates)) == 1      # the same request, three times
    assert slept == [0.25, 0.5]


def test_slurm_still_busy_after_the_busy_wait_raises_a_typed_error(fake):
    slept = []
    client = CommandSlurmClient(runner=fake, timeout=7, sleep=slept.append, busy_wait=3.0)
    for _ in range(10):
        fake.fail_next(DB_INDEX_BUSY)
    with pytest.raises(SlurmBusyError, match="try again shortly"):
        client.update_job(1, exclude=["node3"])
    assert slept == [0.25, 0.5, 1.0] and sum(slept) <= 3.0
    # other refusals are not sent again
    fake._scripted.clear()
    with pytest.raises(JobNotPendingError):
        client.update_job(1, exclude=["node3"])
    assert len(slept) == 3


def test_minnodes_is_rejected_by_fake_like_slurm(fake):
    res = fake.run(["scontrol", "update", "JobId=1", "ExcNodeList=node3", "MinNodes=3"], 5)
    assert res.returncode == 1 and "not supported" in res.stderr
    assert fake.job(1)["excluded_nodes"] == ""  # the whole request was dropped


def test_down_requeues_running_job_and_no_requeue_fails(client, fake):
    jid = fake.add_job("RUNNING", ["node2"], requeue=False)
    client.down(["node2"], "dead")
    assert client.job(jid).state == "NODE_FAIL"
    with pytest.raises(RequeueDisabledError):
        client.requeue(jid)
    assert client.job(1).state == "PENDING" and client.job(1).reason == "BeginTime"


def test_finished_job_update_refused(client, fake):
    fake.set_job_state(1, "COMPLETED")
    with pytest.raises(JobNotPendingError) as exc:
        client.update_job(1, exclude=["node1"])
    assert "already finished" in exc.value.slurm_message


def test_submit(client, fake):
    jid = client.submit("/srv/sft/jobs/job1.sh", ["-N3", "--exclude=node4"])
    assert jid == 2 and client.job(jid).state == "PENDING"
    assert client.job(jid).excluded_nodes == ("node4",)
    with pytest.raises(UnsatisfiableRequestError):
        client.submit("/srv/sft/jobs/job1.sh", ["-N4", "--exclude=node4"])


def test_controller_down(client, fake):
    fake.controller_up = False
    with pytest.raises(ControllerUnreachableError):
        client.jobs()


def test_prefix_and_bin_dir_reach_the_runner(fake):
    c = CommandSlurmClient(runner=fake, bin_dir="/usr/bin")
    c.nodes()
    assert fake.calls[-1] == ("/usr/bin/sinfo", "--json", "--Node")
    default = CommandSlurmClient(prefix=["nsenter", "--net=/run/netns/x"])
    assert isinstance(default.runner, SubprocessRunner)
    assert default.runner.prefix == ("nsenter", "--net=/run/netns/x")


def test_subprocess_runner_missing_binary_and_timeout():
    from slurmft.core.errors import SlurmCommandError

    r = SubprocessRunner()
    with pytest.raises(SlurmCommandError, match="not found"):
        r.run(["/nonexistent/squeue", "--json"], 2)
    with pytest.raises(ControllerUnreachableError):
        r.run(["sleep", "5"], 0.2)
    assert r.run(["true"], 2).returncode == 0
    with pytest.raises(TypeError):
        r.run("squeue --json", 2)  # type: ignore[arg-type]


def test_cancel(client, fake):
    client.cancel(1)
    assert client.job(1).state == "CANCELLED" and client.job(1).has_ended
    assert fake.calls[0] == ("scancel", "1")
    client.cancel(1)   # like 22.05: silent for finished and unknown jobs
    client.cancel(77)
    assert client.job(1).state == "CANCELLED"


BATCH_KILL = ("scancel", "--batch", "--full", "--signal=KILL", "1")


def test_kill_job_sigkills_the_steps_by_number_newest_first_then_the_batch_host(fake):
    # A running job killed whole gets SIGTERM and its SIGKILL only KillWait later (slurmd's
    # terminate request); mpirun waits on SIGTERM for a daemon on the cut-off node. The newest
    # step first, a grace apart: its srun may run in an older step. Then the batch script's
    # process group: an srun left alive cancels the requeued run's step 0.
    slept: list[float] = []
    client = CommandSlurmClient(runner=fake, timeout=7, sleep=slept.append)
    fake.start_step(1), fake.start_step(1)
    client.kill_job(1)
    scancels = [c for c in fake.calls if c[0] == "scancel"]
    assert scancels == [("scancel", "--ctld", "--signal=KILL", "1.1"),
                        ("scancel", "--ctld", "--signal=KILL", "1.0"), BATCH_KILL]
    assert fake.step_signals == [(1, 1, "KILL"), (1, 0, "KILL")]
    assert fake.signals == [(1, "KILL", True)]
    assert slept == [KILL_GRACE_S, KILL_GRACE_S]


def test_kill_job_signals_only_the_newest_steps_one_by_one(fake):
    slept: list[float] = []
    client = CommandSlurmClient(runner=fake, timeout=7, sleep=slept.append)
    for _ in range(KILL_ONE_BY_ONE + 2):
        fake.start_step(1)
    client.kill_job(1)
    scancels = [c[3:] for c in fake.calls if c[0] == "scancel"]
    newest = [(f"1.{s}",) for s in range(KILL_ONE_BY_ONE + 1, 1, -1)]
    assert scancels == [*newest, ("1.1", "1.0"), BATCH_KILL[3:]]
    assert len(slept) == KILL_ONE_BY_ONE + 1


def test_kill_job_without_steps_or_when_listing_them_fails_still_kills_the_batch_host(client,
                                                                                       fake):
    client.kill_job(1)                                   # no steps: the batch host only
    assert [c for c in fake.calls if c[0] == "scancel"] == [BATCH_KILL]
    fake.start_step(1)
    fake.fail_next("squeue: error: Unable to contact slurm controller (connect failure)")
    client.kill_job(1)                                   # the step listing failed
    assert fake.calls[-2][0] == "squeue" and fake.step_signals == []
    assert fake.calls[-1] == BATCH_KILL


def test_kill_job_of_a_job_that_ended_meanwhile_is_no_error(client, fake):
    # scancel says "Invalid job id specified" (exit 1) for a job that has ended; the steps'
    # SIGKILL can end it (its srun exits, then its script)
    fake.fail_next("scancel: error: Kill job error on job id 1: Invalid job id specified")
    client.kill_job(1, steps=[])
    assert fake.calls[-1] == BATCH_KILL and fake.signals == []
    fake.fail_next("scancel: error: Unable to contact slurm controller (connect failure)")
    with pytest.raises(ControllerUnreachableError):       # anything else is an error
        client.kill_job(1, steps=[])
