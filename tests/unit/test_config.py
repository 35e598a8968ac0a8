import pytest

from slurmft.core.config import load_config
from slurmft.core.errors import ConfigError


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


def test_checkpoint_section_is_part_of_the_one_schema(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("checkpoint:\n  interval: 15\n  signals: [usr2]\nprobe:\n  timeout: 3\n")
    cfg = load_config(f, env={})
    assert cfg.probe.timeout == 3.0
    assert cfg.checkpoint.interval == 15.0 and cfg.checkpoint.signals == ("SIGUSR2",)


@pytest.mark.parametrize(
    "text, match",
    [
        ("reschedule:\n  train_cmd: {a: 1}\n", r"reschedule.train_cmd must be a string, not \{"),
        ("probe:\n  command: [1, 2]\n", "probe.command must be a string"),
        ("probe:\n  ssh_user: 5\n", r"probe.ssh_user must be a string \(quote it in YAML\)"),
        ("checkpoint:\n  bogus: 1\n", "unknown setting checkpoint.bogus"),
        ("checkpoint:\n  keep_last: -3\n", "checkpoint.keep_last must be >= 1"),
        ("checkpoint:\n  checksum: md5\n", "checkpoint.checksum must be one of xxh3, sha256"),
        ("probe:\n  timeout: .inf\n", "probe.timeout must be a finite number"),
        ("slurm:\n  timeout: .nan\n", "slurm.timeout must be a finite number"),
        ("reschedule:\n  max_retry: 2.5\n", "reschedule.max_retry must be int"),
        ("reschedule:\n  max_retry: true\n", "reschedule.max_retry must be int"),
        ("probe:\n  max_parallel: 99999999999999999999\n", "probe.max_parallel must be at most"),
        ("log:\n  bogus: 1\n", "unknown setting log.bogus"),
        ("slurm:\n  bogus: 1\n", "unknown setting slurm.bogus"),
    ],
)
def test_every_section_is_typed_and_strict(tmp_path, text, match):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(f, env={})


@pytest.mark.parametrize("env, match", [
    ({"SLURMFT_PROBE_FOO": "1"}, "unknown environment variable SLURMFT_PROBE_FOO"),
    ({"SLURMFT_CHECKPOINT_BOGUS": "1"}, "unknown environment variable SLURMFT_CHECKPOINT_BOGUS"),
    ({"SLURMFT_PROBE_TIMEOUT": "1e400"}, "probe.timeout must be a finite number"),
    ({"SLURMFT_PROBE_TIMEOUT": "inf"}, "probe.timeout must be a finite number"),
    ({"SLURMFT_CHECKPOINT_KEEP_LAST": "-3"}, "checkpoint.keep_last must be >= 1"),
])
def test_environment_is_as_strict_as_yaml(env, match):
    with pytest.raises(ConfigError, match=match):
        load_config(env=env)


def test_variables_that_are_not_settings_are_left_alone():
    cfg = load_config(env={"SLURMFT_CHECKPOINT_ROOT": "/ckpt", "SLURMFT_CONFIG": "",
                           "SLURMFT_CLUSTER_NAME": "x"})
    assert cfg.checkpoint.keep_last == 5


def test_non_utf8_file_is_one_config_error(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_bytes(b"probe:\n  command: \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(f, env={})


def test_checksums_match_the_store():
    from slurmft.checkpoint.store import ALGORITHMS
    from slurmft.core.config import CHECKSUM_ALGORITHMS

    assert tuple(CHECKSUM_ALGORITHMS) == tuple(ALGORITHMS)


def test_the_checkpoint_policy_is_the_config_schema():
    from slurmft.checkpoint import CheckpointPolicy
    from slurmft.core.config import CheckpointConfig

    assert issubclass(CheckpointPolicy, CheckpointConfig)
    with pytest.raises(ConfigError, match="checkpoint.keep_last"):
        CheckpointPolicy(keep_last=-3)
    with pytest.raises(ConfigError, match="unknown environment variable"):
        CheckpointPolicy.from_env({"SLURMFT_CHECKPOINT_KEEPLAST": "3"})
