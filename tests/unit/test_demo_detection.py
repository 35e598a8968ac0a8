"""The demo's 'failure detected' time: the first of the watcher's Detected and a restart
decision naming failed nodes (the in-job supervisor can reschedule before the watcher's
confirming probe), for this job, after the fault."""

from __future__ import annotations

from slurmft.observe.events import AuditFile, Decided, Detected, RunTransition
from slurmft.testbed.demo import _detection_time


def test_the_first_of_detected_and_a_decision_with_failed_nodes(tmp_path):
    audit = AuditFile(tmp_path / "audit.jsonl")
    audit.emit(Detected(job_id=7, nodes=("node4",), time=90.0))          # before the fault
    audit.emit(Decided(job_id=7, outcome="nothing", failed=(), time=101.0))   # no failed node
    audit.emit(Decided(job_id=8, outcome="relaunch", failed=("node2",), time=101.5))  # other job
    audit.emit(RunTransition(job_id=7, state="rescheduling", time=101.8))
    audit.emit(Decided(job_id=7, outcome="relaunch", failed=("node4",), time=102.0))
    audit.emit(Detected(job_id=7, nodes=("node4",), time=103.0))
    assert _detection_time(tmp_path / "audit.jsonl", 7, after=100.0) == 102.0
    assert _detection_time(tmp_path / "audit.jsonl", 7, after=102.5) == 103.0


def test_none_until_slurmft_knew(tmp_path):
    audit = AuditFile(tmp_path / "audit.jsonl")
    audit.emit(Decided(job_id=7, outcome="nothing", failed=(), time=101.0))
    assert _detection_time(tmp_path / "audit.jsonl", 7, after=100.0) is None
    assert _detection_time(tmp_path / "missing.jsonl", 7, after=100.0) is None
