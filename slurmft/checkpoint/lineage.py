"""Checkpoint lineage: which checkpoints belong to the history being continued.

Every checkpoint records the run that wrote it (``run``) and the checkpoint that run resumed
from (``parent``, with ``parent_run``; empty for a fresh start). Runs write one after another
(fencing), so the checkpoints form a tree; the **branch** is the path that leads to the
**head**:

* the head is the checkpoint ``latest`` names (with several stores, e.g. a local cache and
  the shared destination, the one written last); without a readable ``latest``, the
  checkpoint written last. A run that resumed from the head (or from a newer checkpoint of
  the head's run) but was killed before it published ``latest`` continues it: its newest
  checkpoint becomes the head (repeatedly);
* the branch holds every checkpoint of the head's run, then those of the run it resumed from
  up to the step it resumed at, and so on back to a fresh start;
* everything else is **abandoned**: the steps a run wrote after the point a later run went
  back to (after a fallback, or because the user chose an older checkpoint), and the
  checkpoints of runs that never published ``latest`` (fenced off, or killed before their
  first save completed). Load never resumes them; retention deletes them first.

Checkpoints written before lineage was recorded carry ``run == ""`` and count as one run.
Where the chain cannot be followed (a run on it has no checkpoint in these stores, e.g. not
uploaded yet, or already rotated out), every checkpoint up to the step where it breaks counts
as the branch: unknown ancestry is never a reason to skip or delete a checkpoint.
A checkpoint whose manifest cannot be read has no known lineage: it is listed as
``unreadable`` (it cannot verify, so it is never loaded).

Pure functions over ``CheckpointInfo`` lists; no file access here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from slurmft.checkpoint.manifest import CheckpointInfo


@dataclass
class Lineage:
    """The checkpoints of one directory (or several stores), split by lineage."""

    head: CheckpointInfo | None = None
    branch: list[CheckpointInfo] = field(default_factory=list)      # newest first
    abandoned: list[CheckpointInfo] = field(default_factory=list)   # newest first
    unreadable: list[CheckpointInfo] = field(default_factory=list)  # by step, newest first
    # The abandoned checkpoints of another history: no run on their chain is on the branch
    # (a fresh start in a directory that already held checkpoints). Never resumed, and never
    # deleted by retention either: they are somebody's work, not a branch this run left.
    foreign: list[CheckpointInfo] = field(default_factory=list)     # newest first

    def candidates(self) -> list[CheckpointInfo]:
        """What a load tries, newest first: the branch, with the unreadable ones placed by
        step (they fail verification, and the reason is logged, never loaded)."""
        return sorted(self.branch + self.unreadable, key=newest_first)

    def is_abandoned(self, name: str) -> bool:
        return any(i.name == name for i in self.abandoned)


def newest_first(info: CheckpointInfo) -> tuple[float, float, str]:
    """Sort key: higher step first, then written later, then name (stable)."""
    return (-info.step, -info.time, info.name)


def trace(infos: Iterable[CheckpointInfo], latest: Iterable[str | None] = ()) -> Lineage:
    """Split ``infos`` (e.g. ``Store.list()``) into branch, abandoned and unreadable.

    ``latest``: the names the stores' ``latest`` files hold (None where there is none).
    """
    infos = list(infos)
    readable = [i for i in infos if not i.error]
    unreadable = sorted((i for i in infos if i.error), key=newest_first)
    by_name = {i.name: i for i in readable}
    heads = [by_name[n] for n in latest if n and n in by_name]
    pool = heads or readable
    if not pool:
        return Lineage(unreadable=unreadable)
    head = _follow(max(pool, key=lambda i: (i.time, i.step)), readable)
    limits = _branch_runs(head, readable)
    unknown_below = limits.pop(_UNKNOWN, -math.inf)
    branch, abandoned = [], []
    for info in sorted(readable, key=newest_first):
        on_branch = ((info.run in limits and info.step <= limits[info.run])
                     or info.step <= unknown_below)
        (branch if on_branch else abandoned).append(info)
    parents = _run_parents(readable)
    foreign = [i for i in abandoned if not _joins(i.run, parents, limits)]
    return Lineage(head=head, branch=branch, abandoned=abandoned, unreadable=unreadable,
                   foreign=foreign)


def _run_parents(readable: list[CheckpointInfo]) -> dict[str, tuple[str, str, int]]:
    """Run id -> (parent checkpoint, its run, its step) as the run's first checkpoint says."""
    parents: dict[str, tuple[str, str, int]] = {}
    for info in readable:
        parents.setdefault(info.run, (info.parent, info.parent_run, info.parent_step))
    return parents


def _joins(run: str, parents: dict[str, tuple[str, str, int]],
           limits: dict[str, float]) -> bool:
    """Whether ``run``'s history reaches a run of the branch (or a break in the chain,
    where ancestry is unknown and so counts as joined)."""
    seen: set[str] = set()
    while run not in seen:
        if run in limits or run not in parents:
            return True
        seen.add(run)
        parent, parent_run, _ = parents[run]
        if not parent:                    # a fresh start: this history has its own root
            return False
        run = parent_run
    return False


def _follow(head: CheckpointInfo, readable: list[CheckpointInfo]) -> CheckpointInfo:
    """The newest checkpoint of runs that went on from ``head`` without publishing latest."""
    seen = {head.run}
    while True:
        children = [i for i in readable if i.run not in seen and i.parent_run == head.run
                    and i.parent and i.parent_step >= head.step]
        if not children:
            return head
        head = max(children, key=lambda i: (i.time, i.step))
        seen.add(head.run)


def _branch_runs(head: CheckpointInfo, readable: list[CheckpointInfo]) -> dict[str, float]:
    """Run id -> the highest step of that run on the branch (the head's run: all of it)."""
    parents = _run_parents(readable)
    parents[head.run] = (head.parent, head.parent_run, head.parent_step)
    limits: dict[str, float] = {}
    run, limit = head.run, math.inf
    while run not in limits:
        limits[run] = limit
        if run not in parents:             # none of its checkpoints here: the chain breaks
            limits[_UNKNOWN] = limit
            break
        parent, parent_run, parent_step = parents[run]
        if not parent or parent_step < 0:
            break
        run, limit = parent_run, float(parent_step)
    return limits


_UNKNOWN = "\0unknown"    # key in _branch_runs' result: steps up to here are kept, any run
