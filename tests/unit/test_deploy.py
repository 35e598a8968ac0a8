"""`slurmft render deploy`: every file of the site kit is accepted by the tool that reads it.

promtool (Debian's prometheus package, `make apt`) checks the scrape config and the rules and
runs tests/data/deploy/slurmft.rules.test.yml against the rendered rules; systemd-analyze
verifies the units where it can run; bash -n and shellcheck read the scripts; the env file
and the units' Environment= lines load through slurmft's own config schema. The commands are
the ones docs/deploy.md tells an operator to run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from slurmft.cli import cli
from slurmft.core.config import Config, load_config
from slurmft.core.errors import ExitCode, UsageError
from slurmft.observe import metrics
from slurmft.render.deploy import (
    FILE_NAMES,
    DeploySettings,
    deploy_files,
    env_assignments,
    unit_environment,
)
from tests.unit.test_dashboard import metric_names

DATA = Path(__file__).resolve().parents[1] / "data" / "deploy"
RULES_TEST = DATA / "slurmft.rules.test.yml"
SLURMFT_BIN = str(Path(sys.executable).parent / "slurmft")
UNITS = ("slurmft-watch.service", "slurmft-exporter.service")
SCRIPTS = {"slurmft-epilog": "sh", "probe-ssh-setup.sh": "sh", "job-wrapper.example.sh": "bash"}
#: Names the rules may use that slurmft does not export (Prometheus, node_exporter).
OTHER_METRICS = {"up", "node_systemd_unit_state"}

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool missing: `make apt` installs prometheus")


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("SLURMFT_", "SLURM_")) and k != "MAX_RETRY"}


def render_kit(out: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`slurmft render deploy` as docs/deploy.md runs it, in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "slurmft", "render", "deploy", "--out", str(out),
         "--slurmft-bin", SLURMFT_BIN, *extra],
        env=clean_env() if env is None else env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kit") / "site"
    res = render_kit(out, "--state-dir", "/shared/slurmft", "--checkpoint-dir", "/shared/ckpt",
                     "--elasticsearch", "https://es1:9200")
    assert res.returncode == 0, res.stderr
    return out


def test_the_kit_has_every_file_with_its_mode(kit):
    assert sorted(p.name for p in kit.iterdir()) == sorted(FILE_NAMES)
    for name in SCRIPTS:
        assert (kit / name).stat().st_mode & 0o777 == 0o755, name
    assert (kit / "slurmft.env").stat().st_mode & 0o777 == 0o644
    # the dashboard is the packaged one, byte for byte
    from slurmft.render import packaged_templates

    assert (kit / "grafana-dashboard.json").read_bytes() == \
        (packaged_templates() / "grafana-dashboard.json").read_bytes()


# ------------------------------------------------------------------------ Prometheus


@needs_promtool
def test_promtool_accepts_the_scrape_config_and_the_rules(kit):
    res = subprocess.run(["promtool", "check", "config", "prometheus.yml"], cwd=kit,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 1 rule files found" in res.stdout
    res = subprocess.run(["promtool", "check", "rules", "slurmft.rules.yml"], cwd=kit,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 6 rules found" in res.stdout


def rule_docs(kit: Path) -> list[dict]:
    return yaml.safe_load((kit / "slurmft.rules.yml").read_text())["groups"][0]["rules"]


@needs_promtool
def test_promtool_unit_tests_fire_and_spare_every_alert(tmp_path):
    """The default thresholds (checkpoint.interval 30 min -> 3600 s, 30 minutes unhealthy)."""
    out = tmp_path / "site"
    assert render_kit(out).returncode == 0
    shutil.copy(RULES_TEST, out)
    res = subprocess.run(["promtool", "test", "rules", RULES_TEST.name], cwd=out,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout
    # every alert has a case where it fires and one where it does not
    alerts = {r["alert"] for r in rule_docs(out)}
    fires, spared = set(), set()
    for test in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for case in test["alert_rule_test"]:
            (fires if case["exp_alerts"] else spared).add(case["alertname"])
    assert alerts == fires == spared == {
        "SlurmftCheckpointTooOld", "SlurmftCheckpointVerificationFailed",
        "SlurmftRetryBudgetSpent", "SlurmftNodeUnhealthy", "SlurmftExporterDown",
        "SlurmftWatcherDown"}


@needs_promtool
def test_promtool_fails_a_rule_test_that_expects_the_wrong_thing(tmp_path):
    """The unit tests can fail: the same file against a threshold of 2 hours."""
    out = tmp_path / "site"
    assert render_kit(out, "--checkpoint-max-age", "7200").returncode == 0
    shutil.copy(RULES_TEST, out)
    res = subprocess.run(["promtool", "test", "rules", RULES_TEST.name], cwd=out,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "SlurmftCheckpointTooOld" in res.stdout + res.stderr


def test_rules_use_only_metrics_that_exist(kit):
    registry = metrics.build_metrics().registry
    exported = metrics.exported_names(registry)
    used = set()
    for rule in rule_docs(kit):
        used |= metric_names(rule["expr"])
    slurmft = {n for n in used if n.startswith("slurmft_")}
    assert slurmft and slurmft <= exported, slurmft - exported
    assert used - slurmft <= OTHER_METRICS


def test_checkpoint_age_threshold_follows_the_policy(tmp_path):
    config = tmp_path / "slurmft.yaml"
    config.write_text("checkpoint:\n  interval: 10\n")
    out = tmp_path / "site"
    res = render_kit(out, "--config", str(config))
    assert res.returncode == 0, res.stderr
    (too_old,) = [r for r in rule_docs(out) if r["alert"] == "SlurmftCheckpointTooOld"]
    assert too_old["expr"] == "slurmft_checkpoint_age_seconds > 1200"   # 2 x 10 minutes
    assert env_assignments((out / "slurmft.env").read_text())["SLURMFT_CONFIG"] == str(config)


def test_prometheus_scrapes_the_exporter_where_the_unit_listens(tmp_path):
    out = tmp_path / "site"
    assert render_kit(out, "--exporter-bind", "0.0.0.0", "--exporter-port", "9555",
                      "--scrape-target", "watch1:9555").returncode == 0
    doc = yaml.safe_load((out / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in doc["scrape_configs"]}
    assert jobs == {"slurmft-exporter": ["watch1:9555"], "slurmft-node": ["localhost:9100"]}
    unit = (out / "slurmft-exporter.service").read_text()
    assert "--port 9555 --bind 0.0.0.0" in unit


@needs_promtool
def test_scrape_interval_sets_scrapes_and_rule_evaluations(tmp_path):
    out = tmp_path / "site"
    assert render_kit(out, "--scrape-interval", "1").returncode == 0
    doc = yaml.safe_load((out / "prometheus.yml").read_text())
    assert doc["global"] == {"scrape_interval": "1s", "evaluation_interval": "1s"}
    res = subprocess.run(["promtool", "check", "config", str(out / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    default = tmp_path / "default"
    assert render_kit(default).returncode == 0
    assert yaml.safe_load((default / "prometheus.yml").read_text())["global"] == {
        "scrape_interval": "15s", "evaluation_interval": "15s"}
    bad = render_kit(tmp_path / "bad", "--scrape-interval", "0")
    assert bad.returncode == 2 and "--scrape-interval" in bad.stderr
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------ systemd


def systemd_analyze_works(tmp_path: Path) -> str | None:
    """Why systemd-analyze verify cannot run here, or None if it can."""
    tool = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
    if not os.path.exists(tool):
        return "systemd-analyze is not installed"
    unit = tmp_path / "probe-verify.service"
    unit.write_text("[Service]\nExecStart=/bin/true\n")
    try:
        res = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"systemd-analyze verify cannot run: {exc}"
    if res.returncode != 0:
        return f"systemd-analyze verify fails even on a trivial unit: {res.stderr.strip()}"
    return None


def test_systemd_analyze_verifies_the_units(kit, tmp_path):
    why = systemd_analyze_works(tmp_path)
    if why:
        print(f"skipping systemd-analyze verify: {why}")
        pytest.skip(why)
    res = subprocess.run(["systemd-analyze", "verify", *UNITS], cwd=kit, capture_output=True,
                         text=True, timeout=120)
    # verify exits 0 on unknown keys and only warns: any line about our units is a failure
    assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), \
        res.stdout + res.stderr


def test_systemd_analyze_would_catch_a_broken_unit(kit, tmp_path):
    """The check above has teeth: a misspelt key and a missing binary are reported."""
    why = systemd_analyze_works(tmp_path)
    if why:
        pytest.skip(why)
    broken = tmp_path / "slurmft-watch.service"
    text = (kit / "slurmft-watch.service").read_text()
    broken.write_text(text.replace("NoNewPrivileges=", "NoNewPrivilege=")
                      .replace(SLURMFT_BIN, "/nonexistent/slurmft"))
    res = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True,
                         text=True, timeout=120)
    assert "NoNewPrivilege" in res.stderr and "/nonexistent/slurmft" in res.stderr


def test_units_are_hardened_and_run_as_the_service_user(kit):
    for name in UNITS:
        lines = (kit / name).read_text().splitlines()
        for setting in ("User=slurmft", "Restart=on-failure", "NoNewPrivileges=yes",
                        "ProtectSystem=strict", "ReadWritePaths=/shared/slurmft",
                        "EnvironmentFile=/etc/slurmft/slurmft.env", "UMask=0002"):
            assert setting in lines, (name, setting)
        (start,) = [line for line in lines if line.startswith("ExecStart=")]
        assert start.startswith(f"ExecStart={SLURMFT_BIN} ")
    watch = (kit / "slurmft-watch.service").read_text()
    assert f"ExecStart={SLURMFT_BIN} watch --interval 2\n" in watch
    exporter = (kit / "slurmft-exporter.service").read_text()
    assert "--state-dir /shared/slurmft --checkpoint-dir /shared/ckpt" in exporter


# ------------------------------------------------------------------------ settings


def test_env_file_and_units_use_only_settings_the_schema_accepts(kit):
    env = env_assignments((kit / "slurmft.env").read_text())
    for name in UNITS:
        env.update(unit_environment((kit / name).read_text()))
    assert env and all(k.startswith("SLURMFT_") for k in env)
    cfg = load_config(env=env)       # an unknown SLURMFT_<SECTION>_* raises ConfigError
    assert cfg.reschedule.state_dir == "/shared/slurmft"
    assert cfg.probe.ssh_user == "slurmft" != "root"
    assert cfg.probe.ssh_key == "/etc/slurmft/ssh/id_ed25519"
    assert cfg.probe.known_hosts == "/etc/slurmft/ssh/known_hosts"
    assert cfg.log.file.startswith("/var/log/slurmft/")
    # every variable maps to a setting (none is silently ignored)
    from dataclasses import fields

    defaults = Config()
    known = {f"SLURMFT_{s.name.upper()}_{f.name.upper()}"
             for s in fields(Config) for f in fields(getattr(defaults, s.name))}
    assert set(env) <= known | {"SLURMFT_CONFIG"}, set(env) - known


def test_a_misspelt_variable_would_be_refused(kit):
    from slurmft.core.errors import ConfigError

    env = env_assignments((kit / "slurmft.env").read_text())
    with pytest.raises(ConfigError, match="SLURMFT_PROBE_SSH_USR"):
        load_config(env={**env, "SLURMFT_PROBE_SSH_USR": "x"})


def test_the_probe_never_logs_in_as_root_even_when_the_config_says_root(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("probe:\n  ssh_user: root\n")
    out = tmp_path / "site"
    assert render_kit(out, "--config", str(config), "--user", "svc").returncode == 0
    assert env_assignments((out / "slurmft.env").read_text())["SLURMFT_PROBE_SSH_USER"] == "svc"


# ------------------------------------------------------------------------ scripts


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_scripts_parse_and_pass_shellcheck(kit, name):
    shell = SCRIPTS[name]
    res = subprocess.run([shell, "-n", str(kit / name)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    res = subprocess.run(["shellcheck", "-s", shell, str(kit / name)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stdout


def run_epilog_wrapper(kit: Path, tmp_path: Path, env_file_text: str | None,
                       slurmft_bin: str) -> tuple[subprocess.CompletedProcess, Path]:
    """The wrapper as slurmctld runs it: no arguments, SLURM_* variables, its paths moved
    under tmp_path (state dir, env file, slurmft)."""
    state, etc = tmp_path / "state", tmp_path / "etc"
    state.mkdir()
    etc.mkdir()
    script = (kit / "slurmft-epilog").read_text()
    script = script.replace("/shared/slurmft", str(state)).replace("/etc/slurmft", str(etc))
    script = script.replace(SLURMFT_BIN, slurmft_bin)
    if env_file_text is not None:
        (etc / "slurmft.env").write_text(env_file_text.replace("/shared/slurmft", str(state)))
    wrapper = tmp_path / "slurmft-epilog"
    wrapper.write_text(script)
    wrapper.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "SLURM_JOB_ID": "abc", "HOME": str(tmp_path)}
    res = subprocess.run([str(wrapper)], env=env, capture_output=True, text=True, timeout=60)
    return res, state


def test_epilog_wrapper_runs_slurmft_epilog_with_the_env_file_and_exits_0(kit, tmp_path):
    spy = tmp_path / "spy"
    seen = tmp_path / "seen"
    spy.write_text(f"#!/bin/sh\n{{ echo \"$*\"; env; }} > {seen}\nexit 3\n")
    spy.chmod(0o755)
    res, state = run_epilog_wrapper(kit, tmp_path, (kit / "slurmft.env").read_text(), str(spy))
    assert res.returncode == 0
    lines = seen.read_text().splitlines()
    assert lines[0] == "epilog"                                 # no other argument
    assert f"SLURMFT_RESCHEDULE_STATE_DIR={state}" in lines     # settings from the env file
    assert "SLURM_JOB_ID=abc" in lines                          # the job's variables


def test_epilog_wrapper_exits_0_when_everything_is_missing(kit, tmp_path):
    res, _ = run_epilog_wrapper(kit, tmp_path, None, str(tmp_path / "no-such-slurmft"))
    assert res.returncode == 0


def test_epilog_wrapper_with_the_real_slurmft_epilog_exits_0(kit, tmp_path):
    """The real `slurmft epilog` (an invalid job id: nothing to start) behind the wrapper."""
    res, state = run_epilog_wrapper(kit, tmp_path, (kit / "slurmft.env").read_text(),
                                    SLURMFT_BIN)
    assert res.returncode == 0
    assert "no valid SLURM_JOB_ID" in (state / "epilog.log").read_text()


# ------------------------------------------------------------------------ logging


def test_filebeat_and_logstash_ship_to_elasticsearch(kit):
    filebeat = yaml.safe_load((kit / "filebeat.yml").read_text())
    assert filebeat["filebeat.inputs"][0]["paths"] == ["/var/log/slurmft/*.log"]
    assert filebeat["output.logstash"]["hosts"] == ["localhost:5044"]
    conf = (kit / "logstash.conf").read_text()
    out = conf[conf.index("output {"):]
    assert 'hosts => ["https://es1:9200"]' in out
    assert 'index => "slurmft-%{+YYYY.MM.dd}"' in out
    assert "stdout" not in out and "logstash-keystore" in out      # credentials comment
    # the parsing is the one `render logging` ships
    from slurmft.render import render

    stock = render("logstash.conf.j2", {"beats_port": 5044, "elasticsearch_hosts": []})
    assert conf[:conf.index("output {")] == stock[:stock.index("output {")]


def test_render_logging_keeps_working():
    res = CliRunner().invoke(cli, ["render", "logging"], env={"SLURMFT_CONFIG": ""})
    assert res.exit_code == 0 and "stdout { codec => rubydebug }" in res.output


# ------------------------------------------------------------------------ CLI


def test_json_and_dry_run_write_nothing(tmp_path):
    out = tmp_path / "site"
    res = CliRunner().invoke(cli, ["render", "deploy", "--out", str(out), "--dry-run",
                                   "--json", "--slurmft-bin", SLURMFT_BIN],
                             env={"SLURMFT_CONFIG": ""})
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["dry_run"] is True and not out.exists()
    byname = {f["name"]: f for f in doc["files"]}
    assert list(byname) == list(FILE_NAMES)
    assert byname["slurmft-epilog"]["mode"] == "0755"
    assert byname["slurmft-watch.service"]["install_to"] == \
        "/etc/systemd/system/slurmft-watch.service"


@pytest.mark.parametrize("target", ["a-file", "a-file/sub", "/proc/1/mem"])
def test_unusable_out_is_one_line_and_leaves_nothing(tmp_path, target):
    (tmp_path / "a-file").write_text("x")
    out = target if target.startswith("/") else str(tmp_path / target)
    before = sorted(tmp_path.rglob("*"))
    res = subprocess.run([sys.executable, "-m", "slurmft", "render", "deploy", "--out", out],
                         env=clean_env(), capture_output=True, text=True, timeout=60)
    # a file where the folder should be is a usage error; a folder that cannot be made, 1
    assert res.returncode == (ExitCode.FAILED if target == "a-file/sub" else ExitCode.USAGE), \
        res.stderr
    assert res.stderr.strip().count("\n") == 0 and res.stderr.startswith("slurmft: ")
    assert "--out" in res.stderr and "Traceback" not in res.stderr
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_read_only_out_is_exit_1(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    res = CliRunner().invoke(cli, ["render", "deploy", "--out", str(ro / "site")])
    assert res.exit_code == ExitCode.FAILED and not (ro / "site").exists()


def test_a_failed_write_removes_the_folders_it_created(tmp_path, monkeypatch):
    from slurmft.core import atomic

    def full(src, dst):
        raise OSError(28, "No space left on device", str(dst))

    monkeypatch.setattr(atomic.os, "replace", full)
    res = CliRunner().invoke(cli, ["render", "deploy", "--out", str(tmp_path / "a" / "b")],
                             env={"SLURMFT_CONFIG": ""})
    assert res.exit_code == ExitCode.FAILED and "No space left" in res.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag, value", [
    ("--user", "Root;"), ("--user", "a b"), ("--state-dir", "relative/dir"),
    ("--state-dir", "/with space"), ("--state-dir", "/a/../etc"), ("--probe-key", "/k\n"),
    ("--scrape-target", "host"), ("--scrape-target", "h:99999"), ("--node-exporter", "a;b:1"),
    ("--elasticsearch", "es1:9200"), ("--elasticsearch", "ftp://es1:9200"),
    ("--es-index", "Upper"), ("--es-index", "a b"), ("--exporter-bind", "$(x)"),
    ("--logstash-host", "x:0"), ("--config", "relative.yaml"),
])
def test_bad_values_are_usage_errors(tmp_path, flag, value):
    out = tmp_path / "site"
    res = CliRunner().invoke(cli, ["render", "deploy", "--out", str(out), flag, value],
                             env={"SLURMFT_CONFIG": ""})
    assert res.exit_code == ExitCode.USAGE, res.output
    assert res.stderr.strip().startswith("slurmft: ") and not out.exists()


def test_help_teaches():
    res = CliRunner().invoke(cli, ["render", "deploy", "--help"])
    assert res.exit_code == 0
    for word in ("EpilogSlurmctld", "PRIVILEGES.md", "slurmft-watch.service", "prometheus.yml",
                 "--state-dir", "--user", "--dry-run", "README.md"):
        assert word in res.output, word


def test_settings_refuse_values_that_would_break_a_unit():
    with pytest.raises(UsageError):
        DeploySettings(state_dir="/a\nExecStartPre=/bin/rm").validate()
    with pytest.raises(UsageError):
        DeploySettings(log_dir="/var/log/x y").validate()
    files = deploy_files(DeploySettings(), job_wrapper="#!/bin/bash\n")
    assert set(files) == set(FILE_NAMES)


def test_log_dir_outside_var_log_is_a_write_path(tmp_path):
    files = deploy_files(DeploySettings(log_dir="/data/logs/slurmft"), job_wrapper="")
    unit = files["slurmft-watch.service"].text
    assert "ReadWritePaths=/var/lib/slurmft /data/logs/slurmft" in unit
    assert "LogsDirectory" not in unit


# ------------------------------------------------------------------------ ssh probe


def test_a_refused_root_login_says_what_to_do():
    import paramiko

    from slurmft.probe.ssh import SshTarget, _reason

    msg = _reason(paramiko.AuthenticationException("denied"),
                  SshTarget("node1", "10.0.0.1", user="root"), 2.0)
    assert "\n" not in msg
    assert msg.startswith("ssh: authentication failed for root@10.0.0.1")
    assert "probe.ssh_user" in msg
    other = _reason(paramiko.AuthenticationException("denied"),
                    SshTarget("node1", "10.0.0.1", user="slurmft"), 2.0)
    assert other == "ssh: authentication failed for slurmft@10.0.0.1"


def test_docs_run_the_commands_the_tests_run():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "deploy.md").read_text()
    for command in ("slurmft render deploy --out", "promtool check config prometheus.yml",
                    "promtool check rules slurmft.rules.yml", "promtool test rules",
                    "systemd-analyze verify", "sacctmgr", "adminlevel=operator",
                    "systemctl enable --now slurmft-watch.service slurmft-exporter.service"):
        assert command in doc, command
    assert re.search(r"state_dir.*shared", doc, re.S | re.I)
