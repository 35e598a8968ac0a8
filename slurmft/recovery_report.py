"""Pure analysis of a training run that survived a failure: timeline, summary, goodput.

Input is what the run left behind: the progress records ``examples/train.py`` (or any script
using the same record shape) appends as JSON lines, plus the wall-clock times of outside events
(fault injected, failure detected, job requeued or failed node taken out of the running job,
job running again). Nothing here touches a
process or a file except ``read_progress``.

Definitions (stated once, used everywhere):

* **useful step**: a step whose result survived, i.e. is part of the final lineage (it was not
  redone after a resume).
* **steps lost**: steps completed before a resume that were redone after it
  (``last step before the resume - checkpoint step``).
* **goodput**: sum of the durations of useful steps / wall time from the first start to done.
* **time to recover**: fault -> first step completed after the resume.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

from slurmft.errors import SlurmFTError


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
    useful_s: float
    goodput: float
    world_sizes: list[int] = field(default_factory=list)

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


def summarize(records: Sequence[Mapping], planned_steps: int,
              events: Mapping[str, float] | None = None) -> RecoverySummary:
    """The numbers of a run. ``events`` may hold ``fault``, ``detected``, ``requeued``,
    ``running_again`` wall-clock times (seconds since the epoch)."""
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
    t0 = records[0]["t"]
    done = [r for r in records if r["event"] == "done"]
    t_end = done[-1]["t"] if done else records[-1]["t"]
    wall = max(t_end - t0, 1e-9)
    useful = sum(float(r.get("step_s", 0.0)) for r in lineage.values())
    final_step = max(lineage) if lineage else None
    fault = events.get("fault")

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
        completed=bool(done) and final_step == planned_steps - 1,
        resumes=len(resumes),
        resumed_from=[int(r["from_step"]) for r in resumes],
        steps_lost=steps_lost,
        fault_at=fault,
        detection_s=since_fault(events.get("detected")),
        requeued_s=since_fault(events.get("requeued")),
        running_again_s=since_fault(events.get("running_again")),
        first_step_after_resume_s=since_fault(first_after),
        wall_s=round(wall, 3),
        useful_s=round(useful, 3),
        goodput=round(min(1.0, useful / wall), 4),
        world_sizes=sorted({int(r["world_size"]) for r in records if "world_size" in r}),
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
