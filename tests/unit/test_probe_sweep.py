"""The fast sweep: ICMP packets, banner parsing, classification, the FanoutProber's sweep
(rolling full checks, suspects) with a scripted sweep, and one real sweep over loopback TCP."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from slurmft.core.config import ProbeConfig
from slurmft.core.errors import ConfigError, ProbeError
from slurmft.probe.fanout import FanoutProber, is_ipv4
from slurmft.probe.ping import build_echo_request, icmp_checksum
from slurmft.probe.records import Health
from slurmft.probe.ssh import CommandOutcome, SshOutcome
from slurmft.probe.sweep import (
    Observation, Sweep, SweepStats, classify, echo_payload, match_echo_reply, parse_banner,
    parse_hosts_file, sweep,
)

NONCE = b"\x01\x02\x03\x04\x05\x06\x07\x08"


def reply(ident: int, seq: int, payload: bytes, kind: int = 0) -> bytes:
    """An ICMP echo reply as the kernel hands it to a datagram socket (no IP header)."""
    head = struct.pack("!BBHHH", kind, 0, 0, ident, seq)
    csum = icmp_checksum(head + payload)
    return struct.pack("!BBHHH", kind, 0, csum, ident, seq) + payload


def ip_header(length: int) -> bytes:
    return bytes([0x45, 0]) + struct.pack("!H", 20 + length) + bytes(16)


# ------------------------------------------------------------------ ICMP
def test_echo_request_checksum_verifies_and_carries_id_seq_payload():
    pkt = build_echo_request(0x1234, 0xBEEF, echo_payload(NONCE))
    assert icmp_checksum(pkt) == 0                    # a valid packet sums to zero
    kind, code, _c, ident, seq = struct.unpack("!BBHHH", pkt[:8])
    assert (kind, code, ident, seq) == (8, 0, 0x1234, 0xBEEF)
    assert pkt[8:] == b"slurmft-sweep" + NONCE
    odd = build_echo_request(1, 2, b"abc")            # odd length: padded for the sum only
    assert len(odd) == 11 and icmp_checksum(odd) == 0


def test_reply_matching_by_ident_nonce_and_type():
    payload = echo_payload(NONCE)
    good = reply(0x1234, 7, payload)
    assert match_echo_reply(good, raw=False, ident=None, nonce=NONCE) == 7
    assert match_echo_reply(good, raw=False, ident=0x1234, nonce=NONCE) == 7
    assert match_echo_reply(good, raw=False, ident=0x4321, nonce=NONCE) is None   # not ours
    assert match_echo_reply(reply(0x1234, 7, echo_payload(b"x" * 8)), raw=False, ident=None,
                            nonce=NONCE) is None      # an earlier sweep's late reply
    assert match_echo_reply(reply(0x1234, 7, payload, kind=8), raw=False, ident=None,
                            nonce=NONCE) is None      # an echo request, not a reply
    assert match_echo_reply(good[:7], raw=False, ident=None, nonce=NONCE) is None
    # a raw socket sees the IP header first (its length from the IHL nibble)
    assert match_echo_reply(ip_header(len(good)) + good, raw=True, ident=0x1234,
                            nonce=NONCE) == 7
    assert match_echo_reply(b"\x45" + bytes(10), raw=True, ident=0x1234, nonce=NONCE) is None


# ------------------------------------------------------------------ banner
@pytest.mark.parametrize("data, want", [
    (b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n", ("ok", "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3")),
    (b"SSH-2.0-dropbear\n", ("ok", "SSH-2.0-dropbear")),                 # bare LF
    (b"SSH-1.99-OldServer\r\n", ("ok", "SSH-1.99-OldServer")),
    (b"Welcome\r\nauthorised use only\r\nSSH-2.0-X\r\n", ("ok", "SSH-2.0-X")),  # RFC 4253 4.2
    (b"SSH-2.0-Open", ("more", "")),
    (b"", ("more", "")),
    (b"Welcome\r\n", ("more", "")),
])
def test_parse_banner(data, want):
    assert parse_banner(data) == want


def test_parse_banner_refuses_what_is_not_ssh2():
    verdict, why = parse_banner(b"SSH-1.5-ancient\r\n")
    assert verdict == "bad" and "unsupported SSH protocol" in why
    verdict, why = parse_banner(b"x" * 9000)
    assert verdict == "bad" and "no SSH version line" in why
    verdict, why = parse_banner(b"HTTP/1.1 400 Bad Request\r\n" * 400)
    assert verdict == "bad"


# ------------------------------------------------------------------ classification
def obs(**kw) -> Observation:
    return Observation(**kw)


@pytest.mark.parametrize("o, health, words", [
    (obs(), Health.UNREACHABLE, "no ping reply within 1s"),
    (obs(ping_error="No route to host", final=True), Health.UNREACHABLE,
     "ping failed: No route to host"),
    (obs(echo=True, tcp="banner", final=True), Health.HEALTHY, "ssh banner ok"),
    (obs(echo=True, tcp="refused", final=True), Health.UNRESPONSIVE,
     "connection refused on port 22"),
    (obs(echo=True, tcp="connected"), Health.UNRESPONSIVE, "no SSH banner within 1s"),
    (obs(echo=True, tcp="connecting"), Health.UNRESPONSIVE, "connect timed out after 1s"),
    (obs(echo=True, tcp="closed", final=True), Health.UNRESPONSIVE,
     "closed before the SSH banner"),
    (obs(echo=True, tcp="bad", detail="port 22 does not speak SSH: x", final=True),
     Health.UNRESPONSIVE, "does not speak SSH"),
    (obs(echo=True), Health.UNRESPONSIVE, "not probed before the deadline"),
])
def test_classify(o, health, words):
    got, reason, _checks = classify(o, ping=True, ssh=True, timeout=1.0)
    assert got is health and words in reason
    if health is Health.UNRESPONSIVE:
        assert reason.startswith(("ssh:", "not probed"))


def test_classify_ping_only_ssh_only_and_slurmd():
    assert classify(obs(echo=True), ping=True, ssh=False, timeout=1)[:2] == (
        Health.HEALTHY, "ping ok")
    # ping off: no echo needed, the banner decides
    assert classify(obs(tcp="banner"), ping=False, ssh=True, timeout=1)[0] is Health.HEALTHY
    ok = classify(obs(echo=True, tcp="banner", slurmd="ok"), ping=True, ssh=True, timeout=1,
                  slurmd_port=6818)
    assert ok == (Health.HEALTHY, "ssh banner ok", {"ssh": "banner ok", "slurmd": "ok"})
    dead = classify(obs(echo=True, tcp="banner", slurmd="refused"), ping=True, ssh=True,
                    timeout=1, slurmd_port=6818)
    assert dead[0] is Health.DEGRADED
    assert dead[1] == "slurmd not answering on port 6818 (connection refused)"


def test_parse_hosts_file():
    text = ("127.0.0.1 localhost\n# comment\n10.0.0.5 node1 node1.cluster  # alias\n"
            "::1 ip6-localhost\n10.0.0.6 node2\n10.0.0.7 node2\nbogus\n999.1.1.1 nodeX\n")
    m = parse_hosts_file(text)
    assert m == {"localhost": "127.0.0.1", "node1": "10.0.0.5", "node1.cluster": "10.0.0.5",
                 "node2": "10.0.0.6"}
    assert is_ipv4("10.0.0.5") and not is_ipv4("node1") and not is_ipv4("1.2.3.256")


def test_config_validates_sweep_settings():
    assert ProbeConfig().sweep_min_hosts == 64 and ProbeConfig().max_sockets == 900
    for bad in ({"sweep_min_hosts": -1}, {"login_per_sweep": -2}, {"max_sockets": 0},
                {"max_sockets": 70000}):
        with pytest.raises(ConfigError):
            ProbeConfig(**bad)


# ------------------------------------------------------------------ FanoutProber's sweep
class FakeNet:
    """A scripted sweep and SSH: per-host outcome, and what was asked."""

    def __init__(self, hosts, *, silent=(), frozen=(), failing=(), hang=()):
        self.address = {h: f"10.9.{i // 250}.{i % 250 + 1}" for i, h in enumerate(hosts)}
        self.silent, self.frozen = set(silent), set(frozen)
        self.failing, self.hang = set(failing), set(hang)
        self.sweeps: list[dict] = []
        self.logins: list[str] = []

    def sweep(self, endpoints, timeout, **kw):
        self.sweeps.append({"endpoints": dict(endpoints), **kw})
        host_of = {a: h for h, a in self.address.items()}
        out = {}
        for h, (addr, _port) in endpoints.items():
            name = host_of.get(addr, h)
            if name in self.silent:
                out[h] = Observation()
            elif name in self.frozen:
                out[h] = Observation(echo=True, tcp="connected")
            else:
                out[h] = Observation(echo=True, tcp="banner", detail="SSH-2.0-x", final=True,
                                     done_s=0.01)
        return out, SweepStats(hosts=len(endpoints))

    def ssh(self, target, commands, budget):
        host = {a: h for h, a in self.address.items()}.get(target.address, target.host)
        self.logins.append(host)
        if host in self.hang:
            return SshOutcome(None, (CommandOutcome(commands[0][0], None),))
        status = 3 if host in self.failing else 0
        return SshOutcome(None, tuple(CommandOutcome(n, status, "", "sick" if status else "")
                                      for n, _ in commands))


def hosts_file(tmp_path, net: FakeNet) -> str:
    p = tmp_path / "hosts"
    p.write_text("".join(f"{a} {h}\n" for h, a in net.address.items()))
    return str(p)


def make(tmp_path, net: FakeNet, **cfg) -> FanoutProber:
    config = ProbeConfig(**{"timeout": 1.0, "sweep_min_hosts": 4, "login_per_sweep": 2,
                            "hosts_file": hosts_file(tmp_path, net), **cfg})

    def no_dns(name):
        raise OSError(f"no DNS in unit tests: {name}")

    return FanoutProber(config, ssh_fn=net.ssh, sweep_fn=net.sweep, resolve_fn=no_dns)


NAMES = [f"n{i}" for i in range(1, 11)]


def test_sweep_verdicts_and_no_login_to_failed_hosts(tmp_path):
    net = FakeNet(NAMES, silent={"n2", "n3"}, frozen={"n4"})
    p = make(tmp_path, net, login_per_sweep=20)
    res = p.probe(NAMES)
    assert list(res) == NAMES
    assert res["n2"].health is Health.UNREACHABLE and "no ping reply" in res["n2"].reason
    assert res["n4"].health is Health.UNRESPONSIVE and "no SSH banner" in res["n4"].reason
    assert res["n1"].health is Health.HEALTHY
    assert res["n1"].checks == {"ssh": "banner ok", "command": "ok"}
    # the full check only for hosts the sweep found healthy, at their swept address
    assert sorted(net.logins) == sorted(set(NAMES) - {"n2", "n3", "n4"})
    [swept] = net.sweeps
    assert swept["endpoints"]["n1"] == (net.address["n1"], 22)
    assert swept["max_sockets"] == 900 and swept["slurmd_port"] == 0


def test_rolling_share_covers_every_healthy_host_once_per_round(tmp_path):
    net = FakeNet(NAMES, silent={"n10"})
    t = [0.0]
    p = make(tmp_path, net)
    p._clock = lambda: t[0]
    rounds = []
    for _ in range(5):                   # 9 healthy hosts, 2 per sweep: 5 sweeps
        t[0] += 10
        net.logins.clear()
        res = p.probe(NAMES)
        rounds.append(list(net.logins))
        assert all(r.health is Health.HEALTHY for h, r in res.items() if h != "n10")
    assert [len(r) for r in rounds] == [2, 2, 2, 2, 2]
    flat = [h for r in rounds[:4] for h in r] + rounds[4][:1]
    assert sorted(flat) == sorted(set(NAMES) - {"n10"})   # each once, none twice
    assert "n10" not in {h for r in rounds for h in r}


def test_failing_health_command_is_degraded_and_stays_a_suspect(tmp_path):
    net = FakeNet(NAMES, failing={"n1"})
    p = make(tmp_path, net)
    res = p.probe(NAMES)                 # n1 is among the first two never checked
    assert res["n1"].health is Health.DEGRADED
    assert res["n1"].reason == "health command exited 3: sick"
    net.logins.clear()
    res = p.probe(NAMES)                 # a suspect: checked again, before the rolling share
    assert net.logins[0] == "n1" and len(net.logins) == 3
    assert res["n1"].health is Health.DEGRADED
    net.failing.clear()
    net.logins.clear()
    res = p.probe(NAMES)                 # fixed: healthy, and no longer a suspect
    assert res["n1"].health is Health.HEALTHY and net.logins[0] == "n1"
    net.logins.clear()
    p.probe(NAMES)
    assert "n1" not in net.logins


def test_full_check_that_does_not_finish_counts_on_the_second_sweep(tmp_path):
    net = FakeNet(NAMES, hang={"n1"})
    p = make(tmp_path, net)
    first = p.probe(NAMES)["n1"]
    assert first.health is Health.HEALTHY and "unfinished" in first.checks["login"]
    second = p.probe(NAMES)["n1"]
    assert second.health is Health.UNRESPONSIVE and "timed out" in second.reason
    net.hang.clear()
    assert p.probe(NAMES)["n1"].health is Health.HEALTHY


def test_small_probes_keep_the_full_check_for_every_host(tmp_path):
    net = FakeNet(NAMES)
    p = make(tmp_path, net, sweep_min_hosts=64)
    assert not p.uses_sweep(10) and p.uses_sweep(64)
    assert not make(tmp_path, net, sweep_min_hosts=0).uses_sweep(10**6)
    # an injected ping function means a test of the full check: never a sweep
    assert not FanoutProber(ProbeConfig(sweep_min_hosts=1), ping_fn=lambda h, t: None,
                            ssh_fn=net.ssh).uses_sweep(100)


def test_names_resolve_through_the_hosts_file_literals_and_the_resolver(tmp_path):
    net = FakeNet(NAMES)
    asked = []

    def resolve(name):
        asked.append(name)
        if name == "gone":
            raise OSError("Name or service not known")
        return "10.9.9.9"

    p = make(tmp_path, net, login_per_sweep=0)
    p._resolve = resolve
    res = p.probe(NAMES[:3] + ["10.9.0.5", "other", "gone"])
    [swept] = net.sweeps[-1:]
    assert swept["endpoints"]["n1"] == (net.address["n1"], 22)
    assert swept["endpoints"]["10.9.0.5"] == ("10.9.0.5", 22)
    assert "gone" not in swept["endpoints"]
    assert res["gone"].health is Health.UNREACHABLE and "cannot resolve gone" in res["gone"].reason
    p.probe(NAMES[:3] + ["10.9.0.5", "other", "gone"])
    assert asked.count("other") == 1      # the resolver's answer is kept
    assert asked.count("gone") == 2       # a failure is not


def test_unreadable_hosts_file_is_a_probe_error(tmp_path):
    net = FakeNet(NAMES)
    p = make(tmp_path, net, hosts_file=str(tmp_path / "missing"))
    with pytest.raises(ProbeError, match="cannot read probe.hosts_file"):
        p.probe(NAMES)


def test_check_slurmd_is_passed_to_the_sweep(tmp_path):
    net = FakeNet(NAMES)
    make(tmp_path, net, check_slurmd=True, slurmd_port=6900, max_sockets=50).probe(NAMES)
    assert net.sweeps[0]["slurmd_port"] == 6900 and net.sweeps[0]["max_sockets"] == 50


# ------------------------------------------------------------------ a real sweep on loopback
class Servers:
    """Three loopback TCP ports: one speaks SSH, one never speaks, one is closed."""

    def __init__(self):
        self.banner = socket.socket()
        self.banner.bind(("127.0.0.1", 0))
        self.banner.listen(16)
        self.silent = socket.socket()          # listens, never accepts: no banner, ever
        self.silent.bind(("127.0.0.1", 0))
        self.silent.listen(16)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.closed_port = s.getsockname()[1]
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.serve, daemon=True)
        self.t.start()

    def serve(self):
        self.banner.settimeout(0.05)
        while not self.stop.is_set():
            try:
                conn, _ = self.banner.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_test\r\n")
                conn.settimeout(1)
                try:
                    conn.recv(100)
                except OSError:
                    pass

    def close(self):
        self.stop.set()
        self.t.join()
        self.banner.close()
        self.silent.close()


def test_real_sweep_over_loopback_tcp():
    srv = Servers()
    try:
        eps = {"up": ("127.0.0.1", srv.banner.getsockname()[1]),
               "frozen": ("127.0.0.1", srv.silent.getsockname()[1]),
               "down": ("127.0.0.1", srv.closed_port)}
        seen, stats = sweep(eps, 0.5, ping=False, max_sockets=2)
    finally:
        srv.close()
    assert seen["up"].tcp == "banner" and seen["up"].detail == "SSH-2.0-OpenSSH_test"
    assert seen["frozen"].tcp == "connected"
    assert seen["down"].tcp == "refused"
    verdicts = {h: classify(o, ping=False, ssh=True, timeout=0.5)[0] for h, o in seen.items()}
    assert verdicts == {"up": Health.HEALTHY, "frozen": Health.UNRESPONSIVE,
                        "down": Health.UNRESPONSIVE}
    assert stats.connects == 3 and stats.sockets_peak <= 2 and stats.icmp == ""
    assert 0.45 <= stats.elapsed_s < 1.0     # the frozen port holds it to the deadline


def test_real_sweep_pings_loopback_when_an_icmp_socket_is_allowed():
    from slurmft.probe.sweep import open_icmp_socket

    opened = open_icmp_socket()
    if opened is None:
        pytest.skip("no ICMP socket allowed here (not root, ping_group_range excludes us)")
    opened[0].close()
    s = Sweep([("127.0.0.1", 9)], 0.5, ssh=False)
    seen = s.run()
    assert seen[("127.0.0.1", 9)].echo and s.stats.echo_replies == 1
    assert s.stats.elapsed_s < 0.4           # all answered: no wait for the deadline


def test_without_an_icmp_socket_tcp_connects_are_the_liveness_check(tmp_path):
    net = FakeNet(NAMES, silent={"n2"}, frozen={"n4"})
    calls = []

    def no_icmp_sweep(endpoints, timeout, **kw):
        calls.append(kw)
        if kw["ping"]:
            raise PermissionError("no ICMP socket allowed: run as root or ...")
        out, st = net.sweep(endpoints, timeout, **kw)
        for h in endpoints:                     # a silent host: SYN unanswered
            if h in net.silent:
                out[h] = Observation(tcp="connecting", final=True)
        return out, st

    p = make(tmp_path, net, login_per_sweep=0)
    p._sweep_fn = no_icmp_sweep
    res = p.probe(NAMES)
    assert [c["ping"] for c in calls] == [True, False]
    assert calls[1]["connect_wait"] == pytest.approx(p.ping_wait)
    assert res["n2"].health is Health.UNREACHABLE and "no ICMP socket" in res["n2"].reason
    assert res["n4"].health is Health.UNRESPONSIVE
    assert res["n1"].health is Health.HEALTHY
    p.probe(NAMES)                              # the ICMP socket is not tried again
    assert [c["ping"] for c in calls] == [True, False, False]


def test_ping_only_without_an_icmp_socket_falls_back_to_the_full_check(tmp_path):
    net = FakeNet(NAMES)

    def no_icmp_sweep(endpoints, timeout, **kw):
        raise PermissionError("no ICMP socket allowed")

    p = make(tmp_path, net, ssh=False)
    p._sweep_fn = no_icmp_sweep
    p._fan_out = lambda names, targets, ping_fn: {h: "full" for h in names}
    p.icmp_socket = False
    p._ping_bin = "/bin/ping"
    assert p.probe(NAMES) == {h: "full" for h in NAMES}


def test_connect_wait_gives_a_socket_back_before_the_deadline():
    """Two connects that never complete (listeners whose backlog is full drop SYNs) give
    their socket back after connect_wait, so a third host behind them is still checked."""
    srv = Servers()
    fulls, fillers = [], []
    try:
        for _ in range(2):
            full = socket.socket()
            full.bind(("127.0.0.1", 0))
            full.listen(0)
            fulls.append(full)
            for _ in range(3):                  # fill its backlog: later SYNs are dropped
                f = socket.socket()
                f.setblocking(False)
                f.connect_ex(full.getsockname())
                fillers.append(f)
        eps = [("127.0.0.1", f.getsockname()[1]) for f in fulls]
        eps.append(("127.0.0.1", srv.banner.getsockname()[1]))
        s = Sweep(eps, 1.0, ping=False, max_sockets=2, connect_wait=0.2)
        seen = s.run()
    finally:
        for f in fillers + fulls:
            f.close()
        srv.close()
    assert seen[eps[0]].tcp == seen[eps[1]].tcp == "connecting"   # they really hung
    assert seen[eps[0]].final and 0.15 < seen[eps[0]].done_s < 0.5
    assert seen[eps[2]].tcp == "banner" and seen[eps[2]].done_s < 0.6
    assert s.stats.sockets_peak == 2


def test_on_idle_fires_once_when_only_stragglers_are_left():
    srv = Servers()
    calls = []
    try:
        eps = [("127.0.0.1", srv.banner.getsockname()[1]),
               ("127.0.0.1", srv.silent.getsockname()[1])]
        s = Sweep(eps, 1.0, ping=False,
                  on_idle=lambda seen: calls.append(({e: (o.tcp, o.final) for e, o in
                                                      seen.items()}, s.clock())))
        t0 = s.clock()
        s.run()
    finally:
        srv.close()
    [(seen, when)] = calls
    assert seen == {eps[0]: ("banner", True), eps[1]: ("connected", False)}
    assert when - t0 < 0.5                     # long before the 1 s deadline


def test_full_checks_start_when_the_sweep_idles_among_hosts_already_seen_healthy(tmp_path):
    net = FakeNet(NAMES, frozen={"n4"})
    order = []
    real_ssh = net.ssh

    def ssh(target, commands, budget):
        order.append("login")
        return real_ssh(target, commands, budget)

    def sweep_with_idle(endpoints, timeout, **kw):
        out, st = net.sweep(endpoints, timeout, **kw)
        by_ep = {endpoints[h]: o for h, o in out.items()}
        early = dict(by_ep)
        early[endpoints["n1"]] = Observation(echo=True, tcp="connected")  # not yet answered
        kw["on_idle"](early)
        import time
        time.sleep(0.2)                         # the sweep waits for its stragglers...
        order.append("sweep returns")           # ...while the full checks run
        return out, st

    p = make(tmp_path, net, login_per_sweep=3)
    p._ssh = ssh
    p._sweep_fn = sweep_with_idle
    res = p.probe(NAMES)
    assert order.index("sweep returns") == 3    # three logins, all during the sweep
    assert "n1" not in net.logins and "n4" not in net.logins   # only hosts seen healthy
    assert res["n1"].health is Health.HEALTHY and res["n4"].health is Health.UNRESPONSIVE


def test_stragglers_only_waits_for_sockets_older_than_the_banners_take():
    from slurmft.probe.sweep import _Conn

    def conn(t0):
        return _Conn(("127.0.0.1", 22), "ssh", None, t0)

    lat = [0.01, 0.02, 0.3]                   # median 0.02 s: a straggler after 0.08 s
    assert Sweep._stragglers_only({}, lat, 1.0)
    assert Sweep._stragglers_only({1: conn(0.5), 2: conn(0.9)}, lat, 1.0)
    assert not Sweep._stragglers_only({1: conn(0.5), 2: conn(0.95)}, lat, 1.0)
    slow = [0.4] * 5                          # a loaded bed: banners take 0.4 s
    assert not Sweep._stragglers_only({1: conn(0.0)}, slow, 1.0)
    assert Sweep._stragglers_only({1: conn(0.0)}, slow, 1.7)
