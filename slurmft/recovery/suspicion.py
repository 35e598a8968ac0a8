"""Pure rules that keep a watcher from acting on a false alarm.

One failed probe is a suspicion, not a verdict: on a loaded node (or a loaded prober) an SSH
handshake can miss a 1-2 s deadline. Draining a healthy node costs a whole job restart, so the
watcher acts only on a *confirmed* failure:

* a host is confirmed failed after ``confirm`` consecutive failed probes; the watcher re-probes
  suspects at once instead of waiting an interval, so a dead host costs about ``confirm`` probe
  timeouts, not ``confirm`` intervals;
* if more than ``max_failed_fraction`` of one job's nodes are confirmed failed at the same time,
  the fault is more likely on the prober's side (its own network, overload) than on the nodes:
  nothing is done and an error says so. Kubernetes' node controller stops evicting for the same
  reason when a whole zone looks unhealthy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from slurmft.core.errors import ConfigError
from slurmft.probe.records import ProbeResult


@dataclass(frozen=True)
class ConfirmPolicy:
    confirm: int = 2                  # consecutive failed probes before a host counts as failed
    max_failed_fraction: float = 0.5  # refuse to act when more of a job's nodes fail at once

    def __post_init__(self) -> None:
        if self.confirm < 1:
            raise ConfigError(f"watch confirm must be >= 1, not {self.confirm}")
        if not 0 < self.max_failed_fraction <= 1:
            raise ConfigError("watch max_failed_fraction must be in (0, 1], "
                              f"not {self.max_failed_fraction}")


class FailureTracker:
    """Consecutive-failure streaks per host (a healthy probe resets the streak)."""

    def __init__(self, policy: ConfirmPolicy | None = None) -> None:
        self.policy = policy or ConfirmPolicy()
        self._streak: dict[str, int] = {}
        self._last_healthy: dict[str, float] = {}

    def observe(self, results: Mapping[str, ProbeResult], now: float | None = None) -> None:
        """Count failures; ``now`` (wall clock) stamps hosts seen healthy."""
        for host, res in results.items():
            if res.health.is_failed:
                self._streak[host] = self._streak.get(host, 0) + 1
            else:
                self._streak.pop(host, None)
                if now is not None:
                    self._last_healthy[host] = now

    def detection_bound(self, hosts: Iterable[str], now: float) -> float | None:
        """Upper bound of failure -> detection: time since the hosts were last seen healthy
        (None if one never was)."""
        seen = [self._last_healthy.get(h) for h in hosts]
        if not seen or any(t is None for t in seen):
            return None
        return round(now - min(seen), 3)

    def streak(self, host: str) -> int:
        return self._streak.get(host, 0)

    def suspects(self) -> list[str]:
        """Hosts that failed at least once but are not confirmed yet."""
        return [h for h, n in self._streak.items() if 0 < n < self.policy.confirm]

    def confirmed(self, hosts: Iterable[str]) -> list[str]:
        return [h for h in hosts if self._streak.get(h, 0) >= self.policy.confirm]

    def forget(self, hosts: Iterable[str]) -> None:
        for h in hosts:
            self._streak.pop(h, None)


def too_many_failed(job_nodes: Sequence[str], failed: Sequence[str], max_fraction: float) -> bool:
    """True when acting would take out more than ``max_fraction`` of the job's nodes.

    A single-node job is exempt: losing its only node is exactly what it must recover from.
    """
    if len(job_nodes) <= 1:
        return False
    return len(failed) / len(job_nodes) > max_fraction
