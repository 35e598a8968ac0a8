import pytest

from slurmft.config import load_config
from slurmft.errors import ConfigError


def test_defaults():
    cfg = load_config(env={})
    assert cfg.reschedule.max_retry == 3
    assert cfg.probe.command == "true"


def test_layers_file_env_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("probe:\n  timeout: 5\n  command: 'nvidia-smi -L'\nreschedule:\n  max_retry: 7\n")
    cfg = load_config(f, env={})
    assert cfg.probe.timeout == 5.0 and cfg.reschedule.max_retry == 7
    cfg = load_config(f, env={"SLURMFT_PROBE_TIMEOUT": "1.5"})
    assert cfg.probe.timeout == 1.5
    cfg = load_config(f, env={"SLURMFT_PROBE_TIMEOUT": "1.5"},
                      overrides={"probe": {"timeout": 0.5, "command": None}})
    assert cfg.probe.timeout == 0.5
    assert cfg.probe.command == "nvidia-smi -L"  # None override leaves the lower layer


def test_classic_max_retry_env():
    assert load_config(env={"MAX_RETRY": "5"}).reschedule.max_retry == 5


@pytest.mark.parametrize(
    "text, match",
    [
        ("probe:\n  timeout: -1\n", "probe.timeout must be > 0"),
        ("probe:\n  nope: 1\n", "unknown setting probe.nope"),
        ("bogus: {}\n", "unknown config section"),
        ("probe:\n  timeout: abc\n", "probe.timeout must be float"),
        ("reschedule:\n  launcher: ssh\n", "launcher must be mpirun or srun"),
        ("reschedule:\n  launch_from: head\n", "launch_from must be peer .* or batch"),
        ("[unclosed\n", "not valid YAML"),
    ],
)
def test_bad_config_names_field(tmp_path, text, match):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(f, env={})


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/slurmft.yaml", env={})


def test_bad_bool_env():
    with pytest.raises(ConfigError, match="probe.ping must be bool"):
        load_config(env={"SLURMFT_PROBE_PING": "maybe"})


def test_checkpoint_section_is_left_to_the_checkpoint_policy(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("checkpoint:\n  interval: 15\nprobe:\n  timeout: 3\n")
    assert load_config(f, env={}).probe.timeout == 3.0
