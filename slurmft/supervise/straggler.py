"""Straggler detection for the in-job supervisor: which rank computes slower than its peers.

In synchronous data-parallel training every rank advances at the same step rate (each
collective waits for the slowest rank), so the step counter cannot name a straggler. What
differs is each rank's own busy time per step, from the end of its previous collective to
entering the next one: the heartbeat carries its recent value (``Beat.busy_ms``, an EWMA;
``MPICheckpointManager`` measures it, or the loop passes ``beat(step, busy_s=...)``).

A rank whose busy time stays at least ``factor`` x the median of its peers' (each beat
compared with the other ranks' newest beats) for ``steps`` consecutive steps of its own is a
straggler. A rank is named once per ``reset()`` (once per launch). Ranks without a busy time
(format v1, no measurement yet) or done are left out; fewer than two ranks with one: nothing
to compare. Pure logic over the beats (``HangDetector.beats()``) and an injectable clock.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from slurmft.checkpoint.heartbeat import Beat
from slurmft.core.errors import UsageError

#: Peers' median busy time below this (ms) counts as this much: ratios of near-zero busy
#: times (a loop that only communicates) are noise.
FLOOR_MS = 1.0


@dataclass(frozen=True)
class Straggler:
    """A rank named a straggler: its busy time against the median of its peers'."""

    rank: int
    host: str                       # from its heartbeat
    pid: int
    busy_ms: float                  # its busy time per step (EWMA) when named
    peers_ms: float                 # the median of the other ranks' busy times
    ratio: float                    # busy_ms / peers_ms
    steps: int                      # consecutive steps it stayed >= factor x its peers
    step: int                       # its step when named
    seconds: float                  # since the streak began (supervisor's clock)

    def describe(self) -> str:
        return (f"rank {self.rank} on {self.host or '?'}: busy {self.busy_ms:.1f} ms per step, "
                f"{self.ratio:.2f}x the median of its peers ({self.peers_ms:.1f} ms) for "
                f"{self.steps} steps ({self.seconds:.0f} s, at step {self.step})")


@dataclass
class _Streak:
    start_step: int
    start_at: float


class StragglerDetector:
    """``observe(beats)`` after every poll of the heartbeats; returns the ranks named now."""

    def __init__(self, factor: float = 1.5, steps: int = 20, *, floor_ms: float = FLOOR_MS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not math.isfinite(factor) or factor <= 1:
            raise UsageError(f"the straggler factor must be a number > 1, not {factor}")
        if int(steps) < 1:
            raise UsageError(f"the straggler steps must be >= 1, not {steps}")
        if not math.isfinite(floor_ms) or floor_ms <= 0:
            raise UsageError(f"floor_ms must be > 0, not {floor_ms}")
        self.factor, self.steps, self.floor_ms = float(factor), int(steps), float(floor_ms)
        self.clock = clock
        self._streaks: dict[int, _Streak] = {}
        self._named: set[int] = set()

    def reset(self) -> None:
        """Before a (re)launch: forget every streak and every rank named."""
        self._streaks.clear()
        self._named.clear()

    @property
    def named(self) -> frozenset[int]:
        """Ranks named since the last reset."""
        return frozenset(self._named)

    def slow_since(self, rank: int) -> int | None:
        """The step from which ``rank`` has been >= factor x its peers (None: it is not)."""
        streak = self._streaks.get(rank)
        return None if streak is None else streak.start_step

    def observe(self, beats: Mapping[int, Beat | None]) -> list[Straggler]:
        """Compare the newest beat of every rank (rank -> beat; None: none yet) with its
        peers'; the ranks that became stragglers with these beats, by rank."""
        now = self.clock()
        busy = {r: b for r, b in beats.items()
                if b is not None and not b.done and b.busy_ms is not None}
        for r, b in beats.items():
            if b is not None and b.done:
                self._streaks.pop(r, None)
        if len(busy) < 2:
            return []
        named = []
        for rank in sorted(busy):
            beat = busy[rank]
            peers = statistics.median(b.busy_ms for r, b in busy.items() if r != rank)
            base = max(peers, self.floor_ms)
            ratio = beat.busy_ms / base
            if ratio < self.factor:
                self._streaks.pop(rank, None)
                continue
            streak = self._streaks.get(rank)
            if streak is None or beat.step < streak.start_step:     # (a step back: relaunch)
                self._streaks[rank] = streak = _Streak(beat.step, now)
            lasted = beat.step - streak.start_step
            if lasted >= self.steps and rank not in self._named:
                self._named.add(rank)
                named.append(Straggler(rank, beat.host, beat.pid, beat.busy_ms, peers, ratio,
                                       lasted, beat.step, now - streak.start_at))
        return named


__all__ = ["FLOOR_MS", "Straggler", "StragglerDetector"]
