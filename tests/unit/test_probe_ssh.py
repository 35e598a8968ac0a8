"""SSH target resolution, ping argv, and paramiko failure modes against in-process loopback
sockets (a closed port, a server that accepts and never sends a banner)."""

from __future__ import annotations

import logging
import socket
import threading

import pytest

from slurmft.core.errors import HostNameError, ProbeError
from slurmft.probe import ping as pping
from slurmft.probe import ssh as pssh


def test_ping_argv():
    assert pping.build_ping_argv("node1", 1.0) == ["ping", "-n", "-q", "-c", "1", "-W", "1",
                                                   "node1"]
    assert pping.build_ping_argv("node1", 0.25, "/bin/ping")[-3:] == ["-W", "0.25", "node1"]
    with pytest.raises(HostNameError):
        pping.build_ping_argv("node1;rm", 1)
    with pytest.raises(HostNameError):
        pping.build_ping_argv("-f", 1)


def test_resolve_target_defaults(tmp_path):
    t = pssh.resolve_target("node1", user="u", port=2222, key="/k", known_hosts="/kh")
    assert (t.address, t.port, t.user, t.key_files, t.known_hosts) == (
        "node1", 2222, "u", ("/k",), ("/kh",))
    assert not t.accept_unknown
    with pytest.raises(HostNameError):
        pssh.resolve_target("node1 -oProxyCommand=x")


def test_resolve_target_from_ssh_config(tmp_path):
    cfg = tmp_path / "ssh_config"
    cfg.write_text(
        "Host node*\n  HostName 10.99.0.11\n  Port 2200\n  User admin\n"
        f"  IdentityFile {tmp_path}/id\n  UserKnownHostsFile {tmp_path}/kh\n"
        "Host other\n  StrictHostKeyChecking no\n")
    t = pssh.resolve_target("node1", ssh_config=str(cfg))
    assert (t.address, t.port, t.user) == ("10.99.0.11", 2200, "admin")
    assert t.key_files == (f"{tmp_path}/id",) and t.known_hosts == (f"{tmp_path}/kh",)
    assert not t.accept_unknown
    assert pssh.resolve_target("other", ssh_config=str(cfg)).accept_unknown
    with pytest.raises(ProbeError):
        pssh.resolve_target("node1", ssh_config=str(tmp_path / "missing"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_refused_port_is_reported_not_raised(caplog):
    t = pssh.SshTarget("localhost", "127.0.0.1", _free_port(), key_files=("/nonexistent",))
    out = pssh.run_commands(t, [("command", "true")], 2.0)
    assert out.error == f"ssh: connection refused on port {t.port}" and out.results == ()


def test_frozen_sshd_bounded_by_budget(capsys):
    """A server that accepts TCP and never speaks, like a SIGSTOPped sshd."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]
    conns = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                pass

    th = threading.Thread(target=accept, daemon=True)
    th.start()
    logging.getLogger("paramiko").addHandler(logging.StreamHandler())  # would print if enabled
    try:
        t = pssh.SshTarget("localhost", "127.0.0.1", port, key_files=("/nonexistent",))
        out = pssh.run_commands(t, [("command", "true")], 0.3)
    finally:
        stop.set()
        th.join(2)
        for c in conns:
            c.close()
        srv.close()
    assert out.error is not None and out.error.startswith("ssh:")
    assert out.error == "ssh: no SSH handshake within 0.3s (sshd hung?)"
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "Traceback" not in captured.out


def test_unreadable_known_hosts_is_a_probe_error(tmp_path):
    kh = tmp_path / "kh"
    kh.write_text("this is not a known_hosts line at all\x00\n")
    t = pssh.SshTarget("localhost", "127.0.0.1", _free_port(), known_hosts=(str(kh),))
    with pytest.raises(ProbeError, match="cannot read known_hosts"):
        pssh.run_commands(t, [("command", "true")], 1.0)


# ------------------------------------------------------------------ ICMP packets (pure)

def test_icmp_checksum_and_round_trip():
    # RFC 1071 example words 0001 f203 f4f5 f6f7 -> sum ddf2 -> checksum 220d
    assert pping.icmp_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    pkt = pping.build_echo_request(0x1234, 7)
    assert pping.icmp_checksum(pkt) == 0  # a valid packet sums to zero
    reply = bytes([pping.ICMP_ECHO_REPLY]) + pkt[1:]
    assert pping.parse_echo_reply(reply, raw=False) == (0x1234, 7)
    ip_header = bytes([0x45]) + bytes(19)
    assert pping.parse_echo_reply(ip_header + reply, raw=True) == (0x1234, 7)
    assert pping.parse_echo_reply(pkt, raw=False) is None  # a request, not a reply
    assert pping.parse_echo_reply(b"\0\0", raw=False) is None


def test_icmp_pinger_loopback():
    pinger = pping.IcmpPinger.open()
    if pinger is None:
        pytest.skip("no ICMP socket allowed here (needs root or ping_group_range)")
    with pinger:
        out = pinger.ping("127.0.0.1", 1.0)
        assert out.reachable and out.detail == ""
        with pytest.raises(HostNameError):
            pinger.ping("127.0.0.1;x", 1.0)
