"""The files an operator installs to run slurmft on a real site (``slurmft render deploy``).

``deploy_files(settings, job_wrapper=...)`` renders, from the templates in
``templates/deploy/`` (package data), every file of the site kit, each with where it is
installed and with which mode:

    slurm.conf.slurmft         lines for slurm.conf (EpilogSlurmctld, JobRequeue)
    slurmft-epilog             the EpilogSlurmctld wrapper (no arguments, always exits 0)
    job-wrapper.example.sh     the in-job trap: `slurmft render job` for a placeholder training
    slurmft-watch.service      systemd unit of `slurmft watch`
    slurmft-exporter.service   systemd unit of `slurmft exporter`
    slurmft.env                their settings (SLURMFT_* variables of slurmft.core.config)
    probe-ssh-setup.sh         the non-root SSH identity the prober uses
    prometheus.yml             scrape config (exporter, node_exporter for the watcher's unit)
    slurmft.rules.yml          alert rules
    grafana-dashboard.json     the dashboard (a copy of the packaged one)
    filebeat.yml, logstash.conf  log shipping to Elasticsearch
    PRIVILEGES.md, README.md   what the watcher may do, and how to install all of the above

Everything is validated here (user names, absolute paths, host:port, index names) so a value
that would break a unit file or a shell script is a UsageError, never a rendered file.
This module imports only core and the renderer (render/ imports only core).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from slurmft.core.config import Config
from slurmft.core.errors import UsageError
from slurmft.core.nodeset import is_valid_hostname
from slurmft.render.templates import packaged_templates, render

#: POSIX user/group names as useradd(8) accepts them by default.
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
#: Absolute paths that need no quoting in a unit file, a shell script or YAML.
_PATH_RE = re.compile(r"^/[A-Za-z0-9._/+@:-]*$")
#: An Elasticsearch index name, Logstash date patterns (%{+YYYY.MM.dd}) allowed.
_INDEX_RE = re.compile(r"^[a-z0-9][a-z0-9._+-]*(%\{\+[A-Za-z.]+\}[a-z0-9._+-]*)?$")
_URL_RE = re.compile(r"^(https?)://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\]):(\d{1,5})$")

#: The files of the kit in the order the README lists them.
FILE_NAMES = (
    "README.md", "PRIVILEGES.md", "slurm.conf.slurmft", "slurmft-epilog",
    "job-wrapper.example.sh", "slurmft.env", "slurmft-watch.service",
    "slurmft-exporter.service", "probe-ssh-setup.sh", "prometheus.yml", "slurmft.rules.yml",
    "grafana-dashboard.json", "filebeat.yml", "logstash.conf",
)


@dataclass(frozen=True)
class DeployFile:
    """One rendered file: its text, the mode to install it with and where it goes."""

    name: str
    text: str
    mode: int = 0o644
    install_to: str = ""
    what: str = ""


@dataclass(frozen=True)
class DeploySettings:
    """What the kit is rendered for. ``from_config`` fills it from a Config and the flags."""

    user: str = "slurmft"                      # runs watch and exporter
    slurm_user: str = "slurm"                  # SlurmUser (runs EpilogSlurmctld)
    state_dir: str = "/var/lib/slurmft"
    config_file: str = ""                      # SLURMFT_CONFIG on the hosts ("": none)
    etc_dir: str = "/etc/slurmft"              # env file, ssh identity
    slurmft_bin: str = "/opt/slurmft/bin/slurmft"
    slurm_bin_dir: str = ""                    # slurm.bin_dir ("": /usr/bin)
    epilog_path: str = "/etc/slurm/slurmft-epilog"
    log_dir: str = "/var/log/slurmft"
    log_format: str = "text"
    log_level: str = "WARNING"
    probe_user: str = "slurmft"
    probe_key: str = "/etc/slurmft/ssh/id_ed25519"
    known_hosts: str = "/etc/slurmft/ssh/known_hosts"
    ssh_port: int = 22
    probe_command: str = "true"
    watch_interval: float = 2.0
    scrape_interval: int = 15                  # seconds between Prometheus scrapes/evaluations
    exporter_bind: str = "127.0.0.1"
    exporter_port: int = 9464
    exporter_targets: tuple[str, ...] = ()     # host:port Prometheus scrapes ("": bind:port)
    node_exporter_targets: tuple[str, ...] = ("localhost:9100",)
    checkpoint_dirs: tuple[str, ...] = ()
    checkpoint_max_age: float = 3600.0         # seconds before SlurmftCheckpointTooOld
    node_unhealthy_for: int = 30               # minutes before SlurmftNodeUnhealthy
    elasticsearch_hosts: tuple[str, ...] = ("https://localhost:9200",)
    es_index: str = "slurmft-%{+YYYY.MM.dd}"
    logstash_hosts: tuple[str, ...] = ("localhost:5044",)
    beats_port: int = 5044
    env: tuple[tuple[str, str], ...] = field(default=())   # set by from_config

    @classmethod
    def from_config(cls, cfg: Config, **flags: object) -> DeploySettings:
        """Settings for ``cfg`` with the given flags (None: from the config or the default).

        The probe identity is never root: a configured ``probe.ssh_user`` of root (the default)
        becomes the service user, since sites refuse root logins over SSH."""
        given = {k: v for k, v in flags.items() if v not in (None, ())}
        user = str(given.get("user", cls.user))
        probe_user = given.get("probe_user") or (cfg.probe.ssh_user
                                                 if cfg.probe.ssh_user != "root" else user)
        etc_dir = str(given.get("etc_dir", cls.etc_dir))
        interval = cfg.checkpoint.interval
        values: dict[str, object] = {
            "user": user,
            "state_dir": given.get("state_dir", cfg.reschedule.state_dir),
            "slurm_bin_dir": cfg.slurm.bin_dir,
            "log_format": cfg.log.format,
            "log_level": cfg.log.level.upper(),
            "probe_user": probe_user,
            "probe_key": given.get("probe_key") or cfg.probe.ssh_key
            or f"{etc_dir}/ssh/id_ed25519",
            "known_hosts": given.get("known_hosts") or cfg.probe.known_hosts
            or f"{etc_dir}/ssh/known_hosts",
            "ssh_port": cfg.probe.ssh_port,
            "probe_command": cfg.probe.command,
            # twice the configured save interval; without a time trigger, an hour
            "checkpoint_max_age": 2 * 60 * interval if interval > 0 else 3600.0,
        }
        values.update(given)                   # a flag wins over the config
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        env = [("SLURMFT_RESCHEDULE_STATE_DIR", settings.state_dir),
               # the services' user is a Slurm operator or SlurmUser (PRIVILEGES.md)
               ("SLURMFT_RESCHEDULE_OPERATOR", "true"),
               ("SLURMFT_PROBE_SSH_USER", settings.probe_user),
               ("SLURMFT_PROBE_SSH_KEY", settings.probe_key),
               ("SLURMFT_PROBE_KNOWN_HOSTS", settings.known_hosts),
               ("SLURMFT_LOG_FORMAT", settings.log_format),
               ("SLURMFT_LOG_LEVEL", settings.log_level)]
        if settings.config_file:
            env.insert(0, ("SLURMFT_CONFIG", settings.config_file))
        return _replace(settings, env=tuple(env))

    def validate(self) -> None:
        for name in ("user", "slurm_user", "probe_user"):
            value = getattr(self, name)
            if not _USER_RE.fullmatch(value):
                raise UsageError(f"--{name.replace('_', '-')} must be a user name (lower-case "
                                 f"letters, digits, '_' and '-'), not {value!r}")
        for name in ("state_dir", "etc_dir", "slurmft_bin", "epilog_path", "log_dir",
                     "probe_key", "known_hosts"):
            _check_path(name, getattr(self, name))
        if self.config_file:
            _check_path("config", self.config_file)
        if self.slurm_bin_dir:
            _check_path("slurm.bin_dir", self.slurm_bin_dir)
        for path in self.checkpoint_dirs:
            _check_path("checkpoint-dir", path)
        for target in (*self.exporter_targets, *self.node_exporter_targets,
                       *self.logstash_hosts):
            check_hostport(target)
        for url in self.elasticsearch_hosts:
            check_url(url)
        if not _INDEX_RE.fullmatch(self.es_index) or len(self.es_index) > 200:
            raise UsageError(f"--es-index must be a lower-case Elasticsearch index name "
                             f"(a Logstash date like %{{+YYYY.MM.dd}} allowed), "
                             f"not {self.es_index!r}")
        if not self.exporter_bind or not (is_valid_hostname(self.exporter_bind)
                                          or _is_ip(self.exporter_bind)):
            raise UsageError(f"--exporter-bind must be an IP address or host name, "
                             f"not {self.exporter_bind!r}")
        if not 1 <= self.scrape_interval <= 3600:
            raise UsageError(f"--scrape-interval must be 1 to 3600 seconds, "
                             f"not {self.scrape_interval!r}")
        if "\n" in self.probe_command or "\r" in self.probe_command:
            raise UsageError("probe.command may not span lines")

    @property
    def scrape_targets(self) -> tuple[str, ...]:
        if self.exporter_targets:
            return self.exporter_targets
        host = "localhost" if self.exporter_bind in ("0.0.0.0", "::", "127.0.0.1", "::1") \
            else self.exporter_bind
        return (f"{_bracket(host)}:{self.exporter_port}",)


def _replace(settings: DeploySettings, **changes: object) -> DeploySettings:
    from dataclasses import replace

    return replace(settings, **changes)  # type: ignore[arg-type]


def _is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _check_path(name: str, value: str) -> None:
    if not _PATH_RE.fullmatch(value) or "/../" in f"{value}/" or len(value) > 1024:
        raise UsageError(f"--{name.replace('_', '-')} must be an absolute path of letters, "
                         f"digits and ._/+@:- (no spaces, no '..'), not {value!r}")


def check_hostport(text: str) -> str:
    """``host:port`` (an IPv6 host in brackets) or a UsageError."""
    host, sep, port = text.rpartition(":")
    inner = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    ok = bool(sep) and port.isdigit() and 0 < int(port) < 65536 and (
        is_valid_hostname(inner) or _is_ip(inner))
    if not ok:
        raise UsageError(f"expected host:port (e.g. node1:9464), not {text!r}")
    return text


def check_url(text: str) -> str:
    """``http(s)://host:port`` or a UsageError."""
    match = _URL_RE.fullmatch(text)
    if not match or not 0 < int(match.group(3)) < 65536 or not (
            is_valid_hostname(match.group(2)) or _is_ip(match.group(2).strip("[]"))):
        raise UsageError(f"--elasticsearch must be http(s)://host:port, not {text!r}")
    return text


def _context(s: DeploySettings) -> dict:
    return {
        "s": s,
        "env": list(s.env),
        "scrape_targets": list(s.scrape_targets),
        "slurm_path": ":".join(p for p in (s.slurm_bin_dir, "/usr/local/bin", "/usr/bin",
                                           "/bin", "/usr/local/sbin", "/usr/sbin", "/sbin")
                               if p),
        "env_file": f"{s.etc_dir}/slurmft.env",
        # LogsDirectory= makes a folder under /var/log writable for the service; another
        # log folder must be writable through ReadWritePaths= (and exist).
        "logs_directory": (s.log_dir[len("/var/log/"):]
                           if s.log_dir.startswith("/var/log/") else ""),
        "rw_paths": [s.state_dir] + ([] if s.log_dir.startswith("/var/log/") else [s.log_dir]),
    }


def deploy_files(settings: DeploySettings, *, job_wrapper: str) -> dict[str, DeployFile]:
    """Every file of the kit, by name (see the module docstring); ``job_wrapper`` is the text
    of ``render job`` for the example training (rendered by the caller: its context lives in
    the recovery layer)."""
    settings.validate()
    ctx = _context(settings)
    s = settings

    def tpl(name: str) -> str:
        return render(f"deploy/{name}.j2", ctx)

    logging_ctx = {
        "format": s.log_format,
        "log_paths": [f"{s.log_dir}/*.log"],
        "logstash_hosts": list(s.logstash_hosts),
        "beats_port": s.beats_port,
        "job_id": "${SLURM_JOB_ID:none}",
        "node_id": "${HOSTNAME:unknown}",
        "elasticsearch_hosts": list(s.elasticsearch_hosts),
        "es_index": s.es_index,
    }
    dashboard = (packaged_templates() / "grafana-dashboard.json").read_text()
    etc = s.etc_dir
    files = [
        DeployFile("PRIVILEGES.md", tpl("PRIVILEGES.md"),
                   what="the Slurm privileges of the watcher's user, and why"),
        DeployFile("slurm.conf.slurmft", tpl("slurm.conf"), install_to="/etc/slurm/slurm.conf",
                   what="lines to add to slurm.conf (every host), then scontrol reconfigure"),
        DeployFile("slurmft-epilog", tpl("epilog.sh"), 0o755, s.epilog_path,
                   "EpilogSlurmctld wrapper: hands the job to a detached reschedule, exit 0"),
        DeployFile("job-wrapper.example.sh", job_wrapper, 0o755,
                   what="the in-job trap: `slurmft render job` output for an example training"),
        DeployFile("slurmft.env", tpl("slurmft.env"), 0o644, f"{etc}/slurmft.env",
                   "settings of the services and the epilog (SLURMFT_* variables)"),
        DeployFile("slurmft-watch.service", tpl("slurmft-watch.service"), 0o644,
                   "/etc/systemd/system/slurmft-watch.service", "systemd unit: slurmft watch"),
        DeployFile("slurmft-exporter.service", tpl("slurmft-exporter.service"), 0o644,
                   "/etc/systemd/system/slurmft-exporter.service",
                   "systemd unit: slurmft exporter"),
        DeployFile("probe-ssh-setup.sh", tpl("probe-ssh-setup.sh"), 0o755,
                   what="creates the probe's SSH key and known_hosts; prints authorized_keys"),
        DeployFile("prometheus.yml", tpl("prometheus.yml"), 0o644,
                   "/etc/prometheus/prometheus.yml", "Prometheus scrape config"),
        DeployFile("slurmft.rules.yml", tpl("slurmft.rules.yml"), 0o644,
                   "/etc/prometheus/slurmft.rules.yml", "Prometheus alert rules"),
        DeployFile("grafana-dashboard.json", dashboard, 0o644,
                   what="Grafana dashboard (import it)"),
        DeployFile("filebeat.yml", render("filebeat.yml.j2", logging_ctx), 0o644,
                   "/etc/filebeat/filebeat.yml", "Filebeat: slurmft's log files to Logstash"),
        DeployFile("logstash.conf", render("logstash.conf.j2", logging_ctx), 0o644,
                   "/etc/logstash/conf.d/slurmft.conf",
                   "Logstash: parse, then index into Elasticsearch"),
    ]
    ctx["kit"] = files
    readme = DeployFile("README.md", tpl("README.md"), what="how to install this kit")
    out = {f.name: f for f in (readme, *files)}
    assert tuple(out) == FILE_NAMES
    return out


def env_assignments(text: str) -> dict[str, str]:
    """``NAME=value`` lines of an environment file as systemd reads the simple ones (comments
    and blank lines skipped, one level of quotes removed)."""
    import shlex

    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise UsageError(f"not an assignment: {line!r}")
        words = shlex.split(value)
        out[name.strip()] = words[0] if words else ""
    return out


def unit_environment(text: str) -> dict[str, str]:
    """``Environment=`` assignments of a unit file."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("Environment="):
            out.update(env_assignments(line[len("Environment="):]))
    return out


def summary(files: Mapping[str, DeployFile], out: Path | None,
            paths: Sequence[Path] = ()) -> list[dict]:
    """One dict per file for ``--json`` (name, path written, bytes, mode, install_to)."""
    written = {p.name: p for p in paths}
    return [{"name": f.name, "path": str(written.get(f.name) or (out / f.name if out else "")),
             "bytes": len(f.text.encode()), "mode": f"{f.mode:04o}",
             "install_to": f.install_to, "what": f.what} for f in files.values()]
