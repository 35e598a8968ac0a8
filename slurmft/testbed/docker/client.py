"""The docker (and compose) CLI for one daemon, with argv lists only (no SDK, no shell).

Every object the docker backend creates carries the label ``slurmft.cluster=NAME`` (images:
``slurmft.image``); teardown removes only objects with that label.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from slurmft.core.errors import ClusterError
from slurmft.testbed import procs

LABEL = "slurmft.cluster"
IMAGE_LABEL = "slurmft.image"
HASH_LABEL = "slurmft.content-hash"


class DockerUnavailableError(ClusterError):
    """No Docker daemon could be reached or started (tests skip on this one)."""


@dataclass(frozen=True)
class Docker:
    """The docker (and compose) CLI for one daemon; argv lists only."""

    host: str = ""            # DOCKER_HOST value, e.g. unix:///run/slurmft-dockerd/docker.sock

    def argv(self, *args: str) -> list[str]:
        return ["docker", *(["-H", self.host] if self.host else []), *args]

    def run(self, *args: str, check: bool = True, timeout: float = 60.0,
            input: str | None = None, what: str = "") -> subprocess.CompletedProcess:
        return procs.run(self.argv(*args), check=check, timeout=timeout, input=input,
                         env=self._env(), what=what or f"docker {' '.join(args[:2])}")

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["DOCKER_BUILDKIT"] = "0"       # the classic builder: works with Docker 20.10's CLI
        env.pop("DOCKER_HOST", None)
        if self.host:
            env["DOCKER_HOST"] = self.host
        return env

    def ok(self, *args: str, timeout: float = 30.0) -> bool:
        try:
            return self.run(*args, check=False, timeout=timeout).returncode == 0
        except ClusterError:
            return False

    def reachable(self) -> bool:
        return self.ok("version", "--format", "{{.Server.Version}}", timeout=15)

    def compose_argv(self, project: str, file: Path, *args: str) -> list[str]:
        """``docker-compose`` (v1) if installed, else the ``docker compose`` plugin (v2)."""
        if shutil.which("docker-compose"):
            return ["docker-compose", *(["-H", self.host] if self.host else []),
                    "-p", project, "-f", str(file), *args]
        return self.argv("compose", "-p", project, "-f", str(file), *args)

    def compose(self, project: str, file: Path, *args: str,
                timeout: float = 180.0) -> subprocess.CompletedProcess:
        return procs.run(self.compose_argv(project, file, *args), timeout=timeout,
                         env=self._env(), what=f"compose {' '.join(args[:1])}")

    def ids(self, kind: str, label: str) -> list[str]:
        """Ids of containers/networks/volumes/images carrying ``label`` (key or key=value)."""
        sub = {"container": ("ps", "-aq"), "network": ("network", "ls", "-q"),
               "volume": ("volume", "ls", "-q"), "image": ("image", "ls", "-q")}[kind]
        cp = self.run(*sub, "--filter", f"label={label}", check=False)
        return sorted(set(cp.stdout.split())) if cp.returncode == 0 else []


# --------------------------------------------------------------------------------------------
# a private daemon (for machines without one, and for the tests)
