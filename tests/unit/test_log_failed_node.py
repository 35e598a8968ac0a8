"""A failed node is findable in the logs: lines the prober, watcher and rescheduler really
write, at the default level, parsed with the grok patterns of the shipped Logstash pipeline."""

from __future__ import annotations

import io
import re

import pytest
from pygrok import Grok

from slurmft.core.config import LogConfig
from slurmft.core.log import setup_logging
from slurmft.probe.records import Health
from slurmft.recovery.watcher import Watcher
from slurmft.render import render
from tests.unit.test_probe_fanout import Scripted, prober
from tests.unit.test_rescheduler_triggers import one_job
from tests.unit.test_rescheduler import ScriptedProber

REPORTER = "head"


def shipped_patterns() -> tuple[Grok, Grok]:
    """The two grok patterns exactly as `slurmft render logging` writes them."""
    conf = render("logstash.conf.j2", {"beats_port": 5044, "elasticsearch_hosts": []})
    (line,) = re.findall(r'"message" => "(.*)" }', conf)
    (ids,) = re.findall(r'"msg" => "(.*)" }', conf)
    return Grok(line), Grok(ids)


@pytest.fixture
def captured():
    """Log lines at the CLI's default level (no -v), reported from host ``head``."""
    stream = io.StringIO()
    setup_logging(LogConfig().level, "text", stream=stream, node_id=REPORTER, job_id="-")
    yield stream
    setup_logging("WARNING", "text")


def parsed(stream: io.StringIO) -> list[dict]:
    line_grok, ids_grok = shipped_patterns()
    out = []
    for line in stream.getvalue().splitlines():
        head = line_grok.match(line)
        assert head, line
        fields = ids_grok.match(head["msg"])
        assert fields, line
        out.append({**head, **fields})
    return out


def about(lines: list[dict], node: str) -> list[dict]:
    return [p for p in lines if p["failed_node"] == node
            or (p["failed_nodes"] and node in p["failed_nodes"])]


def test_the_default_level_hides_info():
    assert LogConfig().level == "WARNING"   # why a failed node must log above INFO


def test_a_failed_probe_logs_an_error_naming_the_node(captured):
    s = Scripted(dead={"node3"}, ssh_errors={"node4": "ssh: connection refused on port 22"},
                 exits={"node2": {"command": (1, "", "gpu 1 missing")}})
    res = prober(s).probe(["node1", "node2", "node3", "node4"])
    assert res["node3"].health is Health.UNREACHABLE
    lines = parsed(captured)
    by_node = {p["failed_node"]: p for p in lines}
    assert set(by_node) == {"node2", "node3", "node4"}          # the healthy one stays quiet
    assert by_node["node3"]["level"] == "ERROR" and by_node["node4"]["level"] == "ERROR"
    assert by_node["node2"]["level"] == "WARNING"               # degraded, not failed
    assert {p["node_id"] for p in lines} == {REPORTER}          # the reporter, kept apart
    assert by_node["node3"]["module"] == "slurmft.probe.fanout"
    assert "UNREACHABLE" in by_node["node3"]["text"]


def test_the_watchers_recovery_lines_name_the_failed_node(captured, tmp_path):
    prober_ = ScriptedProber({"node3": Health.UNREACHABLE})
    fake, jid, client, _store, r = one_job(tmp_path, prober_)
    res = Watcher(client, prober_, r, interval=0.01).cycle()
    assert res.failed == {jid: ["node3"]}                        # the real path ran
    lines = parsed(captured)
    node3 = about(lines, "node3")
    assert {p["module"] for p in node3} == {"slurmft.recovery.watcher",
                                            "slurmft.recovery.rescheduler"}
    assert {p["level"] for p in node3} == {"ERROR"}
    assert {p["job_id"] for p in node3} == {str(jid)}
    assert {p["node_id"] for p in lines} == {REPORTER}
    assert any("failed node(s) node3" in p["text"] for p in node3)
    assert not about(lines, "node1")


def test_several_failed_nodes_fold_into_one_field(captured, tmp_path):
    prober_ = ScriptedProber({n: Health.UNRESPONSIVE for n in ("node2", "node3", "node4")})
    _fake, jid, client, _store, r = one_job(tmp_path, prober_)
    res = Watcher(client, prober_, r, interval=0.01).cycle()
    assert "not rescheduling" in res.errors[jid]
    (refusal,) = [p for p in parsed(captured) if p["failed_nodes"]]
    assert refusal["failed_nodes"] == "node[2-4]" and refusal["level"] == "ERROR"
    assert refusal["failed_node"] is None and refusal["node_id"] == REPORTER


def test_a_degraded_node_is_a_warning(captured, tmp_path):
    from slurmft.recovery.policy import RELAUNCH_MARK

    prober_ = ScriptedProber({"node2": Health.DEGRADED})
    _fake, _jid, client, _store, r = one_job(tmp_path, prober_, comment=RELAUNCH_MARK,
                                             no_kill=True)
    Watcher(client, prober_, r, interval=0.01).cycle()
    node2 = about(parsed(captured), "node2")
    assert node2 and {p["level"] for p in node2} == {"WARNING"}


def test_the_readme_kibana_query_uses_fields_the_pipeline_extracts():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (query,) = re.findall(r"^(failed_node:.*)$", readme, re.M)
    line_grok, ids_grok = shipped_patterns()
    fields = set(re.findall(r"%\{\w+:(\w+)\}", line_grok.pattern + ids_grok.pattern))
    assert set(re.findall(r"(\w+):", query)) <= fields
