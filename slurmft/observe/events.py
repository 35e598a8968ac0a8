"""Typed recovery events and their sinks.

The watcher, the rescheduler and the fault injector say what happened as one of these records;
the audit file (``audit.jsonl``: one JSON object per line) stores them, the log shows them, and
``parse_event`` is the one reader (the exporter, the demo, the tests). The line format is the
one slurmft has always written: ``{"time", "uid", "event": <kind>, ...fields}``, so old audit
files still parse; fields a line lacks read as their defaults, and a line of an unknown kind
reads as ``None``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

#: The audit log's file name in ``reschedule.state_dir``.
AUDIT_FILE = "audit.jsonl"


@dataclass(frozen=True, kw_only=True)
class Event:
    """Base of every audit event. ``time``: unix seconds; the sink stamps it when unset."""

    kind: ClassVar[str] = ""
    time: float | None = None

    def to_record(self) -> dict[str, Any]:
        """The fields as an audit line holds them (unset optional fields left out)."""
        doc: dict[str, Any] = {"event": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                doc[f.name] = list(value) if isinstance(value, tuple) else value
        return doc

    def summary(self) -> str:
        fields = " ".join(f"{k}={v}" for k, v in self.to_record().items()
                          if k not in ("event", "time"))
        return f"{self.kind}: {fields}"


@dataclass(frozen=True, kw_only=True)
class Detected(Event):
    """The watcher confirmed failed nodes of a job, before any action."""

    kind: ClassVar[str] = "detected"
    job_id: int | None = None
    nodes: tuple[str, ...] = ()
    health: dict[str, Any] = field(default_factory=dict)   # node -> ProbeResult.to_dict()
    detection_seconds: float | None = None  # upper bound: since the nodes last probed healthy


@dataclass(frozen=True, kw_only=True)
class Decided(Event):
    """What the restart policy decided for a job (not written for a job that just ended)."""

    kind: ClassVar[str] = "decision"
    job_id: int | None = None
    original_job_id: int | None = None
    outcome: str = ""
    failed: tuple[str, ...] = ()
    message: str = ""
    health: dict[str, str] = field(default_factory=dict)   # node -> Health value


@dataclass(frozen=True, kw_only=True)
class Acted(Event):
    """One Slurm change the rescheduler made (or tried): its argv and how it went."""

    kind: ClassVar[str] = "action"
    job_id: int | None = None
    op: str = ""
    argv: tuple[str, ...] = ()
    result: str = ""


@dataclass(frozen=True, kw_only=True)
class Recovered(Event):
    """A job the watcher rescheduled trains again without its failed nodes."""

    kind: ClassVar[str] = "recovered"
    job_id: int | None = None
    nodes: tuple[str, ...] = ()
    step: str | None = None                  # the job step of the restarted training
    recovery_seconds: float | None = None    # detection -> training running again


@dataclass(frozen=True, kw_only=True)
class Injected(Event):
    """A fault the injector caused (``job``, not ``job_id``: the name it has always had)."""

    kind: ClassVar[str] = "inject"
    job: int | None = None
    node: str | None = None
    action: str = ""
    detail: str = ""
    pid: int | None = None
    cluster: str | None = None


@dataclass(frozen=True, kw_only=True)
class RunTransition(Event):
    """The in-job supervisor (``slurmft run``) changed state: launching, running, asking for
    an in-place reschedule, relaunching, handing off to a requeue, done."""

    kind: ClassVar[str] = "run"
    job_id: int | None = None
    state: str = ""
    previous: str = ""
    reason: str = ""
    nodes: tuple[str, ...] = ()
    launch: int | None = None               # 1 for the first launch, 2 after one relaunch...
    rc: int | None = None                   # the launcher's exit code, once it exited
    replica: int | None = None              # per-step mode: the replica group it is about


@dataclass(frozen=True, kw_only=True)
class Straggler(Event):
    """The in-job supervisor named a straggler: a rank whose own busy time per step stayed
    ``ratio`` x the median of its peers' for ``streak_steps`` steps. ``action``: report
    (named only), swap (its node left out, a spare in its place) or no-spare (swap asked,
    none free: named only). ``count``: stragglers named in this job's supervisor so far (a
    counter for metrics)."""

    kind: ClassVar[str] = "straggler"
    job_id: int | None = None
    node: str = ""
    rank: int | None = None
    pid: int | None = None
    busy_ms: float | None = None
    peers_ms: float | None = None
    ratio: float | None = None
    streak_steps: int | None = None
    at_step: int | None = None
    seconds: float | None = None            # since the streak began
    action: str = ""
    spare: str | None = None                # the node that takes its place (swap)
    count: int | None = None
    launch: int | None = None


EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls for cls in (Detected, Decided, Acted, Recovered, Injected, RunTransition,
                              Straggler)}
_DURATIONS = ("detection_seconds", "recovery_seconds")


def _duration(value: Any) -> float | None:
    """A duration read back: a number >= 0 (a bool or a negative one is not)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def parse_event(doc: Mapping[str, Any]) -> Event | None:
    """The event an audit line holds; ``None`` for an unknown kind. A line without
    ``event`` is a decision (the oldest audit files wrote no kind). Fields of the wrong type
    read as their defaults: an audit file is outside input."""
    cls = EVENT_TYPES.get(str(doc.get("event", Decided.kind)))
    if cls is None:
        return None
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in doc:
            continue
        value = doc[f.name]
        if f.name in _DURATIONS:
            value = _duration(value)
        elif f.name == "time":
            value = value if isinstance(value, (int, float)) and not isinstance(value, bool) \
                else None
        elif isinstance(value, list):
            value = tuple(value)
        elif f.name in ("job_id", "original_job_id", "job", "pid", "launch", "rc", "rank",
                        "streak_steps", "at_step", "count"):
            value = value if isinstance(value, int) and not isinstance(value, bool) else None
        elif f.name in ("busy_ms", "peers_ms", "ratio", "seconds"):
            value = _duration(value)
        elif f.name == "health" and not isinstance(value, Mapping):
            continue
        values[f.name] = value
    return cls(**values)


class AuditFile:
    """The audit log: one JSON line per event, appended with one ``O_APPEND`` write (lines
    of concurrent writers never interleave)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def emit(self, event: Event) -> None:
        doc = {"time": round(time.time(), 3) if event.time is None else event.time,
               "uid": os.getuid(), **event.to_record()}
        line = (json.dumps(doc, default=str) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def records(self) -> list[dict]:
        """Every line as written (unreadable lines skipped); [] without a file."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                out.append(doc)
        return out

    def events(self) -> list[Event]:
        """Every line of a known kind, as its event."""
        return [e for e in map(parse_event, self.records()) if e is not None]


class LogSink:
    """Events as log lines (debug level: the audit file is the record)."""

    def __init__(self, logger: logging.Logger, level: int = logging.DEBUG) -> None:
        self.logger = logger
        self.level = level

    def emit(self, event: Event) -> None:
        job = getattr(event, "job_id", None) or getattr(event, "job", None)
        self.logger.log(self.level, "audit %s", event.summary(),
                        extra={"job": str(job)} if job is not None else None)
