"""A private dockerd for machines without a running Docker daemon (and for the tests):
its own socket and data root, no bridge, no iptables rules, no IP forwarding."""

from __future__ import annotations

import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from slurmft.core.log import get_logger
from slurmft.testbed import procs
from slurmft.testbed.docker.client import Docker, DockerUnavailableError

log = get_logger(__name__)


@dataclass
class PrivateDockerd:
    """A dockerd on its own socket and data root: no bridge, no iptables, no IP forwarding.

    ``start`` reuses a daemon already answering on the socket (and then does not own it);
    ``stop`` stops only the daemon it started and restores ip_forward and docker0 if they
    changed while it ran.
    """

    run_dir: Path = Path("/run/slurmft-dockerd")
    data_root: Path = Path("/var/lib/slurmft/dockerd")   # kept: the image cache lives here
    start_timeout: float = 40.0
    proc: procs.Proc | None = None
    ip_forward_before: str | None = None
    had_docker0: bool = True

    @property
    def host(self) -> str:
        return f"unix://{self.run_dir / 'docker.sock'}"

    @property
    def docker(self) -> Docker:
        return Docker(self.host)

    @property
    def log_file(self) -> Path:
        return self.run_dir / "dockerd.log"

    def start(self) -> PrivateDockerd:
        if self.docker.reachable():
            log.info("reusing the dockerd on %s", self.host)
            return self
        dockerd = shutil.which("dockerd")
        if not dockerd:
            raise DockerUnavailableError("dockerd not found: apt-get install docker.io docker-compose")
        if os.geteuid() != 0:
            raise DockerUnavailableError("starting a private dockerd needs root")
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.data_root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DockerUnavailableError(f"cannot prepare dockerd's folders: {exc}") from None
        self.ip_forward_before = read_ip_forward()
        self.had_docker0 = Path("/sys/class/net/docker0").exists()
        argv = [dockerd, "-H", self.host, "--data-root", str(self.data_root),
                "--exec-root", str(self.run_dir / "exec"),
                "--pidfile", str(self.run_dir / "dockerd.pid"),
                "--bridge=none", "--iptables=false", "--ip-forward=false", "--ip-masq=false",
                "--userland-proxy=false"]
        self.log_file.write_bytes(b"")            # this start's output only
        self.proc = procs.spawn(argv, self.log_file)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if not procs.alive(self.proc):
                self.proc = None
                raise DockerUnavailableError(f"dockerd exited at start: {procs.tail(self.log_file)}")
            if self.docker.reachable():
                log.info("dockerd pid %d on %s", self.proc.pid, self.host)
                return self
            time.sleep(0.3)
        self.stop()
        raise DockerUnavailableError(f"dockerd did not answer within {self.start_timeout:g}s: "
                                     f"{procs.tail(self.log_file) or 'no output'} "
                                     f"(log: {self.log_file})")

    def stop(self) -> None:
        if self.proc is None:
            return
        procs.signal_proc(self.proc, signal.SIGTERM)
        if procs.wait_gone([self.proc], 20.0):
            procs.signal_proc(self.proc, signal.SIGKILL)
            procs.wait_gone([self.proc], 5.0)
        procs.reap([self.proc.pid])
        self.proc = None
        # dockerd leaves its default netns bind-mounted under its exec root: ours, unmount it.
        for mnt in mounts_under(self.run_dir):
            procs.run(["umount", mnt], check=False)
        if self.ip_forward_before is not None and read_ip_forward() != self.ip_forward_before:
            Path("/proc/sys/net/ipv4/ip_forward").write_text(self.ip_forward_before + "\n")
        if not self.had_docker0 and Path("/sys/class/net/docker0").exists():
            procs.run(["ip", "link", "delete", "docker0"], check=False)


def mounts_under(top: Path) -> list[str]:
    """Mount points below ``top`` (deepest first), from /proc/self/mounts."""
    prefix = str(top).rstrip("/") + "/"
    points = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    return sorted({p for p in points if p.startswith(prefix)}, key=len, reverse=True)


def read_ip_forward() -> str:
    return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
