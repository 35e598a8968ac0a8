"""What one reschedule call decided and did, for the CLI's text and ``--json`` and the
watcher's log."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from slurmft.recovery.policy import Decision


@dataclass
class Report:
    """What a reschedule call decided and did."""

    decision: Decision
    dry_run: bool = False
    commands: list[list[str]] = field(default_factory=list)   # argv run (or, dry-run, planned)
    new_job_id: int | None = None
    restart_script: str | None = None
    elapsed_s: float = 0.0
    state_after: str = ""                  # the job's state when we stopped watching it
    running_after_s: float | None = None   # seconds from the last action to RUNNING


    def to_dict(self) -> dict:
        doc = self.decision.to_dict()
        if self.dry_run and self.decision.plan:
            doc["message"] = self.decision.plan
        doc.update(dry_run=self.dry_run, commands=self.commands, new_job_id=self.new_job_id,
                   elapsed_s=round(self.elapsed_s, 3), state_after=self.state_after,
                   running_after_s=(None if self.running_after_s is None
                                    else round(self.running_after_s, 3)))
        if self.restart_script:
            doc["restart_script"] = self.restart_script
        return doc

    def text(self) -> str:
        d = self.decision
        lines = [f"dry run: {d.plan or d.message}" if self.dry_run and d.actions else d.message]
        if d.failed:
            lines.append(f"failed nodes: {', '.join(d.failed)}; healthy: {', '.join(d.healthy) or '-'}")
        if self.dry_run and d.spends_retry:
            lines.append(f"retries used: {d.retries_used}/{d.max_retry} "
                         f"({d.retries_after}/{d.max_retry} if carried out)")
        else:                                    # the count after what was done
            lines.append(f"retries used: {d.retries_after}/{d.max_retry}")
        if self.commands:
            lines.append("would run:" if self.dry_run else "ran:")
            lines += ["  " + shlex.join(argv) for argv in self.commands]
        if self.new_job_id is not None:
            lines.append(f"restart job: {self.new_job_id}")
        if self.running_after_s is not None:
            lines.append(f"job RUNNING again {self.running_after_s:.2f}s after the last command")
        elif self.state_after:
            lines.append(f"job state now: {self.state_after}")
        return "\n".join(lines)
