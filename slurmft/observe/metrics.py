"""slurmft's Prometheus metrics: the ONLY prometheus_client import.

Every metric lives in a ``CollectorRegistry`` that the caller passes in (never the process-wide
default registry), so a training rank, the exporter and the tests each hold their own.

``build_metrics(registry)`` defines all metrics; ``exported_names(registry)`` lists the sample
names a scrape can show (for checking dashboards). ``TrainingMetrics`` is the recorder a
checkpoint manager calls through ``on_event(name, data)``; it writes the node_exporter
textfile only on checkpoint events, never per step.

Metrics (label ``dir``: the checkpoint directory)::

    slurmft_checkpoint_last_timestamp_seconds{dir}   unix time the latest checkpoint was written
    slurmft_checkpoint_last_step{dir}                training step of the latest checkpoint
    slurmft_checkpoint_age_seconds{dir}              now - last timestamp, at scrape time
    slurmft_checkpoint_last_duration_seconds{dir}    how long the latest save took
    slurmft_checkpoint_last_size_bytes{dir}          bytes of the latest checkpoint
    slurmft_checkpoint_count{dir}                    checkpoints kept in the directory
    slurmft_checkpoint_verification_failures_total{dir}
    slurmft_checkpoint_upload_backlog{dir}           checkpoints saved locally, not yet uploaded
    slurmft_checkpoint_upload_backlog_bytes{dir}     their bytes
    slurmft_checkpoint_upload_failures_total{dir}    failed upload attempts (each is retried)
    slurmft_checkpoint_upload_failing{dir}           1 while uploads fail (0 once they work again)
    slurmft_checkpoint_last_upload_timestamp_seconds{dir}  unix time of the last upload that arrived
    slurmft_reschedules_total{outcome}               rescheduler runs by outcome
    slurmft_node_health{state}                       nodes per health state (latest probe)
    slurmft_detection_seconds                        failure -> detected (histogram)
    slurmft_recovery_seconds                         detected -> training running again: a new job
                                                     step of the relaunched or requeued run
                                                     (histogram)
    slurmft_exporter_errors_total{source}            unreadable manifests / audit lines

No ``*_created`` series by default (they double the series of every counter and histogram and
no dashboard or alert uses them): set SLURMFT_METRICS_CREATED=1, or pass ``created=True`` to
``build_metrics``, to have them back. prometheus_client decides this process-wide at scrape
time, so every registry built here follows the latest call.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    enable_created_metrics,
)
from prometheus_client import exposition as _exposition

from slurmft.core.atomic import atomic_write
from slurmft.core.errors import SlurmFTError
from slurmft.core.log import get_logger

log = get_logger(__name__)

PREFIX = "slurmft"
# Detection is seconds (probes) to minutes (SlurmdTimeout); recovery adds queueing and restart.
DETECTION_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
RECOVERY_BUCKETS = (5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
HEALTH_STATES = ("healthy", "unreachable", "unresponsive", "degraded")
#: Set to 1/true/yes/on to export the ``*_created`` series of counters and histograms.
CREATED_ENV = "SLURMFT_METRICS_CREATED"
_TRUE = ("1", "true", "yes", "on")


def created_series_wanted(env: Mapping[str, str] | None = None) -> bool:
    """Whether ``*_created`` series were asked for (SLURMFT_METRICS_CREATED); off by default."""
    env = os.environ if env is None else env
    return env.get(CREATED_ENV, "").strip().lower() in _TRUE


def apply_created_setting(created: bool | None = None) -> bool:
    """Turn prometheus_client's ``*_created`` series on or off (``None``: from the
    environment); returns the setting applied. The switch is prometheus_client's own and
    process-wide, read at every scrape."""
    wanted = created_series_wanted() if created is None else bool(created)
    (enable_created_metrics if wanted else disable_created_metrics)()
    return wanted


@dataclass
class Metrics:
    """All slurmft metrics, registered in ``registry``."""

    registry: CollectorRegistry
    checkpoint_timestamp: Gauge
    checkpoint_step: Gauge
    checkpoint_age: Gauge
    checkpoint_duration: Gauge
    checkpoint_size: Gauge
    checkpoint_count: Gauge
    verification_failures: Counter
    upload_backlog: Gauge
    upload_backlog_bytes: Gauge
    upload_failures: Counter
    upload_failing: Gauge
    upload_last_success: Gauge
    reschedules: Counter
    node_health: Gauge
    detection_seconds: Histogram
    recovery_seconds: Histogram
    exporter_errors: Counter


def build_metrics(registry: CollectorRegistry | None = None, *,
                  created: bool | None = None) -> Metrics:
    """Define every slurmft metric in ``registry`` (a fresh one if None). ``created``: export
    ``*_created`` series (default: only when SLURMFT_METRICS_CREATED asks for them)."""
    apply_created_setting(created)
    reg = CollectorRegistry(auto_describe=True) if registry is None else registry
    d = ("dir",)
    return Metrics(
        registry=reg,
        checkpoint_timestamp=Gauge(
            f"{PREFIX}_checkpoint_last_timestamp_seconds",
            "Unix time the latest verified checkpoint was written.", d, registry=reg),
        checkpoint_step=Gauge(
            f"{PREFIX}_checkpoint_last_step", "Training step of the latest checkpoint.",
            d, registry=reg),
        checkpoint_age=Gauge(
            f"{PREFIX}_checkpoint_age_seconds",
            "Seconds since the latest checkpoint was written (at scrape or write time).",
            d, registry=reg),
        checkpoint_duration=Gauge(
            f"{PREFIX}_checkpoint_last_duration_seconds", "How long the latest save took.",
            d, registry=reg),
        checkpoint_size=Gauge(
            f"{PREFIX}_checkpoint_last_size_bytes", "Size of the latest checkpoint in bytes.",
            d, registry=reg),
        checkpoint_count=Gauge(
            f"{PREFIX}_checkpoint_count", "Checkpoints kept in the directory.", d, registry=reg),
        verification_failures=Counter(
            f"{PREFIX}_checkpoint_verification_failures",
            "Checkpoints that failed checksum verification.", d, registry=reg),
        upload_backlog=Gauge(
            f"{PREFIX}_checkpoint_upload_backlog",
            "Checkpoints saved locally and not yet uploaded to shared storage.", d, registry=reg),
        upload_backlog_bytes=Gauge(
            f"{PREFIX}_checkpoint_upload_backlog_bytes",
            "Bytes of the checkpoints not yet uploaded to shared storage.", d, registry=reg),
        upload_failures=Counter(
            f"{PREFIX}_checkpoint_upload_failures",
            "Failed checkpoint upload attempts (each is retried; see upload_failing).",
            d, registry=reg),
        upload_failing=Gauge(
            f"{PREFIX}_checkpoint_upload_failing",
            "1 while checkpoint uploads fail, 0 once they work again.", d, registry=reg),
        upload_last_success=Gauge(
            f"{PREFIX}_checkpoint_last_upload_timestamp_seconds",
            "Unix time the last checkpoint upload arrived at shared storage.", d, registry=reg),
        reschedules=Counter(
            f"{PREFIX}_reschedules", "Rescheduler runs by outcome.", ("outcome",), registry=reg),
        node_health=Gauge(
            f"{PREFIX}_node_health", "Nodes per health state in the latest probe.",
            ("state",), registry=reg),
        detection_seconds=Histogram(
            f"{PREFIX}_detection_seconds", "Seconds from a node failure to its detection.",
            buckets=DETECTION_BUCKETS, registry=reg),
        recovery_seconds=Histogram(
            f"{PREFIX}_recovery_seconds",
            "Seconds from detection until the training runs again (relaunched or requeued).",
            buckets=RECOVERY_BUCKETS, registry=reg),
        exporter_errors=Counter(
            f"{PREFIX}_exporter_errors", "Unreadable sources seen by the exporter.",
            ("source",), registry=reg),
    )


_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
    "summary": ("", "_sum", "_count", "_created"),
}


def exported_names(registry: CollectorRegistry, *, created: bool | None = None) -> set[str]:
    """Every sample name a scrape of ``registry`` can contain (``x_total``, ``x_bucket``...);
    ``*_created`` only with ``created`` (default: as SLURMFT_METRICS_CREATED says)."""
    names: set[str] = set()
    for family in registry.collect():
        for suffix in _SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
    if not (created_series_wanted() if created is None else created):
        names = {n for n in names if not n.endswith("_created")}
    return names


def registry_with(*collectors: Any, created: bool | None = None) -> CollectorRegistry:
    """A fresh registry serving ``collectors`` (objects with ``collect()`` and ``describe()``);
    ``created`` as for ``build_metrics``."""
    apply_created_setting(created)
    reg = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        reg.register(collector)
    return reg


def render_text(registry: CollectorRegistry) -> str:
    """The Prometheus text exposition of ``registry``."""
    return _exposition.generate_latest(registry).decode()


def write_textfile(registry: CollectorRegistry, path: str | os.PathLike) -> None:
    """Write ``registry`` for node_exporter's textfile collector.

    Through ``atomic_write`` (temp file + rename), not prometheus_client's
    ``write_to_textfile``: that one renames over any target, so ``--textfile /dev/null`` run
    as root would replace the device node with a regular file."""
    target = Path(path)
    if not target.parent.is_dir():
        raise SlurmFTError(f"textfile directory {target.parent} does not exist")
    try:
        atomic_write(target, _exposition.generate_latest(registry), fsync=False)
    except OSError as exc:
        raise SlurmFTError(f"cannot write metrics textfile {target}: {exc.strerror}") from None


def start_http_server(registry: CollectorRegistry, port: int, bind: str = "127.0.0.1"):
    """Serve ``registry`` on http://bind:port/metrics in a daemon thread; returns the server."""
    try:
        server, _thread = _exposition.start_http_server(port, addr=bind, registry=registry)
    except OSError as exc:
        raise SlurmFTError(f"cannot serve metrics on {bind}:{port}: {exc.strerror}") from None
    return server


def _num(data: Mapping[str, Any], *keys: str) -> float | None:
    for key in keys:
        value = data.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


class TrainingMetrics:
    """Records checkpoint events of one training process; cheap enough for any thread.

    Pass ``recorder.on_event`` as ``CheckpointManager(..., on_event=...)``. Events (as the
    manager emits them; unknown ones are ignored)::

        save           {step, bytes_total, bytes_written, write_s, verify_s, time?}
        verify_failed  {name, error}
        backlog        {count, bytes}        checkpoints not yet durable at the destination
        upload         {name, step, ...}     an upload arrived (its time)
        upload_failed  {name, error, failures_total}   an upload cycle failed (it is retried);
                                             failures_total: failed attempts so far
        load / fallback                      (no metric of their own)

    With ``textfile`` set, the registry is written for node_exporter after each of these
    events (never per step), by a background thread so the caller never waits on the disk.
    Recording never raises: a metrics problem must not stop training.
    """

    WRITE_EVENTS = ("save", "verify_failed", "backlog", "upload", "upload_failed")

    def __init__(self, checkpoint_dir: str | os.PathLike, registry: CollectorRegistry | None = None,
                 textfile: str | os.PathLike | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.metrics = build_metrics(registry)
        self.registry = self.metrics.registry
        self.dir = str(checkpoint_dir)
        self.textfile = str(textfile) if textfile else None
        self._clock = clock
        self._last_ts: float | None = None
        self._upload_failures = 0.0           # failed upload attempts counted so far
        self._lock = threading.Lock()
        m = self.metrics
        # Age is computed when the registry is read, so a scrape or a textfile write is current.
        m.checkpoint_age.labels(dir=self.dir).set_function(self._age)
        m.verification_failures.labels(dir=self.dir)
        m.upload_backlog.labels(dir=self.dir).set(0)
        m.upload_failures.labels(dir=self.dir)
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        if self.textfile:
            self._writer = threading.Thread(target=self._write_loop, name="slurmft-metrics",
                                            daemon=True)
            self._writer.start()

    def _age(self) -> float:
        return float("nan") if self._last_ts is None else max(0.0, self._clock() - self._last_ts)

    def on_event(self, name: str, data: Mapping[str, Any] | None = None) -> None:
        """Checkpoint-manager callback; see the class docstring for the events."""
        try:
            self._record(name, data or {})
        except Exception as exc:  # noqa: BLE001 - metrics must never break training
            log.warning("metrics: ignoring event %s: %s", name, exc)

    def _record(self, name: str, data: Mapping[str, Any]) -> None:
        m, d = self.metrics, self.dir
        with self._lock:
            if name == "save":
                ts = _num(data, "time", "timestamp")
                self._last_ts = self._clock() if ts is None else ts
                m.checkpoint_timestamp.labels(dir=d).set(self._last_ts)
                step = _num(data, "step")
                if step is not None:
                    m.checkpoint_step.labels(dir=d).set(step)
                parts = [v for v in (_num(data, "write_s"), _num(data, "verify_s")) if v is not None]
                duration = _num(data, "duration") if not parts else sum(parts)
                if duration is not None:
                    m.checkpoint_duration.labels(dir=d).set(duration)
                size = _num(data, "bytes_total", "bytes_written", "size")
                if size is not None:
                    m.checkpoint_size.labels(dir=d).set(size)
            elif name == "verify_failed":
                m.verification_failures.labels(dir=d).inc()
            elif name == "backlog":
                count = _num(data, "count")
                if count is not None:
                    m.upload_backlog.labels(dir=d).set(count)
                nbytes = _num(data, "bytes")
                if nbytes is not None:
                    m.upload_backlog_bytes.labels(dir=d).set(nbytes)
            elif name == "upload":
                m.upload_last_success.labels(dir=d).set(self._clock())
                m.upload_failing.labels(dir=d).set(0)
            elif name == "upload_failed":
                # failures_total counts attempts (each retried); count what is new
                total = _num(data, "failures_total")
                new = 1.0 if total is None else total - self._upload_failures
                if total is not None:
                    self._upload_failures = max(self._upload_failures, total)
                if new > 0:
                    m.upload_failures.labels(dir=d).inc(new)
                m.upload_failing.labels(dir=d).set(1)
            elif name not in self.WRITE_EVENTS:
                return
        self._dirty.set()

    def _write_loop(self) -> None:
        while not self._stop.is_set():
            self._dirty.wait()
            self._dirty.clear()
            if self._stop.is_set():
                break
            self._write_now()

    def _write_now(self) -> None:
        assert self.textfile
        try:
            write_textfile(self.registry, self.textfile)
        except SlurmFTError as exc:
            log.warning("metrics: %s", exc)

    def close(self) -> None:
        """Stop the writer thread and write the textfile one last time."""
        if self._writer is not None:
            self._stop.set()
            self._dirty.set()
            self._writer.join(timeout=5)
            self._writer = None
            self._write_now()

    def __enter__(self) -> TrainingMetrics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def set_node_health(metrics: Metrics, states: Iterable[str]) -> None:
    """Set ``slurmft_node_health`` from one state per node (every known state shown, 0 if none)."""
    counts = {s: 0 for s in HEALTH_STATES}
    for state in states:
        key = str(state).lower()
        counts[key] = counts.get(key, 0) + 1
    for state, n in counts.items():
        metrics.node_health.labels(state=state).set(n)
