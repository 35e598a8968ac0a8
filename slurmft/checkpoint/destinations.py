"""Where verified checkpoints end up: a mounted path, or ``host:path`` over rsync and ssh.

* a mounted path (NFS, Lustre, a local disk): ``MountedDestination`` copies into a
  ``.tmp-`` directory, fsyncs, renames, then re-reads the copy against the manifest before
  it becomes ``latest`` there;
* ``host:path``: ``RsyncDestination`` runs Debian's rsync over ssh (argv lists, no shell,
  the host validated), uploads into ``.tmp-<name>``, confirms with a checksum dry run that
  the remote copy is identical, then renames it remotely and updates ``latest``.

A mounted destination remembers what it was at first use (a marker file and the device id):
if the directory vanishes or becomes another file system (a lost mount, ``rm -rf``), uploads
stop with DestinationLostError instead of recreating it on the bare mountpoint.
upload.py runs the uploads (in order, retried) on a background thread.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from slurmft.checkpoint.manifest import LATEST, CheckpointInfo, parse_name, tmp_name
from slurmft.checkpoint.store import FaultHook, Store, publish_dir, replace_file
from slurmft.core.atomic import fsync_dir
from slurmft.core.errors import (
    CheckpointError, ConfigError, CorruptCheckpointError, DestinationLostError,
)
from slurmft.core.log import get_logger
from slurmft.core.nodeset import validate_hostname

log = get_logger(__name__)

DEFAULT_RSH = ("ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10")
_USER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9._-]{0,31}$")
MARKER = ".slurmft-destination"      # written at a mounted destination's first use


class Destination(Protocol):
    """Where verified checkpoints end up."""

    def upload(self, src: Store, info: CheckpointInfo) -> None: ...
    def describe(self) -> str: ...


class MountedDestination:
    """A directory on a mounted file system, checked to still be that file system.

    At first use the root is created if needed and a marker file (a random token) is written
    into it, or an existing marker is adopted; its device id is remembered. Every upload
    first checks that the root is still there with the same marker: a root that vanished,
    or a marker that is missing or different, is a lost mount (DestinationLostError) and the
    directory is NOT recreated. A new device id with the same marker is the same file system
    mounted again, and is accepted.
    """

    def __init__(self, root: str | os.PathLike, algorithm: str = "xxh3") -> None:
        self.store = Store(root, algorithm)
        self._identity: tuple[int, str] | None = None     # (st_dev, marker token)

    def describe(self) -> str:
        return str(self.store.root)

    def _read_marker(self) -> str | None:
        try:
            return (self.store.root / MARKER).read_text().strip() or None
        except (OSError, UnicodeDecodeError):
            return None

    def attach(self) -> None:
        """First use: create the root if it is missing, write or adopt the marker."""
        self.store.ensure_root()
        token = self._read_marker()
        if token is None:
            token = uuid.uuid4().hex
            try:
                replace_file(self.store.root / MARKER, (token + "\n").encode())
            except OSError as exc:
                raise CheckpointError(
                    f"cannot write {self.store.root / MARKER}: {exc.strerror}") from None
        self._identity = (os.stat(self.store.root).st_dev, token)

    def check_mount(self) -> None:
        """Raise DestinationLostError unless the root is the file system of first use."""
        if self._identity is None:
            self.attach()
            return
        dev, token = self._identity
        root = self.store.root
        what_to_do = ("uploads stopped; the checkpoints wait in the local cache. Mount it again "
                      f"(the marker {MARKER} shows it is back) or copy them there by hand")
        try:
            st = os.stat(root)
        except FileNotFoundError:
            raise DestinationLostError(
                f"checkpoint destination {root} is gone (a lost mount or a removed directory): "
                f"{what_to_do}") from None
        except OSError as exc:
            raise CheckpointError(f"cannot reach checkpoint destination {root}: {exc.strerror}") from None
        marker = self._read_marker()
        if marker != token:
            why = ("is another file system now (device "
                   f"{st.st_dev:#x}, was {dev:#x})" if st.st_dev != dev
                   else f"was emptied or replaced (its {MARKER} is {'missing' if marker is None else 'different'})")
            raise DestinationLostError(f"checkpoint destination {root} {why}: {what_to_do}")
        if st.st_dev != dev:
            log.info("checkpoint destination %s is mounted again (same marker)", root)
            self._identity = (st.st_dev, token)

    def upload(self, src: Store, info: CheckpointInfo) -> None:
        self.check_mount()
        dst = self.store
        if info.base and not (dst.root / info.base).is_dir():
            dst_base = src.verify(info.base)
            self.upload(src, dst_base)
        final = dst.root / info.name
        tmp = dst.root / tmp_name(f"up-{info.name}")
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
        try:
            dst.verify(info.name)      # verified on arrival, before it becomes latest
        except CorruptCheckpointError:
            # A bad copy must not stay there looking complete: move it aside, then delete.
            trash = dst.root / tmp_name(f"bad-{info.name}")
            os.rename(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
            raise
        dst.advance_latest(info)       # the uploading run's newest (lineage, store.py)

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
        tmp = tmp_name(f"up-{info.name}")
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
        latest_tmp = src.root / tmp_name("latest-up")
        latest_tmp.write_text(info.name + "\n")
        try:
            rtmp = tmp_name("latest")
            self._rsync("--fsync", str(latest_tmp), self._remote(rtmp))
            self._ssh("mv", "-T", "--", f"{rpath}/{rtmp}", f"{rpath}/{LATEST}")
        finally:
            latest_tmp.unlink(missing_ok=True)

    def fetch(self, name: str, into: Store) -> None:
        """Download one checkpoint (and nothing else) into a local store."""
        into.ensure_root()
        tmp = into.root / tmp_name(f"down-{name}")
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


def open_destination(spec: str, local_cache: str | os.PathLike | None, algorithm: str,
                     fault_hook: FaultHook | None = None, rsh: Sequence[str] = DEFAULT_RSH,
                     ) -> tuple[Store, MountedDestination | RsyncDestination | None]:
    """The store saves are written to, and the destination they are uploaded to (None:
    ``spec`` is that store, no upload). A remote ``spec`` needs a ``local_cache``."""
    remote = parse_remote(spec)
    if remote is not None and local_cache is None:
        raise ConfigError(f"checkpoint destination {spec!r} is remote: set a local_cache directory")
    if local_cache is None:
        return Store(spec, algorithm, fault_hook), None
    dest = RsyncDestination(remote, rsh=rsh) if remote else MountedDestination(spec, algorithm)
    return Store(local_cache, algorithm, fault_hook), dest
