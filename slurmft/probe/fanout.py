"""``FanoutProber``: the Prober implementation. All hosts in parallel under one deadline.

Per host: ping (UNREACHABLE if no reply) -> SSH connect + health command + built-in checks
(UNRESPONSIVE if SSH fails or a command hangs, DEGRADED if a command reports a problem) ->
with ``check_slurmd``, a TCP connect to the node's slurmd port, as slurmctld reaches it
(DEGRADED if refused or silent: slurmd is dead or hung while the node itself is fine) ->
HEALTHY. Each host gets ``timeout`` seconds from the moment a worker picks it up; the caller
waits at most ``timeout * waves + grace`` (waves = ceil(hosts / workers)) and reports any host
still in flight as UNRESPONSIVE "timed out". Workers are daemon threads, so a stuck one can
never keep the process alive. ``ping_fn``/``ssh_fn``/``connect_fn`` are injectable for tests.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence

from slurmft.core.config import ProbeConfig
from slurmft.core.errors import ProbeError
from slurmft.core.log import failed_extra, failure_level, get_logger
from slurmft.core.nodeset import validate_hostname
from slurmft.probe import checks as _checks
from slurmft.probe import ping as _ping
from slurmft.probe import ssh as _ssh
from slurmft.probe.records import Health, ProbeResult

log = get_logger(__name__)

PingFn = Callable[[str, float], _ping.PingOutcome]
SshFn = Callable[[_ssh.SshTarget, Sequence[tuple[str, str]], float], _ssh.SshOutcome]
ConnectFn = Callable[[str, int, float], "str | None"]


def tcp_connect(address: str, port: int, timeout: float) -> str | None:
    """None if something accepts a TCP connection on ``address:port`` in time, else why not."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return None
    except ConnectionRefusedError:
        return "connection refused"
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except OSError as exc:
        return exc.strerror or str(exc)


class FanoutProber:
    """Probe many hosts at once. ``config`` is the ``probe`` config section."""

    def __init__(self, config: ProbeConfig | None = None, *, ping_fn: PingFn | None = None,
                 ssh_fn: SshFn | None = None, connect_fn: ConnectFn | None = None,
                 icmp_socket: bool = True) -> None:
        """``ping_fn``/``ssh_fn``/``connect_fn`` replace the real ping/SSH/TCP connect (tests).
        ``icmp_socket=False`` forces the ``ping`` subprocess even where one shared ICMP socket
        is allowed."""
        self.config = config or ProbeConfig()
        self._ping_fn = ping_fn
        self._ping_bin = ""
        self.icmp_socket = icmp_socket
        self._ssh = ssh_fn or _ssh.run_commands
        self._connect = connect_fn or tcp_connect
        c = self.config
        self.checks = _checks.build_checks(
            c.command, gpu_count=c.gpu_count,
            checkpoint_path=c.checkpoint_path, min_free_gb=c.min_free_gb)

    @property
    def ping_wait(self) -> float:
        """How long to wait for an echo reply: a LAN answers in well under a millisecond, so
        a silent host is declared after half the deadline (at most 1 s), leaving the rest to
        SSH and keeping the verdict clear of the hard deadline."""
        c = self.config
        return c.ping_timeout or min(1.0, c.timeout / 2)

    @property
    def grace(self) -> float:
        return max(0.2, 0.25 * self.config.timeout)

    def target(self, host: str, ssh_config=None) -> _ssh.SshTarget:
        """Where to ping and SSH ``host`` (``ssh_config``: a pre-parsed config to reuse)."""
        c = self.config
        return _ssh.resolve_target(host, user=c.ssh_user, port=c.ssh_port, key=c.ssh_key,
                                   ssh_config=ssh_config or c.ssh_config,
                                   known_hosts=c.known_hosts,
                                   accept_unknown=c.accept_unknown_hosts)

    # ------------------------------------------------------------------ one host
    def _subprocess_ping(self, host: str, timeout: float) -> _ping.PingOutcome:
        if not self._ping_bin:
            self._ping_bin = _ping.find_ping()
        return _ping.ping(host, timeout, ping_bin=self._ping_bin)

    def probe_one(self, target: _ssh.SshTarget,
                  ping_fn: PingFn | None = None) -> ProbeResult:
        """One host's verdict (``ping_fn`` defaults to the injected or subprocess ping)."""
        c = self.config
        ping_fn = ping_fn or self._ping_fn or self._subprocess_ping
        start = time.monotonic()
        deadline = start + c.timeout

        def result(health: Health, reason: str, checks: dict | None = None) -> ProbeResult:
            return ProbeResult(target.host, health, reason, time.monotonic() - start,
                               dict(checks or {}))

        if c.ping:
            p = ping_fn(target.address, self.ping_wait)
            if not p.reachable:
                return result(Health.UNREACHABLE, p.detail or "no ping reply")
        if not c.ssh:
            return result(Health.HEALTHY, "ping ok")
        left = deadline - time.monotonic()
        if left <= 0:
            return result(Health.UNRESPONSIVE, f"timed out after {c.timeout:g}s")
        outcome = self._ssh(target, [(ch.name, ch.command) for ch in self.checks], left)
        if outcome.error:
            return result(Health.UNRESPONSIVE, outcome.error)
        by_name = {ch.name: ch for ch in self.checks}
        states: dict[str, str] = {}
        problems: list[str] = []
        for out in outcome.results:
            check = by_name.get(out.name)
            if check is None:
                continue
            if out.exit_status is None:
                states[out.name] = "timed out"
                return result(Health.UNRESPONSIVE,
                              f"{out.name} timed out after {c.timeout:g}s", states)
            problem = check.judge(out.exit_status, out.stdout, out.stderr)
            states[out.name] = problem or "ok"
            if problem:
                problems.append(problem)
        missing = [ch.name for ch in self.checks if ch.name not in states]
        if missing:
            return result(Health.UNRESPONSIVE, f"{missing[0]} did not run", states)
        if c.check_slurmd:
            wait = min(1.0, max(0.05, deadline - time.monotonic()))
            why = self._connect(target.address, c.slurmd_port, wait)
            states["slurmd"] = "ok" if why is None else f"slurmd port {c.slurmd_port}: {why}"
            if why is not None:
                problems.append(f"slurmd not answering on port {c.slurmd_port} ({why})")
        if problems:
            return result(Health.DEGRADED, "; ".join(problems), states)
        return result(Health.HEALTHY, "ok" if self.checks else "ssh ok", states)

    # ------------------------------------------------------------------ many hosts
    def probe(self, hosts: Iterable[str]) -> dict[str, ProbeResult]:
        """Probe ``hosts``, a NodeSet or host names (validated first: nothing runs if one name
        is bad); results come in the order of ``hosts``."""
        if isinstance(hosts, str):
            raise TypeError("hosts must be a NodeSet or host names; parse a hostlist with NodeSet(text)")
        names = list(dict.fromkeys(validate_hostname(h) for h in hosts))
        if not names:
            return {}
        parsed = _ssh.load_ssh_config(self.config.ssh_config) if self.config.ssh_config else None
        targets = {h: self.target(h, parsed) for h in names}
        pinger = None
        ping_fn = self._ping_fn
        if self.config.ping and ping_fn is None:
            pinger = _ping.IcmpPinger.open() if self.icmp_socket else None
            ping_fn = pinger.ping if pinger is not None else self._subprocess_ping
            if pinger is None:
                self._ping_bin = self._ping_bin or _ping.find_ping()  # fail before threads
        try:
            return self._fan_out(names, targets, ping_fn)
        finally:
            if pinger is not None:
                pinger.close()

    def _fan_out(self, names: list[str], targets: dict[str, _ssh.SshTarget],
                 ping_fn: PingFn | None) -> dict[str, ProbeResult]:
        workers = max(1, min(len(names), self.config.max_parallel))
        waves = math.ceil(len(names) / workers)
        queue = deque(names)
        results: dict[str, ProbeResult] = {}
        started: dict[str, float] = {}
        lock = threading.Lock()
        done = threading.Event()
        stop = threading.Event()

        go = threading.Event()

        def work() -> None:
            go.wait()  # start together: no thread competes for the GIL while others start
            while not stop.is_set():
                with lock:
                    if not queue:
                        return
                    host = queue.popleft()
                    started[host] = time.monotonic()
                try:
                    res = self.probe_one(targets[host], ping_fn)
                except ProbeError as exc:
                    res = ProbeResult(host, Health.UNRESPONSIVE, f"probe setup failed: {exc}",
                                      time.monotonic() - started[host])
                except Exception as exc:  # a worker must never die silently
                    res = ProbeResult(host, Health.UNRESPONSIVE,
                                      f"probe error: {type(exc).__name__}: {exc}",
                                      time.monotonic() - started[host])
                with lock:
                    results.setdefault(host, res)
                    if len(results) == len(names):
                        done.set()

        start = time.monotonic()
        threads = [threading.Thread(target=work, name=f"slurmft-probe-{i}", daemon=True)
                   for i in range(workers)]
        for t in threads:
            t.start()
        go.set()
        log.debug("started %d probe threads in %.3fs", workers, time.monotonic() - start)
        done.wait(max(0.0, start + self.config.timeout * waves + self.grace - time.monotonic()))
        stop.set()
        now = time.monotonic()
        with lock:
            for host in names:
                if host not in results:
                    t0 = started.get(host)
                    why = (f"timed out after {self.config.timeout:g}s" if t0 is not None
                           else "not probed before the deadline")
                    results[host] = ProbeResult(host, Health.UNRESPONSIVE, why,
                                                now - (t0 if t0 is not None else start))
            out = {h: results[h] for h in names}
        bad = [r for r in out.values() if r.health.is_failed]
        # One record when all is well (under GIL contention each write costs a switch); each
        # failed host gets its own line at the default level, searchable by failed_node.
        log.info("probed %d hosts in %.2fs: %d unhealthy", len(names), now - start, len(bad))
        for r in bad:
            log.log(failure_level([r.health]), "probe: %s is %s: %s", r.host, r.health.value,
                    r.reason, extra=failed_extra(r.host))
        return out
