"""The prober's protocol and records."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol


class Health(str, enum.Enum):
    HEALTHY = "HEALTHY"          # ping answers, SSH works, health command succeeded
    UNREACHABLE = "UNREACHABLE"  # no ping reply: the host or its link is down
    UNRESPONSIVE = "UNRESPONSIVE"  # ping answers, SSH refused/timed out or the command hung
    DEGRADED = "DEGRADED"        # the health command ran and reported a problem

    @property
    def is_failed(self) -> bool:
        return self is not Health.HEALTHY


@dataclass(frozen=True)
class ProbeResult:
    host: str
    health: Health
    reason: str = ""
    latency_s: float = 0.0
    checks: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "host": self.host,
            "state": self.health.value,
            "reason": self.reason,
            "latency_s": round(self.latency_s, 4),
            "checks": dict(self.checks),
        }


class Prober(Protocol):
    def probe(self, hosts: Iterable[str]) -> dict[str, ProbeResult]: ...
