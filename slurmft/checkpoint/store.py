"""A checkpoint root on a mounted file system: atomic write, verification, reading back.

The format of one checkpoint (``step_<012d step>/`` with data.bin, meta.pkl and a manifest
with checksums) is in manifest.py; the state's split into skeleton and arrays in state.py;
which checkpoints may be deleted in retention.py; which belong to the history being
continued in lineage.py.

A save writes into ``.tmp-<name>-<pid>-<rand>/``, fsyncs every file, fsyncs that directory
and renames it to its final name. ``latest`` is a one-line file naming a checkpoint that was
read back and verified; it is replaced the same atomic way (core.atomic: temporary file,
fsync, rename), and the fsync of the root after that rename makes both renames durable.
Anything starting with ``.tmp-`` is a save cut short by a crash: it is never read and
``cleanup`` removes it.

A differential checkpoint (``kind: diff``) writes only the arrays whose digest differs from
its full ``base``; the manifest still lists every array, with ``source`` naming the
checkpoint that holds its bytes, and records the base's manifest checksum: verification
refuses a diff whose base is not that exact checkpoint. Verification checks every array's
digest (where recorded) as rebuilding does, so ``verify`` and ``load`` agree.
"""

from __future__ import annotations

import json
import mmap
import os
import pickle
import shutil
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from slurmft.checkpoint import retention as _retention
from slurmft.checkpoint.lineage import Lineage, newest_first, trace
# The format's names are part of this module's API too (``from slurmft.checkpoint.store
# import DATA, CheckpointInfo, step_name, ...``).
from slurmft.checkpoint.manifest import (  # noqa: F401
    ALGORITHMS, ALIGN, CHUNK, DATA, LATEST, MANIFEST, META, OWNER, TMP_PREFIX, ArrayEntry,
    CheckpointInfo, FileEntry, check_algorithm, digest_bytes, digest_file, manifest_bytes,
    new_hasher, new_run_id, parse_manifest, parse_name, step_name, tmp_name,
)
from slurmft.checkpoint.snapshot import Snapshot
from slurmft.checkpoint.state import (  # noqa: F401
    ArrayRef, TensorRef, bytes_view, join_state, split_state,
)
from slurmft.core.atomic import atomic_write
from slurmft.core.errors import CheckpointError, CorruptCheckpointError

# A test hook: called with a label at each step of a save ("data", "manifest", "rename", ...).
FaultHook = Callable[[str], None]


def replace_file(path: Path, data: bytes) -> None:
    """``path`` replaced atomically and durably (core.atomic); a crash leaves at most a
    ``.tmp-`` file that ``Store.cleanup`` removes."""
    atomic_write(path, data, tmp_prefix=TMP_PREFIX)


def publish_dir(tmp: Path, final: Path) -> None:
    """Rename the finished directory ``tmp`` to ``final``. The same step saved again moves
    the old one aside first, so ``final`` is never visible half-done."""
    if final.exists():
        trash = final.parent / tmp_name(f"old-{final.name}")
        os.rename(final, trash)
        os.rename(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, final)


class Store:
    """A checkpoint root on a mounted file system (local disk, NFS, Lustre)."""

    def __init__(self, root: str | os.PathLike, algorithm: str = "xxh3",
                 fault_hook: FaultHook | None = None) -> None:
        check_algorithm(algorithm)
        self.root = Path(root)
        self.algorithm = algorithm
        self._fault = fault_hook or (lambda label: None)
        # name -> (fingerprint of its files, the info it verified to): see verify(cached=True)
        self._verified: dict[str, tuple[tuple, CheckpointInfo]] = {}
        self._lock = threading.Lock()

    # -- writing --
    def ensure_root(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(f"cannot create checkpoint directory {self.root}: {exc.strerror}") from None

    def array_digests(self, arrays: Mapping[str, np.ndarray]) -> dict[str, str]:
        return {k: digest_bytes(self.algorithm, bytes_view(a)) for k, a in arrays.items()}

    def free_name(self, step: int, run: str = "",
                  taken: Callable[[str], bool] | None = None) -> str:
        """A name for a new checkpoint of ``step`` that no directory here (nor, per
        ``taken``, elsewhere, e.g. at the upload destination) uses: ``step_<step>``, else
        ``step_<step>.<run>``, else ``step_<step>.<run>-<n>``."""
        plain = step_name(step)
        tag = run or new_run_id()
        for n in range(1, 1000):
            name = plain if n == 1 else f"{plain}.{tag}" if n == 2 else f"{plain}.{tag}-{n - 1}"
            if not os.path.lexists(self.root / name) and not (taken and taken(name)):
                return name
        raise CheckpointError(f"no free name for step {step} in {self.root}: remove old checkpoints")

    def write(self, snap: Snapshot, base: CheckpointInfo | None = None,
              array_digests: bool = True,
              taken: Callable[[str], bool] | None = None) -> CheckpointInfo:
        """Write ``snap`` atomically (as a diff against ``base`` if given); not yet verified.

        ``array_digests=False`` skips the per-array digests (one hashing pass less) when no
        differential save will build on this one; the file checksum still covers every byte.
        The name is new (``free_name``; ``taken`` says which names are used elsewhere): an
        existing checkpoint is never replaced.
        """
        self.ensure_root()
        name = self.free_name(snap.step, snap.run, taken)
        final = self.root / name
        tmp = self.root / tmp_name(f"{name}-{os.getpid()}")
        tmp.mkdir()
        try:
            self._fault("data")
            data, entries = self._write_data(tmp / DATA, name, snap, base,
                                             need_digest=array_digests or base is not None)
            files = [data]
            self._fault("meta")
            atomic_write(tmp / META, snap.skeleton)
            files.append(FileEntry(META, len(snap.skeleton), digest_bytes(self.algorithm, snap.skeleton)))
            info = _new_info(name, final, snap, base, self.algorithm, files, entries)
            self._fault("manifest")
            # Its fsync of ``tmp`` makes every entry of the new directory durable.
            atomic_write(tmp / MANIFEST, manifest_bytes(info))
            self._fault("rename")
            try:
                # Never onto an existing checkpoint: a name stands for one data only.
                os.rename(tmp, final)
            except OSError as exc:
                raise CheckpointError(
                    f"cannot publish {final}: {exc.strerror} (another run writes this directory?)"
                ) from None
            # No fsync of the root here: set_latest() fsyncs it after its own rename, which
            # makes both renames durable; until then ``latest`` names the previous one.
            self._fault("renamed")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return info

    def _write_data(self, path: Path, name: str, snap: Snapshot, base: CheckpointInfo | None,
                    need_digest: bool) -> tuple[FileEntry, dict[str, ArrayEntry]]:
        """Write data.bin (fsynced): every array of ``snap`` that ``base`` does not hold
        unchanged, 64-byte aligned. Returns its file entry and the entry of every array."""
        entries: dict[str, ArrayEntry] = {}
        h = new_hasher(self.algorithm)
        offset = 0
        with open(path, "wb", buffering=0) as f:
            for key, arr in snap.arrays.items():
                snap.wait_ready(key)
                view = bytes_view(arr)
                digest = digest_bytes(self.algorithm, view) if need_digest else ""
                prev = base.arrays.get(key) if base else None
                if (prev is not None and prev.digest and prev.digest == digest
                        and prev.dtype == arr.dtype.str and prev.shape == list(arr.shape)):
                    entries[key] = ArrayEntry(arr.dtype.str, list(arr.shape), arr.nbytes,
                                              digest, prev.source, prev.offset)
                    continue
                pad = (-offset) % ALIGN
                if pad:
                    f.write(b"\0" * pad)
                    h.update(b"\0" * pad)
                    offset += pad
                h.update(view)
                _write_all(f, view)
                entries[key] = ArrayEntry(arr.dtype.str, list(arr.shape), arr.nbytes,
                                          digest, name, offset)
                offset += arr.nbytes
            self._fault("data-written")
            os.fsync(f.fileno())
        return FileEntry(DATA, offset, f"{self.algorithm}:{h.hexdigest()}"), entries

    def claim(self, token: str) -> None:
        """Make ``token`` the owner of this directory (a newer run fences off older ones)."""
        self.ensure_root()
        replace_file(self.root / OWNER, (token.strip() + "\n").encode())

    def owner(self) -> str | None:
        """The token of the run that claimed this directory last, or None."""
        try:
            return (self.root / OWNER).read_text().strip() or None
        except (OSError, UnicodeDecodeError):
            return None

    def set_latest(self, name: str) -> None:
        self._fault("latest")
        replace_file(self.root / LATEST, (name + "\n").encode())
        self._fault("latest-set")

    def advance_latest(self, info: CheckpointInfo) -> None:
        """Make ``info`` (verified) latest: the newest checkpoint of the run writing now, even
        when an older run reached a higher step (that run's later steps are then an
        abandoned branch). Only a newer checkpoint of the same run (an upload retried out
        of order) keeps its place."""
        current = self.latest_name()
        if current and current != info.name and info.run:
            try:
                now = self.read_manifest(current)
            except CorruptCheckpointError:
                now = None
            if now is not None and now.run == info.run and (now.step, now.time) > (info.step, info.time):
                return
        self.set_latest(info.name)

    # -- reading --
    def latest_name(self) -> str | None:
        try:
            text = (self.root / LATEST).read_text().strip()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, UnicodeDecodeError):
            return None
        return text if parse_name(text) is not None else None

    def names(self) -> list[str]:
        """Complete checkpoint directories, newest step first."""
        try:
            entries = os.listdir(self.root)
        except (FileNotFoundError, NotADirectoryError):
            return []
        names = [n for n in entries if parse_name(n) is not None and (self.root / n).is_dir()]
        return sorted(names, key=lambda n: (parse_name(n) or 0, n), reverse=True)

    def read_manifest(self, name: str) -> CheckpointInfo:
        path = self.root / name / MANIFEST
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise CorruptCheckpointError(f"{path}: manifest missing") from None
        except OSError as exc:
            raise CorruptCheckpointError(f"{path}: cannot read manifest: {exc.strerror}") from None
        return parse_manifest(raw, name, self.root / name)

    def verify(self, name: str, cached: bool = False, _depth: int = 0) -> CheckpointInfo:
        """Read back every file and compare sizes and checksums, check every array's place
        and digest, and for a diff that its base is the exact checkpoint it was written
        against; raise CorruptCheckpointError naming the first problem.

        ``cached=True`` trusts an earlier successful verification of this checkpoint (and
        of its base) in this Store if none of its files changed since (size, mtime, inode):
        what rotation uses, so a save does not re-read every checkpoint it keeps."""
        fingerprint = self._fingerprint(name)
        if cached and fingerprint is not None:
            with self._lock:
                hit = self._verified.get(name)
            if hit is not None and hit[0] == fingerprint:
                return replace(hit[1])
        info = self.read_manifest(name)
        for entry in info.files:
            path = self.root / name / entry.name
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise CorruptCheckpointError(f"{path}: file missing") from None
            except OSError as exc:
                raise CorruptCheckpointError(f"{path}: cannot read: {exc.strerror}") from None
            if size != entry.size:
                raise CorruptCheckpointError(
                    f"{path}: size {size} != {entry.size} in manifest (truncated or extended)")
            algo = entry.checksum.split(":", 1)[0]
            if algo not in ALGORITHMS:
                raise CorruptCheckpointError(f"{path}: unknown checksum algorithm {algo!r}")
            try:
                got = digest_file(path, algo)
            except OSError as exc:
                raise CorruptCheckpointError(f"{path}: cannot read: {exc.strerror}") from None
            if got != entry.checksum:
                raise CorruptCheckpointError(f"{path}: checksum mismatch ({got} != {entry.checksum})")
        base = None
        if info.kind == "diff":
            if _depth > 0 or not info.base:
                raise CorruptCheckpointError(f"{info.path}: differential checkpoint without a full base")
            try:
                base = self.verify(info.base, cached, _depth + 1)
            except CorruptCheckpointError as exc:
                raise CorruptCheckpointError(f"{info.path}: its base is invalid: {exc}") from None
            if info.base_checksum and base.checksum != info.base_checksum:
                raise CorruptCheckpointError(
                    f"{info.path}: its base {info.base} is not the checkpoint it was written "
                    f"against (manifest checksum {base.checksum} != {info.base_checksum})")
        self._check_arrays(info, base)
        info.verified = True
        if fingerprint is not None:
            with self._lock:
                self._verified[name] = (fingerprint, replace(info))
        return info

    def is_valid(self, name: str) -> bool:
        """Whether ``name`` verifies (cached as in ``verify(cached=True)``)."""
        try:
            self.verify(name, cached=True)
            return True
        except CorruptCheckpointError:
            return False

    def _fingerprint(self, name: str, _depth: int = 0) -> tuple | None:
        """(name, size, mtime, inode) of every file of ``name`` (and of its base), or None."""
        folder = self.root / name
        try:
            entries = sorted(os.listdir(folder))
            own = tuple((e, st.st_size, st.st_mtime_ns, st.st_ino)
                        for e in entries for st in [os.stat(folder / e)])
        except OSError:
            return None
        base = None
        if _depth == 0:
            try:
                doc = json.loads((folder / MANIFEST).read_bytes())
                base_name = doc.get("base") if isinstance(doc, dict) else None
            except (OSError, ValueError):
                return None
            if base_name:
                base = self._fingerprint(str(base_name), 1)
                if base is None:
                    return None
        return (own, base)

    def _check_arrays(self, info: CheckpointInfo, base: CheckpointInfo | None) -> None:
        """Every array lies inside the data of this checkpoint or its base, an array taken
        from the base is the base's own entry, and each digest matches its bytes."""
        sizes = {f.name: f.size for f in info.files}
        data_size = {info.name: sizes.get(DATA, 0)}
        if base is not None:
            data_size[base.name] = next((f.size for f in base.files if f.name == DATA), 0)
        own: list[tuple[str, ArrayEntry]] = []
        for key, e in info.arrays.items():
            if e.source not in data_size:
                raise CorruptCheckpointError(
                    f"{info.path}: array {key} points to {e.source}, which is neither this "
                    f"checkpoint nor its base")
            if e.source != info.name:
                assert base is not None
                b = base.arrays.get(key)
                if b is None or asdict(b) != asdict(e):
                    raise CorruptCheckpointError(
                        f"{info.path}: array {key} does not match its entry in the base {base.name}")
            if e.offset < 0 or e.nbytes < 0 or e.offset + e.nbytes > data_size[e.source]:
                raise CorruptCheckpointError(
                    f"{info.path}: array {key} lies outside the data of {e.source}")
            if e.source == info.name and e.digest:
                own.append((key, e))
        if not own:
            return
        path = self.root / info.name / DATA

        def check(view: memoryview) -> None:
            for key, e in own:
                algo = e.digest.split(":", 1)[0]
                if algo not in ALGORITHMS:
                    raise CorruptCheckpointError(f"{path}: array {key}: unknown digest algorithm {algo!r}")
                if digest_bytes(algo, view[e.offset:e.offset + e.nbytes]) != e.digest:
                    raise CorruptCheckpointError(f"{path}: array {key} does not match its digest")

        if not data_size[info.name]:
            check(memoryview(b""))          # only empty arrays (mmap refuses an empty file)
            return
        try:
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                view = memoryview(m)
                try:
                    check(view)
                finally:
                    view.release()
        except (OSError, ValueError) as exc:
            raise CorruptCheckpointError(f"{path}: cannot read arrays: {exc}") from None

    def read_state(self, info: CheckpointInfo) -> Any:
        """Rebuild the state (full + diff) and check every array against its digest."""
        arrays: dict[str, np.ndarray] = {}
        for key, e in info.arrays.items():
            path = self.root / e.source / DATA
            dtype = np.dtype(e.dtype)
            count = e.nbytes // dtype.itemsize if dtype.itemsize else 0
            try:
                arr = np.fromfile(path, dtype=dtype, count=count, offset=e.offset)
            except (OSError, ValueError) as exc:
                raise CorruptCheckpointError(f"{path}: cannot read array {key}: {exc}") from None
            if arr.nbytes != e.nbytes:
                raise CorruptCheckpointError(f"{path}: array {key} truncated")
            if e.digest and digest_bytes(info.algorithm, bytes_view(arr)) != e.digest:
                raise CorruptCheckpointError(f"{path}: array {key} does not match its digest")
            arrays[key] = arr.reshape(e.shape)
        meta_path = self.root / info.name / META
        try:
            skeleton = pickle.loads(meta_path.read_bytes())
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means corrupt
            raise CorruptCheckpointError(f"{meta_path}: cannot unpickle state: {exc}") from None
        return join_state(skeleton, arrays)

    def list(self) -> list[CheckpointInfo]:
        """Every complete checkpoint, newest first (step, then time written); broken
        manifests listed with ``error``."""
        out = []
        for name in self.names():
            try:
                out.append(self.read_manifest(name))
            except CorruptCheckpointError as exc:
                out.append(CheckpointInfo(name=name, path=str(self.root / name),
                                          step=parse_name(name) or 0, error=str(exc)))
        return sorted(out, key=newest_first)

    def lineage(self) -> Lineage:
        """This directory's checkpoints split into the branch ``latest`` is on, abandoned
        ones and unreadable ones (see lineage.py)."""
        return trace(self.list(), [self.latest_name()])

    def find_valid(self, lineage: Lineage | None = None,
                   failed: set[str] | None = None) -> CheckpointInfo | None:
        """The checkpoint a load resumes from: the newest on the branch that verifies.
        ``lineage``: one already traced here (its manifests are not read again); ``failed``:
        collects the names tried on the way that did not verify."""
        for info in (lineage or self.lineage()).candidates():
            if info.error:
                continue
            try:
                return self.verify(info.name, cached=True)
            except CorruptCheckpointError:
                if failed is not None:
                    failed.add(info.name)
        return None

    # -- housekeeping --
    def cleanup(self) -> list[str]:
        """Remove what a crashed save left behind (``.tmp-*``); return the names removed."""
        removed = []
        try:
            entries = os.listdir(self.root)
        except (FileNotFoundError, NotADirectoryError):
            return removed
        for n in entries:
            if n.startswith(TMP_PREFIX):
                p = self.root / n
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed.append(n)
        return removed

    def retention(self, keep_last: int, protect: Iterable[str] | None = None,
                  ) -> tuple[list[CheckpointInfo], list[CheckpointInfo]]:
        """(kept, to delete), newest first: the rules are in ``retention.retention``."""
        return _retention.retention(self, keep_last, protect)

    def prune(self, keep_last: int, protect: Iterable[str] | None = None) -> list[str]:
        """Apply ``retention``, each checkpoint all or nothing (``retention.prune``)."""
        return _retention.prune(self, keep_last, protect)

    def forget(self, name: str) -> None:
        """Drop what ``verify(cached=True)`` remembers of ``name`` (it is being deleted)."""
        with self._lock:
            self._verified.pop(name, None)


def _new_info(name: str, final: Path, snap: Snapshot, base: CheckpointInfo | None,
              algorithm: str, files: list[FileEntry],
              entries: dict[str, ArrayEntry]) -> CheckpointInfo:
    """The manifest's content for a checkpoint being written (lineage from ``snap``)."""
    parent = snap.parent
    return CheckpointInfo(
        name=name, path=str(final), step=snap.step,
        kind="diff" if base else "full", base=base.name if base else "",
        time=snap.time, world_size=snap.world_size, algorithm=algorithm,
        files=files, arrays=entries, bytes_written=files[0].size,
        bytes_total=sum(e.nbytes for e in entries.values()), meta=dict(snap.meta),
        run=snap.run, parent=parent.name if parent else "",
        parent_run=parent.run if parent else "",
        parent_step=parent.step if parent else -1,
        base_checksum=base.checksum if base else "",
    )


def _write_all(f: Any, view: memoryview) -> None:
    # Large writes in chunks: a raw write may be short, and some file systems cap the size.
    total = len(view)
    pos = 0
    while pos < total:
        n = f.write(view[pos:pos + CHUNK])
        if not n:
            raise CheckpointError("short write to checkpoint file")
        pos += n
