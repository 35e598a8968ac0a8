"""`slurmft probe` argument handling (no host is contacted: every case fails before probing)."""

from __future__ import annotations

from click.testing import CliRunner

from slurmft.cli import EXIT_UNHEALTHY, cli


def run(*args: str):
    return CliRunner().invoke(cli, ["probe", *args])


def test_help_documents_exit_codes():
    res = run("--help")
    assert res.exit_code == 0
    assert "Exit codes" in res.output and f"{EXIT_UNHEALTHY} at least one host" in res.output


def test_bad_hostlist_is_a_usage_error():
    res = run("node1;rm -rf /")
    assert res.exit_code == 2
    assert "slurmft: invalid hostlist 'node1;rm -rf /'" in res.output
    assert "Traceback" not in res.output


def test_no_hosts_is_a_usage_error():
    res = run()
    assert res.exit_code == 2 and "give a HOSTLIST or --job" in res.output


def test_bad_timeout_is_a_config_error():
    res = run("node1", "--timeout", "0")
    assert res.exit_code == 2 and "probe.timeout must be > 0" in res.output
