"""slurmft's log lines parse with the shipped grok pattern; rendered Filebeat/Logstash configs."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest
import yaml
from click.testing import CliRunner
from pygrok import Grok

from slurmft.cli import cli
from slurmft.core.errors import ConfigError
from slurmft.core import log as slurmft_log
from slurmft.core.log import failed_extra, get_logger, setup_logging
from slurmft.render import render

GROK = r"%{TIMESTAMP_ISO8601:timestamp} %{LOGLEVEL:level} \[%{DATA:module}\] %{GREEDYDATA:msg}"
IDS_GROK = (r"^node=%{NOTSPACE:node_id} job=%{NOTSPACE:job_id}"
            r"(?: failed_node=%{NOTSPACE:failed_node})?(?: failed_nodes=%{NOTSPACE:failed_nodes})?"
            r"(?: %{GREEDYDATA:text})?")


@pytest.fixture
def restore_logging():
    yield
    setup_logging("WARNING", "text")


def _lines(fmt: str, **kw) -> list[str]:
    stream = io.StringIO()
    setup_logging("DEBUG", fmt, stream=stream, **kw)
    log = get_logger("slurmft.recovery.rescheduler")
    log.debug("probing %d hosts", 4)
    log.info("job 42 requeued without %s", "node3")
    log.warning("multi\nline\r\nmessage")
    log.error("drain failed [node3]: Invalid node name")
    try:
        raise ValueError("bad manifest")
    except ValueError:
        log.exception("checkpoint verify failed")
    log.critical("giving up", extra={"job": "77", "node": "node 9"})
    return stream.getvalue().splitlines()


def test_text_lines_parse_with_logstash_grok(restore_logging):
    lines = _lines("text", node_id="node1", job_id="42")
    assert len(lines) == 6
    grok, ids = Grok(GROK), Grok(IDS_GROK)
    parsed = [grok.match(line) for line in lines]
    assert all(parsed), lines
    assert [p["level"] for p in parsed] == ["DEBUG", "INFO", "WARNING", "ERROR", "ERROR", "CRITICAL"]
    assert {p["module"] for p in parsed} == {"slurmft.recovery.rescheduler"}
    assert parsed[1]["msg"] == "node=node1 job=42 job 42 requeued without node3"
    assert parsed[2]["msg"].endswith("multi | line | message")
    assert "ValueError: bad manifest" in parsed[4]["msg"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", parsed[0]["timestamp"])
    got = [ids.match(p["msg"]) for p in parsed]
    assert all(got)
    assert (got[3]["node_id"], got[3]["job_id"]) == ("node1", "42")
    # extra= overrides, and a node id with a space still stays one token.
    assert (got[5]["node_id"], got[5]["job_id"]) == ("node_9", "77")
    assert got[3]["text"] == "drain failed [node3]: Invalid node name"


def test_failed_node_field_apart_from_the_reporting_host(restore_logging):
    stream = io.StringIO()
    setup_logging("WARNING", "text", stream=stream, node_id="head", job_id="42")
    log = get_logger("slurmft.recovery.watcher")
    log.error("one down", extra=failed_extra("node3"))
    log.error("three down", extra={"job": "7", **failed_extra(["node4", "node2", "node3"])})
    log.error("odd name", extra=failed_extra(["bad name", "x"]))   # never raises, one token
    log.warning("no failed node here")
    grok, ids = Grok(GROK), Grok(IDS_GROK)
    got = [ids.match(grok.match(line)["msg"]) for line in stream.getvalue().splitlines()]
    assert all(got)
    assert (got[0]["node_id"], got[0]["failed_node"], got[0]["failed_nodes"]) == (
        "head", "node3", None)
    assert got[0]["text"] == "one down"
    assert (got[1]["job_id"], got[1]["failed_nodes"], got[1]["failed_node"]) == (
        "7", "node[2-4]", None)
    assert got[2]["failed_nodes"] == "bad_name,x" and got[2]["text"] == "odd name"
    assert got[3]["failed_node"] is None and got[3]["failed_nodes"] is None
    assert got[3]["text"] == "no failed node here"


def test_failed_node_in_json_lines(restore_logging):
    stream = io.StringIO()
    setup_logging("INFO", "json", stream=stream, node_id="head", job_id="-")
    get_logger("slurmft.probe.fanout").error("down", extra=failed_extra("node3"))
    get_logger("slurmft.probe.fanout").info("fine")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["node_id"] == "head" and first["failed_node"] == "node3"
    assert "failed_node" not in second and "failed_nodes" not in second


def test_error_lines_carry_ids_without_slurm_env(restore_logging, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("SLURMD_NODENAME", "nodeA")
    lines = _lines("text")
    error = Grok(IDS_GROK).match(Grok(GROK).match(lines[3])["msg"])
    assert error["node_id"] == "nodeA" and error["job_id"] == "-"


def test_json_lines_for_filebeat_ndjson(restore_logging, monkeypatch):
    monkeypatch.setenv("SLURMFT_LOG_FORMAT", "json")
    stream = io.StringIO()
    setup_logging("INFO", stream=stream, node_id="node2", job_id="7")   # format from env
    log = get_logger("slurmft.checkpoint")
    log.info("saved step %d", 100)
    try:
        raise OSError("disk full")
    except OSError:
        log.exception("save failed")
    docs = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [d["level"] for d in docs] == ["INFO", "ERROR"]
    assert docs[0] == {**docs[0], "module": "slurmft.checkpoint", "node_id": "node2",
                       "job_id": "7", "msg": "saved step 100"}
    assert docs[1]["error"] == "OSError: disk full"
    assert Grok("%{TIMESTAMP_ISO8601:t}").match(docs[0]["timestamp"])


def test_bad_settings_are_config_errors(restore_logging, tmp_path):
    with pytest.raises(ConfigError, match="log format"):
        setup_logging("INFO", "xml")
    with pytest.raises(ConfigError, match="log level"):
        setup_logging("LOUD", "text")
    with pytest.raises(ConfigError, match="cannot open log file"):
        setup_logging("INFO", "text", logfile=str(tmp_path / "missing" / "x.log"))


def test_logfile_gets_the_same_lines(restore_logging, tmp_path):
    path = tmp_path / "slurmft.log"
    setup_logging("INFO", "text", stream=io.StringIO(), logfile=str(path), node_id="n", job_id="1")
    get_logger("slurmft.x").warning("to file")
    logging.getLogger("slurmft").handlers[-1].flush()
    assert Grok(GROK).match(path.read_text().strip())["msg"] == "node=n job=1 to file"


def _render(fmt: str) -> tuple[dict, str]:
    ctx = {"format": fmt, "log_paths": ["/var/log/slurmft/*.log", "/tmp/a b.log"],
           "logstash_hosts": ["logstash:5044"], "beats_port": 5044, "job_id": "${SLURM_JOB_ID:none}",
           "node_id": "node1", "elasticsearch_hosts": []}
    return yaml.safe_load(render("filebeat.yml.j2", ctx)), render("logstash.conf.j2", ctx)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_filebeat_yaml(fmt):
    doc, _ = _render(fmt)
    (inp,) = doc["filebeat.inputs"]
    assert inp["type"] == "filestream" and inp["id"]
    assert inp["paths"] == ["/var/log/slurmft/*.log", "/tmp/a b.log"]
    assert inp["fields"]["job_id"] == "${SLURM_JOB_ID:none}"
    assert inp["fields"]["node"] == "node1"
    assert inp["fields"]["log_format"] == fmt
    assert doc["output.logstash"]["hosts"] == ["logstash:5044"]
    if fmt == "json":
        (parser,) = inp["parsers"]
        assert parser["ndjson"]["target"] == ""
    else:
        assert "parsers" not in inp


def _balanced(text: str) -> bool:
    depth = 0
    in_string = False
    for i, ch in enumerate(text):
        if ch == '"' and text[i - 1] != "\\":
            in_string = not in_string
        elif not in_string and ch in "{}":
            depth += 1 if ch == "{" else -1
            if depth < 0:
                return False
    return depth == 0 and not in_string


def test_logstash_pipeline_syntax_and_pattern():
    _, conf = _render("text")
    assert _balanced(conf)
    assert "{{" not in conf and "{%" not in conf
    for section in ("input", "filter", "output"):
        assert re.search(rf"^{section} {{$", conf, re.M)
    match_lines = re.findall(r'"message" => "(.*)" }', conf)
    assert match_lines == [GROK]          # byte-for-byte the documented pattern
    assert IDS_GROK in conf
    assert slurmft_log.IDS_GROK == IDS_GROK      # the pattern the code documents is the shipped one
    assert '"node_id" => "%{[fields][node]}"' in conf
    assert '"job_id" => "%{[fields][job_id]}"' in conf


def test_render_logging_cli(tmp_path):
    res = CliRunner().invoke(cli, ["render-logging", "--format", "json", "--log-path", "/l/*.log",
                                   "--logstash-host", "10.0.0.5:5044", "--job-id", "42",
                                   "--out", str(tmp_path)])
    if res.exit_code == 2 and "No such command" in res.output:   # registered under `render`
        res = CliRunner().invoke(cli, ["render", "logging", "--format", "json", "--log-path",
                                       "/l/*.log", "--logstash-host", "10.0.0.5:5044",
                                       "--job-id", "42", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    doc = yaml.safe_load((tmp_path / "filebeat.yml").read_text())
    assert doc["filebeat.inputs"][0]["fields"]["job_id"] == "42"
    assert doc["filebeat.inputs"][0]["paths"] == ["/l/*.log"]
    assert _balanced((tmp_path / "logstash.conf").read_text())


def test_render_logging_rejects_bad_host():
    cmd = ["render-logging", "--logstash-host", "a;rm -rf:5044"]
    res = CliRunner().invoke(cli, cmd)
    if "No such command" in res.output:
        res = CliRunner().invoke(cli, ["render", "logging"] + cmd[1:])
    assert res.exit_code == 2
    assert "--logstash-host" in res.output
    assert "Traceback" not in res.output
