"""Regression tests for the command-line defects of issue 13 (one test per defect)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from slurmft.cli import cli
from slurmft.core.errors import ExitCode
from slurmft.probe.records import Health, ProbeResult
from tests.fakes.fake_slurm import FakeSlurm

NODES = ["node1", "node2", "node3", "node4"]


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """The CLI's Slurm client talks to the fake; node4 probes UNREACHABLE; no SLURMFT_* env."""
    from slurmft.probe import fanout
    from slurmft.slurm import client

    f = FakeSlurm()
    real = client.CommandSlurmClient
    monkeypatch.setattr(client, "CommandSlurmClient", lambda **kw: real(runner=f, **kw))
    monkeypatch.setattr(fanout.FanoutProber, "probe", lambda self, names: {
        n: ProbeResult(n, Health.UNREACHABLE if n == "node4" else Health.HEALTHY)
        for n in names})
    for key in [k for k in __import__("os").environ if k.startswith("SLURMFT_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURMFT_RESCHEDULE_STATE_DIR", str(tmp_path / "state"))
    return f


def run(*args, env=None):
    return CliRunner().invoke(cli, list(args), env=env)


@pytest.mark.parametrize("args, env", [
    (["probe", "node1", "--timeout", "inf"], None),
    (["probe", "node1"], {"SLURMFT_PROBE_TIMEOUT": "1e400"}),
    (["probe", "node1"], {"SLURMFT_PROBE_FOO": "1"}),
])
def test_non_finite_timeouts_and_unknown_env_are_usage_errors(args, env):
    r = run(*args, env=env)
    assert r.exit_code == ExitCode.USAGE and "Traceback" not in r.output
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("slurmft: ")


def test_probe_of_a_pending_job_says_slurmft_not_error(fake):
    jid = fake.add_job("PENDING", NODES)
    r = run("probe", "--job", str(jid))
    assert r.exit_code == ExitCode.FAILED
    assert r.stderr.startswith(f"slurmft: job {jid} holds no nodes") and "Error:" not in r.output


def test_watch_once_with_squeue_failing_exits_1_and_files_no_job_0(fake):
    fake.controller_up = False
    r = run("watch", "--once", "--json")
    assert r.exit_code == ExitCode.FAILED
    doc = json.loads(r.stdout.splitlines()[0])
    assert doc["errors"] == {} and doc["list_error"]
    assert r.stderr.strip().splitlines()[-1].startswith("slurmft: cannot list jobs:")


@pytest.mark.parametrize("args", [
    ["render", "job", "--checkpoint-dir", "/ckpt"],
    ["render", "job", "--train-cmd", "python t.py", "--checkpoint-dir", "/ckpt", "--nodes", "0"],
    ["render", "job", "--train-cmd", "python 't.py", "--checkpoint-dir", "/ckpt"],
    ["render", "restart", "--nodes", "node1", "--checkpoint-dir", "/ckpt"],
])
def test_render_job_usage_errors_exit_2(args):
    r = run(*args)
    assert r.exit_code == ExitCode.USAGE, r.output
    assert r.stderr.startswith("slurmft: render ")


def test_dry_run_reschedule_is_worded_as_would_do(fake):
    jid = fake.add_job("RUNNING", NODES)
    r = run("reschedule", str(jid), "--dry-run", "--wait", "0")
    assert r.exit_code == 0, r.output
    first = r.stdout.splitlines()[0]
    assert first == f"dry run: would requeue job {jid} on 3 node(s) without node4"


def test_reschedule_shows_the_retry_count_after_the_action(fake, tmp_path):
    jid = fake.add_job("RUNNING", NODES)
    r = run("reschedule", str(jid), "--wait", "0")
    assert r.exit_code == 0, r.output
    assert "retries used: 1/3" in r.stdout


def test_slurms_own_requeue_uses_no_retry(fake):
    jid = fake.add_job("RUNNING", NODES)
    fake.job(jid)["restart_cnt"] = 2                  # Slurm requeued it twice by itself
    r = run("reschedule", str(jid), "--wait", "0", "--max-retry", "2")
    assert r.exit_code == 0, r.output
    assert "retries used: 1/2" in r.stdout


def test_refused_reschedule_json_reports_what_was_done_and_the_error(fake):
    jid = fake.add_job("RUNNING", NODES)
    r = run("reschedule", str(jid), "--json", "--max-retry", "0", "--wait", "0")
    assert r.exit_code == ExitCode.POLICY
    doc = json.loads(r.stdout)
    assert doc["outcome"] == "exhausted" and "retry budget spent" in doc["error"]
    assert [a["op"] for a in doc["actions"]][:3] == ["requeue_hold", "down", "drain"]
    assert any("DRAIN" in " ".join(c) for c in doc["commands"])   # it did drain
    assert doc["exit_code"] == ExitCode.POLICY
    assert r.stderr.strip().splitlines()[-1].startswith(f"slurmft: job {jid}: retry budget")


def test_every_json_option_says_errors_stay_on_stderr():
    import click

    from slurmft.cli import JSON_ERRORS_NOTE

    def options(group):
        for cmd in group.commands.values():
            yield from options(cmd) if isinstance(cmd, click.Group) else (
                p for p in cmd.params if "--json" in getattr(p, "opts", ()))

    found = list(options(cli))
    assert len(found) >= 8 and all(JSON_ERRORS_NOTE in p.help for p in found)
