"""``FanoutProber``: the Prober implementation. All hosts in parallel under one deadline.

From ``probe.sweep_min_hosts`` hosts on (default 64) a probe is a *sweep* (``sweep.py``, see
docs/probe.md): one ICMP socket pings every host, a non-blocking TCP connect reads each
answering host's SSH banner (at most ``probe.max_sockets`` open at once), all in one thread
under the one deadline; the full SSH login with the health command runs only for suspects
(hosts whose last full check failed) and a rolling share (``probe.login_per_sweep`` hosts, the
longest unchecked first), in threads started with the sweep. Smaller probes (a job's nodes,
the watcher's re-probe of suspects) give every host the full check below.

Full check, per host: ping (UNREACHABLE if no reply) -> SSH connect + health command + built-in checks
(UNRESPONSIVE if SSH fails or a command hangs, DEGRADED if a command reports a problem) ->
with ``check_slurmd``, a TCP connect to the node's slurmd port, as slurmctld reaches it
(DEGRADED if refused or silent: slurmd is dead or hung while the node itself is fine) ->
HEALTHY. Each host gets ``timeout`` seconds from the moment a worker picks it up; the caller
waits at most ``timeout * waves + grace`` (waves = ceil(hosts / workers)) and reports any host
still in flight as UNRESPONSIVE "timed out". Workers are daemon threads, so a stuck one can
never keep the process alive. ``ping_fn``/``ssh_fn``/``connect_fn`` are injectable for tests.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence

from slurmft.core.config import ProbeConfig
from slurmft.core.errors import ProbeError
from slurmft.core.log import failed_extra, failure_level, get_logger
from slurmft.core.nodeset import validate_hostname
from slurmft.probe import checks as _checks
from slurmft.probe import ping as _ping
from slurmft.probe import ssh as _ssh
from slurmft.probe import sweep as _sweep
from slurmft.probe.records import Health, ProbeResult

log = get_logger(__name__)

PingFn = Callable[[str, float], _ping.PingOutcome]
SshFn = Callable[[_ssh.SshTarget, Sequence[tuple[str, str]], float], _ssh.SshOutcome]
ConnectFn = Callable[[str, int, float], "str | None"]
SweepFn = Callable[..., "tuple[dict[str, _sweep.Observation], _sweep.SweepStats]"]
RESOLVE_TTL = 300.0   # seconds a name's address from the system resolver is reused


def is_ipv4(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 4 and all(p.isdigit() and int(p) < 256 and len(p) <= 3 for p in parts)


def _reachable(_address: str, _timeout: float) -> _ping.PingOutcome:
    """The sweep already pinged: a full check inside a sweep starts at SSH."""
    return _ping.PingOutcome(True, 0.0)


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


class _FullChecks:
    """The full check (SSH login + commands) of some hosts at once, in threads, each under the
    prober's ``timeout``; ``wait`` returns what finished by ``timeout + grace`` after start (a
    host missing from it is ``unfinished``)."""

    def __init__(self, prober: FanoutProber) -> None:
        self.prober = prober
        self.started = False
        self.results: dict[str, ProbeResult] = {}
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.end = 0.0

    def start(self, targets: Mapping[str, _ssh.SshTarget]) -> None:
        self.started = True
        p = self.prober
        self.end = p._clock() + p.config.timeout + p.grace

        def login(host: str) -> None:
            try:
                res = p.probe_one(targets[host], _reachable)
            except Exception as exc:  # a worker must never die silently
                res = ProbeResult(host, Health.UNRESPONSIVE,
                                  f"probe error: {type(exc).__name__}: {exc}")
            with self.lock:
                self.results[host] = res

        self.threads = [threading.Thread(target=login, args=(h,), daemon=True,
                                         name=f"slurmft-login-{h}") for h in targets]
        for t in self.threads:
            t.start()

    def wait(self) -> dict[str, ProbeResult]:
        for t in self.threads:
            t.join(max(0.0, self.end - self.prober._clock()))
        with self.lock:
            return dict(self.results)


class FanoutProber:
    """Probe many hosts at once. ``config`` is the ``probe`` config section."""

    def __init__(self, config: ProbeConfig | None = None, *, ping_fn: PingFn | None = None,
                 ssh_fn: SshFn | None = None, connect_fn: ConnectFn | None = None,
                 icmp_socket: bool = True, sweep_fn: SweepFn | None = None,
                 resolve_fn: Callable[[str], str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``ping_fn``/``ssh_fn``/``connect_fn``/``sweep_fn``/``resolve_fn`` replace the real
        ping/SSH/TCP connect/sweep/name lookup (tests; an injected ``ping_fn`` means a test of
        the full check, so no sweep). ``icmp_socket=False`` forces the ``ping`` subprocess even where
        one shared ICMP socket is allowed (full checks only)."""
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
        self._sweep_fn = sweep_fn or _sweep.sweep
        self._resolve = resolve_fn or socket.gethostbyname
        self._clock = clock
        # Sweep state, per prober (the watcher keeps one prober across cycles):
        self._last_login: dict[str, float] = {}   # host -> when its last full check ran
        self._suspects: set[str] = set()          # banner fine, last full check failed
        self._strikes: dict[str, int] = {}        # full checks in a row that did not finish
        self._resolved: dict[str, tuple[float, str]] = {}   # name -> (expires, address)
        self._hosts_map: tuple[tuple[str, float], dict[str, str]] = (("", 0.0), {})
        self._targets: tuple[tuple[str, float], dict[str, _ssh.SshTarget]] = (("", 0.0), {})
        self.last_sweep: _sweep.SweepStats | None = None
        self._icmp_allowed = True                 # False once no ICMP socket could be opened
        self._silent_refused = False              # silent() warned that it has no ICMP socket

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
        if self.uses_sweep(len(names)):
            swept = self._sweep_probe(names)
            if swept is not None:
                return swept
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

    # ------------------------------------------------------------------ the sweep
    def uses_sweep(self, count: int) -> bool:
        """Whether probing ``count`` hosts is a sweep (probe.sweep_min_hosts; never when a
        ping function was injected for a test of the full check)."""
        m = self.config.sweep_min_hosts
        return m > 0 and count >= m and self._ping_fn is None

    @staticmethod
    def _file_key(path: str) -> tuple[str, float]:
        try:
            return path, os.stat(path).st_mtime
        except OSError:
            return path, -1.0

    def _sweep_targets(self, names: Sequence[str]) -> dict[str, _ssh.SshTarget]:
        """Targets of ``names``, kept while probe.ssh_config is unchanged (parsing the OpenSSH
        config for 10,000 hosts costs more than the sweep)."""
        path = self.config.ssh_config
        key = self._file_key(_ssh._expand_path(path)) if path else ("", 0.0)
        if key != self._targets[0]:
            self._targets = (key, {})
        cache = self._targets[1]
        missing = [h for h in names if h not in cache]
        if missing:
            parsed = _ssh.load_ssh_config(path) if path else None
            for h in missing:
                cache[h] = self.target(h, parsed)
        return {h: cache[h] for h in names}

    def _hosts_file_map(self) -> dict[str, str]:
        path = self.config.hosts_file
        if not path:
            return {}
        key = self._file_key(path)
        if key != self._hosts_map[0]:
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    text = f.read()
            except OSError as exc:
                raise ProbeError(f"cannot read probe.hosts_file {path}: "
                                 f"{exc.strerror or exc}") from None
            self._hosts_map = (key, _sweep.parse_hosts_file(text))
        return self._hosts_map[1]

    def _address(self, name: str, hosts_map: Mapping[str, str]) -> str:
        """IPv4 address of ``name``: a literal, probe.hosts_file, else the resolver (cached)."""
        if is_ipv4(name):
            return name
        if name in hosts_map:
            return hosts_map[name]
        now = self._clock()
        hit = self._resolved.get(name)
        if hit is not None and hit[0] > now:
            return hit[1]
        address = self._resolve(name)
        self._resolved[name] = (now + RESOLVE_TTL, address)
        return address

    def pick_logins(self, names: Sequence[str]) -> list[str]:
        """Who of ``names`` (the hosts this sweep found healthy) gets the full check: every
        suspect (its last full check failed or did not finish), then the ``login_per_sweep``
        hosts checked longest ago (never checked first)."""
        share = self.config.login_per_sweep
        if share <= 0 and not self._suspects:
            return []
        suspects = [h for h in names if h in self._suspects]
        rest = (h for h in names if h not in self._suspects)
        return suspects + heapq.nsmallest(share, rest,
                                          key=lambda h: self._last_login.get(h, -1.0))

    @staticmethod
    def unfinished(res: ProbeResult | None) -> bool:
        """A full check that ran out of time (not one that found a fault)."""
        return res is None or (res.health is Health.UNRESPONSIVE and (
            "timed out" in res.reason or "no SSH handshake" in res.reason))

    def _merge_full(self, cheap: ProbeResult, full: ProbeResult | None,
                    elapsed: float) -> ProbeResult:
        """The verdict of a host whose banner was fine and that had a full check this sweep.

        A fault the full check found counts at once. A full check that did not finish in time
        (the prober's own threads share the CPU with the sweep) is a suspicion: the host gets
        the full check again next sweep and is UNRESPONSIVE if that one does not finish
        either. So a loaded prober does not mark a healthy host bad, and a hung health
        command is still reported, one sweep later."""
        h, c = cheap.host, self.config
        if self.unfinished(full):
            strikes = self._strikes.get(h, 0) + 1
            self._strikes[h] = strikes
            self._suspects.add(h)
            why = full.reason if full is not None else f"timed out after {c.timeout:g}s"
            if strikes < 2:
                return ProbeResult(h, cheap.health, cheap.reason, cheap.latency_s,
                                   {**cheap.checks, "login": f"unfinished ({why}): "
                                                             "checked again next sweep"})
            return ProbeResult(h, Health.UNRESPONSIVE, why, elapsed,
                               {**cheap.checks, **(full.checks if full else {})})
        self._strikes.pop(h, None)
        if full.health.is_failed:
            self._suspects.add(h)
        else:
            self._suspects.discard(h)
        return ProbeResult(h, full.health, full.reason, max(cheap.latency_s, full.latency_s),
                           {**cheap.checks, **full.checks})

    def silent(self, hosts: Sequence[str]) -> list[str]:
        """Those of ``hosts`` that send no echo reply within the ping wait: one ICMP sweep,
        no SSH (the watcher's cheap check between its probe cycles). [] when ping is off or
        no ICMP socket is allowed; a name that does not resolve is left to the next probe."""
        c = self.config
        if not c.ping or not self._icmp_allowed or not hosts:
            return []
        endpoints, _ = self._endpoints(hosts, self._sweep_targets(hosts), self._hosts_file_map())
        try:
            seen, _ = self._sweep_fn(endpoints, self.ping_wait, ping=True, ssh=False,
                                     slurmd_port=0, max_sockets=c.max_sockets)
        except PermissionError as exc:
            if not self._silent_refused:
                self._silent_refused = True
                log.warning("probe: no pings between watch cycles: %s", exc)
            return []
        return [h for h in endpoints if not seen[h].echo]

    def _endpoints(self, names: Sequence[str], targets: Mapping[str, _ssh.SshTarget],
                   hosts_map: Mapping[str, str]) -> tuple[dict[str, tuple[str, int]],
                                                          dict[str, OSError]]:
        """({host: (IPv4 address, SSH port)}, {host: why its name did not resolve})."""
        endpoints: dict[str, tuple[str, int]] = {}
        unresolved: dict[str, OSError] = {}
        for h in names:
            try:
                endpoints[h] = (self._address(targets[h].address, hosts_map), targets[h].port)
            except OSError as exc:
                unresolved[h] = exc
        return endpoints, unresolved

    def _sweep_probe(self, names: list[str]) -> dict[str, ProbeResult] | None:
        """The sweep's verdicts; None when it cannot check what is asked (ping only, and no
        ICMP socket allowed): the full check, with the ``ping`` program, does it then."""
        c = self.config
        start = self._clock()
        targets = self._sweep_targets(names)
        hosts_map = self._hosts_file_map()
        endpoints, unresolved = self._endpoints(names, targets, hosts_map)
        failed = {h: ProbeResult(h, Health.UNREACHABLE, f"ping failed: cannot resolve "
                                 f"{targets[h].address}: {getattr(exc, 'strerror', '') or exc}")
                  for h, exc in unresolved.items()}
        for h, (address, _port) in endpoints.items():
            t = targets[h]
            # paramiko must reach the address the sweep checked (the name may resolve only
            # through probe.hosts_file); host keys of IPs: see docs/probe.md
            if not is_ipv4(t.address) and hosts_map.get(t.address) == address:
                targets[h] = dataclasses.replace(t, address=address)
        slurmd = c.slurmd_port if c.check_slurmd else 0
        logins: list[str] = []
        full = _FullChecks(self)

        def on_idle(by_endpoint: Mapping) -> None:
            # Only stragglers left (hung sshds, silent hosts): start the full checks now,
            # among the hosts whose banner (and slurmd port) already answered, so they overlap
            # the sweep's wait for the deadline instead of following it.
            ok = [h for h in names if h in endpoints and by_endpoint[endpoints[h]].final
                  and by_endpoint[endpoints[h]].tcp == "banner"
                  and (not slurmd or by_endpoint[endpoints[h]].slurmd == "ok")]
            logins.extend(self.pick_logins(ok))
            full.start({h: targets[h] for h in logins})

        hook = {"on_idle": on_idle} if c.ssh else {}
        seen = None
        tcp_liveness = 0.0
        if c.ping and self._icmp_allowed:
            try:
                seen, stats = self._sweep_fn(endpoints, c.timeout, ping=True, ssh=c.ssh,
                                             slurmd_port=slurmd, max_sockets=c.max_sockets,
                                             **hook)
            except PermissionError as exc:
                self._icmp_allowed = False
                log.warning("probe: %s; the sweep uses TCP connects to port 22 for liveness "
                            "instead", exc)
        if seen is None and c.ping and not c.ssh:
            return None
        if seen is None:
            if c.ping and c.ssh:
                # Liveness by TCP: a live host answers SYN with SYN-ACK or RST at once; give
                # up after the ping wait so that silent hosts cannot hold every socket.
                tcp_liveness = self.ping_wait
            seen, stats = self._sweep_fn(endpoints, c.timeout, ping=False, ssh=c.ssh,
                                         slurmd_port=slurmd, max_sockets=c.max_sockets,
                                         connect_wait=tcp_liveness, **hook)
        self.last_sweep = stats
        swept = self._clock()
        out: dict[str, ProbeResult] = {}
        for h in names:
            if h in failed:
                out[h] = failed[h]
                continue
            o = seen[h]
            health, reason, checks = _sweep.classify(
                o, ping=c.ping and not tcp_liveness and self._icmp_allowed, ssh=c.ssh,
                timeout=c.timeout, ssh_port=endpoints[h][1], slurmd_port=slurmd,
                tcp_liveness=tcp_liveness)
            out[h] = ProbeResult(h, health, reason, o.done_s if o.final else swept - start,
                                 checks)
            if health.is_failed:        # the cheap check already tells: no login needed
                self._suspects.discard(h)
                self._strikes.pop(h, None)
        if c.ssh and not full.started:
            # The sweep never idled (every host answered at once): full checks start now.
            # Never beside the busy sweep: paramiko's threads would take the GIL from its
            # loop at every system call and slow it down many times over.
            logins.extend(self.pick_logins([h for h in names if not out[h].health.is_failed]))
            full.start({h: targets[h] for h in logins})
        results = full.wait()
        now = self._clock()
        for h in logins:
            self._last_login[h] = now
            if not out[h].health.is_failed:   # the cheap verdict of a failed host stands
                out[h] = self._merge_full(out[h], results.get(h), now - start)
        if len(self._last_login) > 4 * len(names) + 1024:   # hosts long gone
            keep = set(names)
            self._last_login = {h: t for h, t in self._last_login.items() if h in keep}
            self._suspects &= keep
            self._strikes = {h: n for h, n in self._strikes.items() if h in keep}
        bad = [r for r in out.values() if r.health.is_failed]
        log.info("swept %d hosts in %.2fs (%d full checks): %d unhealthy", len(names),
                 now - start, len(logins), len(bad))
        for r in bad:
            log.log(failure_level([r.health]), "probe: %s is %s: %s", r.host, r.health.value,
                    r.reason, extra=failed_extra(r.host))
        return out
