"""Triggers: the epilog hook, the watcher, and the CLI's error mapping for reschedule."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
from click.testing import CliRunner

from slurmft.cli import cli
from slurmft.core.config import RescheduleConfig
from slurmft.probe.records import Health
from slurmft.recovery.epilog import reschedule_argv, run_epilog
from slurmft.recovery.policy import Outcome
from slurmft.recovery.rescheduler import Rescheduler
from slurmft.recovery.state import StateStore
from slurmft.recovery.watcher import Watcher
from slurmft.slurm.client import CommandSlurmClient
from tests.fakes.fake_slurm import FakeSlurm
from tests.unit.test_rescheduler import ScriptedProber


def one_job(tmp_path, prober, nodes=("node1", "node2", "node3", "node4"), **job):
    """A fake Slurm with one running job, plus the client, store and rescheduler a Watcher
    needs; ``job`` goes to ``FakeSlurm.add_job``."""
    fake = FakeSlurm()
    fake.jobs.clear()
    jid = fake.add_job("RUNNING", list(nodes), **job)
    client = CommandSlurmClient(runner=fake)
    store = StateStore(tmp_path)
    r = Rescheduler(client, prober, store, RescheduleConfig(state_dir=str(tmp_path)), uid=0)
    return fake, jid, client, store, r


class FakePopen:
    calls: list = []

    def __init__(self, argv, **kw):
        FakePopen.calls.append((argv, kw))
        self.pid = 4242


def test_epilog_spawns_a_detached_reschedule():
    FakePopen.calls = []
    env = {"SLURM_JOB_ID": "17", "SLURM_JOB_NODELIST": "node[1-4]", "SLURM_JOB_EXIT_CODE": "0"}
    res = run_epilog(env, slurmft_cmd=["slurmft"], spawn=FakePopen, settle=20)
    assert res.spawned and res.job_id == 17 and res.pid == 4242
    argv, kw = FakePopen.calls[0]
    assert argv == ["slurmft", "reschedule", "17", "--settle", "20", "--nodes", "node[1-4]"]
    assert kw["start_new_session"] is True
    assert kw["stdin"] == subprocess.DEVNULL


def test_epilog_ignores_bad_input_and_never_raises():
    assert reschedule_argv({"SLURM_JOB_ID": "17; reboot"}, ["x"]) is None
    assert not run_epilog({}, spawn=FakePopen).spawned
    # a bad nodelist is left out, not passed on
    _, argv = reschedule_argv({"SLURM_JOB_ID": "5", "SLURM_NODELIST": "a;b"}, ["x"])
    assert "--nodes" not in argv

    def boom(*a, **k):
        raise OSError("no such file")

    res = run_epilog({"SLURM_JOB_ID": "5"}, spawn=boom)
    assert not res.spawned and "no such file" in res.message


def test_epilog_cli_always_exits_zero(tmp_path):
    """The real command, with a job id but no Slurm: it returns 0 at once, no traceback."""
    env = {"SLURM_JOB_ID": "notanumber", "SLURMFT_RESCHEDULE_STATE_DIR": str(tmp_path)}
    res = CliRunner().invoke(cli, ["epilog"], env=env)
    assert res.exit_code == 0
    assert "Traceback" not in res.output


def test_watch_reschedules_only_failed_jobs(tmp_path):
    fake = FakeSlurm()
    fake.jobs.clear()
    a = fake.add_job("RUNNING", ["node1", "node2"])
    b = fake.add_job("RUNNING", ["node3", "node4"])
    fake.add_job("PENDING", ["node1"])
    prober = ScriptedProber({"node4": Health.UNREACHABLE})
    client = CommandSlurmClient(runner=fake)
    config = RescheduleConfig(state_dir=str(tmp_path))
    r = Rescheduler(client, prober, StateStore(tmp_path), config, uid=0)
    w = Watcher(client, prober, r, interval=0.01)
    res = w.cycle()
    assert sorted(res.jobs) == [a, b]
    assert res.failed == {b: ["node4"]}
    assert [rep.decision.outcome for rep in res.reports] == [Outcome.REQUEUE]
    # One fan-out, then an immediate re-probe of the suspect alone confirms it.
    assert prober.calls == [["node1", "node2", "node3", "node4"], ["node4"]]
    assert fake.job(b)["excluded_nodes"] == "node4"
    assert fake.job(a)["job_state"] == "RUNNING"


class FlakyProber(ScriptedProber):
    """Fails the scripted hosts only on the first call (a probe that timed out under load)."""

    def probe(self, hosts):
        res = super().probe(hosts)
        self.failed = {}
        return res


def test_watch_ignores_a_failure_that_clears_on_the_re_probe(tmp_path):
    prober = FlakyProber({"node4": Health.UNRESPONSIVE})
    fake, job, client, _store, r = one_job(tmp_path, prober)
    res = Watcher(client, prober, r, interval=0.01).cycle()
    assert res.jobs == [job] and res.failed == {} and res.reports == []
    assert prober.calls[-1] == ["node4"]
    assert not any(c[1:2] == ["requeuehold"] for c in fake.calls)


def test_watch_refuses_when_most_of_a_job_fails_at_once(tmp_path):
    """3 of 4 nodes 'failed' together: the prober's side is the likelier culprit."""
    prober = ScriptedProber({n: Health.UNRESPONSIVE for n in ("node2", "node3", "node4")})
    fake, job, client, _store, r = one_job(tmp_path, prober)
    res = Watcher(client, prober, r, interval=0.01).cycle()
    assert res.failed == {job: ["node2", "node3", "node4"]} and res.reports == []
    assert "not rescheduling" in res.errors[job]
    assert fake.job(job)["job_state"] == "RUNNING"


def test_watch_cools_down_after_refusal_and_stops(tmp_path):
    prober = ScriptedProber({"node1": Health.UNREACHABLE})
    _fake, jid, client, _store, r = one_job(tmp_path, prober, ["node1", "node2"])
    r.config = RescheduleConfig(state_dir=str(tmp_path), min_nodes=2)
    cycles = []
    stop = threading.Event()
    w = Watcher(client, prober, r, job_ids=[jid], interval=0.01, cooldown=3600, stop=stop,
                on_cycle=cycles.append)
    assert w.run(max_cycles=3) == 3
    assert "below the minimum" in cycles[0].errors[jid]
    assert cycles[1].jobs == [] and cycles[2].jobs == []       # left alone while cooling down
    stop.set()
    assert w.run() == 0


def test_reschedule_cli_bad_job_id_is_one_line():
    res = CliRunner().invoke(cli, ["reschedule", "12x"])
    assert res.exit_code == 2
    assert res.output.strip().startswith("slurmft: invalid job id")
    assert "Traceback" not in res.output


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "slurmft", "reschedule", "--help"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert "--dry-run" in out and "--no-drain" in out


def test_watch_keeps_nudging_a_requeued_job_held_back_for_begin_time(tmp_path):
    prober = ScriptedProber({"node3": Health.UNREACHABLE})
    fake, jid, client, _store, r = one_job(tmp_path, prober, ["node1", "node2", "node3"])
    w = Watcher(client, prober, r, interval=0.01)
    w.cycle()                                       # requeue; the job is pending now
    fake.job(jid)["state_reason"] = "BeginTime"     # Slurm applied its requeue delay
    before = sum(1 for c in fake.calls if c[-1] == "StartTime=now")
    w.cycle()
    assert sum(1 for c in fake.calls if c[-1] == "StartTime=now") == before + 1
    fake.start_pending(jid)
    w.cycle()                                       # RUNNING: no more nudges
    fake.job(jid).update(job_state="PENDING", state_reason="BeginTime")
    w.cycle()
    assert sum(1 for c in fake.calls if c[-1] == "StartTime=now") == before + 1


def test_watch_audits_the_confirmed_detection_before_acting(tmp_path):
    prober = ScriptedProber({"node3": Health.UNREACHABLE})
    _fake, job, client, store, r = one_job(tmp_path, prober)
    Watcher(client, prober, r, interval=0.01).cycle()
    events = [rec["event"] for rec in store.audit_lines() if rec.get("job_id") == job]
    assert events.index("detected") < events.index("decision")
    detected = next(rec for rec in store.audit_lines() if rec["event"] == "detected")
    assert detected["nodes"] == ["node3"]
    assert detected["health"]["node3"]["state"] == "UNREACHABLE"


def test_watch_records_detection_and_recovery_times_for_metrics(tmp_path):
    """The exporter's detection/recovery histograms read these audit fields."""
    prober = ScriptedProber()
    fake, job, client, store, r = one_job(tmp_path, prober)
    w = Watcher(client, prober, r, interval=0.01)
    w.cycle()                                   # all healthy: stamps last-healthy times
    prober.failed = {"node3": Health.UNREACHABLE}
    w.cycle()                                   # detect, confirm, requeue
    fake.start_pending(job)                     # Slurm starts it again on node[1,2,4]
    prober.failed = {}
    w.cycle()
    recs = {rec["event"]: rec for rec in store.audit_lines() if rec.get("job_id") == job}
    assert 0 <= recs["detected"]["detection_seconds"] < 60
    assert "node3" not in recs["recovered"]["nodes"]
    assert recs["recovered"]["recovery_seconds"] >= 0


def recovered(store, job):
    return [rec for rec in store.audit_lines()
            if rec.get("job_id") == job and rec["event"] == "recovered"]


def test_a_relaunch_is_recovered_when_the_new_training_step_starts_not_when_the_node_leaves(
        tmp_path):
    from slurmft.recovery.policy import RELAUNCH_MARK

    prober = ScriptedProber()
    fake, jid, client, store, r = one_job(tmp_path, prober, comment=RELAUNCH_MARK, no_kill=True)
    fake.start_step(jid)                            # mpirun on the peer, its daemons
    fake.start_step(jid)
    w = Watcher(client, prober, r, interval=0.01)
    prober.failed = {"node3": Health.UNREACHABLE}
    w.cycle()                                       # RELAUNCH: node3 leaves the running job
    assert fake.job(jid)["job_state"] == "RUNNING" and fake.job(jid)["nodes"] == "node[1-2,4]"
    prober.failed = {}
    w.cycle()
    assert recovered(store, jid) == []              # the old steps are no sign of training
    fake.end_steps(jid)
    fake.start_step(jid)                            # the wrapper relaunched mpirun: step 2
    w.cycle()
    [rec] = recovered(store, jid)
    assert rec["step"] == f"{jid}.2" and rec["recovery_seconds"] >= 0
    assert "node3" not in rec["nodes"]


def test_a_requeued_job_is_recovered_at_its_first_step_and_one_without_steps_at_running(
        tmp_path):
    prober = ScriptedProber()
    fake, jid, client, store, r = one_job(tmp_path, prober, ["node1", "node2"])
    stepless = fake.add_job("RUNNING", ["node3", "node4"])   # a batch script that runs no step
    fake.start_step(jid)
    w = Watcher(client, prober, r, interval=0.01)
    prober.failed = {"node2": Health.UNREACHABLE, "node4": Health.UNREACHABLE}
    w.cycle()                                       # both requeued
    fake.start_pending(jid)
    fake.start_pending(stepless)
    prober.failed = {}
    w.cycle()
    assert recovered(store, jid) == [] and len(recovered(store, stepless)) == 1
    fake.start_step(jid)                            # the requeued run's step 0
    w.cycle()
    [rec] = recovered(store, jid)
    assert rec["step"] == f"{jid}.0"


@pytest.mark.parametrize("reason", ["BadConstraints", "Resources"])
def test_watch_sends_the_shrink_again_when_slurm_undid_it(tmp_path, reason):
    """Seen on 22.05 when the batch host died: the requeue restored NumNodes=4 and the job sat
    PENDING with the dead node excluded: BadConstraints, or Resources when another node could
    make up the count but is busy (a CI run). The watcher shrinks it again."""
    prober = ScriptedProber({"node1": Health.UNREACHABLE})
    fake, jid, client, _store, r = one_job(tmp_path, prober)
    w = Watcher(client, prober, r, interval=0.01)
    w.cycle()                                               # requeue on node[2-4]
    fake.job(jid).update(node_count=4, state_reason=reason)  # Slurm undid NumNodes
    n_calls = len(fake.calls)
    w.cycle()
    sent = [c[2:] for c in fake.calls[n_calls:] if c[:2] == ("scontrol", "update")]
    assert sent == [(f"JobId={jid}", "ExcNodeList=node1", "NumNodes=3-3"),
                    (f"JobId={jid}", "StartTime=now")]
    assert fake.job(jid)["node_count"] == 3


@pytest.mark.parametrize("reason", ["JobHeldAdmin", "JobHeldUser", "job_requeued_in_held_state"])
def test_watch_leaves_a_held_job_with_more_nodes_alone(tmp_path, reason):
    """Held (by an admin, or by a regain in progress): not ours to shrink or start."""
    prober = ScriptedProber({"node1": Health.UNREACHABLE})
    fake, jid, client, _store, r = one_job(tmp_path, prober)
    w = Watcher(client, prober, r, interval=0.01)
    w.cycle()
    fake.job(jid).update(node_count=4, state_reason=reason)
    n_calls = len(fake.calls)
    w.cycle()
    assert [c for c in fake.calls[n_calls:] if c[:2] == ("scontrol", "update")] == []
    assert fake.job(jid)["node_count"] == 4


def test_watch_relaunches_in_place_and_leaves_a_degraded_node_alone_after_draining(tmp_path):
    from slurmft.recovery.policy import RELAUNCH_MARK

    prober = ScriptedProber({"node2": Health.DEGRADED})
    fake, jid, client, _store, r = one_job(tmp_path, prober, comment=RELAUNCH_MARK, no_kill=True)
    w = Watcher(client, prober, r, interval=0.01)
    first = w.cycle()
    assert [rep.decision.outcome for rep in first.reports] == [Outcome.DRAIN]
    assert "DRAIN" in fake.nodes["node2"]["state_flags"] and fake.signals == []
    again = w.cycle()                               # still degraded: nothing more to do
    assert again.reports == [] and again.failed == {}
    prober.failed["node2"] = Health.UNREACHABLE     # worse now: cut off -> relaunch without it
    third = w.cycle()
    assert [rep.decision.outcome for rep in third.reports] == [Outcome.RELAUNCH]
    assert fake.signals == [(jid, "USR2", True)]
    assert fake.job(jid)["job_state"] == "RUNNING"
    assert fake.job(jid)["nodes"] == "node[1,3-4]"


def test_each_job_moves_through_the_watchers_states(tmp_path):
    """JobWatch: WATCHED -> REQUEUED (acted, job pending) -> RECOVERING (running again,
    its first step not yet started) -> WATCHED (recovered); a refusal -> COOLING_DOWN, and
    back to WATCHED once the cool-down is over. Each cycle reports the phases (watch --json)."""
    from slurmft.recovery.watcher import JobPhase

    now = [1000.0]
    prober = ScriptedProber({"node3": Health.UNREACHABLE})
    fake, jid, client, store, r = one_job(tmp_path, prober)
    fake.start_step(jid)
    w = Watcher(client, prober, r, interval=0.01, cooldown=30, clock=lambda: now[0])
    assert w.cycle().phases == {jid: "requeued"}
    prober.failed = {}
    fake.start_pending(jid)
    assert w.cycle().phases == {jid: "recovering"}          # running, no new step yet
    assert recovered(store, jid) == []
    fake.start_step(jid)
    assert w.cycle().phases == {jid: "watched"}
    assert len(recovered(store, jid)) == 1

    prober.failed = {n: Health.UNRESPONSIVE for n in ("node1", "node2", "node4")}
    res = w.cycle()
    assert "not rescheduling" in res.errors[jid] and res.phases == {jid: "cooling-down"}
    assert w.watches[jid].phase is JobPhase.COOLING_DOWN
    assert w.cycle().jobs == []                              # left alone while cooling down
    now[0] += 31
    prober.failed = {}
    res = w.cycle()
    assert res.jobs == [jid] and res.phases == {jid: "watched"}
    fake.job(jid)["job_state"] = "COMPLETED"
    assert w.cycle().phases == {}                            # an ended job is forgotten


def test_the_watcher_finishes_a_regain_whose_caller_died_with_the_requeue(tmp_path):
    from slurmft.recovery.policy import RELAUNCH_MARK

    prober = ScriptedProber({})
    fake, jid, client, store, r = one_job(tmp_path, prober, nodes=("node1",),
                                          comment=RELAUNCH_MARK, no_kill=True)
    other = fake.add_job("RUNNING", ["node3"], comment=RELAUNCH_MARK)
    client.requeue_hold(other)                 # held for another reason: left alone
    # `reschedule --regain 2`, started by the job, saved its plan, requeue-held the job and
    # died with it
    record = store.load(jid)
    record.regain_nodes, record.regain_exclude = 2, ["node4"]
    store.save(record)
    client.requeue_hold(jid)
    w = Watcher(client, prober, r, interval=0.01)
    res = w.cycle()
    assert [(rep.decision.outcome, rep.decision.job_id) for rep in res.reports] == [
        (Outcome.REGAIN, jid)]
    job = fake.job(jid)
    assert job["node_count"] == 2 and job["excluded_nodes"] == "node4"
    assert job["state_reason"] != "JobHeldUser" and job["priority"] > 0
    assert store.load(jid).regain_nodes is None
    assert fake.job(other)["state_reason"] == "JobHeldUser"
    assert w.cycle().reports == []              # done: nothing more to do
