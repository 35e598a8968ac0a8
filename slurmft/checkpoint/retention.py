"""Retention: which checkpoints of a store may go, and deleting them all or nothing.

Retention follows the lineage (lineage.py): abandoned checkpoints go first, ``keep_last``
counts checkpoints that verify, and a checkpoint is deleted all or nothing (renamed to a
hidden ``.tmp-del-`` name, then removed). ``Store.retention`` and ``Store.prune`` call these.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from slurmft.checkpoint.lineage import newest_first
from slurmft.checkpoint.manifest import CheckpointInfo, tmp_name
from slurmft.core.errors import CheckpointError, PruneError

if TYPE_CHECKING:       # store.py imports this module; only the type is needed here
    from slurmft.checkpoint.store import Store


def retention(store: Store, keep_last: int, protect: Iterable[str] | None = None,
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
    lin = store.lineage()
    live = lin.candidates()
    good = 0
    cut = len(live)
    for i, info in enumerate(live):
        if not info.error and store.is_valid(info.name):
            good += 1
            if good == keep_last:
                cut = i + 1
                break
    foreign = {i.name for i in lin.foreign}
    doomed = live[cut:] + ([i for i in lin.abandoned if i.name not in foreign] if good else [])
    keep = {i.name for i in live[:cut]} | set(protect or ())
    latest = store.latest_name()
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


def prune(store: Store, keep_last: int, protect: Iterable[str] | None = None) -> list[str]:
    """Apply ``retention``: delete what it gives up, each checkpoint all or nothing.
    Tries every one; returns the names deleted, or raises PruneError naming those that
    could not be deleted (and those deleted)."""
    _, doomed = store.retention(keep_last, protect)
    deleted: list[str] = []
    failed: dict[str, str] = {}
    # Diffs first: a base goes only if every diff on it went.
    for info in sorted(doomed, key=lambda i: i.kind != "diff"):
        users = [d.name for d in doomed if d.base == info.name and d.name in failed]
        if users:
            failed[info.name] = f"kept because {users[0]}, a diff on it, could not be deleted"
            continue
        why = delete_checkpoint(store, info.name)
        if why is None:
            deleted.append(info.name)
        elif why:
            failed[info.name] = why
    if failed:
        first, why = next(iter(failed.items()))
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise PruneError(
            f"could not delete {len(failed)} checkpoint(s) in {store.root}: {first}: {why}{more}; "
            f"deleted {len(deleted)}. Check permissions and immutable flags (ls -ld, lsattr) "
            "of those directories, then run `slurmft checkpoint prune` again",
            deleted=deleted, failed=failed)
    return deleted


def delete_checkpoint(store: Store, name: str) -> str | None:
    """Delete one checkpoint directory all or nothing: rename it to a hidden trash name
    (then it is no checkpoint any more), then remove that. None when done, '' when it was
    already gone, else why it failed (under its own name it is then still complete)."""
    trash = store.root / tmp_name(f"del-{name}")
    try:
        os.rename(store.root / name, trash)
    except FileNotFoundError:
        return ""
    except OSError as exc:
        return f"cannot move it aside: {exc.strerror or exc}"
    store.forget(name)
    try:
        remove_tree(trash)
    except OSError as exc:
        return (f"moved to {trash.name} but removing that failed: {exc.strerror or exc} "
                "(no longer a checkpoint; its space is not freed)")
    return None


def remove_tree(path: Path) -> None:
    """Remove a directory tree, raising on the first failure (one place, for tests too)."""
    shutil.rmtree(path)
