"""The on-disk format of one checkpoint: names, checksums and the manifest.

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

Pure: records and their encoding, no directory access (store.py reads and writes them).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from slurmft.core.errors import CheckpointError, CorruptCheckpointError

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


def tmp_name(label: str) -> str:
    """A hidden name for work in progress (``.tmp-<label>-<random>``): never read as a
    checkpoint, removed by ``Store.cleanup`` when a crash leaves it behind."""
    return f"{TMP_PREFIX}{label}-{uuid.uuid4().hex[:8]}"


# --- checksums ------------------------------------------------------------------------------

def check_algorithm(algorithm: str) -> None:
    if algorithm not in ALGORITHMS:
        raise CheckpointError(
            f"unknown checksum algorithm {algorithm!r}; allowed: {', '.join(ALGORITHMS)}")


def new_hasher(algorithm: str) -> Any:
    check_algorithm(algorithm)
    return xxhash.xxh3_128() if algorithm == "xxh3" else hashlib.sha256()


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


# --- records --------------------------------------------------------------------------------

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


# --- the manifest ---------------------------------------------------------------------------

def manifest_checksum(doc: dict) -> str:
    """The checksum a manifest carries over all its other fields."""
    body = {k: v for k, v in doc.items() if k != "manifest_checksum"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return digest_bytes("xxh3", text.encode())


def manifest_bytes(info: CheckpointInfo) -> bytes:
    """Encode ``info`` as manifest.json (and set ``info.checksum`` to its checksum)."""
    doc = {
        "format": FORMAT_VERSION, "step": info.step, "kind": info.kind, "base": info.base,
        "time": info.time, "world_size": info.world_size, "algorithm": info.algorithm,
        "files": [asdict(f) for f in info.files],
        "arrays": {k: asdict(v) for k, v in info.arrays.items()},
        "bytes_written": info.bytes_written, "bytes_total": info.bytes_total, "meta": info.meta,
        "run": info.run, "parent": info.parent, "parent_run": info.parent_run,
        "parent_step": info.parent_step, "base_checksum": info.base_checksum,
    }
    doc["manifest_checksum"] = info.checksum = manifest_checksum(doc)
    return json.dumps(doc, indent=1).encode()


def parse_manifest(raw: bytes, name: str, folder: Path) -> CheckpointInfo:
    """Decode the manifest ``raw`` of checkpoint ``name`` (in ``folder``); raise
    CorruptCheckpointError naming what is wrong with it."""
    path = folder / MANIFEST
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptCheckpointError(f"{path}: manifest is not valid JSON ({exc})") from None
    if doc.get("manifest_checksum") != manifest_checksum(doc):
        raise CorruptCheckpointError(f"{path}: manifest checksum mismatch (manifest was altered)")
    if doc.get("format") != FORMAT_VERSION:
        raise CorruptCheckpointError(f"{path}: unknown format {doc.get('format')!r}")
    try:
        info = CheckpointInfo(
            name=name, path=str(folder), step=int(doc["step"]), kind=doc["kind"],
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
