"""The ONE place that builds concrete adapters from the config: the Slurm client, the prober,
the state store, the rescheduler, the local cluster of a ``--backend`` and the node runners of
``inject``. Commands ask here and never construct a client themselves.

Construction is lazy (imports inside the functions) so that ``slurmft --help`` stays fast and
a command pulls in only what it uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slurmft.core.config import Config

if TYPE_CHECKING:
    from slurmft.probe.fanout import FanoutProber
    from slurmft.recovery.rescheduler import Rescheduler
    from slurmft.recovery.state import StateStore
    from slurmft.slurm.client import CommandSlurmClient
    from slurmft.slurm.rest import RestSlurmClient
    from slurmft.slurm.runner import CommandResult
    from slurmft.testbed.backend import ClusterBackend


def slurm_client(cfg: Config, env: Any = None) -> CommandSlurmClient | RestSlurmClient:
    """The site's Slurm client: Slurm's commands (slurm.backend cli: slurm.timeout,
    slurm.bin_dir) or slurmrestd (rest: slurm.rest_url, rest_user, rest_token_file or
    SLURM_JWT in ``env``, default os.environ; rest_cli_fallback adds the commands' client
    for what slurmrestd cannot do)."""
    from slurmft.slurm.client import CommandSlurmClient

    s = cfg.slurm
    if s.backend != "rest":
        return CommandSlurmClient(timeout=s.timeout, bin_dir=s.bin_dir)
    import getpass
    import os

    from slurmft.core.errors import ConfigError
    from slurmft.slurm.rest import HttpTransport, RestSlurmClient, TokenSource

    env = os.environ if env is None else env
    tokens = TokenSource.from_config(s.rest_token_file, env)
    user = s.rest_user
    if not user:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            raise ConfigError("slurm.backend is rest and this process has no user name: "
                              "set slurm.rest_user") from None
    transport = HttpTransport(s.rest_url, user, tokens)
    fallback = (CommandSlurmClient(timeout=s.timeout, bin_dir=s.bin_dir)
                if s.rest_cli_fallback else None)
    return RestSlurmClient(transport, timeout=s.timeout, fallback=fallback)


def prober(cfg: Config) -> FanoutProber:
    """The node prober (probe.* settings)."""
    from slurmft.probe.fanout import FanoutProber

    return FanoutProber(cfg.probe)


def state_store(cfg: Config, state_dir: str | None = None) -> StateStore:
    """The retry records and audit log in ``state_dir`` (default reschedule.state_dir)."""
    from slurmft.recovery.state import StateStore

    return StateStore(state_dir or cfg.reschedule.state_dir, cfg.reschedule.lock_timeout)


@dataclass(frozen=True)
class Recovery:
    """What ``reschedule`` and ``watch`` work with."""

    client: CommandSlurmClient | RestSlurmClient
    prober: FanoutProber
    rescheduler: Rescheduler


def recovery(cfg: Config, *, dry_run: bool = False, start_wait: float = 0.0) -> Recovery:
    """The Slurm client, the prober and a rescheduler on top of them."""
    from slurmft.recovery.rescheduler import Rescheduler

    client, node_prober = slurm_client(cfg), prober(cfg)
    resched = Rescheduler(client, node_prober, state_store(cfg), cfg.reschedule,
                          dry_run=dry_run, start_wait=start_wait)
    return Recovery(client, node_prober, resched)


def run_event_sink(cfg: Config) -> Any:
    """Where ``slurmft run`` reports its state changes: the log (INFO) and, when the state
    directory exists, its audit file. A failing audit write is logged once, never fatal:
    the training must not stop because shared state is unwritable."""
    import logging
    from pathlib import Path

    from slurmft.core.log import get_logger
    from slurmft.observe.events import AUDIT_FILE, AuditFile, LogSink

    logger = get_logger("slurmft.supervise")
    sinks: list[Any] = [LogSink(logger, logging.INFO)]
    state_dir = Path(cfg.reschedule.state_dir)
    audit = AuditFile(state_dir / AUDIT_FILE)
    warned: list[bool] = []

    def emit(event: Any) -> None:
        for sink in sinks:
            sink.emit(event)
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            audit.emit(event)
        except OSError as exc:
            if not warned:
                warned.append(True)
                logger.warning("cannot write %s: %s; run events go to the log only",
                               audit.path, exc.strerror)
    return emit


# --- the local test cluster ---------------------------------------------------------------------


def cluster(backend: str, name: str) -> ClusterBackend:
    """The local cluster ``name`` run by ``backend`` (netns or docker)."""
    from slurmft.testbed.backend import open_cluster

    return open_cluster(backend, name)


class _InClusterRunner:
    """A Slurm runner whose commands run inside a local cluster (its ``exec_argv``)."""

    def __init__(self, target: ClusterBackend) -> None:
        from slurmft.slurm.runner import SubprocessRunner

        self._target = target
        self._runner = SubprocessRunner(env=target.env())

    def run(self, argv: Sequence[str], timeout: float) -> CommandResult:
        if isinstance(argv, str):
            raise TypeError("argv must be a list of strings, not a string")
        return self._runner.run(self._target.exec_argv(list(argv)), timeout)


def cluster_slurm_client(target: ClusterBackend, cfg: Config) -> CommandSlurmClient:
    """A Slurm client that asks the Slurm of the local cluster ``target``."""
    from slurmft.slurm.client import CommandSlurmClient

    return CommandSlurmClient(runner=_InClusterRunner(target), timeout=cfg.slurm.timeout)


def cluster_state_dir(target: ClusterBackend) -> str:
    """Where slurmft's state (retry records, audit.jsonl) lives for jobs of ``target``."""
    from slurmft.core.errors import ClusterError

    state_dir = target.env().get("SLURMFT_RESCHEDULE_STATE_DIR")
    if not state_dir:
        raise ClusterError(f"cluster {target.name} names no slurmft state dir: give --state-dir")
    return state_dir


def cluster_node_runner(target: ClusterBackend) -> Any:
    """Runs a command ON a node of the local cluster (no SSH)."""
    from slurmft.testbed.inject import ExecNodeRunner

    return ExecNodeRunner(target.node_exec_argv)


def ssh_node_runner(cfg: Config) -> Any:
    """Runs a command on a node of a real site over SSH (probe.ssh_* settings)."""
    from slurmft.probe import ssh
    from slurmft.testbed.inject import SshNodeRunner

    p = cfg.probe
    parsed = ssh.load_ssh_config(p.ssh_config) if p.ssh_config else ""
    return SshNodeRunner(lambda host: ssh.resolve_target(
        host, user=p.ssh_user, port=p.ssh_port, key=p.ssh_key, ssh_config=parsed,
        known_hosts=p.known_hosts, accept_unknown=p.accept_unknown_hosts))
