"""Layered, validated configuration: defaults -> YAML file -> SLURMFT_* env -> CLI flags.

Each section is a dataclass. ``load_config`` builds a ``Config``; every value is validated at
construction and a bad one raises ConfigError naming the field and what is allowed.

File: ``--config PATH``, else SLURMFT_CONFIG, else none. Sections in YAML::

    probe: {timeout: 2.0, ssh_user: root, command: "true"}
    reschedule: {max_retry: 3}

Environment: ``SLURMFT_<SECTION>_<FIELD>``, e.g. ``SLURMFT_PROBE_TIMEOUT=1.5``,
``SLURMFT_RESCHEDULE_MAX_RETRY=5`` (MAX_RETRY alone is honoured too, as in the classic script).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from slurmft.errors import ConfigError


@dataclass
class SlurmConfig:
    timeout: float = 30.0          # seconds for every Slurm command
    bin_dir: str = ""              # where sinfo/scontrol live; empty: PATH

    def __post_init__(self) -> None:
        _positive("slurm.timeout", self.timeout)


@dataclass
class ProbeConfig:
    timeout: float = 2.0           # per-host deadline for ping + SSH + command
    ping: bool = True
    ssh: bool = True
    ssh_user: str = "root"
    ssh_port: int = 22
    ssh_key: str = ""              # private key file; empty: paramiko's defaults
    ssh_config: str = ""           # OpenSSH client config to read HostName/Port/User from
    known_hosts: str = ""          # empty: ~/.ssh/known_hosts
    accept_unknown_hosts: bool = False
    command: str = "true"          # health command run over SSH
    check_slurmd: bool = False     # connect to slurmd's port (DEGRADED when it does not answer)
    slurmd_port: int = 6818        # slurm.conf SlurmdPort
    gpu_count: int = -1            # expected GPUs (nvidia-smi -L); -1: do not check
    checkpoint_path: str = ""      # check free space here
    min_free_gb: float = 1.0
    max_parallel: int = 256
    ping_timeout: float = 0.0      # wait for the echo reply; 0: half of timeout, at most 1 s

    def __post_init__(self) -> None:
        _positive("probe.timeout", self.timeout)
        _positive("probe.max_parallel", self.max_parallel)
        if self.ping_timeout < 0 or self.ping_timeout > self.timeout:
            raise ConfigError(
                f"probe.ping_timeout must be 0 (auto) or in (0, probe.timeout], "
                f"not {self.ping_timeout}")
        for key in ("ssh_port", "slurmd_port"):
            if not 0 < getattr(self, key) < 65536:
                raise ConfigError(f"probe.{key} must be 1-65535, not {getattr(self, key)}")


@dataclass
class RescheduleConfig:
    max_retry: int = 3
    min_nodes: int = 1
    drain: bool = True
    state_dir: str = "/var/lib/slurmft"   # shared state: retry records and locks
    lock_timeout: float = 30.0
    launcher: str = "mpirun"               # mpirun or srun, for rendered restart scripts
    slots: int = 1                         # MPI ranks per node in rendered scripts
    mpirun_args: str = ""                  # extra mpirun options (shell words), e.g. --mca ...
    launch_from: str = "peer"              # where the job wrapper runs its launcher: peer or batch
    ssh_args: str = ""                     # extra ssh options for the wrapper (shell words)
    train_cmd: str = ""                    # training command for restart jobs (shell words)
    checkpoint_dir: str = ""               # where restart jobs resume from

    def __post_init__(self) -> None:
        if self.max_retry < 0:
            raise ConfigError(f"reschedule.max_retry must be >= 0, not {self.max_retry}")
        _positive("reschedule.min_nodes", self.min_nodes)
        _positive("reschedule.slots", self.slots)
        _positive("reschedule.lock_timeout", self.lock_timeout)
        if self.launcher not in ("mpirun", "srun"):
            raise ConfigError(f"reschedule.launcher must be mpirun or srun, not {self.launcher!r}")
        if self.launch_from not in ("peer", "batch"):
            raise ConfigError(f"reschedule.launch_from must be peer (the launcher on another node "
                              f"of the job, over ssh) or batch (on the batch host), "
                              f"not {self.launch_from!r}")


@dataclass
class LogConfig:
    level: str = "WARNING"
    format: str = "text"
    file: str = ""

    def __post_init__(self) -> None:
        if self.format not in ("text", "json"):
            raise ConfigError(f"log.format must be text or json, not {self.format!r}")
        if self.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError(f"log.level must be DEBUG, INFO, WARNING or ERROR, not {self.level!r}")


@dataclass
class Config:
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    reschedule: RescheduleConfig = field(default_factory=RescheduleConfig)
    log: LogConfig = field(default_factory=LogConfig)


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, not {value}")


# Sections of the same YAML file that other parts read and validate themselves:
# ``checkpoint`` is CheckpointPolicy.from_yaml's (the training side).
FOREIGN_SECTIONS = frozenset({"checkpoint"})

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def coerce(name: str, typ: Any, value: Any) -> Any:
    """Convert ``value`` (from YAML or the environment) to ``typ`` or raise ConfigError."""
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError
        if typ is int:
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if typ is float:
            return float(value)
        if typ is str:
            return str(value)
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise ConfigError(f"{name} must be {getattr(typ, '__name__', typ)}, not {value!r}")


def build_section(cls: type, name: str, values: Mapping[str, Any]) -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(
            f"unknown setting {name}.{sorted(unknown)[0]}; known: {', '.join(sorted(known))}"
        )
    kwargs = {k: coerce(f"{name}.{k}", hints[k], v) for k, v in values.items()}
    return cls(**kwargs)


def read_yaml(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of sections")
    return data


def load_config(
    path: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Defaults, then the YAML file, then SLURMFT_* environment, then ``overrides``."""
    env = os.environ if env is None else env
    path = path or env.get("SLURMFT_CONFIG") or None
    layers: dict[str, dict[str, Any]] = {f.name: {} for f in fields(Config)}
    if path:
        data = read_yaml(path)
        for section, values in data.items():
            if section in FOREIGN_SECTIONS:
                continue
            if section not in layers:
                raise ConfigError(
                    f"unknown config section {section!r}; known: {', '.join(layers)}"
                )
            if not isinstance(values, dict):
                raise ConfigError(f"config section {section!r} must be a mapping")
            layers[section].update(values)
    for f in fields(Config):
        cls = f.default_factory  # type: ignore[misc]
        for sf in fields(cls):
            key = f"SLURMFT_{f.name}_{sf.name}".upper()
            if key in env:
                layers[f.name][sf.name] = env[key]
    if "MAX_RETRY" in env and "SLURMFT_RESCHEDULE_MAX_RETRY" not in env:
        layers["reschedule"].setdefault("max_retry", env["MAX_RETRY"])
    for section, values in (overrides or {}).items():
        layers[section].update({k: v for k, v in values.items() if v is not None})
    return Config(**{
        f.name: build_section(f.default_factory, f.name, layers[f.name])  # type: ignore[misc]
        for f in fields(Config)
    })


def as_dict(config: Config) -> dict:
    return dataclasses.asdict(config)
