"""The slurmft exporter: checkpoint manifests and rescheduler audit records as Prometheus metrics.

``ExporterCollector`` re-reads its sources each time the registry is collected (a scrape, or a
textfile write), so ``slurmft_checkpoint_age_seconds`` is current at every scrape:

* each checkpoint directory, through the checkpoint library: the checkpoint reported is the
  newest on the directory's lineage that VERIFIES (``Store.lineage`` and ``Store.verify``).
  Every scrape re-reads each manifest (its checksum) and the sizes of the files; the data
  checksums are re-read only for files whose size, mtime or inode changed since the last
  scrape (the Store's verification cache). Each checkpoint that fails counts once in
  ``slurmft_checkpoint_verification_failures_total``;
* the upload status a checkpoint manager writes into its local cache
  (``upload_status.json``): backlog, failed attempts, health;
* the rescheduler's audit log (``audit.jsonl`` in ``reschedule.state_dir``, written by
  ``slurmft.recovery.state.StateStore.audit``), read incrementally: each record counts once.

Audit record fields read here (others are ignored)::

    {"event": "decision",             # only decisions count as reschedules ("action" lines not)
     "outcome": "requeue",            # -> slurmft_reschedules_total{outcome}
     "health": {"node1": "HEALTHY", "node3": "UNREACHABLE"},   # -> slurmft_node_health{state}
     "detection_seconds": 3.2,        # any event: failure -> detected   (histogram)
     "recovery_seconds": 41.0}        # any event: detected -> training back (histogram)

A record without ``event`` counts as a decision when it has an ``outcome``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slurmft.core.errors import SlurmFTError
from slurmft.core.log import get_logger
from slurmft.observe import metrics as _m
from slurmft.observe.events import AUDIT_FILE, Decided, Detected, Recovered, parse_event

log = get_logger(__name__)

MAX_AUDIT_LINE = 1 << 20


@dataclass(frozen=True)
class CheckpointSummary:
    """What the exporter shows for one checkpoint directory."""

    count: int                       # checkpoints whose manifest reads back, less the corrupt
    last_step: int | None            # of the newest checkpoint that verifies
    last_time: float | None          # unix seconds it was written
    last_size: int | None            # bytes of its full state
    broken: tuple[str, ...] = ()     # checkpoints that failed verification (manifest or data)
    upload: Any = None               # the manager's UploadStatus, where it writes one here


def summarize_checkpoints(infos: Iterable[Any], latest_name: str | None = None
                          ) -> CheckpointSummary:
    """Summarize ``CheckpointInfo`` records as they are (no verification): the one
    ``latest_name`` names, else the readable one with the highest step."""
    infos = list(infos)
    valid = [i for i in infos if not i.error]
    broken = tuple(sorted(i.name for i in infos if i.error))
    if not valid:
        return CheckpointSummary(0, None, None, None, broken)
    named = [i for i in valid if i.name == latest_name]
    latest = named[0] if named else max(valid, key=lambda i: (i.step, i.time))
    return _summary(len(valid), latest, broken)


def _summary(count: int, info: Any, broken: Iterable[str], upload: Any = None
             ) -> CheckpointSummary:
    return CheckpointSummary(
        count=count,
        last_step=info.step if info else None,
        last_time=(info.time or None) if info else None,
        last_size=(info.bytes_total or info.bytes_written or None) if info else None,
        broken=tuple(sorted(broken)), upload=upload)


class CheckpointReader:
    """Reads checkpoint directories for the exporter; keeps one Store per directory across
    scrapes, so a checkpoint's data checksums are read again only when its files change."""

    def __init__(self) -> None:
        self._stores: dict[str, Any] = {}

    def __call__(self, directory: str) -> CheckpointSummary:
        # numpy + xxhash: only when asked
        from slurmft.checkpoint.store import Store
        from slurmft.checkpoint.upload import read_upload_status
        from slurmft.core.errors import CheckpointError

        if not Path(directory).is_dir():
            raise SlurmFTError(f"checkpoint directory {directory} does not exist")
        store = self._stores.get(directory)
        if store is None:
            store = self._stores[directory] = Store(directory)
        lineage = store.lineage()            # reads every manifest and checks its checksum
        broken = {i.name for i in lineage.unreadable}
        found = store.find_valid(lineage, failed=broken)   # the names that fail count too
        readable = len(lineage.branch) + len(lineage.abandoned)
        try:
            upload = read_upload_status(directory)
        except CheckpointError as exc:
            raise SlurmFTError(str(exc)) from None
        return _summary(readable - len(broken - {i.name for i in lineage.unreadable}),
                        found, broken, upload)


def read_checkpoints(directory: str) -> CheckpointSummary:
    """Read one checkpoint directory once (see ``CheckpointReader``)."""
    return CheckpointReader()(directory)


class AuditTail:
    """Reads complete new lines of a JSON-lines file since the last call (rotation-aware)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._offset = 0
        self._inode: int | None = None

    def read_new(self) -> tuple[list[dict], int, bool]:
        """(new records, bad lines, restarted) — ``restarted`` when the file was replaced."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return [], 0, False
        restarted = False
        if self._inode is not None and (st.st_ino != self._inode or st.st_size < self._offset):
            self._offset, restarted = 0, True
        self._inode = st.st_ino
        records, bad = [], 0
        with self.path.open("rb") as fh:
            fh.seek(self._offset)
            while True:
                line = fh.readline(MAX_AUDIT_LINE)
                if not line.endswith(b"\n"):
                    break  # a partial line: the writer has not finished it yet
                self._offset += len(line)
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                except ValueError:
                    bad += 1
                    continue
                if isinstance(doc, dict):
                    records.append(doc)
                else:
                    bad += 1
        return records, bad, restarted


class ExporterCollector:
    """A prometheus_client collector that refreshes slurmft metrics from disk when collected."""

    def __init__(self, checkpoint_dirs: Iterable[str | os.PathLike] = (),
                 state_dir: str | os.PathLike | None = None,
                 audit_file: str | os.PathLike | None = None,
                 read_dir: Callable[[str], CheckpointSummary] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.checkpoint_dirs = [str(d) for d in checkpoint_dirs]
        if audit_file is None and state_dir is not None:
            audit_file = Path(state_dir) / AUDIT_FILE
        self.audit = AuditTail(audit_file) if audit_file is not None else None
        self._read_dir = read_dir or CheckpointReader()
        self._broken_seen: set[tuple[str, str]] = set()
        self._upload_failures_seen: dict[str, int] = {}
        self._warned: set[str] = set()
        self._clock = clock
        self._lock = threading.Lock()
        self.metrics = _m.build_metrics()

    def refresh(self) -> None:
        """Re-read every source into the metrics."""
        with self._lock:
            for directory in self.checkpoint_dirs:
                self._refresh_checkpoints(directory)
            if self.audit is not None:
                self._refresh_audit()

    def _refresh_checkpoints(self, directory: str) -> None:
        m = self.metrics
        try:
            summary = self._read_dir(directory)
        except SlurmFTError as exc:
            m.exporter_errors.labels(source="checkpoint").inc()
            if directory not in self._warned:      # once per directory, not per scrape
                self._warned.add(directory)
                log.warning("exporter: %s", exc)
            return
        self._warned.discard(directory)
        m.checkpoint_count.labels(dir=directory).set(summary.count)
        failures = m.verification_failures.labels(dir=directory)
        for name in summary.broken:                 # each broken checkpoint counts once
            if (directory, name) not in self._broken_seen:
                self._broken_seen.add((directory, name))
                failures.inc()
        if summary.last_time is not None:
            m.checkpoint_timestamp.labels(dir=directory).set(summary.last_time)
            m.checkpoint_age.labels(dir=directory).set(max(0.0, self._clock() - summary.last_time))
        if summary.last_step is not None:
            m.checkpoint_step.labels(dir=directory).set(summary.last_step)
        if summary.last_size is not None:
            m.checkpoint_size.labels(dir=directory).set(summary.last_size)
        if summary.upload is not None:
            self._refresh_upload(directory, summary.upload)

    def _refresh_upload(self, directory: str, status: Any) -> None:
        m = self.metrics
        m.upload_backlog.labels(dir=directory).set(status.backlog)
        m.upload_backlog_bytes.labels(dir=directory).set(status.backlog_bytes)
        m.upload_failing.labels(dir=directory).set(1 if status.state == "failing" else 0)
        if status.last_success_time is not None:
            m.upload_last_success.labels(dir=directory).set(status.last_success_time)
        # The file holds a running total per manager: count what is new (a smaller total
        # is a new manager, whose failures are all new).
        seen = self._upload_failures_seen.get(directory, 0)
        total = int(status.failures_total)
        new = total - seen if total >= seen else total
        if new > 0:
            m.upload_failures.labels(dir=directory).inc(new)
        else:
            m.upload_failures.labels(dir=directory)
        self._upload_failures_seen[directory] = total

    def _refresh_audit(self) -> None:
        assert self.audit is not None
        try:
            records, bad, restarted = self.audit.read_new()
        except OSError as exc:
            self.metrics.exporter_errors.labels(source="audit").inc()
            log.warning("exporter: cannot read %s: %s", self.audit.path, exc.strerror)
            return
        if restarted:
            # The audit log was replaced: start the counters over (Prometheus handles resets).
            self.metrics = _m.build_metrics()
            self._broken_seen.clear()
            self._upload_failures_seen.clear()
            for directory in self.checkpoint_dirs:
                self._refresh_checkpoints(directory)
        if bad:
            self.metrics.exporter_errors.labels(source="audit").inc(bad)
        for rec in records:
            self.observe_record(rec)

    def observe_record(self, rec: Mapping[str, Any]) -> None:
        """Count one audit record (read with ``events.parse_event``, the one audit reader)."""
        m = self.metrics
        event = parse_event(rec)
        if isinstance(event, Decided) and event.outcome:
            m.reschedules.labels(outcome=str(event.outcome)[:64]).inc()
            if event.health:
                _m.set_node_health(m, (str(v) for v in event.health.values()))
        elif isinstance(event, Detected) and event.detection_seconds is not None:
            m.detection_seconds.observe(event.detection_seconds)
        elif isinstance(event, Recovered) and event.recovery_seconds is not None:
            m.recovery_seconds.observe(event.recovery_seconds)

    def collect(self) -> Iterator[Any]:
        self.refresh()
        yield from self.metrics.registry.collect()

    def describe(self) -> Iterator[Any]:
        yield from self.metrics.registry.collect()


def build_registry(collector: ExporterCollector):
    """A fresh CollectorRegistry serving ``collector``."""
    return _m.registry_with(collector)
