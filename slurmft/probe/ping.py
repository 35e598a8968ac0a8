"""ICMP reachability: one shared ICMP socket when allowed, else the system ``ping``.

``IcmpPinger`` sends every echo request from one socket and a reader thread matches replies:
no process per host, so thousands of hosts cost one file descriptor. It needs either an
unprivileged ICMP datagram socket (``net.ipv4.ping_group_range`` includes our group) or a raw
socket (root / CAP_NET_RAW; the rescheduler runs as root on the controller). Where neither is
allowed, ``ping()`` runs iputils' ``ping -c1`` (argv list, no shell; it has the capability
everywhere): 2-3 ms of fork/exec per host, fine for hundreds of hosts.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from slurmft.core.errors import ProbeError
from slurmft.core.nodeset import validate_hostname


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


# ------------------------------------------------------------------ one socket for many hosts
ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0


def icmp_checksum(data: bytes) -> int:
    """RFC 1071 internet checksum."""
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def build_echo_request(ident: int, seq: int, payload: bytes = b"slurmft-probe") -> bytes:
    header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    csum = icmp_checksum(header + payload)
    return struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, csum, ident, seq) + payload


def echo_reply_parts(packet: bytes, raw: bool) -> tuple[int, int, bytes] | None:
    """(ident, seq, payload) of an echo reply, or None. ``raw`` packets start with the IP
    header."""
    if raw:
        if len(packet) < 20:
            return None
        packet = packet[(packet[0] & 0x0F) * 4:]
    if len(packet) < 8:
        return None
    kind, _code, _csum, ident, seq = struct.unpack("!BBHHH", packet[:8])
    if kind != ICMP_ECHO_REPLY:
        return None
    return ident, seq, packet[8:]


def parse_echo_reply(packet: bytes, raw: bool) -> tuple[int, int] | None:
    """(ident, seq) of an echo reply, or None. ``raw`` packets start with the IP header."""
    parts = echo_reply_parts(packet, raw)
    return None if parts is None else parts[:2]


class IcmpPinger:
    """Pings many hosts from one ICMP socket: no process per host.

    Uses an unprivileged ICMP datagram socket where ``net.ipv4.ping_group_range`` allows it,
    else a raw socket (root or CAP_NET_RAW). ``IcmpPinger.open()`` returns None when neither
    is allowed; callers then use the ``ping`` subprocess. ``ping(address, timeout)`` is
    thread-safe and has the same contract as the module-level ``ping``.
    """

    def __init__(self, sock: socket.socket, raw: bool) -> None:
        self._sock = sock
        self._raw = raw
        self._ident = os.getpid() & 0xFFFF
        self._lock = threading.Lock()
        self._waiting: dict[int, tuple[str, threading.Event]] = {}
        self._seq = random.randrange(0x10000)
        self._closed = False
        self._reader = threading.Thread(target=self._read, name="slurmft-icmp", daemon=True)
        self._reader.start()

    @classmethod
    def open(cls) -> IcmpPinger | None:
        for kind, raw in ((socket.SOCK_DGRAM, False), (socket.SOCK_RAW, True)):
            try:
                sock = socket.socket(socket.AF_INET, kind, socket.IPPROTO_ICMP)
            except OSError:
                continue
            sock.settimeout(0.2)
            return cls(sock, raw)
        return None

    def close(self) -> None:
        self._closed = True
        self._sock.close()

    def __enter__(self) -> IcmpPinger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self) -> None:
        while not self._closed:
            try:
                packet, (src, _port) = self._sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            got = parse_echo_reply(packet, self._raw)
            if got is None:
                continue
            ident, seq = got
            if self._raw and ident != self._ident:
                continue  # a raw socket sees every echo reply on the host
            with self._lock:
                entry = self._waiting.get(seq)
            if entry is not None and entry[0] == src:
                entry[1].set()

    def ping(self, host: str, timeout: float) -> PingOutcome:
        validate_hostname(host)
        start = time.monotonic()
        try:
            address = socket.gethostbyname(host)
        except OSError as exc:
            return PingOutcome(False, time.monotonic() - start,
                               f"ping failed: cannot resolve {host}: {exc.strerror or exc}")
        event = threading.Event()
        with self._lock:
            for _ in range(0x10000):
                self._seq = (self._seq + 1) & 0xFFFF
                if self._seq not in self._waiting:
                    break
            seq = self._seq
            self._waiting[seq] = (address, event)
        try:
            try:
                self._sock.sendto(build_echo_request(self._ident, seq), (address, 0))
            except OSError as exc:
                # e.g. EHOSTUNREACH/ENETUNREACH: the route says nobody is there
                return PingOutcome(False, time.monotonic() - start,
                                   f"ping failed: {exc.strerror or exc}")
            if event.wait(timeout):
                return PingOutcome(True, time.monotonic() - start)
            return PingOutcome(False, time.monotonic() - start,
                               f"no ping reply within {timeout:g}s")
        finally:
            with self._lock:
                self._waiting.pop(seq, None)
