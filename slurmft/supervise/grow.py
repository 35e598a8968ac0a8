"""Back to full size in place: a run that shrank grows again when its allocation does.

With ``slurmft run --spares K`` a lost node is replaced by a spare; when none is left the
run goes on with one node less (each step a third slower on 3 of 4 nodes, the same global
batch). The spare refill (``supervise.refill``) later takes an idle node into the job. Then
this run should not wait for its next fault to use it: ``GrowInPlace`` says when to relaunch
on all its training nodes again, in the same allocation (a warm relaunch: seconds, against a
requeue's tens of seconds):

* not before ``after_s`` seconds since the node was taken in (its warm-pool server imports
  the training's modules meanwhile: a rank started before that starts cold, seconds late);
* then at the first checkpoint that lands after that moment, so that (almost) nothing is
  redone: the relaunch resumes from it.

Pure state over two callables (the latest checkpoint's name, a clock); the supervisor asks
``due()`` from its loop, which reads that name at most once every ``check_s`` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: Seconds between the node's arrival and the first checkpoint that may trigger the growth.
GROW_AFTER_S = 10.0
#: Seconds between two looks at the checkpoints while a growth waits.
CHECK_S = 1.0

_UNSEEN = object()


class GrowInPlace:
    """Armed by ``node_added`` while the run is shrunk; ``due`` once a checkpoint landed
    ``after_s`` seconds or more after that; disarmed by every launch (``launched``)."""

    def __init__(self, latest_checkpoint: Callable[[], str | None], *,
                 after_s: float = GROW_AFTER_S, check_s: float = CHECK_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.latest_checkpoint, self.after_s, self.check_s = latest_checkpoint, after_s, check_s
        self.clock = clock
        self._armed_at: float | None = None
        self._seen: object = _UNSEEN
        self._next_look = 0.0

    @property
    def armed(self) -> bool:
        return self._armed_at is not None

    def node_added(self) -> None:
        """A node the shrunk run can train on was taken into the job (idempotent)."""
        if self._armed_at is None:
            self._armed_at, self._seen = self.clock(), _UNSEEN

    def launched(self) -> None:
        """A launch starts: whatever it trains on, nothing is pending any more."""
        self._armed_at, self._seen = None, _UNSEEN

    def due(self) -> bool:
        """Whether to relaunch on full size now (a checkpoint just landed)."""
        now = self.clock()
        if self._armed_at is None or now < self._armed_at + self.after_s or now < self._next_look:
            return False
        self._next_look = now + self.check_s
        latest = self.latest_checkpoint()
        if self._seen is _UNSEEN:          # the checkpoint to wait past
            self._seen = latest
            return False
        return latest is not None and latest != self._seen


__all__ = ["CHECK_S", "GROW_AFTER_S", "GrowInPlace"]
