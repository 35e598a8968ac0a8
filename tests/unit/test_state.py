"""Retry records: keyed by job id + submit time, so a rebuilt cluster's job ids start fresh."""

from __future__ import annotations

import json
import os
import stat

import filelock
import pytest

from slurmft.core.config import RescheduleConfig
from slurmft.probe.records import Health, ProbeResult
from slurmft.recovery.rescheduler import Rescheduler
from slurmft.recovery.state import LOCK_MODE, Attempt, LockBusyError, RetryRecord, StateStore
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


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_lock_files_are_group_writable_whatever_the_umask(tmp_path, umask):
    """The epilog (SlurmUser) and the watcher (another user of the state dir's group) take
    the same per-job lock: the file one creates must open read-write for the other. filelock
    3.12 (the oldest setup.cfg allows) set 0644 on every lock file it created; newer ones
    leave it to the umask (0644 under the usual 022)."""
    store = StateStore(tmp_path / "state")
    old = os.umask(umask)
    try:
        with store.lock(7) as original:
            path = tmp_path / "state" / "jobs" / f"{original}.lock"
            assert stat.S_IMODE(path.stat().st_mode) == LOCK_MODE == 0o664
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o664


def test_a_lock_left_0644_by_an_older_release_is_made_group_writable_by_its_owner(tmp_path):
    jobs = tmp_path / "state" / "jobs"
    jobs.mkdir(parents=True)
    (jobs / "9.lock").touch(mode=0o644)
    os.chmod(jobs / "9.lock", 0o644)
    with StateStore(tmp_path / "state").lock(9):
        pass
    assert stat.S_IMODE((jobs / "9.lock").stat().st_mode) == 0o664


def test_the_lock_still_excludes_a_second_holder(tmp_path):
    store = StateStore(tmp_path / "state", lock_timeout=0.1)
    with store.lock(5):
        other = filelock.FileLock(str(tmp_path / "state" / "jobs" / "5.lock"))
        with pytest.raises(filelock.Timeout):
            other.acquire(timeout=0.05)
        with pytest.raises(LockBusyError, match="another reschedule of job 5"):
            with StateStore(tmp_path / "state", lock_timeout=0.05).lock(5):
                pass


def test_a_setgid_shared_state_dir_gets_group_writable_subfolders_whatever_the_umask(tmp_path):
    import os
    import stat

    from slurmft.recovery.state import StateStore

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o2775)
    old = os.umask(0o022)
    try:
        for root in (shared, tmp_path / "private"):
            with StateStore(str(root)).lock(5):
                pass
    finally:
        os.umask(old)
    for name in ("jobs", "alias"):
        assert stat.S_IMODE(os.stat(shared / name).st_mode) == 0o2775
        assert stat.S_IMODE(os.stat(tmp_path / "private" / name).st_mode) == 0o755
