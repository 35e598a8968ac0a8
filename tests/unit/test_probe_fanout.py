"""Prober state logic with injected ping/ssh functions (no processes, no network)."""

from __future__ import annotations

import threading

import pytest

from slurmft.core.config import ProbeConfig
from slurmft.core.errors import HostNameError
from slurmft.probe.fanout import FanoutProber
from slurmft.probe.ping import PingOutcome
from slurmft.probe.records import Health
from slurmft.probe.ssh import CommandOutcome, SshOutcome


class Scripted:
    """ping/ssh doubles: per-host behaviour, and a record of what was asked."""

    def __init__(self, *, dead=(), ssh_errors=None, exits=None, hang=(), block=()):
        self.dead = set(dead)
        self.ssh_errors = dict(ssh_errors or {})
        self.exits = dict(exits or {})  # host -> {check name: (status, stdout, stderr)}
        self.hang = set(hang)
        self.block = set(block)
        self.release = threading.Event()
        self.pinged: list[str] = []
        self.sshed: list[tuple[str, tuple, float]] = []

    def ping(self, host, timeout):
        self.pinged.append(host)
        if host in self.dead:
            return PingOutcome(False, timeout, f"no ping reply within {timeout:g}s")
        return PingOutcome(True, 0.001)

    def ssh(self, target, commands, budget):
        self.sshed.append((target.host, tuple(commands), budget))
        if target.host in self.block:
            self.release.wait(30)  # a stuck worker: ignores its budget
        if target.host in self.ssh_errors:
            return SshOutcome(self.ssh_errors[target.host])
        results = []
        for name, _cmd in commands:
            if target.host in self.hang:
                results.append(CommandOutcome(name, None))
                break
            status, out, err = self.exits.get(target.host, {}).get(name, (0, "", ""))
            results.append(CommandOutcome(name, status, out, err))
        return SshOutcome(None, tuple(results), 0.01)


def prober(s: Scripted, **cfg) -> FanoutProber:
    return FanoutProber(ProbeConfig(**{"timeout": 1.0, **cfg}), ping_fn=s.ping, ssh_fn=s.ssh)


def test_states():
    s = Scripted(dead={"n2"}, ssh_errors={"n3": "ssh: connection refused on port 22"},
                 exits={"n4": {"command": (3, "", "disk full\nmore")}}, hang={"n5"})
    res = prober(s).probe(["n1", "n2", "n3", "n4", "n5"])
    assert list(res) == ["n1", "n2", "n3", "n4", "n5"]
    assert res["n1"].health is Health.HEALTHY and res["n1"].checks == {"command": "ok"}
    assert res["n2"].health is Health.UNREACHABLE and "no ping reply" in res["n2"].reason
    assert res["n3"].health is Health.UNRESPONSIVE and "refused" in res["n3"].reason
    assert res["n4"].health is Health.DEGRADED
    assert res["n4"].reason == "health command exited 3: disk full"
    assert res["n5"].health is Health.UNRESPONSIVE and "timed out" in res["n5"].reason
    assert "n2" not in [h for h, _, _ in s.sshed]  # no SSH to an unreachable host
    assert all(r.latency_s >= 0 for r in res.values())


def test_custom_command_and_builtin_checks():
    df = "Filesystem 1024-blocks Used Available Capacity Mounted on\n/dev/x 100 90 512 90% /ckpt"
    s = Scripted(exits={"n1": {"disk": (0, df, "")}})
    p = prober(s, command="test -d /ckpt", checkpoint_path="/ckpt dir", min_free_gb=1.0)
    r = p.probe(["n1"])["n1"]
    [(_, commands, _)] = s.sshed
    assert commands == (("command", "test -d /ckpt"), ("disk", "df -Pk -- '/ckpt dir'"))
    assert r.health is Health.DEGRADED
    assert r.checks["command"] == "ok" and "slurmd" not in r.checks
    assert "GB free on /ckpt dir" in r.checks["disk"]


def test_slurmd_port_check_tells_a_dead_slurmd_from_a_dead_node():
    s = Scripted(dead={"n3"})
    asked = []

    def connect(address, port, timeout):
        asked.append((address, port))
        return "connection refused" if address == "n2" else None

    p = FanoutProber(ProbeConfig(timeout=1.0, check_slurmd=True, slurmd_port=6900),
                     ping_fn=s.ping, ssh_fn=s.ssh, connect_fn=connect)
    res = p.probe(["n1", "n2", "n3"])
    assert res["n1"].health is Health.HEALTHY and res["n1"].checks["slurmd"] == "ok"
    assert res["n2"].health is Health.DEGRADED
    assert res["n2"].reason == "slurmd not answering on port 6900 (connection refused)"
    assert res["n3"].health is Health.UNREACHABLE      # no ping: not a slurmd problem
    assert sorted(asked) == [("n1", 6900), ("n2", 6900)]


def test_slurmd_port_check_is_off_by_default():
    asked = []
    p = FanoutProber(ProbeConfig(timeout=1.0), ping_fn=Scripted().ping, ssh_fn=Scripted().ssh,
                     connect_fn=lambda *a: asked.append(a) or "refused")
    assert p.probe(["n1"])["n1"].health is Health.HEALTHY and asked == []


def test_tcp_connect_reports_refused_on_a_closed_local_port():
    import socket

    from slurmft.probe.fanout import tcp_connect

    with socket.socket() as srv:            # bind, then close: the port is free and closed
        srv.bind(("127.0.0.1", 0))
        port = srv.getsockname()[1]
    assert tcp_connect("127.0.0.1", port, 0.5) == "connection refused"
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        assert tcp_connect("127.0.0.1", srv.getsockname()[1], 0.5) is None


def test_gpu_check():
    out = "GPU 0: H100 (UUID: a)\nGPU 1: H100 (UUID: b)\n"
    s = Scripted(exits={"n1": {"gpus": (0, out, "")}, "n2": {"gpus": (0, out[:22], "")}})
    res = prober(s, gpu_count=2).probe(["n1", "n2"])
    assert res["n1"].health is Health.HEALTHY
    assert res["n2"].health is Health.DEGRADED and "1 GPUs visible, expected 2" in res["n2"].reason


def test_ping_only_and_ssh_only():
    s = Scripted(dead={"n2"})
    res = prober(s, ssh=False).probe(["n1", "n2"])
    assert res["n1"].health is Health.HEALTHY and res["n2"].health is Health.UNREACHABLE
    assert s.sshed == []
    s2 = Scripted(ssh_errors={"n1": "ssh: connect timed out after 1s"})
    r = prober(s2, ping=False).probe(["n1"])["n1"]
    assert r.health is Health.UNRESPONSIVE and s2.pinged == []


def test_bad_host_name_runs_nothing():
    s = Scripted()
    with pytest.raises(HostNameError):
        prober(s).probe(["node1", "node1;rm -rf /"])
    assert s.pinged == [] and s.sshed == []
    with pytest.raises(TypeError):
        prober(s).probe("node[1-4]")


def test_stuck_worker_reported_as_timed_out():
    s = Scripted(block={"n2"})
    try:
        res = prober(s, timeout=0.2).probe(["n1", "n2", "n3"])
    finally:
        s.release.set()
    assert res["n1"].health is Health.HEALTHY and res["n3"].health is Health.HEALTHY
    assert res["n2"].health is Health.UNRESPONSIVE and res["n2"].reason == "timed out after 0.2s"


def test_pool_size_and_duplicates():
    s = Scripted()
    p = prober(s, max_parallel=2)
    res = p.probe(["a", "b", "c", "a"])
    assert list(res) == ["a", "b", "c"] and len(s.sshed) == 3
    assert all(budget <= 1.0 for _, _, budget in s.sshed)


def test_worker_exception_becomes_result():
    def boom(host, timeout):
        raise RuntimeError("kaboom")
    r = FanoutProber(ProbeConfig(timeout=1), ping_fn=boom, ssh_fn=Scripted().ssh).probe(["x"])["x"]
    assert r.health is Health.UNRESPONSIVE and "kaboom" in r.reason


def test_to_dict():
    r = prober(Scripted()).probe(["n1"])["n1"]
    d = r.to_dict()
    assert d["host"] == "n1" and d["state"] == "HEALTHY" and d["checks"] == {"command": "ok"}


def test_empty_command_means_ssh_connect_only():
    s = Scripted()
    r = prober(s, command="").probe(["n1"])["n1"]
    assert r.health is Health.HEALTHY and r.reason == "ssh ok"
    assert [(h, cmds) for h, cmds, _ in s.sshed] == [("n1", ())]


def test_ping_wait_is_part_of_the_deadline():
    from slurmft.core.errors import ConfigError

    s = Scripted(dead={"n2"})
    prober(s, timeout=4.0).probe(["n2"])
    p = prober(s, timeout=4.0)
    assert p.ping_wait == 1.0
    assert prober(s, timeout=1.0).ping_wait == 0.5
    assert prober(s, timeout=1.0, ping_timeout=0.2).ping_wait == 0.2
    res = prober(s, timeout=1.0).probe(["n2"])["n2"]
    assert res.reason == "no ping reply within 0.5s"
    with pytest.raises(ConfigError):
        ProbeConfig(timeout=1.0, ping_timeout=2.0)


def test_probe_takes_a_nodeset_in_natural_order():
    from slurmft.core.nodeset import NodeSet

    s = Scripted(dead={"n10"})
    res = prober(s).probe(NodeSet("n[10,2,1]"))
    assert list(res) == ["n1", "n2", "n10"]
    assert res["n10"].health is Health.UNREACHABLE and res["n2"].health is Health.HEALTHY
    with pytest.raises(TypeError):
        prober(s).probe("n[1-2]")
