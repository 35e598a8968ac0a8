"""Which checkpoint a manager resumes from, over its local cache and its destination.

The candidates are the checkpoints of the branch being continued (lineage.py), newest first,
over every store that holds a copy (the destination first); each is verified before it is
offered, and every one skipped is logged and reported ("verify_failed", "fallback").
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

from slurmft.checkpoint.destinations import RsyncDestination
from slurmft.checkpoint.lineage import Lineage, trace
from slurmft.checkpoint.manifest import CheckpointInfo
from slurmft.checkpoint.store import Store
from slurmft.core.errors import CheckpointError, CorruptCheckpointError
from slurmft.core.log import get_logger

log = get_logger(__name__)

EventHook = Callable[..., None]     # emit(event, **fields)


class Resume:
    """The checkpoints of ``stores`` (the local cache first, the destination last) read for
    a resume; ``spec`` names the destination in messages, ``emit`` reports events."""

    def __init__(self, stores: Sequence[Store], spec: str, emit: EventHook) -> None:
        self.stores = list(stores)
        self.spec = spec
        self._emit = emit

    def lineage(self) -> tuple[Lineage, dict[str, list[Store]]]:
        """The lineage over every store together, and which stores hold each checkpoint
        (the destination first)."""
        infos: dict[str, CheckpointInfo] = {}
        where: dict[str, list[Store]] = {}
        latest: list[str | None] = []
        for store in reversed(self.stores):
            latest.append(store.latest_name())
            for info in store.list():
                where.setdefault(info.name, []).append(store)
                known = infos.get(info.name)
                if known is None or (known.error and not info.error):
                    infos[info.name] = info
        return trace(infos.values(), latest), where

    def verified_candidates(self, exclude: Collection[str] = ()
                            ) -> Iterator[tuple[Store, CheckpointInfo]]:
        """Checkpoints of the branch being continued that verify, newest first; logs (and
        reports) every one it skips. Resume the iterator only if the one it gave failed
        later (then the next is a fallback too). Raises CorruptCheckpointError when
        checkpoints exist but none verifies."""
        lin, where = self.lineage()
        candidates = [i for i in lin.candidates() if i.name not in exclude]
        failed = len(lin.candidates()) - len(candidates)
        for info in candidates:
            for store in where.get(info.name, []):
                try:
                    verified = store.verify(info.name)
                except CorruptCheckpointError as exc:
                    self.skip(info.name, exc)
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
            f"no valid checkpoint in {self.spec}: all {len(lin.candidates())} on the "
            f"current branch failed verification{extra}")

    def skip(self, name: str, exc: Exception) -> None:
        log.warning("skipping checkpoint %s: %s", name, exc)
        self._emit("verify_failed", name=name, error=str(exc))

    def load_newest(self) -> tuple[CheckpointInfo, Any] | None:
        """The newest checkpoint of the branch whose state rebuilds (falling back past any
        that does not), or None when there are none."""
        for store, info in self.verified_candidates():
            try:
                state = store.read_state(info)
            except CorruptCheckpointError as exc:
                self.skip(info.name, exc)      # any mismatch: fall back to the next one
                continue
            return info, state
        return None

    def load_named(self, name: str) -> tuple[CheckpointInfo, Any]:
        """Exactly ``name`` (verified), from the destination if it is there."""
        for store in reversed(self.stores):
            if (store.root / name).is_dir():
                try:
                    info = store.verify(name)
                except CorruptCheckpointError as exc:
                    self._emit("verify_failed", name=name, error=str(exc))
                    raise
                return info, store.read_state(info)
        raise CheckpointError(f"checkpoint {name} not found in {self.spec}")


def fetch_remote_latest(dest: RsyncDestination, cache: Store) -> None:
    """Bring the checkpoint ``latest`` names at a remote destination (and its base) into
    the local cache, unless it is there already; an unreadable ``latest`` is logged."""
    try:
        name = dest.remote_latest()
    except CheckpointError as exc:
        log.warning("cannot read latest from %s: %s", dest.describe(), exc)
        return
    if name and name not in cache.names():
        dest.fetch(name, cache)
        info = cache.read_manifest(name)
        if info.base and info.base not in cache.names():
            dest.fetch(info.base, cache)
