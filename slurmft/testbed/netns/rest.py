"""slurmrestd for a namespace cluster (``cluster up --rest``): a JWT key, the slurm.conf lines
that enable ``auth/jwt``, the daemon on a unix socket and a token from ``scontrol token``.

Kept apart from ``build.py`` so a cluster without ``--rest`` is built exactly as before.

- The key (32 random bytes, as Slurm's jwt.html shows) is ``etc/jwt_hs256.key``, mode 0400,
  owned by SlurmUser: only SlurmUser and root can read it.
- slurmrestd listens on ``run/rest/slurmrestd.sock`` only (no TCP port: nothing new reachable
  from the root namespace or the cluster's bridge), from the controller's network namespace,
  with ``-a rest_auth/jwt`` (every request carries X-SLURM-USER-NAME/X-SLURM-USER-TOKEN) and
  ``SLURM_JWT=daemon`` (it forwards each request's token to slurmctld). It runs as ``nobody``
  (slurmrestd refuses to serve as root or SlurmUser). 22.05 drops to that user BEFORE it binds
  (checked: ``-u`` with a root-owned directory fails "Unable to bind UNIX socket: Permission
  denied") and makes the socket mode 0777, so the socket's directory is ``nobody``'s, mode
  0700: only root and nobody can connect, and every request still needs a valid token.
- The token (``etc/slurmrestd.token``, mode 0600) is root's, from ``scontrol token``,
  valid for ``TOKEN_LIFESPAN`` seconds.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from slurmft.core.errors import ClusterError
from slurmft.testbed import procs
from slurmft.testbed.layout import Layout

SLURMRESTD = "/usr/sbin/slurmrestd"
#: Debian's slurm-wlm-jwt-plugin: slurmctld's auth/jwt (AuthAltTypes).
AUTH_JWT_PLUGINS = ("/usr/lib/x86_64-linux-gnu/slurm-wlm/auth_jwt.so",
                    "/usr/lib/aarch64-linux-gnu/slurm-wlm/auth_jwt.so",
                    "/usr/lib/slurm/auth_jwt.so")
#: The OpenAPI plugin Debian's 22.05 slurmrestd serves (v0.0.36 and v0.0.37 are older).
OPENAPI_PLUGIN = "openapi/v0.0.38"
TOKEN_LIFESPAN = 7 * 24 * 3600      # seconds: longer than any test cluster lives
RESTD_USER = "nobody"


@dataclass(frozen=True)
class RestPaths:
    key: Path
    socket: Path
    token: Path
    log: Path

    @property
    def url(self) -> str:
        """slurmrestd's own notation for its listening socket, which the REST client reads."""
        return f"unix:{self.socket}"


def rest_paths(lay: Layout) -> RestPaths:
    return RestPaths(key=lay.etc_dir / "jwt_hs256.key",
                     socket=lay.run_dir / "rest" / "slurmrestd.sock",
                     token=lay.etc_dir / "slurmrestd.token", log=lay.log("slurmrestd"))


def check_rest_binaries() -> None:
    """ClusterError naming the Debian package when slurmrestd or auth/jwt is missing."""
    if not os.access(SLURMRESTD, os.X_OK):
        raise ClusterError("--rest needs slurmrestd: apt-get install slurmrestd")
    if not any(os.path.exists(p) for p in AUTH_JWT_PLUGINS):
        raise ClusterError("--rest needs Slurm's auth/jwt plugin: "
                           "apt-get install slurm-wlm-jwt-plugin")


def jwt_conf_text(lay: Layout) -> str:
    """slurm.conf lines that let slurmctld accept JWTs signed with the cluster's key."""
    return ("# cluster up --rest: slurmrestd forwards users' JSON Web Tokens (auth/jwt)\n"
            "AuthAltTypes=auth/jwt\n"
            f"AuthAltParameters=jwt_key={rest_paths(lay).key}\n")


def write_jwt_key(lay: Layout) -> None:
    """A new random HS256 key, 0400, owned by SlurmUser (slurmctld reads it as that user)."""
    key = rest_paths(lay).key
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(32))
    if lay.slurm_user != "root":
        pw = pwd.getpwnam(lay.slurm_user)
        os.chown(key, pw.pw_uid, pw.pw_gid)


def _restd_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(RESTD_USER)
    except KeyError:
        raise ClusterError(f"--rest runs slurmrestd as {RESTD_USER}: that user is missing "
                           f"(useradd --system {RESTD_USER})") from None


def make_socket_dir(lay: Layout) -> None:
    """The socket's directory: slurmrestd's user's own, 0700 (see the module's doc)."""
    pw = _restd_user()
    d = rest_paths(lay).socket.parent
    d.mkdir(mode=0o700, exist_ok=True)
    os.chmod(d, 0o700)
    os.chown(d, pw.pw_uid, pw.pw_gid)
    rest_paths(lay).socket.unlink(missing_ok=True)


def restd_argv(lay: Layout, netns_path: str) -> list[str]:
    """slurmrestd in the controller's netns on the cluster's unix socket, JWT auth only."""
    pw = _restd_user()
    return ["nsenter", f"--net={netns_path}", SLURMRESTD, "-f", str(lay.slurm_conf),
            "-a", "rest_auth/jwt", "-s", OPENAPI_PLUGIN, "-u", str(pw.pw_uid),
            "-g", str(pw.pw_gid), rest_paths(lay).url]


def restd_env(base: dict[str, str]) -> dict[str, str]:
    return {**base, "SLURM_JWT": "daemon"}


def issue_token(lay: Layout, exec_argv, env: dict[str, str]) -> str:
    """Root's token from ``scontrol token`` (run with ``exec_argv``), saved 0600; returns it."""
    cp = procs.run(exec_argv(["scontrol", "token", f"lifespan={TOKEN_LIFESPAN}"]), env=env,
                   what="scontrol token")
    token = parse_token(cp.stdout)
    path = rest_paths(lay).token
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def parse_token(text: str) -> str:
    """The token in ``scontrol token``'s ``SLURM_JWT=<token>`` line."""
    for line in text.splitlines():
        if line.strip().startswith("SLURM_JWT="):
            token = line.strip().split("=", 1)[1].strip()
            if token:
                return token
    raise ClusterError(f"scontrol token printed no SLURM_JWT= line: {text.strip()[:200]!r}")
