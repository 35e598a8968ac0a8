"""Retry records: keyed by job id + submit time, so a rebuilt cluster's job ids start fresh."""

from __future__ import annotations

import json

from slurmft.core.config import RescheduleConfig
from slurmft.probe.records import Health, ProbeResult
from slurmft.recovery.rescheduler import Rescheduler
from slurmft.recovery.state import Attempt, RetryRecord, StateStore
from slurmft.slurm.client import CommandSlurmClient
from tests.fakes.fake_slurm import FakeSlurm


def spent(store, job_id, submit_time, n=3):
    store.save(RetryRecord(original_job_id=job_id, job_ids=[job_id], submit_times=[submit_time],
                           attempts=[Attempt(time=1.0, job_id=job_id, outcome="requeue")] * n,
                           exhausted=True))


def test_a_job_that_reuses_an_id_after_a_rebuilt_cluster_starts_fresh(tmp_path):
    store = StateStore(tmp_path)
    spent(store, 7, submit_time=1000)
    rec = store.load(7, submit_time=5000, restart_count=0)
    assert rec.attempts == [] and not rec.exhausted and rec.submit_times == [5000]
    assert (tmp_path / "jobs" / "7@1000.json").exists()       # the old record is kept aside
    assert not (tmp_path / "jobs" / "7.json").exists()


def test_the_same_job_requeued_by_slurm_keeps_its_record(tmp_path):
    store = StateStore(tmp_path)
    spent(store, 7, submit_time=1000)
    assert len(store.load(7, submit_time=1000).attempts) == 3
    rec = store.load(7, submit_time=1500, restart_count=1)   # a requeue sets a new submit time
    assert len(rec.attempts) == 3 and rec.submit_times == [1000, 1500]


def test_read_only_load_sets_nothing_aside(tmp_path):
    store = StateStore(tmp_path)
    spent(store, 7, submit_time=1000)
    assert store.load(7, submit_time=5000, read_only=True).attempts == []
    assert (tmp_path / "jobs" / "7.json").exists()


def test_records_written_before_submit_times_are_still_read(tmp_path):
    (tmp_path / "jobs").mkdir()
    old = {"original_job_id": 7, "job_ids": [7], "excluded": ["node3"],
           "attempts": [{"time": 1.0, "job_id": 7, "outcome": "requeue", "failed": ["node3"]}]}
    (tmp_path / "jobs" / "7.json").write_text(json.dumps(old))
    rec = StateStore(tmp_path).load(7, submit_time=5000)
    assert rec.excluded == ["node3"] and len(rec.attempts) == 1 and rec.submit_times == [5000]


def test_rescheduler_does_not_hold_a_new_job_for_an_old_clusters_spent_budget(tmp_path):
    fake = FakeSlurm()
    jid = fake.add_job("RUNNING", ["node1", "node2", "node3", "node4"])
    fake.job(jid)["submit_time"] = 5000
    store = StateStore(tmp_path / "state", 1.0)
    spent(store, jid, submit_time=1000)

    class Prober:
        def probe(self, names):
            return {n: ProbeResult(n, Health.UNREACHABLE if n == "node4" else Health.HEALTHY)
                    for n in names}

    r = Rescheduler(CommandSlurmClient(runner=fake), Prober(), store,
                    RescheduleConfig(state_dir=str(tmp_path / "state"), lock_timeout=1.0),
                    sleep=lambda s: None)
    report = r.reschedule(jid)
    assert report.decision.outcome.value == "requeue"
    assert "retries used: 1/3" in report.text()


def test_a_job_that_ended_normally_leaves_no_audit_line(tmp_path):
    fake = FakeSlurm()
    jid = fake.add_job("COMPLETED", ["node1"])
    store = StateStore(tmp_path / "state", 1.0)

    class Prober:
        def probe(self, names):
            return {n: ProbeResult(n, Health.HEALTHY) for n in names}

    r = Rescheduler(CommandSlurmClient(runner=fake), Prober(), store,
                    RescheduleConfig(state_dir=str(tmp_path / "state")), sleep=lambda s: None)
    assert r.reschedule(jid).decision.outcome.value == "nothing"
    assert store.audit_lines() == []
    failed = fake.add_job("FAILED", ["node1"])        # an abnormal end is still audited
    r.reschedule(failed)
    assert [e["job_id"] for e in store.audit_lines()] == [failed]
