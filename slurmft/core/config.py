"""Layered, validated configuration: defaults -> YAML file -> SLURMFT_* env -> CLI flags.

Each section is a dataclass. ``load_config`` builds a ``Config``; every value is validated at
construction and a bad one raises ConfigError naming the field and what is allowed.

File: ``--config PATH``, else SLURMFT_CONFIG, else none. Sections in YAML (slurm, probe,
reschedule, log, checkpoint; the checkpoint section is the training side's CheckpointPolicy)::

    probe: {timeout: 2.0, ssh_user: root, command: "true"}
    reschedule: {max_retry: 3}
    checkpoint: {keep_last: 5, checksum: xxh3}

Environment: ``SLURMFT_<SECTION>_<FIELD>``, e.g. ``SLURMFT_PROBE_TIMEOUT=1.5``,
``SLURMFT_RESCHEDULE_MAX_RETRY=5`` (MAX_RETRY alone is honoured too, as in the classic script).
An unknown key, in YAML or as SLURMFT_<SECTION>_<NAME>, is an error; so is a value of the wrong
type (a mapping where a string belongs) or a number that is not finite (inf, nan, 1e400).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from slurmft.core.errors import ConfigError

_REST_USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}")


#: Backends of the Slurm adapter: Slurm's commands, or slurmrestd (slurmft.slurm.rest).
SLURM_BACKENDS = ("cli", "rest")


@dataclass
class SlurmConfig:
    timeout: float = 30.0          # seconds for every Slurm command (or slurmrestd request)
    bin_dir: str = ""              # where sinfo/scontrol live; empty: PATH
    backend: str = "cli"           # cli: Slurm's commands; rest: slurmrestd (22.05, v0.0.38)
    rest_url: str = ""             # slurmrestd: http(s)://HOST:PORT or unix:/PATH/TO/SOCKET
    rest_user: str = ""            # X-SLURM-USER-NAME; empty: the user running slurmft
    rest_token_file: str = ""      # file with the JWT (`scontrol token`); empty: env SLURM_JWT
    rest_cli_fallback: bool = False  # run Slurm's commands for what slurmrestd cannot do

    def __post_init__(self) -> None:
        _finite("slurm.timeout", self.timeout)
        _positive("slurm.timeout", self.timeout)
        if self.backend not in SLURM_BACKENDS:
            raise ConfigError(f"slurm.backend must be one of {', '.join(SLURM_BACKENDS)}, "
                              f"not {self.backend!r}")
        if self.rest_url and not (self.rest_url.startswith(("http://", "https://"))
                                  or self.rest_url.startswith("unix:/")):
            raise ConfigError(f"slurm.rest_url must be http://HOST:PORT, https://HOST:PORT or "
                              f"unix:/PATH (slurmrestd's address), not {self.rest_url!r}")
        if self.backend == "rest" and not self.rest_url:
            raise ConfigError("slurm.backend is rest but slurm.rest_url is empty: set it to "
                              "slurmrestd's address (http://HOST:6820 or unix:/PATH)")
        if self.rest_user and not _REST_USER_RE.fullmatch(self.rest_user):
            raise ConfigError(f"slurm.rest_user must be a user name, not {self.rest_user!r}")


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
    # The fast sweep (probe/sweep.py, docs/probe.md): from this many hosts on, one ICMP socket
    # and an SSH banner check for every host; the full login + checks only for suspects and a
    # rolling share of login_per_sweep hosts. 0: never sweep (every host gets the full login).
    sweep_min_hosts: int = 64
    login_per_sweep: int = 8
    max_sockets: int = 900         # TCP sockets a sweep keeps open at once
    hosts_file: str = ""           # /etc/hosts-format name -> address map for the sweep; empty:
    #                                the system resolver (answers cached for 5 minutes)

    def __post_init__(self) -> None:
        for key in ("timeout", "min_free_gb", "ping_timeout"):
            _finite(f"probe.{key}", getattr(self, key))
        _positive("probe.timeout", self.timeout)
        _positive("probe.max_parallel", self.max_parallel)
        if self.ping_timeout < 0 or self.ping_timeout > self.timeout:
            raise ConfigError(
                f"probe.ping_timeout must be 0 (auto) or in (0, probe.timeout], "
                f"not {self.ping_timeout}")
        for key in ("sweep_min_hosts", "login_per_sweep"):
            if getattr(self, key) < 0:
                raise ConfigError(f"probe.{key} must be >= 0, not {getattr(self, key)}")
        if not 1 <= self.max_sockets <= 60000:
            raise ConfigError(f"probe.max_sockets must be 1-60000, not {self.max_sockets}")
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
    # this user is a Slurm operator (sacctmgr adminlevel=operator) or SlurmUser: act on any
    # user's job and let Slurm refuse what it refuses; false: only root acts on others' jobs
    operator: bool = False

    def __post_init__(self) -> None:
        if self.max_retry < 0:
            raise ConfigError(f"reschedule.max_retry must be >= 0, not {self.max_retry}")
        _positive("reschedule.min_nodes", self.min_nodes)
        _positive("reschedule.slots", self.slots)
        _finite("reschedule.lock_timeout", self.lock_timeout)
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


#: Checksums the checkpoint store can write and verify (slurmft.checkpoint.store.ALGORITHMS;
#: a unit test keeps the two equal: config may not import the checkpoint package).
CHECKSUM_ALGORITHMS = ("xxh3", "sha256")


@dataclass
class CheckpointConfig:
    """When and how to checkpoint (the ``checkpoint:`` section; the training side's
    ``slurmft.checkpoint.CheckpointPolicy`` is this schema plus its helpers)."""

    path: str = ""                 # empty: CHECKPOINT_PATH, else <root>/$USER/$SLURM_JOB_ID
    interval: float = 30.0         # minutes between saves; 0 disables the time trigger
    step_interval: int = 1000      # steps between saves; 0 disables the step trigger
    keep_last: int = 5             # checkpoints kept (plus any full base a kept diff needs)
    save_optimizer: bool = True
    full_interval: float = 0.0     # minutes between full saves; between them saves are
                                   # differential. 0: every save is full.
    checksum: str = "xxh3"         # xxh3 | sha256
    signals: tuple[str, ...] = ("SIGUSR1", "SIGTERM")  # save at the next step, then stop
    local_cache: str = ""          # node-local directory; then ``path`` is the upload target
    close_timeout: float = 600.0   # seconds close() waits for pending writes/uploads

    def __post_init__(self) -> None:
        self.signals = _signal_names(self.signals)
        for key in ("interval", "full_interval", "close_timeout"):
            _finite(f"checkpoint.{key}", getattr(self, key))
        if self.interval < 0:
            raise ConfigError(f"checkpoint.interval must be >= 0 minutes, not {self.interval}")
        if self.step_interval < 0:
            raise ConfigError(f"checkpoint.step_interval must be >= 0, not {self.step_interval}")
        if self.keep_last < 1:
            raise ConfigError(f"checkpoint.keep_last must be >= 1, not {self.keep_last}")
        if self.full_interval < 0:
            raise ConfigError(
                f"checkpoint.full_interval must be >= 0 minutes (0: always full), not {self.full_interval}")
        if self.checksum not in CHECKSUM_ALGORITHMS:
            raise ConfigError(f"checkpoint.checksum must be one of "
                              f"{', '.join(CHECKSUM_ALGORITHMS)}, not {self.checksum!r}")
        if not self.close_timeout > 0:
            raise ConfigError(f"checkpoint.close_timeout must be > 0, not {self.close_timeout}")


def _signal_names(value: Any) -> tuple[str, ...]:
    """``SIGUSR1,term`` or a list of names -> catchable signal names, ``SIG`` prefixed."""
    import signal

    items = value.split(",") if isinstance(value, str) else list(value)
    names = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"checkpoint.signals must be signal names, not {item!r}")
        item = item.strip().upper()
        if not item:
            continue
        name = item if item.startswith("SIG") else "SIG" + item
        if name in ("SIGKILL", "SIGSTOP") or not isinstance(getattr(signal, name, None),
                                                            signal.Signals):
            raise ConfigError(f"checkpoint.signals: {name!r} is not a catchable signal; "
                              "use e.g. SIGUSR1, SIGUSR2, SIGTERM")
        names.append(name)
    return tuple(names)


@dataclass
class Config:
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    reschedule: RescheduleConfig = field(default_factory=RescheduleConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


#: The largest number a setting may hold: larger ones overflow timers and C integers.
MAX_INT = 2**31 - 1
MAX_FLOAT = 1e9


def _finite(name: str, value: float) -> None:
    if not math.isfinite(value) or abs(value) > MAX_FLOAT:
        raise ConfigError(f"{name} must be a finite number of at most {MAX_FLOAT:g}, "
                          f"not {value!r}")


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, not {value}")


#: SLURMFT_<SECTION>_<NAME> variables that are not settings but are read elsewhere
#: (e.g. the default checkpoint root); every other one must name a setting.
ENV_NOT_SETTINGS = frozenset({"SLURMFT_CHECKPOINT_ROOT", "SLURMFT_LOG_DIR"})

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_KIND = {bool: "bool (true/false)", int: "int", float: "float", str: "a string"}


def coerce(name: str, typ: Any, value: Any) -> Any:
    """Convert ``value`` (from YAML, the environment or a flag) to ``typ`` or raise
    ConfigError. Strings are taken only as strings (a YAML mapping or list is refused);
    numbers must be finite and fit (no inf, nan, 1e400)."""
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str):
                text = value.strip().lower()
                if text in _TRUE:
                    return True
                if text in _FALSE:
                    return False
            raise ValueError
        if typ is int:
            if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
                raise ValueError
            number = int(value.strip()) if isinstance(value, str) else int(value)
            if abs(number) > MAX_INT:
                raise ConfigError(f"{name} must be at most {MAX_INT}, not {value!r}")
            return number
        if typ is float:
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ValueError
            number = float(value)
            _finite(name, number)
            return number
        if typ is str:
            if not isinstance(value, str):
                raise ValueError
            return value
        if typ == tuple[str, ...]:
            if isinstance(value, str) or (isinstance(value, (list, tuple))
                                          and all(isinstance(v, str) for v in value)):
                return value
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        pass
    else:
        return value
    kind = _KIND.get(typ, "a list of names" if typ == tuple[str, ...] else str(typ))
    hint = " (quote it in YAML)" if typ is str and not isinstance(value, (dict, list)) else ""
    raise ConfigError(f"{name} must be {kind}{hint}, not {value!r}")


def build_section(cls: type, name: str, values: Mapping[str, Any]) -> Any:
    """The section dataclass ``cls`` from ``values``; unknown keys and bad types raise
    ConfigError naming ``<name>.<key>``."""
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = [k for k in values if k not in known]
    if unknown:
        raise ConfigError(
            f"unknown setting {name}.{unknown[0]}; known: {', '.join(sorted(known))}"
        )
    kwargs = {k: coerce(f"{name}.{k}", hints[k], v) for k, v in values.items()}
    return cls(**kwargs)


def read_yaml(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found" if not p.exists()
                          else f"config file {p} is not a regular file")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {p} is not UTF-8 text (byte {exc.start}); "
                          "save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file {p} is not valid YAML{at}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"config file {p} is nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of sections")
    return data


def env_layer(section: str, cls: type, env: Mapping[str, str]) -> dict[str, str]:
    """SLURMFT_<SECTION>_<FIELD> values of ``section``; an unknown SLURMFT_<SECTION>_* name
    is an error, as an unknown YAML key is."""
    prefix = f"SLURMFT_{section.upper()}_"
    known = {f"{prefix}{f.name.upper()}": f.name for f in fields(cls)}
    out: dict[str, str] = {}
    for key, value in env.items():
        if not key.startswith(prefix) or key in ENV_NOT_SETTINGS:
            continue
        if key not in known:
            raise ConfigError(f"unknown environment variable {key}: no setting "
                              f"{section}.{key[len(prefix):].lower()}; known: "
                              f"{', '.join(sorted(known))}")
        out[known[key]] = value
    return out


def load_config(
    path: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Defaults, then the YAML file, then SLURMFT_* environment, then ``overrides``."""
    env = os.environ if env is None else env
    path = path or env.get("SLURMFT_CONFIG") or None
    sections = {f.name: f.default_factory for f in fields(Config)}  # type: ignore[misc]
    layers: dict[str, dict[str, Any]] = {name: {} for name in sections}
    if path:
        data = read_yaml(path)
        for section, values in data.items():
            if section not in layers:
                raise ConfigError(
                    f"unknown config section {section!r}; known: {', '.join(layers)}"
                )
            if values is None:
                continue
            if not isinstance(values, dict):
                raise ConfigError(f"config section {section!r} must be a mapping")
            layers[section].update(values)
    for name, cls in sections.items():
        layers[name].update(env_layer(name, cls, env))
    if "MAX_RETRY" in env and "SLURMFT_RESCHEDULE_MAX_RETRY" not in env:
        layers["reschedule"].setdefault("max_retry", env["MAX_RETRY"])
    for section, values in (overrides or {}).items():
        layers[section].update({k: v for k, v in values.items() if v is not None})
    return Config(**{name: build_section(cls, name, layers[name])
                     for name, cls in sections.items()})
