"""Fencing: a checkpoint is published only while the directory still names this run.

A run claims its directory at start (``Store.claim``: an owner token in ``.owner``); a newer
run claims it again. An old run left behind after a requeue (its node cut off, or its slurmd
dead) then finds another token at its next save and stops without moving ``latest``.
"""

from __future__ import annotations

from slurmft.checkpoint.store import Store
from slurmft.core.errors import FencedError


def check_fence(store: Store, owner: str, step: int) -> None:
    """Raise FencedError unless ``store`` still names ``owner`` (no owner: no fencing)."""
    if not owner:
        return
    current = store.owner()
    if current is None and not store.root.is_dir():
        raise FencedError(
            f"checkpoint directory {store.root} is gone (a lost mount or a "
            f"removed directory): this run ({owner}) stops without publishing step "
            f"{step}; mount it again and resume")
    if current is None:
        raise FencedError(
            f"the owner file of {store.root} was removed, so this run "
            f"({owner}) cannot tell it still owns the directory: it stops without "
            f"publishing step {step}; resume to claim it again")
    if current != owner:
        raise FencedError(
            f"a newer run ({current or 'unknown'}) took over {store.root}: this "
            f"run ({owner}) stops without publishing step {step}")
