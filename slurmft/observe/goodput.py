"""Goodput: the one definition, used by the demo, ``bench/goodput.py`` and the timeline.

    goodput = useful steps x fault-free step time at full size / wall
            = samples trained / (wall x fault-free samples per second)     (fixed global batch)

* **useful steps**: the steps of the final lineage. A step redone after a resume counts once.
  A step that trained only part of the global batch counts as that part: its record's
  ``batch_share`` (per-step mode with torchft: a step that k of R replica groups took part in
  trains k/R of the batch, in a full step's time). Records without it count 1.
* **fault-free step time**: the median time from one step to the next of the same attempt, on
  the full world size, in a run without faults, measured in the same run (``bench/goodput.py``:
  its ``nofault`` variant; the demo: its own steps before the fault). Checkpoint saves, start-up
  and every step spent on fewer ranks than the full size are therefore not useful time: a step
  on k of N ranks at the same global batch takes N/k as long and counts as k/N of a step's time.
* **wall**: first progress record to ``done``; for a run that never completed, to the time it
  was given up (``end_t``), so it never reports more than it trained.

Pure: progress records in, numbers out (records as ``slurmft/examples/train.py`` writes them: ``t``,
``event``, ``step``, ``world_size``, ``attempt``).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

NOT_TRAINING = 0      # the world size of the seconds no attempt was running (outage, restart)


@dataclass(frozen=True)
class Goodput:
    useful_steps: float               # steps in the final lineage (each counted once, weighted
                                      # by its batch_share)
    fault_free_step_s: float | None   # None: no fault-free step was measured
    wall_s: float
    completed: bool

    @property
    def useful_s(self) -> float | None:
        """The useful steps' time at the fault-free rate."""
        if self.fault_free_step_s is None:
            return None
        return self.useful_steps * self.fault_free_step_s

    @property
    def value(self) -> float | None:
        """In [0, 1]; None when the fault-free step time is unknown."""
        if self.useful_s is None:
            return None
        return min(1.0, self.useful_s / max(self.wall_s, 1e-9))


def final_lineage(records: Sequence[Mapping]) -> dict[int, Mapping]:
    """step -> the step record that survived (the last time each step was run)."""
    steps: dict[int, Mapping] = {}
    for rec in records:
        if rec["event"] == "resume":
            # Everything after the checkpoint step is redone: forget the earlier runs of it.
            cut = int(rec["from_step"])
            steps = {s: r for s, r in steps.items() if s <= cut}
        elif rec["event"] == "step":
            steps[int(rec["step"])] = rec
    return steps


def attempts(records: Sequence[Mapping]) -> list[list[Mapping]]:
    """The records of each launch of the training, in order. Grouped by ``attempt`` id where
    records carry one, else split at each ``start`` record."""
    if any("attempt" in r for r in records):
        groups: dict[str, list[Mapping]] = {}
        for rec in records:
            groups.setdefault(str(rec.get("attempt", "")), []).append(rec)
        return list(groups.values())
    out: list[list[Mapping]] = []
    for rec in records:
        if rec["event"] == "start" or not out:
            out.append([])
        out[-1].append(rec)
    return out


def _world_size(attempt: Sequence[Mapping]) -> int:
    return next((int(r["world_size"]) for r in attempt if "world_size" in r), NOT_TRAINING)


def full_world_size(records: Sequence[Mapping]) -> int:
    """The world size the run started with."""
    groups = attempts(records)
    return _world_size(groups[0]) if groups else NOT_TRAINING


def step_time(records: Sequence[Mapping], world_size: int | None = None,
              until: float | None = None) -> float | None:
    """Median seconds from one step to the next (same attempt, consecutive steps) on
    ``world_size`` ranks (default: the run's first world size), up to ``until``."""
    world = full_world_size(records) if world_size is None else world_size
    gaps = []
    for attempt in attempts(records):
        prev = None
        for rec in attempt:
            if rec["event"] != "step" or (until is not None and rec["t"] > until):
                continue
            if (prev is not None and int(rec["step"]) == int(prev["step"]) + 1
                    and int(rec.get("world_size", -1)) == world == int(prev.get("world_size", -1))):
                gaps.append(rec["t"] - prev["t"])
            prev = rec
    return statistics.median(gaps) if gaps else None


def world_size_intervals(records: Sequence[Mapping],
                         end_t: float | None = None) -> list[tuple[float, float, int]]:
    """(from, to, world size) over the whole run, first record to last (or ``end_t``): an
    attempt from its first record to its last (cut at the next attempt's first), the gaps
    between as ``NOT_TRAINING`` (0)."""
    groups = attempts(records)
    if not groups:
        return []
    end = max([r["t"] for r in records] + ([end_t] if end_t is not None else []))
    out: list[tuple[float, float, int]] = []
    cursor = groups[0][0]["t"]
    for i, attempt in enumerate(groups):
        start = max(cursor, attempt[0]["t"])
        stop = attempt[-1]["t"] if i + 1 == len(groups) else min(attempt[-1]["t"], groups[i + 1][0]["t"])
        if start > cursor:
            out.append((cursor, start, NOT_TRAINING))
        if stop > start:
            out.append((start, stop, _world_size(attempt)))
            cursor = stop
        else:
            cursor = start
    if end > cursor:
        out.append((cursor, end, NOT_TRAINING))
    return out


def world_size_seconds(records: Sequence[Mapping], end_t: float | None = None) -> dict[int, float]:
    """Seconds spent at each world size (0: no training running), largest size first. The
    values add up to the wall time from the first record to the last (or ``end_t``)."""
    out: dict[int, float] = {}
    for start, stop, ws in world_size_intervals(records, end_t):
        out[ws] = out.get(ws, 0.0) + (stop - start)
    return {ws: round(s, 3) for ws, s in sorted(out.items(), reverse=True)}


def describe_world_sizes(seconds: Mapping[int, float]) -> str:
    """'4 ranks 61.2 s, 3 ranks 30.0 s, not training 8.1 s'."""
    return ", ".join(f"{'not training' if int(ws) == NOT_TRAINING else f'{ws} ranks'} {s:.1f} s"
                     for ws, s in seconds.items()) or "no records"


def batch_share(rec: Mapping) -> float:
    """The part of the global batch a step record trained (``batch_share``, in [0, 1];
    default 1)."""
    try:
        share = float(rec.get("batch_share", 1.0))
    except (TypeError, ValueError):
        return 1.0
    return min(1.0, max(0.0, share)) if share == share else 1.0


def measure(records: Sequence[Mapping], planned_steps: int, fault_free_step_s: float | None,
            end_t: float | None = None) -> Goodput:
    """Goodput of a run, given the fault-free step time at full size (see the module doc).
    ``end_t``: when a run that did not finish was given up (default: its last record)."""
    if not records:
        return Goodput(0, fault_free_step_s, 0.0, completed=False)
    lineage = final_lineage(records)
    useful: float = round(sum(batch_share(rec) for s, rec in lineage.items()
                              if 0 <= s < planned_steps), 3)
    if useful.is_integer():
        useful = int(useful)          # every step a whole one (restart mode): a step count
    done = [r for r in records if r["event"] == "done"]
    completed = bool(done) and bool(lineage) and max(lineage) == planned_steps - 1
    t0 = records[0]["t"]
    if completed:
        t_end = done[-1]["t"]
    else:
        t_end = max([r["t"] for r in records] + ([end_t] if end_t is not None else []))
    return Goodput(useful, fault_free_step_s, max(t_end - t0, 1e-9), completed)
