"""Regaining full size: a job that shrank (a node lost, no spare left) asks for its nodes back
when enough healthy idle nodes return and it pays.

It pays when the time the rest of the run saves at full size is more than a requeue costs::

    remaining steps x (step time now - step time at full size)  >  restart cost

with the step time at full size estimated from the one now (``now x nodes_now / nodes_full``:
the same global batch, compute per sample) and the restart cost measured (the supervisor's
last relaunch: launch to first step, plus what a requeue adds: Slurm requeues and starts the
job again). The decision is taken at the next checkpoint after it pays (nothing is redone),
and logged with its arithmetic.

``regain_decision`` is pure; ``Regainer`` holds the little state around it (the last launch,
its first step, the checkpoint the decision waits to see pass) for the supervisor.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Seconds a requeue adds to a relaunch in the same allocation (Slurm requeues the job, starts
#: it again, the batch script and the supervisor start): a default until one is measured.
REQUEUE_COST_S = 15.0
#: Seconds between two looks at the idle nodes while shrunk.
CHECK_INTERVAL_S = 10.0


@dataclass(frozen=True)
class RegainDecision:
    """The arithmetic of one look, and whether it pays."""

    pays: bool
    step: int
    total_steps: int
    nodes_now: int
    nodes_full: int
    step_s_now: float
    step_s_full: float
    restart_s: float
    idle: tuple[str, ...] = ()      # the idle nodes Slurm listed when it was weighed

    @property
    def remaining(self) -> int:
        return max(0, self.total_steps - self.step - 1)

    @property
    def saved_s(self) -> float:
        return self.remaining * (self.step_s_now - self.step_s_full)

    def describe(self) -> str:
        verb = ">" if self.pays else "<="
        idle = f" (idle: {','.join(self.idle)})" if self.idle else ""
        return (f"{self.remaining} steps left x ({self.step_s_now:.3f} s per step on "
                f"{self.nodes_now} node(s) - {self.step_s_full:.3f} s on {self.nodes_full}) = "
                f"{self.saved_s:.1f} s saved {verb} {self.restart_s:.1f} s to requeue at full "
                f"size{idle}")


def regain_decision(*, step: int, total_steps: int, step_s: float, nodes_now: int,
                    nodes_full: int, restart_s: float,
                    idle: Sequence[str] = ()) -> RegainDecision:
    """Whether requeueing at ``nodes_full`` nodes pays for a run at ``step`` of
    ``total_steps`` that takes ``step_s`` per step on ``nodes_now`` nodes."""
    full = step_s * nodes_now / max(1, nodes_full)
    d = RegainDecision(False, step, total_steps, nodes_now, nodes_full, step_s, full,
                       restart_s, tuple(idle))
    pays = (nodes_now < nodes_full and math.isfinite(step_s) and step_s > 0
            and d.saved_s > restart_s)
    return dataclasses.replace(d, pays=pays)


def idle_nodes(nodes: Sequence[Any], busy: Sequence[str]) -> list[str]:
    """Names of the nodes Slurm could give the job now: idle, no flag (DRAIN,
    NOT_RESPONDING...), not already the job's."""
    return [n.name for n in nodes
            if n.state == "idle" and not n.flags and n.name not in set(busy)]


class Regainer:
    """Looks, while the job is shrunk, whether to ask for full size back; ``check`` answers
    the decision to act on (once: at the first checkpoint after it paid)."""

    def __init__(self, *, total_steps: int, nodes_full: int,
                 list_nodes: Callable[[], Sequence[Any]],
                 latest_checkpoint: Callable[[], str | None],
                 requeue_cost_s: float = REQUEUE_COST_S,
                 interval_s: float = CHECK_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total_steps, self.nodes_full = int(total_steps), int(nodes_full)
        self.list_nodes, self.latest_checkpoint = list_nodes, latest_checkpoint
        self.requeue_cost_s, self.interval_s, self.clock = requeue_cost_s, interval_s, clock
        self._next = 0.0
        self._launched_at: float | None = None
        self._launch_step: int | None = None
        self.relaunch_s: float | None = None      # measured: launch -> first step of the last launch
        self._armed: tuple[str | None, RegainDecision] | None = None
        self.asked = False
        self.last: RegainDecision | None = None

    def launched(self) -> None:
        """A (re)launch starts now: its first step measures the restart time."""
        self._launched_at, self._launch_step = self.clock(), None
        self._armed = None

    def check(self, nodes: Sequence[str], beats: Mapping[int, Any],
              step_s: float | None) -> RegainDecision | None:
        """After a read of the heartbeats: the decision to act on now, else None."""
        steps = [b.step for b in beats.values() if b is not None and not b.done]
        now = self.clock()
        if steps and self._launched_at is not None:
            if self._launch_step is None:
                self._launch_step = max(steps)
            elif max(steps) > self._launch_step and self.relaunch_s is None:
                self.relaunch_s = now - self._launched_at
        if (self.asked or len(nodes) >= self.nodes_full or not steps or not step_s
                or self.relaunch_s is None):      # (weighed only once a restart was measured)
            return None
        if self._armed is not None:
            seen, decision = self._armed
            if self.latest_checkpoint() != seen:      # a checkpoint since: act on it
                self.asked = True
                return decision
            return None
        if now < self._next:
            return None
        self._next = now + self.interval_s
        try:
            free = idle_nodes(self.list_nodes(), nodes)
        except Exception:                # noqa: BLE001 - a Slurm hiccup: look again later
            return None
        if len(free) < self.nodes_full - len(nodes):
            return None
        restart = (self.relaunch_s or 0.0) + self.requeue_cost_s
        self.last = decision = regain_decision(
            step=max(steps), total_steps=self.total_steps, step_s=step_s,
            nodes_now=len(nodes), nodes_full=self.nodes_full, restart_s=restart, idle=free)
        if decision.pays:
            self._armed = (self.latest_checkpoint(), decision)
        return None


__all__ = ["CHECK_INTERVAL_S", "REQUEUE_COST_S", "RegainDecision", "Regainer", "idle_nodes",
           "regain_decision"]
