"""The watcher's pings between cycles: a host cut off just after a cycle is found a ping wait
later, not an interval later, and still needs a second failed probe (the next cycle's)."""

from __future__ import annotations

import logging
import threading

from slurmft.core.config import ProbeConfig
from slurmft.probe.fanout import FanoutProber
from slurmft.probe.records import Health
from slurmft.probe.sweep import Observation
from slurmft.recovery.watcher import MAX_IDLE_PINGS_PER_S, Watcher, idle_ping_period
from tests.unit.test_rescheduler import ScriptedProber
from tests.unit.test_rescheduler_triggers import one_job

NODES = ["node1", "node2", "node3", "node4"]


class Cut:
    """node4's link goes down after the first cycle: the pings between cycles see it first."""

    def __init__(self, prober: ScriptedProber) -> None:
        self.prober = prober
        self.pinged: list[list[str]] = []

    def __call__(self, hosts):
        self.pinged.append(list(hosts))
        if len(self.pinged) < 3:
            return []
        self.prober.failed["node4"] = Health.UNREACHABLE
        return ["node4"]


def test_a_host_silent_between_cycles_is_probed_at_once_and_confirmed_by_that_probe(tmp_path):
    prober = ScriptedProber()
    fake, jid, client, _store, r = one_job(tmp_path, prober)
    cycles = []
    pinger = Cut(prober)
    w = Watcher(client, prober, r, interval=30, on_cycle=cycles.append, pinger=pinger,
                ping_every=0.001)
    assert w.run(max_cycles=2) == 2           # would wait 30 s for the second cycle
    assert pinger.pinged == [NODES] * 3
    assert cycles[1].failed == {jid: ["node4"]}
    # the miss between cycles was the first strike: no re-probe of node4 alone
    assert prober.calls == [NODES, NODES]
    assert fake.job(jid)["excluded_nodes"] == "node4"


def test_only_the_hosts_found_healthy_are_pinged_between_cycles(tmp_path):
    """Three of four failed (refused: the prober's side, likelier); pinging them again and
    again would start a cycle at once each time."""
    prober = ScriptedProber({n: Health.UNRESPONSIVE for n in ("node2", "node3", "node4")})
    _fake, _jid, client, _store, r = one_job(tmp_path, prober)
    stop = threading.Event()
    pinged = []

    def pinger(hosts):
        pinged.append(list(hosts))
        stop.set()
        return []

    w = Watcher(client, prober, r, interval=30, stop=stop, pinger=pinger, ping_every=0.001)
    w.run()
    assert pinged == [["node1"]]


def test_a_host_that_answers_every_ping_waits_for_the_next_cycle(tmp_path):
    prober = ScriptedProber()
    _fake, _jid, client, _store, r = one_job(tmp_path, prober)
    pinged = []
    w = Watcher(client, prober, r, interval=0.05, pinger=lambda h: pinged.append(h) or [],
                ping_every=0.001)
    assert w.run(max_cycles=2) == 2
    assert pinged and prober.calls == [NODES, NODES]
    assert w.tracker.suspects() == []


def test_a_pinger_that_fails_is_dropped_with_a_warning(tmp_path, caplog):
    prober = ScriptedProber()
    _fake, _jid, client, _store, r = one_job(tmp_path, prober)
    calls = []

    def pinger(hosts):
        calls.append(hosts)
        raise OSError(105, "No buffer space available")

    w = Watcher(client, prober, r, interval=0.05, pinger=pinger, ping_every=0.001)
    with caplog.at_level(logging.WARNING):
        assert w.run(max_cycles=3) == 3
    assert len(calls) == 1 and w.pinger is None
    assert any("cannot ping between cycles" in m for m in caplog.messages)


def test_the_pings_between_cycles_are_capped_for_a_large_site():
    assert idle_ping_period(0.25, 8) == 0.25
    assert idle_ping_period(0.25, 10_000) == 10_000 / MAX_IDLE_PINGS_PER_S == 5.0
    assert idle_ping_period(0, 8) == 0.0


# ------------------------------------------------------------------ the prober's side
def prober_with(seen, **config):
    calls = []

    def sweep_fn(endpoints, timeout, **kw):
        calls.append((dict(endpoints), timeout, kw))
        if isinstance(seen, Exception):
            raise seen
        return {h: Observation(echo=h in seen) for h in endpoints}, None

    cfg = ProbeConfig(timeout=2.0, ping_timeout=0.5, **config)
    return FanoutProber(cfg, sweep_fn=sweep_fn, resolve_fn=lambda n: "10.1.0." + n[-1]), calls


def test_silent_is_one_ping_only_sweep_with_the_ping_wait():
    prober, calls = prober_with({"node1", "node3"})
    assert prober.silent(["node1", "node2", "node3"]) == ["node2"]
    [(endpoints, timeout, kw)] = calls
    assert set(endpoints) == {"node1", "node2", "node3"} and timeout == 0.5
    assert kw["ping"] is True and kw["ssh"] is False


def test_silent_says_nothing_without_ping_or_without_an_icmp_socket(caplog):
    prober, calls = prober_with(set(), ping=False)
    assert prober.silent(["node1"]) == [] and calls == []
    prober, _ = prober_with(PermissionError("no ICMP socket"))
    with caplog.at_level(logging.WARNING):
        assert prober.silent(["node1"]) == [] and prober.silent(["node1"]) == []
    assert [m for m in caplog.messages if "no pings between watch cycles" in m] == [
        "probe: no pings between watch cycles: no ICMP socket"]                # said once


def test_a_miss_the_probe_does_not_confirm_leaves_that_host_out_of_the_pings(tmp_path):
    """ICMP dropped on node2 (SSH fine): each miss would start a cycle early, forever."""
    prober = ScriptedProber()
    _fake, _jid, client, _store, r = one_job(tmp_path, prober)
    pinged = []

    def pinger(hosts):
        pinged.append(list(hosts))
        return ["node2"] if "node2" in hosts else []

    w = Watcher(client, prober, r, interval=0.05, pinger=pinger, ping_every=0.001)
    assert w.run(max_cycles=3) == 3
    assert pinged[0] == NODES                                  # missed: a cycle at once
    assert all(p == ["node1", "node3", "node4"] for p in pinged[1:])
    assert prober.calls[:2] == [NODES, NODES] and w.tracker.confirmed(NODES) == []
