"""Typed audit events: written in the audit line format slurmft has always used, read back by
the one parser."""

from __future__ import annotations

import json

from slurmft.observe.events import (
    Acted,
    AuditFile,
    Decided,
    Detected,
    Injected,
    Recovered,
    parse_event,
)


def test_events_round_trip_through_the_audit_file(tmp_path):
    audit = AuditFile(tmp_path / "audit.jsonl")
    written = [
        Detected(job_id=7, nodes=("node3",), health={"node3": {"health": "UNREACHABLE"}},
                 detection_seconds=2.5),
        Decided(job_id=7, original_job_id=5, outcome="requeue", failed=("node3",),
                message="requeued", health={"node3": "UNREACHABLE"}),
        Acted(job_id=7, op="requeue_hold", argv=("scontrol", "requeuehold", "7"), result="ok"),
        Recovered(job_id=7, nodes=("node1", "node2"), step="7.0", recovery_seconds=41.0),
        Injected(time=12.5, job=7, node="node3", action="link-down", detail="x", pid=None),
    ]
    for event in written:
        audit.emit(event)
    read = audit.events()
    assert [type(e) for e in read] == [type(e) for e in written]
    assert all(e.time is not None for e in read)
    assert read[4].time == 12.5                          # the event's own time is kept
    assert [dataclass_fields(e) for e in read] == [dataclass_fields(e) for e in written]


def dataclass_fields(event):
    doc = event.to_record()
    doc.pop("time", None)
    return doc


def test_lines_keep_the_historical_format(tmp_path):
    audit = AuditFile(tmp_path / "audit.jsonl")
    audit.emit(Acted(job_id=3, op="drain", argv=("scontrol", "update"), result="ok"))
    line = json.loads((tmp_path / "audit.jsonl").read_text())
    assert {k: line[k] for k in ("event", "job_id", "op", "argv", "result")} == {
        "event": "action", "job_id": 3, "op": "drain", "argv": ["scontrol", "update"],
        "result": "ok"}
    assert isinstance(line["time"], float) and isinstance(line["uid"], int)


def test_old_and_odd_lines_parse_tolerantly():
    assert parse_event({"outcome": "refused"}) == Decided(outcome="refused")   # no kind: decision
    assert parse_event({"event": "someday"}) is None
    odd = parse_event({"event": "detected", "job_id": "x", "detection_seconds": True,
                       "health": "bad", "nodes": ["n1"]})
    assert odd == Detected(nodes=("n1",))
    assert parse_event({"event": "recovered", "recovery_seconds": -1}).recovery_seconds is None


def test_unreadable_lines_are_skipped(tmp_path):
    path = tmp_path / "audit.jsonl"
    path.write_text('{"event": "decision", "outcome": "requeue"}\nnot json\n[1]\n')
    assert AuditFile(path).events() == [Decided(outcome="requeue")]
    assert AuditFile(tmp_path / "missing.jsonl").records() == []
