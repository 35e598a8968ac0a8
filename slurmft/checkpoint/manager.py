"""The checkpoint manager: the training side's public API (no torch, no MPI here).

::

    policy = CheckpointPolicy.from_env()          # or .from_dict({...}) / .from_yaml(path)
    with CheckpointManager(policy.resolve_path(), policy) as mgr:
        mgr.install_signal_handlers()             # SIGUSR1/SIGTERM -> save at next step, stop
        state = mgr.load()                        # newest verified checkpoint, or None
        for step in range(start, end):
            train_step()
            if mgr.should_save(step):
                mgr.save(state_of(model), step)   # stall = in-memory snapshot only
            if mgr.should_stop:
                break

The manager is a set of public template methods (``save``, ``load``, ``latest``, ``list``)
over private hooks (``_persist``, ``_verify``, ``_rotate``) and the modules that do the work:
the policy and where it comes from in policy.py, when to save in triggers.py, the in-memory
copy in snapshot.py, the on-disk format in manifest.py and state.py, atomic writes and
verification in store.py, retention in retention.py, fencing in fencing.py, shared-storage
copies in destinations.py and upload.py, which checkpoint a load resumes in resume.py and
lineage.py. State is any nest of dicts, lists and tuples whose large leaves are numpy
arrays (torch.py converts tensors).
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from slurmft.checkpoint.destinations import (
    DEFAULT_RSH, MountedDestination, RsyncDestination, open_destination,
)
from slurmft.checkpoint.fencing import check_fence
from slurmft.checkpoint.heartbeat import Heartbeat, heartbeat_from_env
from slurmft.checkpoint.lineage import Lineage
from slurmft.checkpoint.manifest import CheckpointInfo, new_run_id
from slurmft.checkpoint.policy import CheckpointPolicy
from slurmft.checkpoint.resume import Resume, fetch_remote_latest
from slurmft.checkpoint.snapshot import Snapshot, SnapshotBuffers, copy_into
from slurmft.checkpoint.store import FaultHook, Store
from slurmft.checkpoint.triggers import SaveTriggers
from slurmft.checkpoint.upload import STATUS_FILE, RetrySchedule, SerialWorker, Uploader
from slurmft.core.errors import (
    CheckpointError, CorruptCheckpointError, DestinationLostError, FencedError,
)
from slurmft.core.log import get_logger

log = get_logger(__name__)

EventHook = Callable[[str, dict], None]


@dataclass
class SaveHandle:
    """What ``save`` returns at once; ``result()`` waits until the checkpoint is durable."""

    step: int
    kind: str
    stall_s: float                       # time the caller was blocked
    future: Future = field(repr=False)

    def result(self, timeout: float | None = None) -> CheckpointInfo:
        try:
            return self.future.result(timeout)
        except FutureTimeout:
            raise CheckpointError(f"checkpoint of step {self.step} not durable after {timeout}s") from None

    def done(self) -> bool:
        return self.future.done()


class CheckpointManager:
    """Atomic, verified, rotated checkpoints with a local cache and asynchronous upload.

    ``path`` is the durable destination: a directory, or ``host:path`` (rsync over ssh,
    needs ``local_cache``). ``clock`` is injectable so tests drive the time trigger.
    ``on_event(name, fields)`` receives "save", "verify_failed", "upload", "upload_failed",
    "load", "fallback", "backlog" (for metrics; never raises into training).
    ``pipeline=True`` starts writing each array while later ones are still being copied:
    shorter time to durable, but on a busy machine a longer stall (measured in bench/).
    ``writer=False`` (MPI ranks other than 0): never touches the directory.
    ``upload_retry``: how a failed upload is retried (upload.RetrySchedule); a checkpoint that
    does not arrive stays in the backlog, and ``upload_status.json`` in the local cache says
    how the uploads fare (for the exporter).
    ``owner``: fencing. A token unique to this run, claimed in the directory when the manager
    starts; a checkpoint is published only while the directory still names this token, so an
    old run left behind after a requeue (its node cut off, or its slurmd dead) cannot move
    ``latest`` under the new run: it gets FencedError at its next save instead.
    ``heartbeat``: hang detection (heartbeat.py). Default: ``heartbeat_from_env(rank)``, a
    Heartbeat when the supervisor set ``SLURMFT_HEARTBEAT_DIR``, else none; a Heartbeat: that
    one (closed with the manager); None or False: none.
    ``should_save`` (asked every step) beats; ``rank`` None: from the launcher's variables.
    """

    def __init__(self, path: str | os.PathLike, policy: CheckpointPolicy | None = None,
                 local_cache: str | os.PathLike | None = None,
                 clock: Callable[[], float] = time.monotonic, *,
                 world_size: int = 1, on_event: EventHook | None = None,
                 rsh: tuple[str, ...] = DEFAULT_RSH, fault_hook: FaultHook | None = None,
                 writer: bool = True, pipeline: bool = False, owner: str = "",
                 upload_retry: RetrySchedule | None = None, rank: int | None = None,
                 heartbeat: Heartbeat | None | bool = True) -> None:
        self.policy = policy or CheckpointPolicy()
        self.clock = clock
        self.world_size = world_size
        self._on_event = on_event
        self._writer = writer
        self.pipeline = pipeline
        self.destination_spec = str(path)
        self._store, self._dest = open_destination(
            self.destination_spec, local_cache or self.policy.local_cache or None,
            self.policy.checksum, fault_hook, rsh)
        self._write_pool = SerialWorker("slurmft-ckpt-write")
        # A failed upload stays in the backlog and is retried (upload_retry); while the
        # destination fails, keep_last bounds what waits. Only a writer reports its status.
        self._uploader = (Uploader(self._dest, self._store, self._backlog_changed, self._upload_done,
                                   retry=upload_retry, max_backlog=self.policy.keep_last,
                                   status_path=self._store.root / STATUS_FILE if writer else None)
                          if self._dest is not None else None)
        self._buffers = SnapshotBuffers()
        self._inflight: Future | None = None     # write that still reads the buffers
        self._pending: list[Future] = []         # until durable at the destination
        self._failures: list[str] = []
        self._lock = threading.Lock()
        self._triggers = SaveTriggers(self.policy, clock)
        self._last_full: CheckpointInfo | None = None
        self._closed = False
        self.latest_loaded: CheckpointInfo | None = None
        # Lineage: every checkpoint names the run that wrote it and what that run resumed
        # from. A load after this manager saved starts a new run (another branch).
        self.run_id = new_run_id()
        self._parent: CheckpointInfo | None = None
        self._saved_in_run = False
        self.owner = owner.strip() if writer else ""
        self._fenced = ""
        # The directory two runs could both write: the destination when it is mounted.
        self._fence_store = (self._dest.store if isinstance(self._dest, MountedDestination)
                             else self._store)
        if writer:
            self._claim_and_clean()
        self.heartbeat: Heartbeat | None = (
            heartbeat_from_env(rank) if heartbeat is True
            else heartbeat if isinstance(heartbeat, Heartbeat) else None)
        ref = weakref.ref(self)
        self._atexit = lambda: (m := ref()) is not None and m._close_at_exit()
        atexit.register(self._atexit)

    def _claim_and_clean(self) -> None:
        """A writer's start: claim the directory (fencing), remove leftovers of saves
        that a crash cut short."""
        if self.owner:
            if isinstance(self._dest, RsyncDestination):
                log.warning("fencing covers the local cache only with a remote destination")
            self._fence_store.claim(self.owner)
        removed = self._store.cleanup()
        if isinstance(self._dest, MountedDestination):
            removed += self._dest.store.cleanup()
        if removed:
            log.info("removed %d leftovers of interrupted saves: %s", len(removed), ", ".join(removed))

    # ---- triggers (triggers.py) --------------------------------------------------------

    def should_save(self, step: int, busy_s: float | None = None) -> bool:
        """True at a step boundary where the policy (steps, minutes, a signal) asks to save.
        Also the rank's heartbeat (``beat``, with ``busy_s``), when there is one."""
        self.beat(step, busy_s)
        return self._triggers.should_save(step)

    def beat(self, step: int, busy_s: float | None = None) -> None:
        """Tell the supervisor this rank made progress at ``step`` (heartbeat.py; nothing
        without a heartbeat). ``should_save`` calls it; call it yourself in a loop that does
        not ask ``should_save`` every step. ``busy_s``: this rank's own compute time of the
        step (seconds from the end of its previous collective to entering the next), for
        straggler detection; ``MPICheckpointManager.vote`` measures it itself."""
        if self.heartbeat is not None:
            self.heartbeat.beat(step, busy_s)

    @property
    def should_stop(self) -> bool:
        """A save signal arrived: save at this step boundary (should_save says so), then exit."""
        return self._triggers.should_stop

    def request_stop(self, signum: int = signal.SIGUSR1) -> None:
        """What the signal handler does; callable directly (e.g. from another rank's flag)."""
        self._triggers.request_stop(signum)

    def install_signal_handlers(self) -> None:
        """Catch the policy's signals (main thread only); ``close()`` restores the old ones."""
        self._triggers.install_signal_handlers()

    # ---- saving ------------------------------------------------------------------------

    def save(self, state: Any, step: int, *, full: bool | None = None,
             wait: bool = False, meta: Mapping[str, Any] | None = None) -> SaveHandle:
        """Snapshot ``state`` into reused buffers and return; writing, verifying and
        uploading run in the background. ``wait=True`` returns once durable."""
        if self._closed:
            raise CheckpointError("checkpoint manager is closed")
        if not self._writer:
            raise CheckpointError("this manager does not write (writer=False, e.g. MPI rank != 0)")
        if self._fenced:
            raise FencedError(self._fenced)
        t0 = time.perf_counter()
        if self._inflight is not None:
            # The previous write still reads the buffers: back-pressure, counted as stall.
            try:
                self._inflight.result()
            except Exception:  # noqa: BLE001 - reported through the failure list
                pass
        now = self.clock()
        is_full = full if full is not None else self._triggers.want_full(now)
        snap, sources = self._buffers.take(state, step, meta, world_size=self.world_size,
                                           run=self.run_id, parent=self._parent)
        done: Future = Future()
        if self.pipeline:
            # The writer streams each array out as soon as it is copied.
            self._inflight = self._write_pool.submit(self._persist, snap, is_full, done)
            copy_into(snap, sources)
        else:
            copy_into(snap, sources)
            self._inflight = self._write_pool.submit(self._persist, snap, is_full, done)
        with self._lock:
            self._pending.append(done)
        self._saved_in_run = True
        self._triggers.saved(step, now, is_full)
        stall = time.perf_counter() - t0
        handle = SaveHandle(step=step, kind="full" if is_full else "diff", stall_s=stall, future=done)
        if wait:
            handle.result()
            self._inflight.result()            # rotation done too
        return handle

    def reserve(self, state: Any) -> None:
        """Allocate and touch the snapshot buffers for ``state`` now (e.g. before the
        training loop), so the first save does not pay for page faults."""
        self._buffers.reserve(state)

    def _persist(self, snap: Snapshot, full: bool, done: Future) -> None:
        """Background: write, read back + verify, publish as latest, rotate, upload."""
        try:
            t0 = time.perf_counter()
            base = None if full else self._diff_base()
            info = self._store.write(snap, base, array_digests=bool(self.policy.full_interval),
                                     taken=self._taken_at_destination)
            t_write = time.perf_counter()
            info = self._verify(info.name)
            t_verify = time.perf_counter()
            check_fence(self._fence_store, self.owner, snap.step)
            # This run's newest save is latest, also when it went back to an older
            # checkpoint: the steps after that one belong to an abandoned branch.
            self._store.advance_latest(info)
            self._emit("save", step=info.step, kind=info.kind, bytes_written=info.bytes_written,
                       bytes_total=info.bytes_total, write_s=t_write - t0,
                       verify_s=t_verify - t_write, path=info.path)
            if info.kind == "full":
                self._last_full = info
            if self._uploader is None:
                done.set_result(info)          # durable; rotation is not on that path
            else:
                fut = self._uploader.submit(info)
                fut.add_done_callback(lambda f: _chain(f, done))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's future
            if isinstance(exc, FencedError):
                self._fenced = str(exc)
            msg = f"checkpoint of step {snap.step} failed: {exc}"
            log.error(msg)
            self._failures.append(msg)
            self._emit("save_failed", step=snap.step, error=str(exc))
            done.set_exception(exc if isinstance(exc, CheckpointError) else CheckpointError(msg))
            return
        try:
            self._rotate(info)
        except Exception as exc:  # noqa: BLE001 - the checkpoint itself is durable
            log.warning("rotation in %s failed: %s", self._store.root, exc)

    @property
    def fenced(self) -> str:
        """Why this run lost the directory to a newer one ('' while it owns it)."""
        return self._fenced

    def _diff_base(self) -> CheckpointInfo | None:
        base = self._last_full
        if base is None:
            return None
        try:
            return self._store.read_manifest(base.name)
        except CorruptCheckpointError:
            return None

    def _taken_at_destination(self, name: str) -> bool:
        """A name the mounted destination already uses (another run's checkpoint there)."""
        return isinstance(self._dest, MountedDestination) and os.path.lexists(self._dest.store.root / name)

    def _verify(self, name: str) -> CheckpointInfo:
        try:
            # A new directory is read back in full; its base only if it changed since.
            return self._store.verify(name, cached=True)
        except CorruptCheckpointError as exc:
            self._emit("verify_failed", name=name, error=str(exc))
            raise

    def _rotate(self, info: CheckpointInfo) -> None:
        protect = [info.name]
        if self._uploader is not None:
            protect += self._uploader.pending_names()
        deleted = self._store.prune(self.policy.keep_last, protect=protect)
        if deleted:
            log.debug("rotated out %s", ", ".join(deleted))

    def _upload_done(self, info: CheckpointInfo, error: BaseException | None) -> None:
        if error is None:
            self._emit("upload", name=info.name, step=info.step, bytes=info.bytes_written,
                       destination=self._dest.describe() if self._dest else "")
            if isinstance(self._dest, MountedDestination):
                try:
                    self._dest.prune(self.policy.keep_last)
                except Exception as exc:  # noqa: BLE001
                    log.warning("rotation at %s failed: %s", self._dest.describe(), exc)
            # The local cache kept what was still uploading when it last rotated: rotate it
            # again now that this one is safe (else a slow destination grows the cache).
            try:
                self._rotate(info)
            except Exception as exc:  # noqa: BLE001
                log.warning("rotation of the local cache failed: %s", exc)
        else:
            # The uploader keeps it in the backlog and logs once per change of health.
            total = self._uploader.status.failures_total if self._uploader else 0
            self._emit("upload_failed", name=info.name, error=str(error), failures_total=total)

    def _backlog_changed(self, count: int, nbytes: int) -> None:
        self._emit("backlog", count=count, bytes=nbytes)

    @property
    def backlog(self) -> int:
        """Checkpoints written locally but not yet durable at the destination."""
        with self._lock:
            self._pending = [f for f in self._pending if not f.done()]
            writing = len(self._pending)
        if self._uploader is None:
            return writing
        # A save's future stays open through its first upload cycle: count it once.
        return max(0, writing - self._uploader.unresolved()) + self._uploader.backlog[0]

    @property
    def failures(self) -> list[str]:
        """Saves that failed, and the uploads' error while they fail."""
        out = list(self._failures)
        if self._uploader is not None and self._uploader.failing:
            out.append(self._uploader.status.last_error)
        return out

    def wait(self, timeout: float | None = None) -> None:
        """Block until every save is durable; a checkpoint still waiting for its upload gets
        one more cycle of attempts. Raises CheckpointError if a save failed, if the newest
        checkpoint has not reached the destination (a restart resumes from the newest; older
        ones the uploader gave up on were logged), or on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        def too_slow() -> CheckpointError:
            return _NotDurableInTime(
                f"{self.backlog} checkpoint(s) still not durable after {timeout}s")

        with self._lock:
            pending = list(self._pending)
        if self._inflight is not None:
            pending.append(self._inflight)
        for fut in pending:
            try:
                fut.result(left())
            except FutureTimeout:
                raise too_slow() from None
            except CheckpointError:
                pass
        problems = list(self._failures)
        lost = False
        if self._uploader is not None:
            if self._uploader.backlog[0] and not self._uploader.flush(left()):
                raise too_slow()
            error = self._uploader.newest_error()
            if error is not None:
                lost = isinstance(error, DestinationLostError)
                problems.append(
                    f"newest checkpoint {self._uploader.status.newest} not uploaded: {error}")
        if problems:
            message = "; ".join(problems)
            raise (DestinationLostError(message) if lost and len(problems) == 1
                   else CheckpointError(message))

    # ---- reading -----------------------------------------------------------------------

    def _stores(self) -> list[Store]:
        stores = [self._store]
        if isinstance(self._dest, MountedDestination):
            stores.append(self._dest.store)
        return stores

    def list(self) -> list[CheckpointInfo]:
        """Checkpoints at the destination (or in the cache when there is no upload)."""
        return self._stores()[-1].list()

    def latest(self) -> CheckpointInfo | None:
        """The checkpoint ``latest`` names (always one that was verified when published)."""
        store = self._stores()[-1]
        name = store.latest_name()
        if name is None:
            return None
        try:
            return store.read_manifest(name)
        except CorruptCheckpointError:
            return None

    def _resume(self) -> Resume:
        return Resume(self._stores(), self.destination_spec, self._emit)

    def lineage(self) -> tuple[Lineage, dict[str, list[Store]]]:
        """The lineage over the destination and the local cache together, and which
        stores hold each checkpoint (the destination first)."""
        return self._resume().lineage()

    def find_valid(self, exclude: Collection[str] = ()) -> tuple[Store, CheckpointInfo] | None:
        """The checkpoint a load resumes from: the newest on the current branch (the one
        ``latest`` is on) that verifies; ``exclude``: names that failed elsewhere (e.g. on
        another rank). None when there are no checkpoints; CorruptCheckpointError when none
        verifies."""
        self._fetch_remote_latest()
        for found in self._resume().verified_candidates(exclude):
            return found
        return None

    def _fetch_remote_latest(self) -> None:
        if isinstance(self._dest, RsyncDestination):
            fetch_remote_latest(self._dest, self._store)

    def load(self, name: str | None = None) -> Any:
        """The state of the newest valid checkpoint (or ``name``); None if there is none."""
        if name is not None:
            return self.load_info(name)[1]
        self._fetch_remote_latest()
        found = self._resume().load_newest()
        if found is None:
            return None
        self._after_load(found[0])
        return found[1]

    def load_info(self, name: str) -> tuple[CheckpointInfo, Any]:
        """Load exactly ``name`` (verified), e.g. the one rank 0 chose."""
        info, state = self._resume().load_named(name)
        self._after_load(info)
        return info, state

    def _after_load(self, info: CheckpointInfo) -> None:
        if self._saved_in_run:
            self.run_id = new_run_id()          # going back after saving: a new branch
            self._saved_in_run = False
        self._parent = info
        self.latest_loaded = info
        log.info("loaded checkpoint %s (step %d, %s)", info.name, info.step, info.kind)
        self._emit("load", name=info.name, step=info.step, kind=info.kind)
        # Differential saves continue against the full base of what was loaded.
        base_name = info.base or info.name
        try:
            self._last_full = self._store.read_manifest(base_name) \
                if (self._store.root / base_name).is_dir() else None
        except CorruptCheckpointError:
            self._last_full = None
        self._triggers.loaded(info.step, has_full_base=self._last_full is not None)

    # ---- lifetime ----------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        """Wait (bounded) for pending writes and uploads; raise if any failed or timed out."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._atexit)
        self._triggers.restore_signal_handlers()
        try:
            self.wait(self.policy.close_timeout if timeout is None else timeout)
        finally:
            if self.heartbeat is not None:
                self.heartbeat.close()
            self._write_pool.shutdown()
            if self._uploader:
                self._uploader.shutdown()

    def _close_at_exit(self) -> None:
        try:
            self.close()
        except _NotDurableInTime as exc:
            log.error("at exit: %s", exc)
        except CheckpointError:
            pass        # every failed save or upload was logged once, when it happened

    def __enter__(self) -> "CheckpointManager":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _emit(self, event: str, **fields_: Any) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(event, fields_)
        except Exception:  # noqa: BLE001 - metrics must never break training
            log.exception("on_event callback failed for %s", event)


class _NotDurableInTime(CheckpointError):
    """wait()/close() ran out of time (the one failure not logged when it happened)."""


def _chain(src: Future, dst: Future) -> None:
    exc = src.exception()
    if exc is not None:
        dst.set_exception(exc if isinstance(exc, CheckpointError)
                          else CheckpointError(f"upload failed: {exc}"))
    else:
        dst.set_result(src.result())
