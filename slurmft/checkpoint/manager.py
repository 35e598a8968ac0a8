"""Checkpoint policy and manager: the training side's public API (no torch, no MPI here).

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
over private hooks (``_snapshot``, ``_persist``, ``_verify``, ``_rotate``); on-disk format and
atomicity live in store.py, shared-storage copies in upload.py, which checkpoints belong to
the history being continued in lineage.py. State is any nest of dicts,
lists and tuples whose large leaves are numpy arrays (torch.py converts tensors).
"""

from __future__ import annotations

import atexit
import os
import pickle
import signal
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slurmft.checkpoint.lineage import Lineage, trace
from slurmft.checkpoint.store import (
    CheckpointInfo, FaultHook, Snapshot, Store, new_run_id, split_state,
)
from slurmft.checkpoint.upload import (
    DEFAULT_RSH, STATUS_FILE, MountedDestination, RetrySchedule, RsyncDestination, SerialWorker,
    Uploader, parse_remote,
)
from slurmft.core.config import CheckpointConfig, build_section, env_layer, read_yaml
from slurmft.core.errors import (
    CheckpointError, ConfigError, CorruptCheckpointError, DestinationLostError, FencedError,
)
from slurmft.core.log import get_logger

log = get_logger(__name__)

DEFAULT_ROOT = "/tmp/slurmft-checkpoints"
EventHook = Callable[[str, dict], None]


@dataclass
class CheckpointPolicy(CheckpointConfig):
    """When and how to checkpoint. Every field is validated at construction.

    The fields and their checks are the ``checkpoint:`` section of slurmft's one config schema
    (slurmft.core.config.CheckpointConfig); this class adds where they come from and the path.
    YAML (``checkpoint:`` section or a bare mapping), a dict, or the environment
    (``SLURMFT_CHECKPOINT_<FIELD>``, plus ``CHECKPOINT_PATH`` for ``path``).
    """

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "CheckpointPolicy":
        return build_section(cls, "checkpoint", values)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, env: Mapping[str, str] | None = None,
                  ) -> "CheckpointPolicy":
        data = read_yaml(path)
        section = data.get("checkpoint", data)
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: checkpoint section must be a mapping")
        return cls.from_env(env, base=section)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None,
                 base: Mapping[str, Any] | None = None) -> "CheckpointPolicy":
        """``base`` (e.g. from YAML), overridden by SLURMFT_CHECKPOINT_* and CHECKPOINT_PATH."""
        env = os.environ if env is None else env
        values = {**(base or {}), **env_layer("checkpoint", cls, env)}
        if env.get("CHECKPOINT_PATH"):
            values["path"] = env["CHECKPOINT_PATH"]
        return cls.from_dict(values)

    def resolve_path(self, env: Mapping[str, str] | None = None) -> str:
        """``path``, else CHECKPOINT_PATH, else ``$SLURMFT_CHECKPOINT_ROOT/$USER/$SLURM_JOB_ID``."""
        env = os.environ if env is None else env
        if self.path:
            return self.path
        if env.get("CHECKPOINT_PATH"):
            return env["CHECKPOINT_PATH"]
        root = env.get("SLURMFT_CHECKPOINT_ROOT") or DEFAULT_ROOT
        return str(Path(root) / (env.get("USER") or "nobody") / (env.get("SLURM_JOB_ID") or "local"))


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
    """

    def __init__(self, path: str | os.PathLike, policy: CheckpointPolicy | None = None,
                 local_cache: str | os.PathLike | None = None,
                 clock: Callable[[], float] = time.monotonic, *,
                 world_size: int = 1, on_event: EventHook | None = None,
                 rsh: tuple[str, ...] = DEFAULT_RSH, fault_hook: FaultHook | None = None,
                 writer: bool = True, pipeline: bool = False, owner: str = "",
                 upload_retry: RetrySchedule | None = None) -> None:
        self.policy = policy or CheckpointPolicy()
        self.clock = clock
        self.world_size = world_size
        self._on_event = on_event
        self._writer = writer
        self.pipeline = pipeline
        local_cache = local_cache or self.policy.local_cache or None
        spec = str(path)
        remote = parse_remote(spec)
        if remote is not None and local_cache is None:
            raise ConfigError(f"checkpoint destination {spec!r} is remote: set a local_cache directory")
        self.destination_spec = spec
        algo = self.policy.checksum
        if local_cache is None:
            self._store = Store(spec, algo, fault_hook)
            self._dest: MountedDestination | RsyncDestination | None = None
        else:
            self._store = Store(local_cache, algo, fault_hook)
            self._dest = (RsyncDestination(remote, rsh=rsh) if remote
                          else MountedDestination(spec, algo))
        self._write_pool = SerialWorker("slurmft-ckpt-write")
        # A failed upload stays in the backlog and is retried (upload_retry); while the
        # destination fails, keep_last bounds what waits. Only a writer reports its status.
        self._uploader = (Uploader(self._dest, self._store, self._backlog_changed, self._upload_done,
                                   retry=upload_retry, max_backlog=self.policy.keep_last,
                                   status_path=self._store.root / STATUS_FILE if writer else None)
                          if self._dest is not None else None)
        self._buffers: dict[str, np.ndarray] = {}
        self._inflight: Future | None = None     # write that still reads the buffers
        self._pending: list[Future] = []         # until durable at the destination
        self._failures: list[str] = []
        self._lock = threading.Lock()
        self._last_step: int | None = None
        self._last_time = clock()
        self._last_full_time: float | None = None
        self._last_full: CheckpointInfo | None = None
        self._stop_signal: int | None = None
        self._saved_after_signal = False
        self._old_handlers: dict[int, Any] = {}
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
            if self.owner:
                if isinstance(self._dest, RsyncDestination):
                    log.warning("fencing covers the local cache only with a remote destination")
                self._fence_store.claim(self.owner)
            removed = self._store.cleanup()
            if isinstance(self._dest, MountedDestination):
                removed += self._dest.store.cleanup()
            if removed:
                log.info("removed %d leftovers of interrupted saves: %s", len(removed), ", ".join(removed))
        ref = weakref.ref(self)
        self._atexit = lambda: (m := ref()) is not None and m._close_at_exit()
        atexit.register(self._atexit)

    # ---- triggers ----------------------------------------------------------------------

    def should_save(self, step: int) -> bool:
        """True at a step boundary where the policy (steps, minutes, a signal) asks to save."""
        if self._stop_signal is not None and not self._saved_after_signal:
            return True
        p = self.policy
        last = self._last_step if self._last_step is not None else 0
        if p.step_interval and step - last >= p.step_interval:
            return True
        if p.interval and self.clock() - self._last_time >= p.interval * 60:
            return True
        return False

    @property
    def should_stop(self) -> bool:
        """A save signal arrived: save at this step boundary (should_save says so), then exit."""
        return self._stop_signal is not None

    def request_stop(self, signum: int = signal.SIGUSR1) -> None:
        """What the signal handler does; callable directly (e.g. from another rank's flag)."""
        self._stop_signal = signum
        self._saved_after_signal = False

    def install_signal_handlers(self) -> None:
        """Catch the policy's signals (main thread only); ``close()`` restores the old ones."""
        if threading.current_thread() is not threading.main_thread():
            raise CheckpointError("install_signal_handlers must be called from the main thread")
        for name in self.policy.signals:
            sig = getattr(signal, name)
            self._old_handlers[sig] = signal.signal(sig, self._handle_signal)

    def _handle_signal(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        self.request_stop(signum)

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
        is_full = full if full is not None else self._want_full(now)
        snap, sources = self._snapshot(state, step, meta)
        done: Future = Future()
        if self.pipeline:
            # The writer streams each array out as soon as it is copied.
            self._inflight = self._write_pool.submit(self._persist, snap, is_full, done)
            self._copy_into(snap, sources)
        else:
            self._copy_into(snap, sources)
            self._inflight = self._write_pool.submit(self._persist, snap, is_full, done)
        with self._lock:
            self._pending.append(done)
        self._saved_in_run = True
        self._last_step = step
        self._last_time = now
        if is_full:
            self._last_full_time = now
        if self._stop_signal is not None:
            self._saved_after_signal = True
        stall = time.perf_counter() - t0
        handle = SaveHandle(step=step, kind="full" if is_full else "diff", stall_s=stall, future=done)
        if wait:
            handle.result()
            self._inflight.result()            # rotation done too
        return handle

    def _want_full(self, now: float) -> bool:
        fi = self.policy.full_interval
        if not fi or self._last_full_time is None:
            return True
        return now - self._last_full_time >= fi * 60

    def reserve(self, state: Any) -> None:
        """Allocate and touch the snapshot buffers for ``state`` now (e.g. before the
        training loop), so the first save does not pay for page faults."""
        _, arrays = split_state(state)
        for key, arr in arrays.items():
            buf = self._buffers.get(key)
            if buf is None or buf.shape != arr.shape or buf.dtype != arr.dtype:
                buf = np.empty(arr.shape, arr.dtype)
                buf.reshape(-1).view(np.uint8)[:] = 0
                self._buffers[key] = buf

    def _snapshot(self, state: Any, step: int, meta: Mapping[str, Any] | None,
                  ) -> tuple[Snapshot, dict[str, np.ndarray]]:
        """Training thread: pickle the small part, pick a reused buffer for each array."""
        skeleton, arrays = split_state(state)
        try:
            blob = pickle.dumps(skeleton, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"state of step {step} cannot be pickled: {exc}") from None
        bufs: dict[str, np.ndarray] = {}
        for key, arr in arrays.items():
            buf = self._buffers.get(key)
            if buf is None or buf.shape != arr.shape or buf.dtype != arr.dtype:
                buf = np.empty(arr.shape, arr.dtype)
                self._buffers[key] = buf
            bufs[key] = buf
        for key in set(self._buffers) - set(arrays):
            del self._buffers[key]
        snap = Snapshot(step=step, skeleton=blob, arrays=bufs, world_size=self.world_size,
                        meta=dict(meta or {}), ready={k: threading.Event() for k in bufs},
                        run=self.run_id, parent=self._parent)
        return snap, arrays

    @staticmethod
    def _copy_into(snap: Snapshot, sources: Mapping[str, np.ndarray]) -> None:
        """Training thread: copy every array into its buffer, releasing each to the writer."""
        assert snap.ready is not None
        try:
            for key, src in sources.items():
                np.copyto(snap.arrays[key], src)
                snap.ready[key].set()
        except BaseException:
            snap.aborted = True
            raise
        finally:
            for ev in snap.ready.values():
                ev.set()

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
            self._check_fence(snap.step)
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

    def _check_fence(self, step: int) -> None:
        """Publish only while this run still owns the directory (see ``owner``)."""
        if not self.owner:
            return
        current = self._fence_store.owner()
        if current is None and not self._fence_store.root.is_dir():
            raise FencedError(
                f"checkpoint directory {self._fence_store.root} is gone (a lost mount or a "
                f"removed directory): this run ({self.owner}) stops without publishing step "
                f"{step}; mount it again and resume")
        if current is None:
            raise FencedError(
                f"the owner file of {self._fence_store.root} was removed, so this run "
                f"({self.owner}) cannot tell it still owns the directory: it stops without "
                f"publishing step {step}; resume to claim it again")
        if current != self.owner:
            raise FencedError(
                f"a newer run ({current or 'unknown'}) took over {self._fence_store.root}: this "
                f"run ({self.owner}) stops without publishing step {step}")

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

    def lineage(self) -> tuple[Lineage, dict[str, list[Store]]]:
        """The lineage over the destination and the local cache together, and which
        stores hold each checkpoint (the destination first)."""
        infos: dict[str, CheckpointInfo] = {}
        where: dict[str, list[Store]] = {}
        latest: list[str | None] = []
        for store in reversed(self._stores()):
            latest.append(store.latest_name())
            for info in store.list():
                where.setdefault(info.name, []).append(store)
                known = infos.get(info.name)
                if known is None or (known.error and not info.error):
                    infos[info.name] = info
        return trace(infos.values(), latest), where

    def _verified_candidates(self, exclude: Collection[str] = ()
                             ) -> Iterator[tuple[Store, CheckpointInfo]]:
        """Checkpoints of the branch being continued that verify, newest first; logs (and
        reports) every one it skips. Resume the iterator only if the one it gave failed
        later (then the next is a fallback too). Raises CorruptCheckpointError when
        checkpoints exist but none verifies."""
        if isinstance(self._dest, RsyncDestination):
            self._fetch_remote_latest()
        lin, where = self.lineage()
        candidates = [i for i in lin.candidates() if i.name not in exclude]
        failed = len(lin.candidates()) - len(candidates)
        for info in candidates:
            for store in where.get(info.name, []):
                try:
                    verified = store.verify(info.name)
                except CorruptCheckpointError as exc:
                    self._skip(info.name, exc)
                    failed += 1
                    continue
                if failed:
                    log.warning("falling back to checkpoint %s (step %d)", verified.name, verified.step)
                    self._emit("fallback", name=verified.name, step=verified.step)
                newer_abandoned = [a.name for a in lin.abandoned if a.step >= verified.step]
                if newer_abandoned:
                    log.info("not resuming %d checkpoint(s) of an abandoned branch: %s",
                             len(newer_abandoned), ", ".join(newer_abandoned))
                yield store, verified
                failed += 1
                break
        if not lin.candidates() and not lin.abandoned:
            return
        extra = (f"; {len(lin.abandoned)} checkpoint(s) of abandoned branches are never "
                 "resumed (load one by name if you mean it)" if lin.abandoned else "")
        raise CorruptCheckpointError(
            f"no valid checkpoint in {self.destination_spec}: all {len(lin.candidates())} on the "
            f"current branch failed verification{extra}")

    def _skip(self, name: str, exc: Exception) -> None:
        log.warning("skipping checkpoint %s: %s", name, exc)
        self._emit("verify_failed", name=name, error=str(exc))

    def find_valid(self, exclude: Collection[str] = ()) -> tuple[Store, CheckpointInfo] | None:
        """The checkpoint a load resumes from: the newest on the current branch (the one
        ``latest`` is on) that verifies; ``exclude``: names that failed elsewhere (e.g. on
        another rank). None when there are no checkpoints; CorruptCheckpointError when none
        verifies."""
        for found in self._verified_candidates(exclude):
            return found
        return None

    def _fetch_remote_latest(self) -> None:
        assert isinstance(self._dest, RsyncDestination)
        try:
            name = self._dest.remote_latest()
        except CheckpointError as exc:
            log.warning("cannot read latest from %s: %s", self._dest.describe(), exc)
            return
        if name and name not in self._store.names():
            self._dest.fetch(name, self._store)
            info = self._store.read_manifest(name)
            if info.base and info.base not in self._store.names():
                self._dest.fetch(info.base, self._store)

    def load(self, name: str | None = None) -> Any:
        """The state of the newest valid checkpoint (or ``name``); None if there is none."""
        if name is not None:
            return self.load_info(name)[1]
        for store, info in self._verified_candidates():
            try:
                state = store.read_state(info)
            except CorruptCheckpointError as exc:
                self._skip(info.name, exc)      # any mismatch: fall back to the next one
                continue
            self._after_load(info)
            return state
        return None

    def load_info(self, name: str) -> tuple[CheckpointInfo, Any]:
        """Load exactly ``name`` (verified), e.g. the one rank 0 chose."""
        for store in reversed(self._stores()):
            if (store.root / name).is_dir():
                info = self._verify_in(store, name)
                state = store.read_state(info)
                self._after_load(info)
                return info, state
        raise CheckpointError(f"checkpoint {name} not found in {self.destination_spec}")

    def _verify_in(self, store: Store, name: str) -> CheckpointInfo:
        try:
            return store.verify(name)
        except CorruptCheckpointError as exc:
            self._emit("verify_failed", name=name, error=str(exc))
            raise

    def _after_load(self, info: CheckpointInfo) -> None:
        if self._saved_in_run:
            self.run_id = new_run_id()          # going back after saving: a new branch
            self._saved_in_run = False
        self._parent = info
        self.latest_loaded = info
        log.info("loaded checkpoint %s (step %d, %s)", info.name, info.step, info.kind)
        self._emit("load", name=info.name, step=info.step, kind=info.kind)
        self._last_step = info.step
        self._last_time = self.clock()
        # Differential saves continue against the full base of what was loaded.
        base_name = info.base or info.name
        try:
            self._last_full = self._store.read_manifest(base_name) \
                if (self._store.root / base_name).is_dir() else None
        except CorruptCheckpointError:
            self._last_full = None
        self._last_full_time = self.clock() if self._last_full else None

    # ---- lifetime ----------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        """Wait (bounded) for pending writes and uploads; raise if any failed or timed out."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._atexit)
        for sig, old in self._old_handlers.items():
            try:
                signal.signal(sig, old)
            except (ValueError, TypeError):
                pass
        self._old_handlers.clear()
        try:
            self.wait(self.policy.close_timeout if timeout is None else timeout)
        finally:
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
