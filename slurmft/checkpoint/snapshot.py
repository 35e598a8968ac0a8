"""The training thread's part of a save: a copy of the state in reused buffers.

``SnapshotBuffers.take`` pickles the small part of the state and picks one buffer per array
(reused from save to save, so a save does not allocate); ``copy_into`` copies the arrays
and releases each to the writer as soon as it is complete (pipelining: the writer may start
before the last array is copied).
"""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slurmft.checkpoint.manifest import CheckpointInfo
from slurmft.checkpoint.state import split_state
from slurmft.core.errors import CheckpointError


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


class SnapshotBuffers:
    """One reused buffer per array key of the state (dropped when the key goes away)."""

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def _buffer_for(self, key: str, arr: np.ndarray) -> tuple[np.ndarray, bool]:
        buf = self._buffers.get(key)
        if buf is None or buf.shape != arr.shape or buf.dtype != arr.dtype:
            buf = self._buffers[key] = np.empty(arr.shape, arr.dtype)
            return buf, True
        return buf, False

    def reserve(self, state: Any) -> None:
        """Allocate and touch the buffers for ``state`` now (e.g. before the training
        loop), so the first save does not pay for page faults."""
        _, arrays = split_state(state)
        for key, arr in arrays.items():
            buf, new = self._buffer_for(key, arr)
            if new:
                buf.reshape(-1).view(np.uint8)[:] = 0

    def take(self, state: Any, step: int, meta: Mapping[str, Any] | None, *, world_size: int,
             run: str, parent: CheckpointInfo | None) -> tuple[Snapshot, dict[str, np.ndarray]]:
        """Pickle the small part, pick a reused buffer for each array; return the snapshot
        (arrays not copied yet) and the arrays to copy into it (``copy_into``)."""
        skeleton, arrays = split_state(state)
        try:
            blob = pickle.dumps(skeleton, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"state of step {step} cannot be pickled: {exc}") from None
        bufs = {key: self._buffer_for(key, arr)[0] for key, arr in arrays.items()}
        for key in set(self._buffers) - set(arrays):
            del self._buffers[key]
        snap = Snapshot(step=step, skeleton=blob, arrays=bufs, world_size=world_size,
                        meta=dict(meta or {}), ready={k: threading.Event() for k in bufs},
                        run=run, parent=parent)
        return snap, arrays


def copy_into(snap: Snapshot, sources: Mapping[str, np.ndarray]) -> None:
    """Copy every array into its buffer, releasing each to the writer (all of them, marked
    aborted, when a copy fails)."""
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
