"""The fast sweep: liveness and an SSH-level check of thousands of hosts under one deadline.

One thread, one selector (epoll), no process per host:

1. **ICMP**, fping-style: ONE socket (an unprivileged ICMP datagram socket where
   ``net.ipv4.ping_group_range`` allows it, else a raw socket as root) sends an echo request to
   every address at once (as fast as the socket takes them, reading replies when it pushes
   back); hosts that have not answered get the request again every ``retry_every`` seconds. A reply is ours when its identifier and this sweep's
   random nonce in the payload match; it counts for the address it came from.
2. **SSH banner**: as soon as a host answers ping, a non-blocking TCP connect to its SSH port,
   then read the server's identification line (``SSH-2.0-...``, RFC 4253 4.2), send ours and
   close with RST (no TIME_WAIT). The socket waits for READ only (banner, RST and EOF all make
   it readable), so a host costs one event; at most ``max_sockets`` TCP sockets are open at once, so the
   sweep stays far below 1,024 descriptors whatever the host count; a silent host never gets a
   socket (it never answered ping), so silent hosts cannot starve the others.
3. Optionally (``slurmd_port``) a TCP connect to slurmd's port after the banner.

Everything stops at the deadline: what has not answered by then is judged by ``classify``
(pure): no echo -> UNREACHABLE; echo but refused / no banner / closed -> UNRESPONSIVE;
slurmd port closed -> DEGRADED; banner -> HEALTHY. The full SSH login with the health command
is not done here (see ``FanoutProber``: suspects and a rolling share get it).
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import struct
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from slurmft.probe.ping import build_echo_request, echo_reply_parts
from slurmft.probe.records import Health

SSH_IDENT = b"SSH-2.0-slurmft_probe\r\n"
MAX_BANNER = 8192            # RFC 4253: lines before the version line are allowed; bound them
RCVBUF = 16 << 20            # echo replies of a whole sweep may arrive before we read them
IDLE_AFTER = 0.05            # nothing for this long, all sent and connected: only stragglers


# ------------------------------------------------------------------ pure parts
def echo_payload(nonce: bytes) -> bytes:
    return b"slurmft-sweep" + nonce


def match_echo_reply(packet: bytes, *, raw: bool, ident: int | None,
                     nonce: bytes) -> int | None:
    """The sequence number of an echo reply to THIS sweep, else None.

    ``raw`` packets start with the IP header. ``ident``: the identifier we sent (a datagram
    socket's kernel sets it to the socket's port: pass None there, the kernel already filters).
    The payload must end with this sweep's ``nonce``: a late reply to an earlier sweep, or to
    another prober in the same process, does not count.
    """
    parts = echo_reply_parts(packet, raw)
    if parts is None:
        return None
    got_ident, seq, payload = parts
    if ident is not None and got_ident != ident:
        return None
    if payload != echo_payload(nonce):
        return None
    return seq


def parse_banner(data: bytes) -> tuple[str, str]:
    """Judge what an SSH server sent so far: ``("ok", version line)``, ``("more", "")`` when
    the version line is not complete yet, or ``("bad", why)``.

    RFC 4253 4.2: the server may send other lines first; the version line starts with
    ``SSH-`` and ends with CR LF (a bare LF is accepted, as OpenSSH does).
    """
    start = 0
    while True:
        end = data.find(b"\n", start)
        if end < 0:
            if len(data) > MAX_BANNER:
                return "bad", f"no SSH version line in the first {MAX_BANNER} bytes"
            return "more", ""
        line = data[start:end].rstrip(b"\r")
        if line.startswith(b"SSH-"):
            text = line.decode("ascii", "replace")
            proto = text.split("-", 2)
            if len(proto) < 3 or proto[1] not in ("2.0", "1.99"):
                return "bad", f"unsupported SSH protocol in {text[:80]!r}"
            return "ok", text[:255]
        start = end + 1
        if start > MAX_BANNER:
            return "bad", f"no SSH version line in the first {MAX_BANNER} bytes"


@dataclass
class Observation:
    """What the sweep saw of one address (raw facts; ``classify`` judges them)."""

    echo: bool = False               # an echo reply came
    echo_s: float = 0.0              # when (seconds after the sweep started)
    ping_error: str = ""             # sendto failed at once (no route, ...)
    tcp: str = ""                    # "", "connecting", "connected", "banner", "refused",
    #                                  "closed", "bad", "error"
    detail: str = ""                 # banner text, or why not
    slurmd: str = ""                 # "", "connecting", "ok", "refused", "error"
    slurmd_detail: str = ""
    done_s: float = 0.0              # when the last step finished
    final: bool = False              # nothing more will change before the deadline


def classify(obs: Observation, *, ping: bool, ssh: bool, timeout: float, ssh_port: int = 22,
             slurmd_port: int = 0, tcp_liveness: float = 0.0) -> tuple[Health, str, dict[str, str]]:
    """(health, reason, checks) of one host from what the sweep saw by the deadline.

    ``tcp_liveness``: no ICMP socket was allowed, so the TCP connect was the liveness check:
    neither SYN-ACK nor RST within that many seconds means UNREACHABLE."""
    checks: dict[str, str] = {}
    if tcp_liveness and ssh and obs.tcp == "connecting":
        return (Health.UNREACHABLE, f"no answer on port {ssh_port} within {tcp_liveness:g}s "
                "(no ICMP socket allowed: run as root or widen net.ipv4.ping_group_range)",
                checks)
    if ping and not obs.echo:
        if obs.ping_error:
            return Health.UNREACHABLE, f"ping failed: {obs.ping_error}", checks
        return Health.UNREACHABLE, f"no ping reply within {timeout:g}s", checks
    if not ssh:
        return Health.HEALTHY, "ping ok", checks
    tcp = obs.tcp
    if tcp == "banner":
        checks["ssh"] = "banner ok"
    elif tcp == "refused":
        return Health.UNRESPONSIVE, f"ssh: connection refused on port {ssh_port}", checks
    elif tcp == "connected":
        return (Health.UNRESPONSIVE,
                f"ssh: no SSH banner within {timeout:g}s (sshd hung?)", checks)
    elif tcp == "connecting":
        return Health.UNRESPONSIVE, f"ssh: connect timed out after {timeout:g}s", checks
    elif tcp == "closed":
        return (Health.UNRESPONSIVE,
                "ssh: connection closed before the SSH banner (sshd overloaded: MaxStartups?)",
                checks)
    elif tcp in ("bad", "error"):
        return Health.UNRESPONSIVE, f"ssh: {obs.detail}", checks
    else:  # never got a socket before the deadline
        return Health.UNRESPONSIVE, f"not probed before the deadline ({timeout:g}s)", checks
    if slurmd_port:
        if obs.slurmd == "ok":
            checks["slurmd"] = "ok"
        else:
            why = {"refused": "connection refused",
                   "connecting": f"no answer within {timeout:g}s",
                   "": f"not checked within {timeout:g}s"}.get(obs.slurmd, obs.slurmd_detail)
            checks["slurmd"] = f"slurmd port {slurmd_port}: {why}"
            return (Health.DEGRADED, f"slurmd not answering on port {slurmd_port} ({why})",
                    checks)
    return Health.HEALTHY, "ssh banner ok", checks


def parse_hosts_file(text: str) -> dict[str, str]:
    """{name: IPv4 address} from /etc/hosts-format text (first address of a name wins)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 2:
            continue
        try:
            socket.inet_aton(words[0])
        except OSError:
            continue  # IPv6 or garbage
        if words[0].count(".") != 3:
            continue
        for name in words[1:]:
            out.setdefault(name, words[0])
    return out


# ------------------------------------------------------------------ the sweep
@dataclass
class SweepStats:
    hosts: int = 0
    echo_sent: int = 0
    echo_replies: int = 0
    connects: int = 0
    sockets_peak: int = 0            # TCP sockets open at once, at most
    icmp: str = ""                   # "datagram", "raw" or "" (ping off)
    elapsed_s: float = 0.0


Endpoint = tuple[str, int]          # (IPv4 address, SSH port)


@dataclass
class _Conn:
    endpoint: Endpoint
    step: str                        # "ssh" or "slurmd"
    sock: socket.socket
    t0: float = 0.0
    buf: bytes = b""
    connected: bool = False


def open_icmp_socket() -> tuple[socket.socket, bool] | None:
    """(socket, raw?) : a datagram ICMP socket if allowed, else a raw one, else None."""
    for kind, raw in ((socket.SOCK_DGRAM, False), (socket.SOCK_RAW, True)):
        try:
            sock = socket.socket(socket.AF_INET, kind, socket.IPPROTO_ICMP)
        except OSError:
            continue
        sock.setblocking(False)
        for opt in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
            if opt is None:
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, RCVBUF)
                break
            except OSError:
                continue
        return sock, raw
    return None


@dataclass
class Sweep:
    """One sweep over ``endpoints`` ((IPv4 address, SSH port) pairs; one echo request per
    address). ``run()`` returns {endpoint: Observation}; ``stats`` says what it cost."""

    endpoints: Sequence[Endpoint]
    timeout: float
    ping: bool = True
    ssh: bool = True                  # False: ping only
    slurmd_port: int = 0              # 0: no slurmd check
    max_sockets: int = 900
    connect_wait: float = 0.0         # give up a TCP connect after this long; 0: the deadline
    retry_every: float = 0.2
    # Called once, with what was seen so far, when only stragglers are left: everything sent
    # and connected, nothing arrived for IDLE_AFTER seconds, every open socket has waited 4x
    # the median banner time (the caller starts its slow work then, in threads that no
    # longer compete with this loop for the GIL).
    on_idle: object = None
    clock: object = time.monotonic
    stats: SweepStats = field(default_factory=SweepStats)

    def run(self) -> dict[str, Observation]:
        clock = self.clock
        start = clock()
        deadline = start + self.timeout
        obs = {tuple(e): Observation() for e in self.endpoints}
        by_address: dict[str, list[Endpoint]] = {}
        for e in obs:
            by_address.setdefault(e[0], []).append(e)
        self.stats = st = SweepStats(hosts=len(obs))
        sel = selectors.DefaultSelector()
        conns: dict[int, _Conn] = {}
        connect_q: deque[tuple[Endpoint, str]] = deque()
        pending: deque[tuple[float, int, _Conn]] = deque()   # connects, oldest first
        icmp = None
        try:
            if self.ping and obs:
                opened = open_icmp_socket()
                if opened is None:
                    raise PermissionError(
                        "no ICMP socket allowed: run as root or add this user's group to "
                        "net.ipv4.ping_group_range")
                icmp, raw = opened
                st.icmp = "raw" if raw else "datagram"
                ident = None if not raw else (os.getpid() ^ id(self)) & 0xFFFF
                if not raw:
                    icmp.bind(("0.0.0.0", 0))
                nonce = os.urandom(8)
                payload = echo_payload(nonce)
                sel.register(icmp, selectors.EVENT_READ, None)
                index = {a: i for i, a in enumerate(by_address)}
                to_send: deque[str] = deque(by_address)
                next_retry = start + self.retry_every
            else:
                to_send = deque()
                if self.ssh:
                    connect_q.extend((e, "ssh") for e in obs)
            open_tcp = 0
            unresolved = len(obs)  # hosts whose outcome may still change

            def finish(o: Observation) -> None:
                nonlocal unresolved
                if not o.final:
                    o.final = True
                    o.done_s = clock() - start
                    unresolved -= 1

            def close(fd: int) -> None:
                nonlocal open_tcp
                c = conns.pop(fd)
                sel.unregister(c.sock)
                try:
                    # RST instead of FIN: no TIME_WAIT left behind for 10,000 hosts a sweep
                    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                      struct.pack("ii", 1, 0))
                except OSError:
                    pass
                c.sock.close()
                open_tcp -= 1

            def start_connect(endpoint: Endpoint, step: str) -> None:
                nonlocal open_tcp
                port = endpoint[1] if step == "ssh" else self.slurmd_port
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                err = s.connect_ex((endpoint[0], port))
                o = obs[endpoint]
                st.connects += 1
                if err not in (0, errno.EINPROGRESS):
                    s.close()
                    self._tcp_failed(o, step, err)
                    finish(o)
                    return
                c = _Conn(endpoint, step, s, clock())
                conns[s.fileno()] = c
                open_tcp += 1
                st.sockets_peak = max(st.sockets_peak, open_tcp)
                # SSH: wait for READ only; the banner, a RST and an EOF all make the socket
                # readable, so the connect itself costs no event (stragglers: ``settle``).
                # slurmd sends nothing first: its connect is seen by WRITE.
                sel.register(s, selectors.EVENT_READ if step == "ssh" else selectors.EVENT_WRITE,
                             c)
                if self.connect_wait:
                    pending.append((clock(), s.fileno(), c))
                if step == "ssh":
                    o.tcp = "connecting"
                else:
                    o.slurmd = "connecting"

            def after_echo(address: str) -> None:
                first = True
                for e in by_address.get(address, ()):
                    o = obs[e]
                    if o.echo or o.final:
                        continue
                    o.echo = True
                    o.echo_s = clock() - start
                    if first:
                        st.echo_replies += 1
                        first = False
                    if self.ssh:
                        connect_q.append((e, "ssh"))
                    else:
                        finish(o)

            idle_fired = self.on_idle is None
            latencies: list[float] = []   # connect -> banner, of the hosts that answered
            while unresolved > 0:
                now = clock()
                if now >= deadline:
                    break
                # 1. echo requests, a batch at a time (then read replies before the next one)
                if icmp is not None:
                    if not to_send and now >= next_retry:
                        to_send.extend(a for a, es in by_address.items()
                                       if not obs[es[0]].echo and not obs[es[0]].ping_error)
                        next_retry = now + self.retry_every
                    while to_send:       # all at once, until the socket pushes back
                        a = to_send[0]
                        try:
                            icmp.sendto(build_echo_request(ident or 0, index[a] & 0xFFFF,
                                                           payload), (a, 0))
                        except (BlockingIOError, InterruptedError):
                            break          # socket buffer full: read replies, then go on
                        except OSError as exc:
                            if exc.errno == errno.ENOBUFS:
                                break
                            for e in by_address[a]:
                                o = obs[e]
                                if not o.ping_error and not o.echo:
                                    o.ping_error = exc.strerror or str(exc)
                                    finish(o)
                        else:
                            st.echo_sent += 1
                        to_send.popleft()
                # 2. connects that took too long (connect_wait) give their socket back
                while pending and (pending[0][0] + self.connect_wait <= clock()
                                   or conns.get(pending[0][1]) is not pending[0][2]
                                   or pending[0][2].connected):
                    _, fd, c = pending.popleft()
                    if conns.get(fd) is c and not self._settle(c, obs[c.endpoint]):
                        close(fd)
                        finish(obs[c.endpoint])
                # 3. TCP connects, bounded
                while connect_q and open_tcp < self.max_sockets:
                    start_connect(*connect_q.popleft())
                # 4. wait for something
                wait = deadline - clock()
                if pending:
                    wait = min(wait, pending[0][0] + self.connect_wait - clock())
                if icmp is not None:
                    wait = 0 if to_send else min(wait, max(0.0, next_retry - clock()))
                quiet = not idle_fired and not to_send and not connect_q
                if quiet:
                    wait = min(wait, IDLE_AFTER)
                events = sel.select(max(0.0, wait))
                if quiet and not events and wait >= IDLE_AFTER and self._stragglers_only(
                        conns, latencies, clock()):
                    idle_fired = True
                    for c in conns.values():
                        self._settle(c, obs[c.endpoint])
                    self.on_idle(obs)
                for key, _mask in events:
                    if key.data is None:
                        self._read_icmp(icmp, raw, ident, nonce, after_echo)
                        continue
                    c: _Conn = key.data
                    o = obs[c.endpoint]
                    fd = key.fd
                    if c.step == "slurmd":
                        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if err:
                            close(fd)
                            self._tcp_failed(o, c.step, err)
                            finish(o)
                            continue
                        close(fd)
                        o.slurmd = "ok"
                        finish(o)
                        continue
                    try:
                        data = c.sock.recv(4096)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as exc:
                        close(fd)
                        if exc.errno == errno.ECONNREFUSED:
                            o.tcp, o.detail = "refused", exc.strerror or str(exc)
                        else:
                            o.tcp, o.detail = "error", (exc.strerror or str(exc))
                        finish(o)
                        continue
                    c.connected = True
                    if not data:
                        close(fd)
                        o.tcp = "closed"
                        finish(o)
                        continue
                    c.buf += data
                    verdict, text = parse_banner(c.buf)
                    if verdict == "more":
                        continue
                    if verdict == "ok":
                        try:
                            c.sock.send(SSH_IDENT)   # polite: say who we are before leaving
                        except OSError:
                            pass
                    close(fd)
                    o.tcp, o.detail = ("banner", text) if verdict == "ok" else (
                        "bad", f"port {c.endpoint[1]} does not speak SSH: {text}")
                    latencies.append(clock() - c.t0)
                    if verdict == "ok" and self.slurmd_port:
                        connect_q.append((c.endpoint, "slurmd"))
                    else:
                        finish(o)
        finally:
            for fd in list(conns):
                self._settle(conns[fd], obs[conns[fd].endpoint])
                close(fd)
            sel.close()
            if icmp is not None:
                icmp.close()
        st.elapsed_s = clock() - start
        return obs

    @staticmethod
    def _stragglers_only(conns: Mapping[int, _Conn], latencies: list[float],
                         now: float) -> bool:
        """Whether every socket still open is a straggler: even the youngest has waited four
        times the median banner time so far (a loaded bed answers late, but answers; a hung
        sshd never does). Asked only when the sweep has been quiet for IDLE_AFTER."""
        if not conns:
            return True
        median = sorted(latencies)[len(latencies) // 2] if latencies else IDLE_AFTER
        youngest = max(c.t0 for c in conns.values())
        return now - youngest >= max(IDLE_AFTER, 4 * median)

    @staticmethod
    def _settle(c: _Conn, o: Observation) -> bool:
        """Whether an SSH socket that has not spoken is connected (TCP handshake done, no
        banner: ``tcp = "connected"``); asked only of the few still open when it matters."""
        if c.step != "ssh" or c.connected:
            return c.connected
        try:
            c.sock.getpeername()
        except OSError:
            return False
        c.connected = True
        if o.tcp == "connecting":
            o.tcp = "connected"
        return True

    @staticmethod
    def _tcp_failed(o: Observation, step: str, err: int) -> None:
        what = "refused" if err == errno.ECONNREFUSED else "error"
        detail = os.strerror(err)
        if step == "ssh":
            o.tcp, o.detail = what, detail
        else:
            o.slurmd, o.slurmd_detail = what, detail

    @staticmethod
    def _read_icmp(sock: socket.socket, raw: bool, ident: int | None, nonce: bytes,
                   on_reply) -> None:
        while True:
            try:
                packet, (src, _port) = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if match_echo_reply(packet, raw=raw, ident=ident, nonce=nonce) is not None:
                on_reply(src)


def sweep(endpoints: Mapping[str, Endpoint], timeout: float, **kwargs) -> tuple[
        dict[str, Observation], SweepStats]:
    """{host: Observation} for {host: (address, port)}; hosts sharing an endpoint share it."""
    s = Sweep(list(dict.fromkeys(endpoints.values())), timeout, **kwargs)
    seen = s.run()
    return {h: seen[e] for h, e in endpoints.items()}, s.stats
