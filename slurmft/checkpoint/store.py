"""On-disk checkpoint format: atomic write, manifest with checksums, verification, rotation.

One checkpoint is one directory ``step_<012d step>/`` under the checkpoint root; when that
name is taken (a run that went back to an older checkpoint saves a step again), the new one
gets ``step_<012d step>.<run id>`` instead, so a name never stands for two different data::

    data.bin       raw bytes of every array written by this save, 64-byte aligned
    meta.pkl       the state with arrays replaced by ``ArrayRef`` placeholders (pickled)
    manifest.json  step, time, world size, kind, files (size + checksum), per-array index
                   (dtype, shape, offset, digest, which checkpoint holds the bytes); it
                   carries its own checksum, so a broken manifest is detected too; and
                   the lineage: the run that wrote it and the checkpoint that run resumed
                   from (lineage.py)

A save writes into ``.tmp-<name>-<pid>-<rand>/``, fsyncs every file, fsyncs that directory
and renames it to its final name. ``latest`` is a one-line file naming a checkpoint that was
read back and verified; it is replaced the same atomic way (temporary file, fsync, rename),
and the fsync of the root after that rename makes both renames durable. Anything starting
with ``.tmp-`` is a save cut short by a crash: it is never read and ``cleanup`` removes it.

A differential checkpoint (``kind: diff``) writes only the arrays whose digest differs from
its full ``base``; the manifest still lists every array, with ``source`` naming the
checkpoint that holds its bytes, and records the base's manifest checksum: verification
refuses a diff whose base is not that exact checkpoint. Verification checks every array's
digest (where recorded) as rebuilding does, so ``verify`` and ``load`` agree.

Retention (``prune``) follows the lineage: abandoned checkpoints go first, ``keep_last``
counts checkpoints that verify, and a checkpoint is deleted all or nothing (renamed to a
hidden ``.tmp-del-`` name, then removed).

Numpy arrays and torch tensors are stored as raw bytes; tensors are recognised without
importing torch, and converted (both ways) by torch.py, imported only when a state holds one.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import pickle
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from slurmft.checkpoint.lineage import Lineage, newest_first, trace
from slurmft.core.errors import CheckpointError, CorruptCheckpointError, PruneError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DATA = "data.bin"
META = "meta.pkl"
LATEST = "latest"
OWNER = ".owner"          # token of the run that may publish here (fencing)
TMP_PREFIX = ".tmp-"
ALIGN = 64
CHUNK = 64 << 20
ALGORITHMS = ("xxh3", "sha256")
# step_<12 digits>, optionally .<suffix> (lowercase letters, digits, '-') when the plain name
# was taken by another checkpoint of the same step.
_NAME_RE = re.compile(r"^step_(\d{12})(?:\.[0-9a-z][0-9a-z-]{0,39})?$")

# A test hook: called with a label at each step of a save ("data", "manifest", "rename", ...).
FaultHook = Callable[[str], None]


def step_name(step: int) -> str:
    if step < 0 or step >= 10**12:
        raise CheckpointError(f"step must be in 0..10**12-1, not {step}")
    return f"step_{step:012d}"


def parse_name(name: str) -> int | None:
    """The step of a checkpoint directory name (``step_<12 digits>[.<suffix>]``), else None."""
    m = _NAME_RE.match(name)
    return int(m.group(1)) if m else None


def new_run_id() -> str:
    """A short id naming one run of the training (lowercase hex: usable in a name suffix)."""
    return uuid.uuid4().hex[:10]


def new_hasher(algorithm: str) -> Any:
    if algorithm == "xxh3":
        return xxhash.xxh3_128()
    if algorithm == "sha256":
        return hashlib.sha256()
    raise CheckpointError(f"unknown checksum algorithm {algorithm!r}; allowed: {', '.join(ALGORITHMS)}")


def digest_bytes(algorithm: str, data: Any) -> str:
    h = new_hasher(algorithm)
    h.update(data)
    return f"{algorithm}:{h.hexdigest()}"


def digest_file(path: Path, algorithm: str) -> str:
    """Checksum a file by mapping it (no copy through Python buffers)."""
    h = new_hasher(algorithm)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                view = memoryview(m)
                try:
                    for start in range(0, size, CHUNK):
                        h.update(view[start:start + CHUNK])
                finally:
                    view.release()
    return f"{algorithm}:{h.hexdigest()}"


@dataclass(frozen=True)
class ArrayRef:
    """Placeholder for an array inside the pickled state skeleton."""

    key: str


@dataclass
class FileEntry:
    name: str
    size: int
    checksum: str


@dataclass
class ArrayEntry:
    dtype: str
    shape: list[int]
    nbytes: int
    digest: str
    source: str          # checkpoint directory holding the bytes (itself or its base)
    offset: int


@dataclass
class CheckpointInfo:
    """What a manifest says about one checkpoint (``verified`` once read back)."""

    name: str
    path: str
    step: int
    kind: str = "full"                 # full | diff
    base: str = ""                     # the full checkpoint a diff builds on
    time: float = 0.0                  # wall-clock seconds since the epoch
    world_size: int = 1
    algorithm: str = "xxh3"
    files: list[FileEntry] = field(default_factory=list)
    arrays: dict[str, ArrayEntry] = field(default_factory=dict)
    bytes_written: int = 0             # data bytes this save wrote
    bytes_total: int = 0               # data bytes of the full rebuilt state
    meta: dict = field(default_factory=dict)
    run: str = ""                      # the run that wrote it ("" before lineage was recorded)
    parent: str = ""                   # the checkpoint that run resumed from ("" fresh start)
    parent_run: str = ""               # ... and the run that wrote that one
    parent_step: int = -1
    base_checksum: str = ""            # the base's manifest checksum (its identity)
    checksum: str = ""                 # this manifest's checksum
    verified: bool = False
    error: str = ""                    # why it is not valid (list() only)

    def summary(self) -> dict:
        return {
            "name": self.name, "step": self.step, "kind": self.kind, "base": self.base,
            "time": self.time, "world_size": self.world_size, "algorithm": self.algorithm,
            "bytes_written": self.bytes_written, "bytes_total": self.bytes_total,
            "files": [asdict(f) for f in self.files], "run": self.run, "parent": self.parent,
            "verified": self.verified, "error": self.error, "path": self.path,
        }


@dataclass
class Snapshot:
    """A copy of the state taken on the training thread, written by the background thread."""

    step: int
    skeleton: bytes                     # pickled state with ArrayRef placeholders
    arrays: dict[str, np.ndarray]
    world_size: int = 1
    meta: dict = field(default_factory=dict)
    time: float = field(default_factory=time.time)
    # Pipelining: the writer may start while the training thread still copies. ``ready``
    # holds one event per array key, set once that array's copy is complete.
    ready: dict[str, threading.Event] | None = None
    aborted: bool = False
    # Lineage (see lineage.py): the run saving this, and the checkpoint it resumed from.
    run: str = ""
    parent: CheckpointInfo | None = None

    def wait_ready(self, key: str) -> None:
        if self.ready is not None:
            self.ready[key].wait()
        if self.aborted:
            raise CheckpointError(f"snapshot of step {self.step} was aborted")


# --- state <-> skeleton + arrays ------------------------------------------------------------

@dataclass(frozen=True)
class TensorRef(ArrayRef):
    """Placeholder for a torch tensor: its bytes are stored as an array (dtypes numpy lacks,
    such as bfloat16, as same-width integers) and ``dtype`` ("torch.bfloat16") brings it back."""

    dtype: str = ""


def _is_torch_tensor(obj: Any) -> bool:
    # Duck-typed, so this module never imports torch: torch.Tensor or a subclass of it.
    return any(c.__name__ == "Tensor" and c.__module__ == "torch" for c in type(obj).__mro__)


def split_state(state: Any, prefix: str = "") -> tuple[Any, dict[str, np.ndarray]]:
    """Replace every numpy array and torch tensor in nested dicts/lists/tuples by an ArrayRef
    (TensorRef); return the skeleton and the arrays (CPU tensors as views, no copy)."""
    arrays: dict[str, np.ndarray] = {}

    def walk(obj: Any, path: str) -> Any:
        if isinstance(obj, np.ndarray) and not obj.dtype.hasobject:
            arrays[path] = obj
            return ArrayRef(path)
        if _is_torch_tensor(obj):
            # torch is loaded already (this is a tensor): its adapter converts, as for
            # TorchCheckpointer.
            from slurmft.checkpoint.torch import tensor_to_numpy
            try:
                arr, dtype = tensor_to_numpy(obj)
            except (TypeError, RuntimeError):
                return obj             # sparse, quantized, meta...: pickled as they are
            arrays[path] = arr
            return TensorRef(path, dtype)
        if isinstance(obj, Mapping):
            return {k: walk(v, f"{path}/{k}") for k, v in obj.items()}
        if isinstance(obj, list):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(obj)]
        if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
            return tuple(walk(v, f"{path}/{i}") for i, v in enumerate(obj))
        return obj

    return walk(state, prefix), arrays


def join_state(skeleton: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """Put the arrays back into the skeleton; a TensorRef becomes a CPU torch tensor of its
    dtype again (a process without torch gets the stored numpy array)."""
    def walk(obj: Any) -> Any:
        if isinstance(obj, TensorRef):
            return _tensor_from_numpy(arrays[obj.key], obj.dtype)
        if isinstance(obj, ArrayRef):
            return arrays[obj.key]
        if isinstance(obj, dict):
            return {k: walk(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [walk(v) for v in obj]
        if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
            return tuple(walk(v) for v in obj)
        return obj

    return walk(skeleton)


def _tensor_from_numpy(arr: np.ndarray, dtype: str) -> Any:
    try:
        from slurmft.checkpoint.torch import tensor_from_numpy   # imports torch
    except ImportError:
        return arr
    return tensor_from_numpy(arr, dtype)


# --- durable file operations ---------------------------------------------------------------

def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_durable(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def replace_file_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` under a temporary name, fsync, rename over ``path``, fsync the dir."""
    tmp = path.parent / f"{TMP_PREFIX}{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    write_file_durable(tmp, data)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def publish_dir(tmp: Path, final: Path) -> None:
    """Rename the finished directory ``tmp`` to ``final``. The same step saved again moves
    the old one aside first, so ``final`` is never visible half-done."""
    if final.exists():
        trash = final.parent / f"{TMP_PREFIX}old-{final.name}-{uuid.uuid4().hex[:8]}"
        os.rename(final, trash)
        os.rename(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, final)


def _manifest_checksum(doc: dict) -> str:
    body = {k: v for k, v in doc.items() if k != "manifest_checksum"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return digest_bytes("xxh3", text.encode())


# --- the store ------------------------------------------------------------------------------

class Store:
    """A checkpoint root on a mounted file system (local disk, NFS, Lustre)."""

    def __init__(self, root: str | os.PathLike, algorithm: str = "xxh3",
                 fault_hook: FaultHook | None = None) -> None:
        if algorithm not in ALGORITHMS:
            raise CheckpointError(
                f"unknown checksum algorithm {algorithm!r}; allowed: {', '.join(ALGORITHMS)}")
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
        return {k: digest_bytes(self.algorithm, _bytes_view(a)) for k, a in arrays.items()}

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
        tmp = self.root / f"{TMP_PREFIX}{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            need_digest = array_digests or base is not None
            entries: dict[str, ArrayEntry] = {}
            h = new_hasher(self.algorithm)
            offset = 0
            self._fault("data")
            with open(tmp / DATA, "wb", buffering=0) as f:
                for key, arr in snap.arrays.items():
                    snap.wait_ready(key)
                    view = _bytes_view(arr)
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
            files = [FileEntry(DATA, offset, f"{self.algorithm}:{h.hexdigest()}")]
            self._fault("meta")
            write_file_durable(tmp / META, snap.skeleton)
            files.append(FileEntry(META, len(snap.skeleton), digest_bytes(self.algorithm, snap.skeleton)))
            parent = snap.parent
            info = CheckpointInfo(
                name=name, path=str(final), step=snap.step,
                kind="diff" if base else "full", base=base.name if base else "",
                time=snap.time, world_size=snap.world_size, algorithm=self.algorithm,
                files=files, arrays=entries, bytes_written=offset,
                bytes_total=sum(e.nbytes for e in entries.values()), meta=dict(snap.meta),
                run=snap.run, parent=parent.name if parent else "",
                parent_run=parent.run if parent else "",
                parent_step=parent.step if parent else -1,
                base_checksum=base.checksum if base else "",
            )
            self._fault("manifest")
            write_file_durable(tmp / MANIFEST, _manifest_bytes(info))
            fsync_dir(tmp)
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

    def claim(self, token: str) -> None:
        """Make ``token`` the owner of this directory (a newer run fences off older ones)."""
        self.ensure_root()
        replace_file_atomic(self.root / OWNER, (token.strip() + "\n").encode())

    def owner(self) -> str | None:
        """The token of the run that claimed this directory last, or None."""
        try:
            return (self.root / OWNER).read_text().strip() or None
        except (OSError, UnicodeDecodeError):
            return None

    def set_latest(self, name: str) -> None:
        self._fault("latest")
        replace_file_atomic(self.root / LATEST, (name + "\n").encode())
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
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptCheckpointError(f"{path}: manifest is not valid JSON ({exc})") from None
        if doc.get("manifest_checksum") != _manifest_checksum(doc):
            raise CorruptCheckpointError(f"{path}: manifest checksum mismatch (manifest was altered)")
        if doc.get("format") != FORMAT_VERSION:
            raise CorruptCheckpointError(f"{path}: unknown format {doc.get('format')!r}")
        try:
            info = CheckpointInfo(
                name=name, path=str(self.root / name), step=int(doc["step"]), kind=doc["kind"],
                base=doc["base"], time=float(doc["time"]), world_size=int(doc["world_size"]),
                algorithm=doc["algorithm"], files=[FileEntry(**f) for f in doc["files"]],
                arrays={k: ArrayEntry(**v) for k, v in doc["arrays"].items()},
                bytes_written=int(doc["bytes_written"]), bytes_total=int(doc["bytes_total"]),
                meta=dict(doc.get("meta") or {}),
                run=str(doc.get("run") or ""), parent=str(doc.get("parent") or ""),
                parent_run=str(doc.get("parent_run") or ""),
                parent_step=int(doc.get("parent_step", -1)),
                base_checksum=str(doc.get("base_checksum") or ""),
                checksum=str(doc["manifest_checksum"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptCheckpointError(f"{path}: manifest field missing or wrong ({exc})") from None
        if info.step != parse_name(name):
            raise CorruptCheckpointError(f"{path}: manifest step {info.step} does not match {name}")
        return info

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
            if e.digest and digest_bytes(info.algorithm, _bytes_view(arr)) != e.digest:
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

    def find_valid(self) -> CheckpointInfo | None:
        """The checkpoint a load resumes from: the newest on the branch that verifies."""
        for info in self.lineage().candidates():
            if not info.error and self.is_valid(info.name):
                return self.verify(info.name, cached=True)
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
        """(kept, to delete), newest first. The rules, in this order:

        * on the branch (lineage.py), the ``keep_last`` newest checkpoints that VERIFY are
          kept, and every checkpoint newer than the oldest of them (a corrupt or unreadable
          one is never the reason a good one goes; it goes once it is old enough);
        * older ones on the branch go; so do abandoned ones, but only once the branch has a
          checkpoint that verifies (never delete the last good data of any kind);
        * checkpoints of another history (``Lineage.foreign``: a fresh start in a directory
          that already held checkpoints) are never deleted here: delete them by hand;
        * always kept: the one ``latest`` names, ``protect``, and the full base of every
          checkpoint that stays.
        """
        if keep_last < 1:
            raise CheckpointError(f"keep_last must be >= 1, not {keep_last}")
        lin = self.lineage()
        live = lin.candidates()
        good = 0
        cut = len(live)
        for i, info in enumerate(live):
            if not info.error and self.is_valid(info.name):
                good += 1
                if good == keep_last:
                    cut = i + 1
                    break
        foreign = {i.name for i in lin.foreign}
        doomed = live[cut:] + ([i for i in lin.abandoned if i.name not in foreign] if good else [])
        keep = {i.name for i in live[:cut]} | set(protect or ())
        latest = self.latest_name()
        if latest:
            keep.add(latest)
        everything = live + lin.abandoned
        doomed_names = {i.name for i in doomed} - keep
        for info in everything:
            if info.name not in doomed_names and info.base:
                keep.add(info.base)
        doomed = sorted((i for i in doomed if i.name not in keep), key=newest_first)
        kept = sorted((i for i in everything if i.name not in {d.name for d in doomed}),
                      key=newest_first)
        return kept, doomed

    def prune(self, keep_last: int, protect: Iterable[str] | None = None) -> list[str]:
        """Apply ``retention``: delete what it gives up, each checkpoint all or nothing.
        Tries every one; returns the names deleted, or raises PruneError naming those that
        could not be deleted (and those deleted)."""
        _, doomed = self.retention(keep_last, protect)
        deleted: list[str] = []
        failed: dict[str, str] = {}
        # Diffs first: a base goes only if every diff on it went.
        for info in sorted(doomed, key=lambda i: i.kind != "diff"):
            users = [d.name for d in doomed if d.base == info.name and d.name in failed]
            if users:
                failed[info.name] = f"kept because {users[0]}, a diff on it, could not be deleted"
                continue
            why = self._delete(info.name)
            if why is None:
                deleted.append(info.name)
            elif why:
                failed[info.name] = why
        if failed:
            first, why = next(iter(failed.items()))
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise PruneError(
                f"could not delete {len(failed)} checkpoint(s) in {self.root}: {first}: {why}{more}; "
                f"deleted {len(deleted)}. Check permissions and immutable flags (ls -ld, lsattr) "
                "of those directories, then run `slurmft checkpoint prune` again",
                deleted=deleted, failed=failed)
        return deleted

    def _delete(self, name: str) -> str | None:
        """Delete one checkpoint directory all or nothing: rename it to a hidden trash name
        (then it is no checkpoint any more), then remove that. None when done, '' when it was
        already gone, else why it failed (under its own name it is then still complete)."""
        trash = self.root / f"{TMP_PREFIX}del-{name}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(self.root / name, trash)
        except FileNotFoundError:
            return ""
        except OSError as exc:
            return f"cannot move it aside: {exc.strerror or exc}"
        with self._lock:
            self._verified.pop(name, None)
        try:
            remove_tree(trash)
        except OSError as exc:
            return (f"moved to {trash.name} but removing that failed: {exc.strerror or exc} "
                    "(no longer a checkpoint; its space is not freed)")
        return None


def remove_tree(path: Path) -> None:
    """Remove a directory tree, raising on the first failure (one place, for tests too)."""
    shutil.rmtree(path)


def _manifest_bytes(info: CheckpointInfo) -> bytes:
    doc = {
        "format": FORMAT_VERSION, "step": info.step, "kind": info.kind, "base": info.base,
        "time": info.time, "world_size": info.world_size, "algorithm": info.algorithm,
        "files": [asdict(f) for f in info.files],
        "arrays": {k: asdict(v) for k, v in info.arrays.items()},
        "bytes_written": info.bytes_written, "bytes_total": info.bytes_total, "meta": info.meta,
        "run": info.run, "parent": info.parent, "parent_run": info.parent_run,
        "parent_step": info.parent_step, "base_checksum": info.base_checksum,
    }
    doc["manifest_checksum"] = info.checksum = _manifest_checksum(doc)
    return json.dumps(doc, indent=1).encode()


def _bytes_view(arr: np.ndarray) -> memoryview:
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return memoryview(arr.reshape(-1).view(np.uint8))


def _write_all(f: Any, view: memoryview) -> None:
    # Large writes in chunks: a raw write may be short, and some file systems cap the size.
    total = len(view)
    pos = 0
    while pos < total:
        n = f.write(view[pos:pos + CHUNK])
        if not n:
            raise CheckpointError("short write to checkpoint file")
        pos += n
