"""Copy verified checkpoints from the local cache to their destination (destinations.py).

``Uploader`` runs uploads on one background thread, in order, and exposes the backlog. A
failed upload is retried with backoff (tenacity, ``RetrySchedule``); when a cycle of attempts
fails, the checkpoint stays in the backlog and is tried again at the next save and on a
timer. Health changes (healthy -> failing -> healthy) are logged once each, not per attempt,
and written to ``upload_status.json`` in the local cache for the exporter.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path

from tenacity import Retrying, retry_if_not_exception_type, stop_after_attempt, wait_exponential

from slurmft.checkpoint.destinations import Destination
from slurmft.checkpoint.manifest import CheckpointInfo
from slurmft.checkpoint.store import Store, replace_file
from slurmft.core.errors import (
    CheckpointError, ConfigError, CorruptCheckpointError, DestinationLostError,
)
from slurmft.core.log import get_logger

log = get_logger(__name__)

STATUS_FILE = "upload_status.json"   # in the local cache: the uploads' health, for the exporter


class SerialWorker:
    """One daemon thread running submitted calls in order, each with a Future.

    Not a ThreadPoolExecutor on purpose: the executor refuses new work once the interpreter
    starts to exit, before atexit handlers run, so a write that hands over to the uploader
    at exit would fail. A daemon thread keeps working while the manager's atexit handler
    waits for it (bounded by close_timeout), and never keeps a dead job alive beyond that.
    """

    def __init__(self, name: str) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable, *args: object) -> Future:
        fut: Future = Future()
        self._queue.put((fut, fn, args))
        return fut

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fut, fn, args = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the Future
                fut.set_exception(exc)

    def shutdown(self) -> None:
        """Stop after the queued calls (does not wait)."""
        self._queue.put(None)


@dataclass(frozen=True)
class RetrySchedule:
    """How uploads retry. One cycle tries a checkpoint ``attempts`` times with exponential
    backoff (``backoff_initial`` seconds, doubling, at most ``backoff_max``); if that fails the
    checkpoint stays in the backlog and a new cycle starts at the next save, or after
    ``cycle_interval`` seconds, whichever comes first."""

    attempts: int = 3
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    cycle_interval: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.backoff_initial < 0 or self.backoff_max < 0 \
                or not self.cycle_interval > 0:
            raise ConfigError(f"invalid upload retry schedule {self}: attempts >= 1, "
                              "backoffs >= 0 and cycle_interval > 0")


@dataclass
class UploadStatus:
    """The uploads' health, as ``upload_status.json`` in the local cache holds it."""

    destination: str
    state: str = "healthy"               # healthy | failing
    backlog: int = 0                     # checkpoints saved locally, not yet at the destination
    backlog_bytes: int = 0
    failures_total: int = 0              # failed upload attempts since the manager started
    last_error: str = ""                 # the latest failure (kept after a recovery)
    last_error_time: float | None = None
    last_success_time: float | None = None
    newest: str = ""                     # the newest checkpoint handed to the uploader
    newest_uploaded: bool = True         # it has reached the destination
    updated: float = 0.0

    def to_json(self) -> bytes:
        return (json.dumps(self.__dict__, indent=1) + "\n").encode()


def read_upload_status(directory: str | os.PathLike) -> UploadStatus | None:
    """The status a manager wrote into its local cache ``directory`` (None: none there).
    Raises CheckpointError for a file that is not a status."""
    path = Path(directory) / STATUS_FILE
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    try:
        return UploadStatus(**doc)
    except TypeError as exc:
        raise CheckpointError(f"{path} is not an upload status: {exc}") from None


@dataclass
class _Pending:
    info: CheckpointInfo
    future: Future


class Uploader:
    """Uploads checkpoints in order on one background thread, retrying until they arrive.

    ``submit`` returns a Future per checkpoint: its result once the checkpoint is at the
    destination, or the error of the first cycle that could not upload it; either way the
    checkpoint stays in the backlog until it arrives. ``max_backlog``: while the destination
    fails, only the newest ``max_backlog`` checkpoints are kept waiting (older ones would be
    rotated out at the destination anyway) so the local cache does not grow without bound.
    ``status_path``: where the health is written (atomically) after every change.
    """

    def __init__(self, destination: Destination, src: Store,
                 on_backlog: Callable[[int, int], None] | None = None,
                 on_done: Callable[[CheckpointInfo, BaseException | None], None] | None = None,
                 *, retry: RetrySchedule | None = None, max_backlog: int | None = None,
                 status_path: str | os.PathLike | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.destination = destination
        self.src = src
        self.retry = retry or RetrySchedule()
        self.max_backlog = max_backlog
        self.status_path = Path(status_path) if status_path else None
        self._clock = clock
        self._pool = SerialWorker("slurmft-upload")
        self._lock = threading.Lock()
        self._status_lock = threading.RLock()
        self._pending: dict[str, _Pending] = {}
        self._on_backlog = on_backlog
        self._on_done = on_done
        self._status = UploadStatus(destination=destination.describe())
        self._last_exc: BaseException | None = None
        self._cycle_queued = False
        self._timer: threading.Timer | None = None
        self._closing = threading.Event()        # cuts backoff sleeps short at shutdown
        self._status_warned = False
        self._write_status()

    # -- what callers see --
    @property
    def backlog(self) -> tuple[int, int]:
        """(checkpoints waiting or in flight, their bytes)."""
        with self._lock:
            return len(self._pending), sum(p.info.bytes_written for p in self._pending.values())

    def pending_names(self) -> list[str]:
        """Checkpoints still to upload: the local cache must not rotate them out."""
        with self._lock:
            return list(self._pending)

    def unresolved(self) -> int:
        """Checkpoints in the backlog whose first upload cycle has not ended yet."""
        with self._lock:
            return sum(1 for p in self._pending.values() if not p.future.done())

    @property
    def status(self) -> UploadStatus:
        with self._lock:
            return UploadStatus(**self._status.__dict__)

    @property
    def failing(self) -> bool:
        with self._lock:
            return self._status.state == "failing"

    def newest_error(self) -> BaseException | None:
        """Why the newest checkpoint handed over has not reached the destination (None: it has,
        or nothing was handed over)."""
        with self._lock:
            if self._status.newest_uploaded:
                return None
            return self._last_exc or CheckpointError(
                f"checkpoint {self._status.newest} has not reached {self._status.destination} yet")

    # -- feeding and draining --
    def submit(self, info: CheckpointInfo) -> Future:
        fut: Future = Future()
        with self._lock:
            self._pending[info.name] = _Pending(info, fut)
            self._status.newest = info.name
            self._status.newest_uploaded = False
            dropped = self._trim_locked()
        self._dropped(dropped, "newer checkpoints replace it while the destination fails")
        self._changed()
        self.kick()
        return fut

    def kick(self) -> None:
        """Start an upload cycle unless one is queued already."""
        with self._lock:
            if self._cycle_queued or not self._pending:
                return
            self._cycle_queued = True
        self._pool.submit(self._cycle)

    def flush(self, timeout: float | None = None) -> bool:
        """Run one more cycle over the backlog and wait for it; False if ``timeout`` passed."""
        self.kick()
        try:
            self._pool.submit(lambda: None).result(timeout)
        except FutureTimeout:
            return False
        return True

    def _cycle(self) -> None:
        with self._lock:
            self._cycle_queued = False
        while True:
            with self._lock:
                item = next(iter(self._pending.values()), None)
            if item is None:
                return
            try:
                self._upload_with_retries(item.info)
            except Exception as exc:  # noqa: BLE001 - kept in the backlog, reported below
                if isinstance(exc, CorruptCheckpointError) and self._source_corrupt(item.info):
                    self._drop_corrupt(item, exc)     # no retry can upload it: go on
                    continue
                self._cycle_failed(item, exc)
                return
            self._succeeded(item)

    def _upload_with_retries(self, info: CheckpointInfo) -> None:
        r = self.retry
        retrying = Retrying(
            stop=stop_after_attempt(r.attempts),
            wait=wait_exponential(multiplier=r.backoff_initial, max=r.backoff_max),
            # A lost mount does not come back within a backoff: no retry, it is reported.
            retry=retry_if_not_exception_type(DestinationLostError),
            sleep=self._closing.wait, reraise=True)
        retrying(self._attempt, info)

    def _attempt(self, info: CheckpointInfo) -> None:
        try:
            self.destination.upload(self.src, info)
        except Exception:
            with self._lock:
                self._status.failures_total += 1
            raise

    def _succeeded(self, item: _Pending) -> None:
        with self._lock:
            self._pending.pop(item.info.name, None)
            recovered = self._status.state == "failing"
            self._status.state = "healthy"
            self._status.last_success_time = self._clock()
            if item.info.name == self._status.newest:
                self._status.newest_uploaded = True
            self._last_exc = None
            left = len(self._pending)
        if recovered:
            log.warning("uploads to %s work again (%s arrived); %d checkpoint(s) still in the "
                        "backlog", self.destination.describe(), item.info.name, left)
        self._changed()
        self._call_done(item.info, None)
        if not item.future.done():             # last: a waiter sees the reports done
            item.future.set_result(item.info)

    def _cycle_failed(self, item: _Pending, exc: BaseException) -> None:
        dest = self.destination.describe()
        msg = f"upload of {item.info.name} to {dest} failed: {exc}"
        error = exc if isinstance(exc, DestinationLostError) else CheckpointError(msg)
        with self._lock:
            became_failing = self._status.state != "failing"
            self._status.state = "failing"
            self._status.last_error = str(error) if isinstance(exc, DestinationLostError) else msg
            self._status.last_error_time = self._clock()
            self._last_exc = error
            waiting = [p for p in self._pending.values() if not p.future.done()]
            dropped = self._trim_locked()
            left = len(self._pending)
        if became_failing:
            log.error("%s; %d checkpoint(s) wait in %s and are retried at the next save and "
                      "every %gs", self._status.last_error, left, self.src.root,
                      self.retry.cycle_interval)
        self._changed()
        self._call_done(item.info, exc)
        self._schedule_retry()
        for p in waiting:
            if not p.future.done():
                p.future.set_exception(error if p is item else CheckpointError(
                    f"checkpoint {p.info.name} not uploaded: the destination fails ({msg})"))
        self._dropped(dropped, "newer checkpoints replace it while the destination fails")

    def _drop_corrupt(self, item: _Pending, exc: BaseException) -> None:
        with self._lock:
            self._pending.pop(item.info.name, None)
        self._changed()
        self._call_done(item.info, exc)
        self._dropped([item], f"its local copy failed verification ({exc})")

    def _source_corrupt(self, info: CheckpointInfo) -> bool:
        try:
            self.src.verify(info.name)
        except CorruptCheckpointError:
            return True
        return False

    def _trim_locked(self) -> list[_Pending]:
        """While failing, keep only the newest ``max_backlog`` waiting (caller holds the lock)."""
        if self.max_backlog is None or self._status.state != "failing":
            return []
        dropped = []
        while len(self._pending) > self.max_backlog:
            name = next(iter(self._pending))
            dropped.append(self._pending.pop(name))
        return dropped

    def _dropped(self, items: list[_Pending], why: str) -> None:
        for p in items:
            log.warning("checkpoint %s will not be uploaded: %s", p.info.name, why)
            if not p.future.done():
                p.future.set_exception(CheckpointError(
                    f"checkpoint {p.info.name} was not uploaded: {why}"))

    def _schedule_retry(self) -> None:
        if self._closing.is_set():
            return
        timer = threading.Timer(self.retry.cycle_interval, self.kick)
        timer.daemon = True
        with self._lock:
            old, self._timer = self._timer, timer
        if old is not None:
            old.cancel()
        timer.start()

    # -- reporting --
    def _call_done(self, info: CheckpointInfo, error: BaseException | None) -> None:
        _call_quietly("upload", self._on_done, info, error)

    def _changed(self) -> None:
        # One at a time (the saving and the uploading thread both get here): the last
        # report is always the current backlog.
        with self._status_lock:
            count, nbytes = self.backlog
            with self._lock:
                self._status.backlog, self._status.backlog_bytes = count, nbytes
            self._write_status()
            _call_quietly("backlog", self._on_backlog, count, nbytes)

    def _write_status(self) -> None:
        if self.status_path is None:
            return
        with self._status_lock:
            with self._lock:
                self._status.updated = self._clock()
                blob = self._status.to_json()
            try:
                self.status_path.parent.mkdir(parents=True, exist_ok=True)
                replace_file(self.status_path, blob)
            except OSError as exc:
                if not self._status_warned:         # once: it is only a report
                    self._status_warned = True
                    log.warning("cannot write %s: %s", self.status_path, exc.strerror)

    def shutdown(self) -> None:
        """Stop retrying and end the thread after the queued calls (does not wait)."""
        self._closing.set()
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self._pool.shutdown()


def _call_quietly(what: str, callback: Callable[..., None] | None, *args: object) -> None:
    """Call a reporting callback (if any); its failure is logged, never raised into the uploads."""
    if callback is None:
        return
    try:
        callback(*args)
    except Exception:  # noqa: BLE001 - a callback must not stop the uploads
        log.exception("%s callback failed", what)
