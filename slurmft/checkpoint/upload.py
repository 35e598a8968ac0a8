"""Copy verified checkpoints from the local cache to shared storage, verified on arrival.

Two destinations:

* a mounted path (NFS, Lustre, a local disk): ``MountedDestination`` copies into a
  ``.tmp-`` directory, fsyncs, renames, then re-reads the copy against the manifest before
  it becomes ``latest`` there;
* ``host:path``: ``RsyncDestination`` runs Debian's rsync over ssh (argv lists, no shell,
  the host validated), uploads into ``.tmp-<name>``, confirms with a checksum dry run that
  the remote copy is identical, then renames it remotely and updates ``latest``.

``Uploader`` runs uploads on one background thread, in order, and exposes the backlog.
"""

from __future__ import annotations

import os
import queue
import re
import shlex
import shutil
import subprocess
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

from slurmft.checkpoint.store import (
    LATEST, TMP_PREFIX, CheckpointInfo, Store, fsync_dir, parse_name, publish_dir,
)
from slurmft.errors import CheckpointError, ConfigError, CorruptCheckpointError
from slurmft.hosts import validate_hostname
from slurmft.log import get_logger

log = get_logger(__name__)

DEFAULT_RSH = ("ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10")
_USER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9._-]{0,31}$")


class Destination(Protocol):
    """Where verified checkpoints end up."""

    def upload(self, src: Store, info: CheckpointInfo) -> None: ...
    def describe(self) -> str: ...


class MountedDestination:
    """A directory on a mounted file system."""

    def __init__(self, root: str | os.PathLike, algorithm: str = "xxh3") -> None:
        self.store = Store(root, algorithm)

    def describe(self) -> str:
        return str(self.store.root)

    def upload(self, src: Store, info: CheckpointInfo) -> None:
        dst = self.store
        dst.ensure_root()
        if info.base and not (dst.root / info.base).is_dir():
            dst_base = src.verify(info.base)
            self.upload(src, dst_base)
        final = dst.root / info.name
        tmp = dst.root / f"{TMP_PREFIX}up-{info.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            for entry in sorted(os.listdir(src.root / info.name)):
                target = tmp / entry
                # copyfile uses the kernel's copy (sendfile/copy_file_range) where it can.
                shutil.copyfile(src.root / info.name / entry, target)
                with open(target, "rb+") as f:
                    os.fsync(f.fileno())
            fsync_dir(tmp)
            publish_dir(tmp, final)
            fsync_dir(dst.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        dst.verify(info.name)          # verified on arrival, before it becomes latest
        current = dst.latest_name()
        if current is None or (parse_name(current) or -1) <= info.step:
            dst.set_latest(info.name)

    def prune(self, keep_last: int) -> list[str]:
        return self.store.prune(keep_last)


@dataclass
class RemoteSpec:
    host: str
    path: str
    user: str = ""

    @property
    def target(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}"


def parse_remote(spec: str) -> RemoteSpec | None:
    """``[user@]host:path`` -> RemoteSpec (host validated); a plain path -> None."""
    if spec.startswith(("/", ".", "~")) or ":" not in spec:
        return None
    target, path = spec.split(":", 1)
    if "/" in target:
        return None                    # a relative path that happens to contain ':'
    user, _, host = target.rpartition("@")
    validate_hostname(host)
    if user and not _USER_RE.match(user):
        raise ConfigError(f"checkpoint destination {spec!r}: invalid user name {user!r}")
    if not path or "\0" in path or "\n" in path:
        raise ConfigError(f"checkpoint destination {spec!r}: empty path or control characters")
    return RemoteSpec(host=host, path=path, user=user)


class RsyncDestination:
    """``host:path`` through rsync over ssh; ``rsh`` is the remote-shell argv."""

    def __init__(self, remote: RemoteSpec, rsh: Sequence[str] = DEFAULT_RSH,
                 rsync: str = "rsync", timeout: float = 3600.0) -> None:
        self.remote = remote
        self.rsh = list(rsh)
        self.rsync = rsync
        self.timeout = timeout

    def describe(self) -> str:
        return f"{self.remote.target}:{self.remote.path}"

    def _rsync(self, *args: str) -> str:
        argv = [self.rsync, "--rsh", " ".join(shlex.quote(a) for a in self.rsh), *args]
        return self._run(argv)

    def _ssh(self, *remote_argv: str) -> str:
        # ssh hands its arguments to the remote shell as one line: quote every word.
        line = " ".join(shlex.quote(a) for a in remote_argv)
        return self._run([*self.rsh, self.remote.target, line])

    def _run(self, argv: list[str]) -> str:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout,
                                  check=False)
        except FileNotFoundError:
            raise CheckpointError(f"{argv[0]} not found; install rsync/openssh-client") from None
        except subprocess.TimeoutExpired:
            raise CheckpointError(f"upload to {self.describe()} timed out after {self.timeout}s") from None
        if proc.returncode != 0:
            msg = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise CheckpointError(
                f"upload to {self.describe()} failed ({argv[0]} exit {proc.returncode}): {msg}")
        return proc.stdout

    def _remote(self, name: str) -> str:
        return f"{self.remote.target}:{self.remote.path.rstrip('/')}/{name}"

    def upload(self, src: Store, info: CheckpointInfo) -> None:
        rpath = self.remote.path.rstrip("/")
        tmp = f"{TMP_PREFIX}up-{info.name}-{uuid.uuid4().hex[:8]}"
        local = f"{src.root / info.name}/"
        self._rsync("-a", "--mkpath", "--fsync", local, self._remote(tmp) + "/")
        # Verified on arrival: a checksum dry run lists any file that differs.
        diff = self._rsync("-a", "--checksum", "--dry-run", "--itemize-changes",
                           local, self._remote(tmp) + "/")
        changed = [ln for ln in diff.splitlines() if ln and not ln.startswith(".d")]
        if changed:
            raise CorruptCheckpointError(
                f"upload of {info.name} to {self.describe()} differs on arrival: {changed[0]}")
        self._ssh("mv", "-T", "--", f"{rpath}/{tmp}", f"{rpath}/{info.name}")
        latest_tmp = src.root / f"{TMP_PREFIX}latest-up-{uuid.uuid4().hex[:8]}"
        latest_tmp.write_text(info.name + "\n")
        try:
            rtmp = f"{TMP_PREFIX}latest-{uuid.uuid4().hex[:8]}"
            self._rsync("--fsync", str(latest_tmp), self._remote(rtmp))
            self._ssh("mv", "-T", "--", f"{rpath}/{rtmp}", f"{rpath}/{LATEST}")
        finally:
            latest_tmp.unlink(missing_ok=True)

    def fetch(self, name: str, into: Store) -> None:
        """Download one checkpoint (and nothing else) into a local store."""
        into.ensure_root()
        tmp = into.root / f"{TMP_PREFIX}down-{name}-{uuid.uuid4().hex[:8]}"
        try:
            self._rsync("-a", self._remote(name) + "/", f"{tmp}/")
            final = into.root / name
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def remote_latest(self) -> str | None:
        out = self._ssh("cat", "--", f"{self.remote.path.rstrip('/')}/{LATEST}")
        name = out.strip()
        return name if parse_name(name) is not None else None


def make_destination(spec: str, algorithm: str = "xxh3",
                     rsh: Sequence[str] = DEFAULT_RSH) -> MountedDestination | RsyncDestination:
    remote = parse_remote(spec)
    if remote is None:
        return MountedDestination(spec, algorithm)
    return RsyncDestination(remote, rsh=rsh)


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


class Uploader:
    """Runs uploads in order on one background thread; the backlog is observable."""

    def __init__(self, destination: Destination, src: Store,
                 on_backlog: Callable[[int, int], None] | None = None,
                 on_done: Callable[[CheckpointInfo, BaseException | None], None] | None = None,
                 ) -> None:
        self.destination = destination
        self.src = src
        self._pool = SerialWorker("slurmft-upload")
        self._lock = threading.Lock()
        self._pending: dict[str, int] = {}
        self._on_backlog = on_backlog
        self._on_done = on_done

    @property
    def backlog(self) -> tuple[int, int]:
        """(checkpoints waiting or in flight, their bytes)."""
        with self._lock:
            return len(self._pending), sum(self._pending.values())

    def pending_names(self) -> list[str]:
        """Checkpoints still to upload: the local cache must not rotate them out."""
        with self._lock:
            return list(self._pending)

    def _notify(self) -> None:
        if self._on_backlog:
            count, nbytes = self.backlog
            try:
                self._on_backlog(count, nbytes)
            except Exception:  # noqa: BLE001 - a metrics callback must not break uploads
                log.exception("backlog callback failed")

    def submit(self, info: CheckpointInfo) -> Future:
        with self._lock:
            self._pending[info.name] = info.bytes_written
        self._notify()
        return self._pool.submit(self._run, info)

    def _run(self, info: CheckpointInfo) -> CheckpointInfo:
        error: BaseException | None = None
        try:
            self.destination.upload(self.src, info)
            return info
        except BaseException as exc:
            error = exc
            raise
        finally:
            with self._lock:
                self._pending.pop(info.name, None)
            self._notify()
            if self._on_done:
                self._on_done(info, error)

    def shutdown(self) -> None:
        self._pool.shutdown()
