"""The bad-input campaign: every `slurmft` command, every option, hostile values.

The click command tree is walked, so a new command or option is covered without editing this
file. Each case changes ONE value of an otherwise harmless command line and asserts what the
README promises: no traceback, one ``slurmft:`` line ending a failure, an exit code from the
README's table (specific ones where the value can only be a usage error), and nothing created
where the command was refused.

Nothing reaches a real Slurm, host or network: PATH holds only stand-ins for the Slurm
commands (they fail like an unreachable controller), probing, clusters, the demo and the
metrics server are replaced by stand-ins that fail, and the environment names no job.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from slurmft.cli import adapters
from slurmft.cli import FiniteFloat, cli
from slurmft.core.errors import ClusterError, ExitCode, SlurmFTError

#: README "Exit codes": every code the command may end with.
DOCUMENTED = {int(c) for c in ExitCode}
#: What a hostile value may end in: done anyway (a harmless value after all), failed
#: (a stand-in refused), usage error, or an unhealthy probe.
HOSTILE_OK = {ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE, ExitCode.UNHEALTHY}

HOSTLISTS = ["node[1-", "node[5-1]", "a;b", "$(x)", "node1\nnode2", "node[1-10000000]"]
NUMBERS = ["inf", "nan", "-1", "0", "1e400"]
NOT_FINITE = {"inf", "nan", "1e400"}
#: /dev/full only where it is the device (in some containers it is missing: writing it as
#: root would create a file in /dev).
DEV_FULL = (["/dev/full"] if os.path.exists("/dev/full")
            and stat.S_ISCHR(os.stat("/dev/full").st_mode) else [])
needs_dev_full = pytest.mark.skipif(not DEV_FULL, reason="/dev/full is not a device here")
#: Parameters that take a hostlist: a malformed one is always a usage error.
HOSTLIST_PARAMS = {"hostlist", "nodes_hint", "nodelist", "exclude"}

SLURM_TOOLS = ("squeue", "sinfo", "scontrol", "sbatch", "scancel", "sacct", "srun", "mpirun",
               "ssh", "ping", "ip", "nsenter", "docker", "slurmctld", "slurmd", "munged")


def command_paths(group: click.Group = cli, prefix: tuple[str, ...] = ()):
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from command_paths(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def base_case(path: tuple[str, ...], ws: Path) -> tuple[dict[str, str], list[str]]:
    """Harmless arguments (by name) and options for each command; others get none."""
    ckpt = str(ws / "ckpt")
    table: dict[tuple[str, ...], tuple[dict[str, str], list[str]]] = {
        ("probe",): ({"hostlist": "node1"}, []),
        ("reschedule",): ({"job_id": "1"}, []),
        ("render", "hostfile"): ({}, ["--nodes", "node1"]),
        ("render", "restart"): ({}, ["--nodes", "node[1-2]", "--train-cmd", "python t.py",
                                     "--checkpoint-dir", ckpt]),
        ("render", "job"): ({}, ["--train-cmd", "python t.py", "--checkpoint-dir", ckpt]),
        ("render", "deploy"): ({}, ["--out", str(ws / "site")]),
        ("checkpoint", "list"): ({"path": ckpt}, []),
        ("checkpoint", "verify"): ({"path": ckpt}, []),
        ("checkpoint", "prune"): ({"path": ckpt}, ["--keep-last", "1"]),
        ("watch",): ({}, ["--once"]),
        ("exporter",): ({}, ["--textfile", str(ws / "out.prom"), "--once"]),
        ("inject",): ({"action": "kill-rank"}, ["--job", "1"]),
        ("cluster", "fault"): ({"node": "node1", "action": "kill-slurmd"}, []),
        ("cluster", "exec"): ({"command": "true"}, []),
        ("lighthouse",): ({}, ["--dry-run"]),       # it would exec torchft's lighthouse
    }
    args, opts = table.get(path, ({}, []))
    return dict(args), list(opts)


def hostile_values(param: click.Parameter, ws: Path) -> list[str]:
    t = param.type
    if isinstance(t, click.Path):
        a_file = ws / "a-file"
        return [str(ws / "missing" / "x"), str(a_file), str(a_file / "x"), "/proc/1/mem",
                *DEV_FULL, str(ws / "ro" / "x")]
    if isinstance(t, (click.types._NumberParamTypeBase, FiniteFloat)):  # noqa: SLF001
        return NUMBERS
    if isinstance(t, click.Choice):
        return ["not-a-choice", ""]
    if t in (click.STRING, click.UNPROCESSED):
        return HOSTLISTS
    return []


def cases():
    ws = Path("/WS")                      # placeholder, replaced per test
    for path, command in command_paths():
        for param in command.params:
            if getattr(param, "is_flag", False) or getattr(param, "count", False):
                continue
            if param.name in ("help", "version"):
                continue
            for value in hostile_values(param, ws):
                yield pytest.param(path, param.name, value,
                                   id=f"{' '.join(path)}:{param.name}={value!r}")


def build_argv(path, command, name, value, ws: Path) -> list[str]:
    value = value.replace("/WS", str(ws))
    args, opts = base_case(path, ws)
    argv = list(path)
    target = next(p for p in command.params if p.name == name)
    if isinstance(target, click.Option):
        flag = max(target.opts, key=len)
        if flag in opts:                        # replace the base value of this option
            i = opts.index(flag)
            opts[i + 1] = value
        else:
            opts += [flag, value]
    else:
        args[name] = value
    positional = [args[p.name] for p in command.params
                  if isinstance(p, click.Argument) and p.name in args]
    return argv + opts + ["--", *positional] if positional else argv + opts


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


class StandInCluster:
    """Validates the name as the real one does; every action fails."""

    def __init__(self, name: str = "sft", *a, **k) -> None:
        from slurmft.testbed.layout import validate_name

        self.name = validate_name(name)

    def is_up(self) -> bool:
        return False

    def __getattr__(self, item):
        def refuse(*a, **k):
            raise ClusterError("stand-in: no cluster in unit tests")
        return refuse


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """A workspace, a PATH of failing Slurm stand-ins, no job in the environment."""
    ws = tmp_path / "ws"
    (ws / "ckpt").mkdir(parents=True)
    (ws / "a-file").write_text("not a folder\n")
    (ws / "ro").mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in SLURM_TOOLS:
        script = bin_dir / tool
        script.write_text("#!/bin/sh\necho 'slurm_load_jobs error: Unable to contact slurm "
                          "controller (connect failure)' >&2\nexit 1\n")
        script.chmod(0o755)
    for key in list(os.environ):
        if key.startswith(("SLURMFT_", "SLURM_")) or key in ("MAX_RETRY", "CHECKPOINT_PATH"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SLURMFT_RESCHEDULE_STATE_DIR", str(ws / "state"))
    monkeypatch.setenv("SLURMFT_CLUSTER_ROOT", str(tmp_path / "clusters"))
    monkeypatch.chdir(ws)

    from slurmft import testbed
    from slurmft.observe import metrics
    from slurmft.probe import fanout
    from slurmft.probe.records import Health, ProbeResult
    from slurmft.testbed import demo

    def no_probe(self, names):
        return {n: ProbeResult(n, Health.UNREACHABLE, reason="stand-in") for n in names}

    def no_demo(self):
        raise SlurmFTError("stand-in: no demo in unit tests")

    def no_server(*a, **k):
        raise SlurmFTError("stand-in: no metrics server in unit tests")

    monkeypatch.setattr(fanout.FanoutProber, "probe", no_probe)
    monkeypatch.setattr(testbed, "Cluster", StandInCluster)
    monkeypatch.setattr(adapters, "cluster", lambda backend, name: StandInCluster(name))
    monkeypatch.setattr(demo.Demo, "run", no_demo)
    monkeypatch.setattr(metrics, "start_http_server", no_server)
    return ws


def check(result, argv, created: set[str]) -> None:
    shown = " ".join(repr(a) for a in argv)
    assert "Traceback" not in result.output, f"{shown}:\n{result.output}"
    assert result.exit_code in DOCUMENTED, f"{shown}: exit {result.exit_code}\n{result.output}"
    assert not isinstance(result.exception, Exception) or isinstance(result.exception,
                                                                     SystemExit), shown
    if result.exit_code not in (ExitCode.OK, ExitCode.UNHEALTHY):
        lines = result.stderr.strip().splitlines()
        assert lines and lines[-1].startswith("slurmft: "), f"{shown}:\n{result.output}"
        assert "Error:" not in result.stderr, f"{shown}: click's own error format\n{result.stderr}"
        assert not created, f"{shown}: refused, yet created {sorted(created)}"


@pytest.mark.parametrize("path, name, value", list(cases()))
def test_hostile_value(ws, path, name, value):
    command = cli
    for part in path:
        command = command.commands[part]
    argv = build_argv(path, command, name, value, ws)
    before = snapshot(ws)
    result = CliRunner().invoke(cli, argv)
    check(result, argv, snapshot(ws) - before)
    assert result.exit_code in HOSTILE_OK, f"{argv}: exit {result.exit_code}\n{result.output}"
    param = next(p for p in command.params if p.name == name)
    if value in NOT_FINITE and hostile_values(param, ws) is NUMBERS:
        assert result.exit_code == ExitCode.USAGE, f"{argv}:\n{result.output}"
    if name in HOSTLIST_PARAMS and value in HOSTLISTS:
        assert result.exit_code == ExitCode.USAGE, f"{argv}:\n{result.output}"
    if value in DEV_FULL:         # written in place: a rename would replace the device node
        assert stat.S_ISCHR(os.stat(value).st_mode), f"{argv} replaced {value}"


def test_the_campaign_covers_every_command():
    covered = {" ".join(path) for path, *_ in (c.values for c in cases())}
    every = {" ".join(path) for path, command in command_paths()
             if any(not getattr(p, "is_flag", False) for p in command.params)}
    assert every <= covered and {"probe", "reschedule", "render hostfile", "watch"} <= covered


# --------------------------------------------------------------------------- configuration

SECTIONS = ("slurm", "probe", "reschedule", "log", "checkpoint")


def config_cases():
    yield "non-utf8", b"probe:\n  command: \xff\xfe\n", {}
    yield "invalid-yaml", b"probe: [unclosed\n", {}
    yield "not-a-mapping", b"- a\n- b\n", {}
    for section in SECTIONS:
        yield f"unknown-key-{section}", f"{section}:\n  bogus: 1\n".encode(), {}
        yield f"unknown-env-{section}", b"", {f"SLURMFT_{section.upper()}_BOGUS": "1"}
    yield "train-cmd-mapping", b"reschedule:\n  train_cmd: {a: 1}\n", {}
    yield "probe-command-list", b"probe:\n  command: [1, 2]\n", {}
    yield "ssh-user-int", b"probe:\n  ssh_user: 5\n", {}
    yield "keep-last-negative", b"checkpoint:\n  keep_last: -3\n", {}
    yield "checksum-md5", b"checkpoint:\n  checksum: md5\n", {}
    yield "yaml-inf", b"probe:\n  timeout: .inf\n", {}
    yield "yaml-nan", b"slurm:\n  timeout: .nan\n", {}
    yield "yaml-1e400", b"reschedule:\n  lock_timeout: 1e400\n", {}
    yield "env-1e400", b"", {"SLURMFT_PROBE_TIMEOUT": "1e400"}
    yield "env-inf", b"", {"SLURMFT_CHECKPOINT_INTERVAL": "inf"}
    yield "env-bad-int", b"", {"SLURMFT_RESCHEDULE_MAX_RETRY": "three"}
    yield "huge-int", b"probe:\n  max_parallel: 99999999999999999999\n", {}


@pytest.mark.parametrize("text, env", [pytest.param(t, e, id=i) for i, t, e in config_cases()])
def test_bad_configuration_is_one_line_and_exit_2_for_every_command(ws, monkeypatch, text, env):
    config = ws.parent / "slurmft.yaml"
    config.write_bytes(text)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    before = snapshot(ws)
    for path, command in command_paths():
        args, opts = base_case(path, ws)
        positional = [args[p.name] for p in command.params
                      if isinstance(p, click.Argument) and p.name in args]
        argv = ["--config", str(config), *path, *opts, *positional]
        result = CliRunner().invoke(cli, argv)
        check(result, argv, snapshot(ws) - before)
        if path == ("epilog",):           # the epilog always exits 0 (Slurm drains on failure)
            assert result.exit_code == 0, result.output
            continue
        assert result.exit_code == ExitCode.USAGE, f"{argv}:\n{result.output}"


@pytest.mark.parametrize("where", ["/proc/1/mem", "missing", "a-file/x", "ws"])
def test_unusable_config_path_is_one_line(ws, where):
    path = {"missing": str(ws / "nope.yaml"), "a-file/x": str(ws / "a-file" / "x"),
            "ws": str(ws)}.get(where, where)
    result = CliRunner().invoke(cli, ["--config", path, "probe", "node1"])
    check(result, [path], set())
    assert result.exit_code == ExitCode.USAGE


# --------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("target", ["missing/h", "a-file/h", *DEV_FULL, "ckpt"])
def test_unwritable_render_output_is_one_line_exit_1_and_leaves_nothing(ws, target):
    out = target if target.startswith("/") else str(ws / target)
    before = snapshot(ws)
    result = CliRunner().invoke(cli, ["render", "hostfile", "--nodes", "node1", "-o", out])
    check(result, [out], snapshot(ws) - before)
    assert result.exit_code == (ExitCode.USAGE if target == "ckpt" else ExitCode.FAILED)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_read_only_output_folder(ws):
    (ws / "ro").chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        result = CliRunner().invoke(cli, ["render", "hostfile", "--nodes", "n1",
                                          "-o", str(ws / "ro" / "h")])
        r2 = CliRunner().invoke(cli, ["render", "logging", "--out", str(ws / "ro")])
    finally:
        (ws / "ro").chmod(0o755)
    for r in (result, r2):
        check(r, [], snapshot(ws / "ro"))
        assert r.exit_code == ExitCode.FAILED


def test_a_full_disk_on_one_of_two_files_leaves_neither(ws, monkeypatch):
    from slurmft.core import atomic

    real = atomic.os.replace
    calls = []

    def replace(src, dst):
        calls.append(dst)
        raise OSError(28, "No space left on device", str(dst))

    monkeypatch.setattr(atomic.os, "replace", replace)
    before = snapshot(ws)
    result = CliRunner().invoke(cli, ["render", "logging", "--out", str(ws / "ckpt")])
    monkeypatch.setattr(atomic.os, "replace", real)
    check(result, [], snapshot(ws) - before)
    assert result.exit_code == ExitCode.FAILED and "No space left" in result.stderr


def run_module(args, **kw):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURMFT_", "SLURM_"))}
    return subprocess.run([sys.executable, "-m", "slurmft", *args], env=env, timeout=60,
                          capture_output=kw.pop("capture", True), **kw)


@needs_dev_full
def test_stdout_on_dev_full_is_one_line_exit_1():
    with open("/dev/full", "w") as full:
        res = subprocess.run([sys.executable, "-m", "slurmft", "render", "hostfile",
                              "--nodes", "node[1-3]"], stdout=full, stderr=subprocess.PIPE,
                             timeout=60, env={**os.environ, "SLURMFT_CONFIG": ""})
    err = res.stderr.decode()
    assert res.returncode == ExitCode.FAILED, err
    assert "Traceback" not in err and "Exception ignored" not in err
    assert err.strip().splitlines() == ["slurmft: cannot use output: No space left on device"]


def test_a_closed_pipe_on_stdout_is_one_line_exit_1():
    proc = subprocess.Popen([sys.executable, "-m", "slurmft", "render", "hostfile",
                             "--nodes", "node[1-3000]"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "SLURMFT_CONFIG": ""})
    proc.stdout.close()                       # the reader went away (`| head -0`)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == ExitCode.FAILED, err
    assert "Traceback" not in err and "Exception ignored" not in err
    assert err.strip().splitlines() == ["slurmft: output closed early (broken pipe)"]
