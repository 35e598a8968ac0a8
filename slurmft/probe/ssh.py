"""SSH health commands with paramiko (the ONLY paramiko import in slurmft).

Non-interactive: no agent, no password, no prompt; the configured key (or, with none,
paramiko's default key files). Host keys are checked against known_hosts (RejectPolicy);
``accept_unknown_hosts`` is the explicit opt-in to trust an unknown key (kept in memory only).
Every step is bounded by the caller's budget: TCP connect, banner, auth, channel open and
the command itself, so a frozen sshd cannot hold a probe past its deadline.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import paramiko

from slurmft.core.errors import ProbeError
from slurmft.core.nodeset import validate_hostname

# paramiko logs full tracebacks (e.g. "Exception (client): Error reading SSH protocol banner")
# through its own logger; they must never reach user output.
logging.getLogger("paramiko").setLevel(logging.CRITICAL)
logging.getLogger("paramiko").propagate = False

MAX_OUTPUT = 4096


@dataclass(frozen=True)
class SshTarget:
    """Where and how to connect, after the OpenSSH client config was applied."""

    host: str
    address: str
    port: int = 22
    user: str = "root"
    key_files: tuple[str, ...] = ()
    known_hosts: tuple[str, ...] = ()
    accept_unknown: bool = False


@dataclass(frozen=True)
class CommandOutcome:
    name: str
    exit_status: int | None  # None: timed out
    stdout: str = ""
    stderr: str = ""


@dataclass(frozen=True)
class SshOutcome:
    """``error`` set: SSH itself failed (refused, timed out, auth, host key)."""

    error: str | None = None
    results: tuple[CommandOutcome, ...] = field(default_factory=tuple)
    latency_s: float = 0.0


def _expand_path(path: str) -> str:
    return os.path.expanduser(os.path.expandvars(path))


def load_ssh_config(path: str) -> paramiko.SSHConfig:
    """Parse an OpenSSH client config once (ProbeError if unreadable)."""
    path = _expand_path(path)
    try:
        return paramiko.SSHConfig.from_path(path)
    except OSError as exc:
        raise ProbeError(f"cannot read probe.ssh_config {path}: {exc.strerror}") from None
    except Exception as exc:  # paramiko raises ConfigParseError and friends
        raise ProbeError(f"cannot parse probe.ssh_config {path}: {exc}") from None


def resolve_target(host: str, *, user: str = "root", port: int = 22, key: str = "",
                   ssh_config: str | paramiko.SSHConfig = "", known_hosts: str = "",
                   accept_unknown: bool = False) -> SshTarget:
    """Apply an OpenSSH client config (HostName, Port, User, IdentityFile, UserKnownHostsFile,
    StrictHostKeyChecking) on top of the slurmft settings. ``ssh_config`` is a path or a
    config parsed by ``load_ssh_config``.

    The config's ``StrictHostKeyChecking no|accept-new`` counts as the same explicit opt-in as
    ``accept_unknown_hosts``.
    """
    validate_hostname(host)
    address, keys = host, [key] if key else []
    kh = [known_hosts] if known_hosts else []
    if ssh_config:
        parsed = (ssh_config if isinstance(ssh_config, paramiko.SSHConfig)
                  else load_ssh_config(ssh_config))
        try:
            cfg = parsed.lookup(host)
        except Exception as exc:  # paramiko raises ConfigParseError and friends
            raise ProbeError(f"cannot apply probe.ssh_config to {host}: {exc}") from None
        address = cfg.get("hostname", host)
        port = int(cfg.get("port", port))
        user = cfg.get("user", user)
        if not key and cfg.get("identityfile"):
            keys = list(cfg["identityfile"])
        if not known_hosts and cfg.get("userknownhostsfile"):
            kh = cfg["userknownhostsfile"].split()
        if str(cfg.get("stricthostkeychecking", "")).lower() in ("no", "off", "accept-new"):
            accept_unknown = True
    if not kh:
        kh = ["~/.ssh/known_hosts"]
    return SshTarget(host=host, address=address, port=port, user=user,
                     key_files=tuple(_expand_path(k) for k in keys),
                     known_hosts=tuple(_expand_path(k) for k in kh),
                     accept_unknown=accept_unknown)


def _client(target: SshTarget) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    for path in target.known_hosts:
        if os.path.isfile(path):
            try:
                client.load_host_keys(path)
            except Exception as exc:  # OSError, SSHException, InvalidHostKey
                raise ProbeError(f"cannot read known_hosts {path}: {exc}") from None
    # AutoAddPolicy keeps the key in memory only: we never write the user's known_hosts.
    client.set_missing_host_key_policy(
        paramiko.AutoAddPolicy() if target.accept_unknown else paramiko.RejectPolicy())
    return client


def _read(channel: paramiko.Channel, stderr: bool = False) -> str:
    data = b""
    recv = channel.recv_stderr if stderr else channel.recv
    ready = channel.recv_stderr_ready if stderr else channel.recv_ready
    while len(data) < MAX_OUTPUT and ready():
        chunk = recv(MAX_OUTPUT)
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", "replace").strip()


def _run_command(transport: paramiko.Transport, name: str, command: str,
                 deadline: float) -> CommandOutcome:
    left = max(0.05, deadline - time.monotonic())
    channel = transport.open_session(timeout=left)
    try:
        channel.settimeout(left)
        channel.exec_command(command)
        channel.shutdown_write()
        channel.status_event.wait(max(0.0, deadline - time.monotonic()))
        if not channel.exit_status_ready():
            return CommandOutcome(name, None, _read(channel), _read(channel, True))
        return CommandOutcome(name, channel.recv_exit_status(), _read(channel),
                              _read(channel, True))
    finally:
        channel.close()


def _reason(exc: BaseException, target: SshTarget, budget: float) -> str:
    if isinstance(exc, paramiko.BadHostKeyException):
        return f"ssh: host key of {target.address} does not match known_hosts"
    if isinstance(exc, paramiko.AuthenticationException):
        if target.user == "root":
            return (f"ssh: authentication failed for root@{target.address}: sshd refuses root "
                    "logins on most sites; probe as a user of its own (probe.ssh_user, "
                    "probe.ssh_key: see `slurmft render deploy`)")
        return f"ssh: authentication failed for {target.user}@{target.address}"
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return f"ssh: connection refused on port {target.port}"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"ssh: connect timed out after {budget:.2g}s"
    if isinstance(exc, paramiko.SSHException):
        text = str(exc)
        if "not found in known_hosts" in text:
            return (f"ssh: host key of {target.address} unknown (add it to known_hosts or use "
                    "--accept-unknown-hosts)")
        if "banner" in text.lower() or "no existing session" in text.lower():
            # paramiko stops waiting for the handshake after the timeout, then fails auth
            # with "No existing session": both mean sshd accepted TCP and never spoke.
            return f"ssh: no SSH handshake within {budget:.2g}s (sshd hung?)"
        return f"ssh: {text or type(exc).__name__}"
    if isinstance(exc, ConnectionRefusedError):
        return f"ssh: connection refused on port {target.port}"
    if isinstance(exc, OSError):
        return f"ssh: {exc.strerror or exc}"
    return f"ssh: {type(exc).__name__}: {exc}"


def run_commands(target: SshTarget, commands: Sequence[tuple[str, str]],
                 budget: float) -> SshOutcome:
    """Connect and run ``commands`` ((name, shell command) pairs) in order within ``budget`` s.

    Stops at the first command that times out. Never raises for a host problem: the reason is
    in ``SshOutcome.error``; raises ProbeError only for local setup problems (known_hosts).
    """
    start = time.monotonic()
    deadline = start + budget
    client = _client(target)
    results: list[CommandOutcome] = []
    try:
        left = max(0.05, budget)
        client.connect(
            target.address, port=target.port, username=target.user,
            key_filename=list(target.key_files) or None,
            timeout=left, banner_timeout=left, auth_timeout=left, channel_timeout=left,
            allow_agent=False, look_for_keys=not target.key_files, compress=False,
        )
        transport = client.get_transport()
        if transport is None:
            return SshOutcome("ssh: no transport", (), time.monotonic() - start)
        for name, command in commands:
            if time.monotonic() >= deadline:
                results.append(CommandOutcome(name, None))
                break
            out = _run_command(transport, name, command, deadline)
            results.append(out)
            if out.exit_status is None:
                break
        return SshOutcome(None, tuple(results), time.monotonic() - start)
    except ProbeError:
        raise
    except paramiko.ChannelException as exc:
        return SshOutcome(f"ssh: channel refused: {exc}", tuple(results),
                          time.monotonic() - start)
    except Exception as exc:  # every paramiko/socket failure is a host problem
        if results or (isinstance(exc, (socket.timeout, TimeoutError))
                       and client.get_transport() is not None
                       and client.get_transport().is_authenticated()):
            # Connected, then the channel/command stalled past the deadline.
            name = commands[len(results)][0] if len(results) < len(commands) else "command"
            results.append(CommandOutcome(name, None))
            return SshOutcome(None, tuple(results), time.monotonic() - start)
        return SshOutcome(_reason(exc, target, budget), tuple(results), time.monotonic() - start)
    finally:
        client.close()
