"""ICMP reachability with the system ``ping`` (argv list, no shell).

Why a subprocess and not a raw socket: raw ICMP sockets need root or CAP_NET_RAW, and
unprivileged ICMP datagram sockets need ``net.ipv4.ping_group_range`` set by the admin;
iputils' ``ping`` already has the capability everywhere. One ``ping -c1`` costs 2-3 ms, which
is nothing next to the timeout we wait for a dead host, and the probes run in parallel.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

from slurmft.errors import ProbeError
from slurmft.hosts import validate_hostname


@dataclass(frozen=True)
class PingOutcome:
    reachable: bool
    latency_s: float
    detail: str = ""


def build_ping_argv(host: str, timeout: float, ping_bin: str = "ping") -> list[str]:
    """``ping -n -q -c 1 -W <timeout> <host>``; iputils accepts fractional -W."""
    validate_hostname(host)
    wait = max(0.1, float(timeout))
    return [ping_bin, "-n", "-q", "-c", "1", "-W", f"{wait:.3g}", host]


def find_ping() -> str:
    path = shutil.which("ping")
    if not path:
        raise ProbeError("ping not found: install iputils-ping or set probe.ping: false")
    return path


def ping(host: str, timeout: float, *, ping_bin: str = "ping",
         prefix: Sequence[str] = ()) -> PingOutcome:
    """One echo request; never runs longer than ``timeout`` + 0.5 s."""
    argv = [*prefix, *build_ping_argv(host, timeout, ping_bin)]
    start = time.monotonic()
    try:
        proc = subprocess.run(  # noqa: S603 - argv list, validated host
            argv, capture_output=True, text=True, timeout=timeout + 0.5,
            stdin=subprocess.DEVNULL, check=False,
        )
    except subprocess.TimeoutExpired:
        return PingOutcome(False, time.monotonic() - start, f"no ping reply within {timeout:g}s")
    except OSError as exc:
        raise ProbeError(f"cannot run ping: {exc.strerror or exc}") from None
    elapsed = time.monotonic() - start
    if proc.returncode == 0:
        return PingOutcome(True, elapsed)
    if proc.returncode == 1:
        return PingOutcome(False, elapsed, f"no ping reply within {timeout:g}s")
    err = (proc.stderr or proc.stdout).strip().splitlines()
    detail = err[-1] if err else f"ping exited {proc.returncode}"
    return PingOutcome(False, elapsed, f"ping failed: {detail}")
