"""The rescheduler against the stateful fake Slurm and a scripted prober."""

from __future__ import annotations

import json
import threading

import pytest

from slurmft.core.config import RescheduleConfig
from slurmft.core.errors import InvalidJobError, PermissionDeniedError, PolicyError
from slurmft.core.nodeset import expand
from slurmft.probe.records import Health, ProbeResult
from slurmft.recovery.actions import UpdateJob
from slurmft.recovery.policy import Outcome
from slurmft.recovery.rescheduler import Rescheduler
from slurmft.recovery.state import Attempt, LockBusyError, RetryRecord, StateStore
from slurmft.slurm.client import CommandSlurmClient
from slurmft.slurm.runner import CommandResult
from tests.fakes.fake_slurm import FakeSlurm

NODES = ["node1", "node2", "node3", "node4"]


class ScriptedProber:
    """Health per host from a dict; every call is recorded."""

    def __init__(self, failed=None):
        self.failed = dict(failed or {})
        self.calls = []

    def probe(self, hosts):
        self.calls.append(list(hosts))
        return {h: ProbeResult(h, self.failed.get(h, Health.HEALTHY), reason="scripted")
                for h in hosts}


@pytest.fixture
def fake():
    f = FakeSlurm()
    f.jobs.clear()
    return f


class StoppedClock:
    """A wall clock that moves only when the code under test sleeps."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def wall(self) -> float:
        return self.now


def make(fake, tmp_path, failed=None, dry_run=False, uid=0, clock=None, **cfg):
    cfg.setdefault("state_dir", str(tmp_path / "state"))
    cfg.setdefault("lock_timeout", 1.0)
    config = RescheduleConfig(**cfg)
    prober = ScriptedProber(failed)
    store = StateStore(config.state_dir, config.lock_timeout)
    timing = {"sleep": clock.sleep, "wall": clock.wall} if clock else {"sleep": lambda s: None}
    r = Rescheduler(CommandSlurmClient(runner=fake), prober, store, config, uid=uid,
                    dry_run=dry_run, **timing)
    return r, prober, store


def scontrol_writes(fake):
    return [c for c in fake.calls if c[0] == "scontrol" and c[1] != "show"]


def test_running_job_with_a_dead_node_is_requeued_on_the_healthy_nodes(fake, tmp_path):
    jid = fake.add_job("RUNNING", NODES)
    r, prober, store = make(fake, tmp_path, {"node3": Health.UNREACHABLE})
    report = r.reschedule(jid)
    assert report.decision.outcome is Outcome.REQUEUE
    assert prober.calls == [NODES]
    assert [c[1:] for c in scontrol_writes(fake)] == [
        ("requeuehold", str(jid)),
        ("update", "NodeName=node3", "State=DOWN", f"Reason=slurmft: unreachable, excluded from job {jid}"),
        ("update", "NodeName=node3", "State=DRAIN", f"Reason=slurmft: unreachable, excluded from job {jid}"),
        ("update", f"JobId={jid}", "ExcNodeList=node3", "NumNodes=3-3"),
        ("release", str(jid)),
        ("update", f"JobId={jid}", "StartTime=now"),
    ]
    j = fake.job(jid)
    assert j["job_state"] == "PENDING" and j["excluded_nodes"] == "node3"
    assert j["node_count"] == 3 and j["restart_cnt"] == 1 and j["priority"] > 0
    assert fake.node("node3")["state"] == "down" and "DRAIN" in fake.node("node3")["state_flags"]
    fake.start_pending(jid)
    assert fake.job(jid)["nodes"] == "node[1-2,4]"
    # audit: a decision line and one line per action
    audit = store.audit_lines()
    assert audit[0]["event"] == "decision" and audit[0]["failed"] == ["node3"]
    assert [a["op"] for a in audit[1:]] == ["kill_job", "requeue_hold", "down", "drain",
                                            "update_job", "release", "update_job"]
    assert fake.signals == [(jid, "KILL", True)]      # scancel --batch --full --signal=KILL
    assert all(a["result"] == "ok" for a in audit[1:])
    rec = json.loads((tmp_path / "state" / "jobs" / f"{jid}.json").read_text())
    assert rec["excluded"] == ["node3"] and len(rec["attempts"]) == 1


def test_the_kill_s_commands_are_reported_apart_and_audited_on_one_line(fake, tmp_path):
    jid = fake.add_job("RUNNING", NODES)
    fake.start_step(jid)
    r, _, store = make(fake, tmp_path, {"node3": Health.UNREACHABLE})
    report = r.reschedule(jid)
    assert report.commands[:3] == [["scancel", "--ctld", "--signal=KILL", f"{jid}.0"],
                                   ["scancel", "--batch", "--full", "--signal=KILL", str(jid)],
                                   ["scontrol", "requeuehold", str(jid)]]
    kill = next(a for a in store.audit_lines() if a.get("op") == "kill_job")
    assert kill["argv"] == ["scancel", "--ctld", "--signal=KILL", f"{jid}.0", ";",
                            "scancel", "--batch", "--full", "--signal=KILL", str(jid)]


def test_a_job_pinned_with_w_is_requeued_on_its_pinned_nodes_left(fake, tmp_path):
    """sbatch -w node[1-3]: with node1 excluded but still required the job would pend for
    good (BadConstraints); the update drops it from the required nodes too."""
    jid = fake.add_job("RUNNING", NODES[:3], required=NODES[:3])
    r, _prober, _store = make(fake, tmp_path, {"node1": Health.UNREACHABLE})
    assert r.reschedule(jid).decision.outcome is Outcome.REQUEUE
    assert ("update", f"JobId={jid}", "ExcNodeList=node1", "ReqNodeList=node[2-3]",
            "NumNodes=2-2") in [c[1:] for c in scontrol_writes(fake)]
    fake.start_pending(jid)
    assert fake.job(jid)["job_state"] == "RUNNING" and fake.job(jid)["nodes"] == "node[2-3]"


def test_the_fake_keeps_a_pinned_job_pending_while_a_required_node_is_excluded(fake):
    """The behaviour the test above guards against (the integration test saw it on 22.05)."""
    jid = fake.add_job("PENDING", NODES[:2], required=NODES[:2])
    fake.job(jid)["excluded_nodes"] = "node1"
    fake.start_pending(jid)
    assert fake.job(jid)["job_state"] == "PENDING"
    assert fake.job(jid)["state_reason"] == "BadConstraints"


def test_nothing_failed_changes_nothing(fake, tmp_path):
    jid = fake.add_job("RUNNING", NODES)
    r, _, store = make(fake, tmp_path)
    report = r.reschedule(jid)
    assert report.decision.outcome is Outcome.NOTHING
    assert scontrol_writes(fake) == []
    assert report.commands == []
    assert not (tmp_path / "state" / "jobs" / f"{jid}.json").exists()


def test_dry_run_prints_exact_argv_and_changes_nothing(fake, tmp_path):
    jid = fake.add_job("RUNNING", NODES)
    r, _, _ = make(fake, tmp_path, {"node2": Health.UNRESPONSIVE}, dry_run=True)
    report = r.reschedule(jid)
    assert scontrol_writes(fake) == []
    assert fake.job(jid)["job_state"] == "RUNNING"
    assert not (tmp_path / "state").exists()
    assert report.commands[0] == ["scancel", "--batch", "--full", "--signal=KILL", str(jid)]
    assert report.commands[1] == ["scontrol", "requeuehold", str(jid)]
    assert report.commands[4] == ["scontrol", "update", f"JobId={jid}", "ExcNodeList=node2",
                                  "NumNodes=3-3"]
    assert fake.signals == []
    text = report.text()
    assert "would run:" in text
    assert text.startswith(f"dry run: would requeue job {jid} on 3 node(s) without node2")
    assert "requeued" not in text.splitlines()[0]
    assert "retries used: 0/3 (1/3 if carried out)" in text
    assert report.to_dict()["message"].startswith("would requeue")


def test_second_call_does_not_requeue_twice(fake, tmp_path):
    jid = fake.add_job("RUNNING", NODES)
    r, _, _ = make(fake, tmp_path, {"node3": Health.UNREACHABLE})
    r.reschedule(jid)
    before = len(scontrol_writes(fake))
    second = r.reschedule(jid)          # job now pending, excluded node3
    assert second.decision.outcome in (Outcome.NOTHING, Outcome.ALREADY_DONE)
    assert len(scontrol_writes(fake)) == before
    assert fake.job(jid)["restart_cnt"] == 1


def test_concurrent_calls_make_one_requeue(fake, tmp_path):
    jid = fake.add_job("RUNNING", NODES)
    lock = threading.Lock()

    class Serial:  # the fake is not thread-safe; Slurm serialises requests too
        def run(self, argv, timeout):
            with lock:
                return fake.run(argv, timeout)

    config = RescheduleConfig(state_dir=str(tmp_path / "s"), lock_timeout=10)
    reports, errors = [], []

    def go():
        r = Rescheduler(CommandSlurmClient(runner=Serial()),
                        ScriptedProber({"node3": Health.UNREACHABLE}),
                        StateStore(config.state_dir, config.lock_timeout), config, uid=0)
        try:
            reports.append(r.reschedule(jid).decision.outcome)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(o.value for o in reports) == sorted([Outcome.REQUEUE.value,
                                                       Outcome.NOTHING.value])
    assert sum(1 for c in fake.calls if c[1:2] == ("requeuehold",)) == 1


def test_lock_held_elsewhere_times_out_cleanly(fake, tmp_path):
    jid = fake.add_job("RUNNING", NODES)
    r, _, store = make(fake, tmp_path, {"node3": Health.UNREACHABLE}, lock_timeout=0.1)
    with store.lock(jid):
        with pytest.raises(LockBusyError, match="still running"):
            r.reschedule(jid)
    assert scontrol_writes(fake) == []


def budget_spent(fake, tmp_path):
    """A running job whose node1 is lost, its retry budget (2) spent already."""
    jid = fake.add_job("RUNNING", NODES)
    fake.job(jid)["restart_cnt"] = 2
    r, _, store = make(fake, tmp_path, {"node1": Health.UNREACHABLE}, max_retry=2)
    store.save(RetryRecord(original_job_id=jid, job_ids=[jid], attempts=[
        Attempt(time=1.0, job_id=jid, outcome="requeue") for _ in range(2)]))
    return jid, r, store


def test_budget_spent_holds_job_and_raises_policy_error(fake, tmp_path):
    jid, r, store = budget_spent(fake, tmp_path)
    with pytest.raises(PolicyError, match=r"retry budget spent \(2/2\)") as exc:
        r.reschedule(jid)
    assert exc.value.exit_code == 3
    j = fake.job(jid)
    assert j["job_state"] == "PENDING" and j["priority"] == 0
    assert "retry budget spent" in j["comment"]
    rec = store.load(jid)
    assert rec.exhausted and len(rec.attempts) == 2


def test_budget_spent_holds_the_job_even_when_slurm_refuses_the_comment(fake, tmp_path, caplog):
    # seen on the real cluster: "Unexpected message received" for a job still COMPLETING
    # after its requeue-hold; the hold and the nodes count, the comment is only words
    jid, r, store = budget_spent(fake, tmp_path)
    real_run = fake.run

    def run(argv, timeout):
        if any(a.startswith("Comment=") for a in argv):
            return real_run(["scontrol", "update", "JobId=999999", "Comment=x"], timeout)
        return real_run(argv, timeout)

    r.client.runner.run = run
    with pytest.raises(PolicyError, match=r"retry budget spent \(2/2\)"):
        r.reschedule(jid)
    j = fake.job(jid)
    assert j["job_state"] == "PENDING" and j["priority"] == 0      # held all the same
    assert "cannot set its comment" in caplog.text
    assert not UpdateJob(7, comment="x", start_now=True).only_comment


def test_a_refused_comment_is_set_again_once_the_job_settled(fake, tmp_path, caplog):
    jid, r, store = budget_spent(fake, tmp_path)
    real_run, refused = fake.run, []

    def run(argv, timeout):                 # refused once (the job still COMPLETING)
        if any(a.startswith("Comment=") for a in argv) and not refused:
            refused.append(argv)
            return real_run(["scontrol", "update", "JobId=999999", "Comment=x"], timeout)
        return real_run(argv, timeout)

    r.client.runner.run = run
    with pytest.raises(PolicyError, match=r"retry budget spent"):
        r.reschedule(jid)
    assert refused and "retry budget spent" in fake.job(jid)["comment"]
    assert "cannot set its comment" not in caplog.text
    assert UpdateJob(7, comment="x").only_comment


def test_an_update_refused_while_slurm_sets_the_db_index_is_sent_again_not_given_up(
        fake, tmp_path, caplog):
    # seen on 22.05: a dead slurmd on the batch host, our requeue-hold seconds after Slurm's
    # own requeue; the shrink was refused once, the job released unshrunk, the watcher's next
    # try came 30 s later
    jid = fake.add_job("RUNNING", NODES)
    r, _, _ = make(fake, tmp_path, {"node3": Health.UNREACHABLE})
    slept = []
    r.client.sleep = slept.append
    real_run = fake.run

    def run(argv, timeout):
        if any(a.startswith("ExcNodeList=") for a in argv) and not slept:
            return CommandResult(tuple(argv), 1, "", (
                "slurm_update error: Job update not available right now, the DB index is "
                "being set, try again in a bit for job 1\n"))
        return real_run(argv, timeout)

    r.client.runner.run = run
    report = r.reschedule(jid)
    assert report.decision.outcome is Outcome.REQUEUE and slept == [0.25]
    j = fake.job(jid)
    assert j["excluded_nodes"] == "node3" and j["node_count"] == 3
    assert "released again" not in caplog.text


def test_a_shrink_refused_while_the_held_job_completes_is_sent_again_once_it_settled(
        fake, tmp_path, caplog):
    # the goodput bench (22.05): slurmd killed on the batch host, requeue-hold ok, the shrink
    # refused with "Unexpected message received" while the job was COMPLETING; released
    # unshrunk, the job ended FAILED once slurmd was back
    jid = fake.add_job("RUNNING", NODES)
    r, _, _ = make(fake, tmp_path, {"node3": Health.DEGRADED})
    real_run, refused = fake.run, []

    def run(argv, timeout):
        if any(a.startswith("ExcNodeList=") for a in argv) and not refused:
            refused.append(fake.job(jid)["job_state"])
            fake.job(jid)["job_state"] = "COMPLETING"          # until the next read
            return CommandResult(tuple(argv), 1, "", "slurm_update error: Unexpected message "
                                 "received for job 1\n")
        if tuple(argv[:2]) == ("squeue", "--all") and fake.job(jid)["job_state"] == "COMPLETING":
            out = real_run(argv, timeout)
            fake.job(jid)["job_state"] = "PENDING"              # settled after this read
            return out
        return real_run(argv, timeout)

    r.client.runner.run = run
    report = r.reschedule(jid)
    assert report.decision.outcome is Outcome.REQUEUE and refused
    j = fake.job(jid)
    assert j["excluded_nodes"] == "node3" and j["node_count"] == 3
    assert "released again" not in caplog.text
    updates = [c for c in fake.calls if any(a.startswith("ExcNodeList=") for a in c)]
    assert len(updates) == 1          # the fake saw the second one; the first was refused


def test_retry_budget_across_requeues(fake, tmp_path):
    """The same kind of failure after every restart: 3 reschedules, then held."""
    jid = fake.add_job("RUNNING", NODES)
    outcomes = []
    for _ in range(4):
        bad = expand(fake.job(jid)["nodes"])[0]   # the first node of the current allocation
        r, _, _ = make(fake, tmp_path, {bad: Health.UNREACHABLE}, max_retry=3)
        try:
            outcomes.append(r.reschedule(jid).decision.outcome.value)
        except PolicyError:
            outcomes.append("held")
            break
        for n in fake.nodes.values():   # give the fake enough free nodes again
            n.update(state="idle", state_flags=[])
        fake.job(jid).update(excluded_nodes="", node_count=4)
        fake.start_pending(jid)
    assert outcomes == ["requeue", "requeue", "requeue", "held"]


def test_below_minimum_refuses(fake, tmp_path):
    jid = fake.add_job("RUNNING", NODES)
    r, _, _ = make(fake, tmp_path, {"node1": Health.UNREACHABLE, "node2": Health.UNREACHABLE})
    with pytest.raises(PolicyError, match="below the minimum of 3"):
        r.reschedule(jid, min_nodes=3)
    assert scontrol_writes(fake) == []


def test_pending_job_requeued_by_slurm_uses_node_hint(fake, tmp_path):
    jid = fake.add_job("PENDING", NODES, reason="BeginTime")
    fake.job(jid)["restart_cnt"] = 1
    r, _, store = make(fake, tmp_path, {"node4": Health.UNREACHABLE})
    report = r.reschedule(jid, nodes_hint=NODES)
    assert report.decision.outcome is Outcome.UPDATE_PENDING
    j = fake.job(jid)
    assert j["excluded_nodes"] == "node4" and j["node_count"] == 3
    assert j["state_reason"] == "None"
    # Slurm's own requeue uses no retry; our update uses one
    assert (report.decision.retries_used, report.decision.retries_after) == (0, 1)
    assert "retries used: 1/3" in report.text()
    assert len(store.load(jid).attempts) == 1


def test_ended_no_requeue_job_gets_a_restart_job(fake, tmp_path):
    jid = fake.add_job("NODE_FAIL", NODES, requeue=False)
    r, _, store = make(fake, tmp_path, {"node2": Health.UNREACHABLE},
                       train_cmd="python train.py --epochs 3",
                       checkpoint_dir="/shared/ckpt")
    report = r.reschedule(jid)
    assert report.decision.outcome is Outcome.RESUBMIT
    new = report.new_job_id
    assert new and fake.job(new)["excluded_nodes"] == "node2"
    assert fake.job(new)["node_count"] == 3
    script = (tmp_path / "state" / "scripts" / f"restart-{jid}-1.sh").read_text()
    assert "CHECKPOINT_PATH=/shared/ckpt" in script and "--resume always" in script and "#SBATCH --exclude=node2" in script
    # the resubmitted job shares the original's record and budget
    assert store.original_id(new) == jid
    assert store.load(new).job_ids == [jid, new]


def test_restart_without_train_command_is_refused(fake, tmp_path):
    jid = fake.add_job("FAILED", NODES, requeue=False)
    r, _, _ = make(fake, tmp_path, {"node2": Health.UNREACHABLE})
    with pytest.raises(PolicyError, match="no training command"):
        r.reschedule(jid)


def test_non_root_may_not_touch_others_jobs(fake, tmp_path):
    jid = fake.add_job("RUNNING", NODES)
    fake.job(jid).update(user_id=0, user_name="root")
    r, prober, _ = make(fake, tmp_path, {"node3": Health.UNREACHABLE}, uid=1234)
    with pytest.raises(PermissionDeniedError, match="belongs to root") as exc:
        r.reschedule(jid)
    assert exc.value.exit_code == 4
    assert prober.calls == [] and scontrol_writes(fake) == []


def test_owner_may_act_on_own_job(fake, tmp_path):
    jid = fake.add_job("RUNNING", NODES)
    fake.job(jid).update(user_id=1234, user_name="alice")
    r, _, _ = make(fake, tmp_path, {"node3": Health.UNREACHABLE}, uid=1234)
    assert r.reschedule(jid).decision.outcome is Outcome.REQUEUE


def test_an_operator_acts_on_others_jobs_and_slurm_decides(fake, tmp_path):
    jid = fake.add_job("RUNNING", NODES)
    fake.job(jid).update(user_id=0, user_name="root")
    r, _, _ = make(fake, tmp_path, {"node3": Health.UNREACHABLE}, uid=1234, operator=True)
    assert r.reschedule(jid).decision.outcome is Outcome.REQUEUE
    assert scontrol_writes(fake)                    # Slurm was asked (and allowed it here)


def test_an_operator_never_submits_a_restart_job_as_itself_for_someone_else(fake, tmp_path):
    jid = fake.add_job("NODE_FAIL", NODES, requeue=False)
    fake.job(jid).update(user_id=0, user_name="root")
    r, _, _ = make(fake, tmp_path, {"node2": Health.UNREACHABLE}, uid=1234, operator=True,
                   train_cmd="python train.py", checkpoint_dir="/shared/ckpt")
    with pytest.raises(PermissionDeniedError, match="sbatch submits as the caller"):
        r.reschedule(jid)
    assert not [c for c in fake.calls if c[0].endswith("sbatch")]


def test_unknown_job(fake, tmp_path):
    r, _, _ = make(fake, tmp_path)
    with pytest.raises(InvalidJobError):
        r.reschedule(999)


def test_slurm_down_node_counts_as_failed(fake, tmp_path):
    jid = fake.add_job("RUNNING", NODES)
    fake.node("node2").update(state="down")
    r, _, _ = make(fake, tmp_path)          # the prober says all healthy
    assert r.reschedule(jid).decision.failed == ("node2",)


def test_failed_step_releases_the_job_again(fake, tmp_path):
    jid = fake.add_job("RUNNING", NODES)
    r, _, store = make(fake, tmp_path, {"node3": Health.UNREACHABLE})
    real_run = fake.run

    def run(argv, timeout):   # fail the ExcNodeList update once
        if any(a.startswith("ExcNodeList") for a in argv):
            return real_run(["scontrol", "update", "JobId=999999", "ExcNodeList=node3"], timeout)
        return real_run(argv, timeout)

    r.client.runner.run = run
    with pytest.raises(InvalidJobError):
        r.reschedule(jid)
    assert fake.job(jid)["priority"] > 0         # not left held
    assert any(a.get("result", "").startswith("error") for a in store.audit_lines())


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_start_now_is_reissued_when_slurm_applies_the_requeue_delay(fake, tmp_path):
    """Real 22.05: a StartTime=now sent while the job is still completing can be lost and the
    job waits for BeginTime; the rescheduler says it again until the job runs."""
    jid = fake.add_job("RUNNING", NODES)
    clock, polls = Clock(), []

    def sleep(s):
        clock.now += s
        if fake.job(jid)["state_reason"] in ("JobHeldUser",):
            return                             # the credential gap before release
        polls.append(fake.job(jid)["state_reason"])
        if len(polls) == 1:                    # Slurm applied the requeue delay after all
            fake.job(jid)["state_reason"] = "BeginTime"
        elif fake.job(jid)["state_reason"] != "BeginTime":
            fake.start_pending(jid)

    config = RescheduleConfig(state_dir=str(tmp_path / "s"))
    r = Rescheduler(CommandSlurmClient(runner=fake), ScriptedProber({"node3": Health.UNREACHABLE}),
                    StateStore(config.state_dir), config, uid=0, sleep=sleep, clock=clock,
                    start_wait=10)
    report = r.reschedule(jid)
    assert report.state_after == "RUNNING" and report.running_after_s is not None
    starts = [c for c in fake.calls if c[-1] == "StartTime=now"]
    assert len(starts) == 2


def test_settle_sets_failed_nodes_down_for_a_completing_job(fake, tmp_path):
    jid = fake.add_job("COMPLETING", NODES)
    clock = Clock()

    def sleep(s):        # once node3 is DOWN, Slurm lets the job finish (FAILED, requeueable)
        clock.now += s
        if fake.node("node3")["state"] == "down" and fake.job(jid)["job_state"] == "COMPLETING":
            fake.set_job_state(jid, "FAILED", "NonZeroExitCode")

    config = RescheduleConfig(state_dir=str(tmp_path / "s"))
    r = Rescheduler(CommandSlurmClient(runner=fake), ScriptedProber({"node3": Health.UNREACHABLE}),
                    StateStore(config.state_dir), config, uid=0, sleep=sleep, clock=clock)
    report = r.reschedule(jid, settle=30)
    writes = [c[1:4] for c in scontrol_writes(fake)]
    assert writes[0] == ("update", "NodeName=node3", "State=DOWN")      # the settle step
    assert writes[1] == ("requeuehold", str(jid))
    assert report.decision.outcome is Outcome.REQUEUE
    assert fake.job(jid)["excluded_nodes"] == "node3"


def test_release_waits_until_the_requeue_second_is_over(fake, tmp_path):
    """slurmd rejects a credential from the same second as the revocation: release later."""
    jid = fake.add_job("RUNNING", NODES)
    clock = StoppedClock(1000.7)
    r, _, _ = make(fake, tmp_path, {"node3": Health.UNREACHABLE}, clock=clock)
    r.reschedule(jid)
    assert clock.slept == [pytest.approx(0.35)]       # 1000.7 -> 1001.05


def test_restart_in_place_also_waits_out_the_requeue_second(fake, tmp_path):
    """Seen on the real cluster: a FAILED job requeued and started within one second failed
    again at once (NonZeroExitCode). The plain requeue gets the same credential gap."""
    jid = fake.add_job("FAILED", NODES)
    clock = StoppedClock(2000.2)
    r, _, _ = make(fake, tmp_path, clock=clock)
    report = r.reschedule(jid, restart_failed=True)
    assert report.decision.outcome is Outcome.REQUEUE
    assert [c[1] for c in scontrol_writes(fake)] == ["requeue", "update"]
    assert clock.slept == [pytest.approx(0.85)]       # 2000.2 -> 2001.05


# ---- relaunch in the allocation (--no-kill jobs of slurmft's wrapper) -------------------------

def test_relaunchable_job_loses_the_node_and_keeps_running(fake, tmp_path):
    from slurmft.recovery.policy import RELAUNCH_MARK

    jid = fake.add_job("RUNNING", NODES, comment=RELAUNCH_MARK, no_kill=True)
    r, _, store = make(fake, tmp_path, {"node3": Health.UNREACHABLE})
    report = r.reschedule(jid)
    assert report.decision.outcome is Outcome.RELAUNCH
    j = fake.job(jid)
    assert j["job_state"] == "RUNNING" and expand(j["nodes"]) == ["node1", "node2", "node4"]
    assert fake.signals == [(jid, "USR2", True)]
    assert "DRAIN" in fake.nodes["node3"]["state_flags"]
    assert not [c for c in fake.calls if c[:2] in (("scontrol", "requeuehold"),
                                                   ("scontrol", "requeue"))]
    record = store.load(jid)
    assert len(record.attempts) == 1 and record.excluded == ["node3"]
    assert record.last_nodes == ["node1", "node2", "node4"]


def test_in_place_call_from_the_wrapper_sends_no_signal(fake, tmp_path):
    from slurmft.recovery.policy import RELAUNCH_MARK

    jid = fake.add_job("RUNNING", NODES, comment=RELAUNCH_MARK, no_kill=True)
    r, _, _ = make(fake, tmp_path, {"node2": Health.UNRESPONSIVE})
    report = r.reschedule(jid, in_place=True)
    assert report.decision.outcome is Outcome.RELAUNCH
    assert expand(fake.job(jid)["nodes"]) == ["node1", "node3", "node4"]
    assert fake.signals == []


def test_degraded_node_of_a_relaunchable_job_is_only_drained(fake, tmp_path):
    from slurmft.recovery.policy import RELAUNCH_MARK

    jid = fake.add_job("RUNNING", NODES, comment=RELAUNCH_MARK, no_kill=True)
    r, _, store = make(fake, tmp_path, {"node4": Health.DEGRADED})
    assert r.reschedule(jid).decision.outcome is Outcome.DRAIN
    assert expand(fake.job(jid)["nodes"]) == NODES and fake.signals == []
    assert "DRAIN" in fake.nodes["node4"]["state_flags"]
    assert store.load(jid).attempts == [] and store.load(jid).excluded == ["node4"]
    assert r.reschedule(jid).decision.outcome is Outcome.ALREADY_DONE


def test_relaunch_dry_run_lists_the_signal(fake, tmp_path):
    from slurmft.recovery.policy import RELAUNCH_MARK

    jid = fake.add_job("RUNNING", NODES, comment=RELAUNCH_MARK, no_kill=True)
    r, _, _ = make(fake, tmp_path, {"node3": Health.UNREACHABLE}, dry_run=True)
    report = r.reschedule(jid)
    assert report.commands[-1] == ["scancel", "--batch", "--signal=USR2", str(jid)]
    assert fake.signals == [] and expand(fake.job(jid)["nodes"]) == NODES


def test_a_second_loss_requeue_takes_the_first_lost_node_back_once_it_is_idle(fake, tmp_path):
    """Seen in the lost-batch-host benchmark: the job lost node1, then (node1 repaired and
    resumed by then) node2, and was requeued on the 3 nodes it had left, node1 still
    excluded: it trained shrunk to the end. Now the second requeue takes node1 back, probing
    only it beside what the first probe knew."""
    jid = fake.add_job("RUNNING", NODES)
    r, prober, store = make(fake, tmp_path, {"node1": Health.UNREACHABLE})
    assert r.reschedule(jid).decision.num_nodes == 3
    fake.start_pending(jid)
    assert fake.job(jid)["nodes"] == "node[2-4]"
    fake.node("node1").update(state="idle", state_flags=[])      # repaired, resumed by the admin
    r, prober, store = make(fake, tmp_path, {"node2": Health.UNREACHABLE})
    report = r.reschedule(jid)
    d = report.decision
    assert d.outcome is Outcome.REQUEUE and d.num_nodes == 3 and d.exclude == ("node2",)
    assert prober.calls == [["node2", "node3", "node4"], ["node1"]]
    assert ("update", f"JobId={jid}", "ExcNodeList=node2", "NumNodes=3-3") in [
        c[1:] for c in scontrol_writes(fake)]
    fake.start_pending(jid)
    assert fake.job(jid)["nodes"] == "node[1,3-4]"
    rec = json.loads((tmp_path / "state" / "jobs" / f"{jid}.json").read_text())
    assert rec["full_nodes"] == 4 and rec["excluded"] == ["node2"]


def test_a_requeue_leaves_the_lost_node_out_while_slurm_keeps_it_drained(fake, tmp_path):
    jid = fake.add_job("RUNNING", NODES)
    r, _, _ = make(fake, tmp_path, {"node1": Health.UNREACHABLE})
    r.reschedule(jid)
    fake.start_pending(jid)
    r, prober, _ = make(fake, tmp_path, {"node2": Health.UNREACHABLE})
    d = r.reschedule(jid).decision        # node1 still drained: not idle, not probed
    assert d.num_nodes == 2 and d.exclude == ("node1", "node2")
    assert prober.calls == [["node2", "node3", "node4"]]
