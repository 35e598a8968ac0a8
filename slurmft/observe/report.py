"""Pure analysis of a training run that survived a failure: timeline, summary, goodput.

Input is what the run left behind: the progress records ``slurmft/examples/train.py`` (or any script
using the same record shape) appends as JSON lines, plus the wall-clock times of outside events
(fault injected, failure detected, job requeued or failed node taken out of the running job,
job running again). Nothing here touches a
process or a file except ``read_progress``.

Definitions (stated once, used everywhere):

* **useful step**: a step whose result survived, i.e. is part of the final lineage (it was not
  redone after a resume).
* **steps lost**: steps completed before a resume that were redone after it
  (``last step before the resume - checkpoint step``).
* **goodput**: useful steps x fault-free step time at full size / wall, defined once in
  ``slurmft.observe.goodput`` (the fault-free step time is measured on the run's own steps before the
  fault unless the caller measured it elsewhere, e.g. in a fault-free run).
* **world size seconds**: seconds spent at each world size (0: no training running).
* **time to recover**: fault -> first step completed after the resume.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

from slurmft.core.errors import SlurmFTError
from slurmft.observe.goodput import final_lineage, measure, step_time, world_size_seconds

__all__ = ["RecoverySummary", "TimelineEntry", "final_lineage", "loss_curve", "read_progress",
           "summarize", "timeline"]


@dataclass(frozen=True)
class TimelineEntry:
    t: float          # wall-clock seconds since the epoch
    event: str
    detail: str = ""


@dataclass
class RecoverySummary:
    planned_steps: int
    final_step: int | None
    completed: bool
    resumes: int
    resumed_from: list[int]
    steps_lost: int
    fault_at: float | None
    detection_s: float | None
    requeued_s: float | None
    running_again_s: float | None
    first_step_after_resume_s: float | None
    wall_s: float
    useful_steps: float               # batch-share weighted (an int in restart mode)
    fault_free_step_s: float | None   # full size, no fault (see slurmft.observe.goodput)
    useful_s: float | None            # useful_steps x fault_free_step_s
    goodput: float | None             # None only when no fault-free step could be measured
    world_sizes: list[int] = field(default_factory=list)
    world_size_seconds: dict[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def read_progress(path: str | os.PathLike) -> list[dict]:
    """Progress records from a JSON-lines file; a torn last line (crash mid-write) is skipped."""
    records = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "event" in rec and "t" in rec:
                records.append(rec)
    return records


def summarize(records: Sequence[Mapping], planned_steps: int,
              events: Mapping[str, float] | None = None, *,
              fault_free_step_s: float | None = None,
              end_t: float | None = None) -> RecoverySummary:
    """The numbers of a run. ``events`` may hold ``fault``, ``detected``, ``requeued``,
    ``running_again`` wall-clock times (seconds since the epoch). ``fault_free_step_s``: the
    full-size step time of a fault-free run, measured elsewhere in the same run; default: the
    run's own steps on its first world size before the fault (or before its first resume).
    ``end_t``: when a run that did not finish was given up (default: its last record)."""
    if not records:
        raise SlurmFTError("no progress records: the training never started")
    events = dict(events or {})
    lineage = final_lineage(records)
    resumes = [r for r in records if r["event"] == "resume"]
    steps_lost = 0
    last_seen: int | None = None
    for rec in records:
        if rec["event"] == "step":
            last_seen = int(rec["step"])
        elif rec["event"] == "resume":
            if last_seen is not None:
                steps_lost += max(0, last_seen - int(rec["from_step"]))
            last_seen = int(rec["from_step"])
    fault = events.get("fault")
    if fault_free_step_s is None:
        before = fault if fault is not None else (resumes[0]["t"] if resumes else None)
        fault_free_step_s = step_time(records, until=before)
    gp = measure(records, planned_steps, fault_free_step_s, end_t)
    final_step = max(lineage) if lineage else None

    def since_fault(t: float | None) -> float | None:
        return None if t is None or fault is None else round(t - fault, 3)

    first_after = None
    if resumes:
        last_resume_t = resumes[-1]["t"]
        after = [r["t"] for r in records if r["event"] == "step" and r["t"] > last_resume_t]
        first_after = after[0] if after else None
    return RecoverySummary(
        planned_steps=planned_steps,
        final_step=final_step,
        completed=gp.completed,
        resumes=len(resumes),
        resumed_from=[int(r["from_step"]) for r in resumes],
        steps_lost=steps_lost,
        fault_at=fault,
        detection_s=since_fault(events.get("detected")),
        requeued_s=since_fault(events.get("requeued")),
        running_again_s=since_fault(events.get("running_again")),
        first_step_after_resume_s=since_fault(first_after),
        wall_s=round(gp.wall_s, 3),
        useful_steps=gp.useful_steps,
        fault_free_step_s=None if fault_free_step_s is None else round(fault_free_step_s, 5),
        useful_s=None if gp.useful_s is None else round(gp.useful_s, 3),
        goodput=None if gp.value is None else round(gp.value, 4),
        world_sizes=sorted({int(r["world_size"]) for r in records if "world_size" in r}),
        world_size_seconds=world_size_seconds(records, None if gp.completed else end_t),
    )


def timeline(records: Sequence[Mapping], events: Mapping[str, float] | None = None) -> list[TimelineEntry]:
    """Start, saves (first and around the fault), fault, detection, requeue, resume, done."""
    out: list[TimelineEntry] = []
    for rec in records:
        ev = rec["event"]
        if ev == "start":
            out.append(TimelineEntry(rec["t"], "training started",
                                     f"{rec.get('world_size')} ranks"))
        elif ev == "resume":
            out.append(TimelineEntry(rec["t"], "resumed from checkpoint",
                                     f"{rec.get('checkpoint')} (step {rec.get('from_step')}) "
                                     f"on {rec.get('world_size')} ranks"))
        elif ev == "done":
            out.append(TimelineEntry(rec["t"], "training done", f"step {rec.get('step')}"))
    resumes = [r for r in records if r["event"] == "resume"]
    if resumes:
        after = [r for r in records if r["event"] == "step" and r["t"] > resumes[-1]["t"]]
        if after:
            out.append(TimelineEntry(after[0]["t"], "first step after resume",
                                     f"step {after[0]['step']}"))
    labels = {"fault": "fault injected", "detected": "failure detected by slurmft",
              "requeued": "job requeued (failed node excluded)",
              "excluded": "failed node taken out of the running job (relaunch in place)",
              "running_again": "job running again without the failed node"}
    for key, label in labels.items():
        if events and events.get(key) is not None:
            out.append(TimelineEntry(events[key], label, ""))
    fault = (events or {}).get("fault")
    if fault is not None:
        saves = [r for r in records if r["event"] == "save" and r["t"] <= fault]
        if saves:
            out.append(TimelineEntry(saves[-1]["t"], "last checkpoint before the fault",
                                     f"step {saves[-1]['step']}"))
    return sorted(out, key=lambda e: e.t)


def loss_curve(records: Iterable[Mapping]) -> list[tuple[float, int, float, int]]:
    """(t, step, loss, world_size) of every step record, in the order they ran."""
    return [(r["t"], int(r["step"]), float(r["loss"]), int(r.get("world_size", 0)))
            for r in records if r["event"] == "step"]


#: The phases of one restart, in order (``restart_phases``): what each measures.
RESTART_PHASES = {
    "to_relaunch_s": "fault -> the supervisor starts the new launch (detection, decision, "
                     "taking the node out, stopping the old launch)",
    "start_s": "launch -> the training's start record (launcher, interpreter, torch import, "
               "MPI init, model built)",
    "load_s": "start -> resumed (checkpoint found, verified and read)",
    "first_step_s": "resumed -> the first step done",
}


def restart_phases(fault_t: float, records: Sequence[Mapping],
                   launches: Sequence[float], until: float = float("inf")) -> dict[str, float] | None:
    """Where the seconds of one restart went: the phases of ``RESTART_PHASES`` for the first
    launch after ``fault_t`` (``launches``: times the supervisor entered LAUNCHING, from its
    ``run`` events) and the progress records that followed it, before ``until`` (the next
    fault). None when that restart did not complete (no first step after a resume)."""
    launch = next((t for t in sorted(launches) if fault_t < t < until), None)
    if launch is None:
        return None
    after = [r for r in records if launch <= float(r.get("t", 0)) < until]
    start = next((r["t"] for r in after if r.get("event") == "start"), None)
    resumed = next((r["t"] for r in after if r.get("event") == "resume"), None)
    if start is None or resumed is None:
        return None
    first = next((r["t"] for r in after if r.get("event") == "step" and r["t"] >= resumed), None)
    if first is None:
        return None
    return {"to_relaunch_s": round(launch - fault_t, 2), "start_s": round(start - launch, 2),
            "load_s": round(resumed - start, 2), "first_step_s": round(first - resumed, 2),
            "total_s": round(first - fault_t, 2)}
