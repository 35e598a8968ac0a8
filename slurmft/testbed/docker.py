"""The local test cluster in containers: a second backend beside the network namespaces.

One image (docker/Dockerfile) runs as the controller ``ctl`` and as ``node1..nodeN`` on an
internal compose network (docker/compose.yml). slurm.conf comes from the same template and the
same ``Layout`` as the namespace cluster, so addresses (ctl = .1, nodeN = .N+1), ports and
paths match. No way out: the network is internal, its bridge holds no IPv4 address (the
gateway, the subnet's last address, is reserved, never assigned) and the containers drop the
default route Docker gives them.

``DockerCluster`` mirrors ``slurmft.testbed.Cluster`` (up/down/status/fault/run/exec_argv/
node_exec_argv/execvpe/env, the same fault names plus node-down/node-up). Faults map to
Docker: link-down/up = ``docker network disconnect/connect``; node-down/up = ``docker
stop/start``; kill/restart-slurmd, stop/start/freeze/thaw-sshd = ``docker exec CTR pkill -SIG
-F PIDFILE`` (or starting the daemon again); kill-job-procs = SIGKILL to the container's job
processes, found from this machine's process table.

Everything runs through the docker CLI with argv lists (no SDK, no shell). Every object the
backend creates carries the label ``slurmft.cluster=NAME`` (images: ``slurmft.image``) and
teardown removes only objects with that label.

Without a registry the base image is built with ``debootstrap --variant=minbase bookworm`` and
``docker import``. Without a running Docker daemon, ``PrivateDockerd`` starts one on its own
socket with no bridge, no iptables rules and no IP forwarding, and stops it again.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from slurmft.core.errors import ClusterError, SlurmFTError, UsageError
from slurmft.core.log import get_logger
from slurmft.render import render
from slurmft.testbed import procs
from slurmft.testbed.layout import (
    CTL_HOST, DEFAULT_NAME, Layout, check_subnet, parse_networks, parse_subnet, validate_name,
    validate_nodes,
)
from slurmft.testbed.netns import FAULT_ACTIONS as NETNS_FAULT_ACTIONS
from slurmft.testbed.netns import UpResult

log = get_logger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
DOCKER_DIR = REPO_ROOT / "docker"
DOCKER_ROOT = Path("/var/lib/slurmft/docker-clusters")
SUBNET_POOL = ipaddress.IPv4Network("10.98.0.0/16")   # apart from the namespace clusters' pool
BASE_IMAGE = "slurmft-base:bookworm"       # debootstrap'd + imported when no registry is used
REGISTRY_BASE = "debian:bookworm"           # without debootstrap: pulled by the build
IMAGE_PYTHON = (3, 11)                      # bookworm's python3: host wheels must match it
NODE_IMAGE_REPO = "slurmft-node"
LABEL = "slurmft.cluster"
IMAGE_LABEL = "slurmft.image"
HASH_LABEL = "slurmft.content-hash"
CONFIG_MOUNT = "/etc/slurmft-cluster"
SSH_KEY = "/root/.ssh/id_ed25519"           # inside the containers (docker/entrypoint.sh)
KNOWN_HOSTS = "/root/.ssh/known_hosts"
# Files of the repository that go into the image (the build context is staged from these).
CONTEXT_FILES = ("setup.py", "setup.cfg", "README.md", "docker/Dockerfile", "docker/entrypoint.sh")
CONTEXT_TREES = (("slurmft", "*"),)            # the package with its data (templates, examples)

SSH_CONFIG = "/root/.ssh/config"
DAEMONS = ("munged", "sshd", "slurmd", "slurmctld")
# The namespace backend's faults, plus stopping/starting a whole node's container.
FAULT_ACTIONS = (*NETNS_FAULT_ACTIONS, "node-down", "node-up")
# Wait (5 s at most) until the process in pid file $1 is gone. Constant text; the path is $1.
WAIT_GONE_SH = ('for i in $(seq 50); do pkill -0 -F "$1" 2>/dev/null || exit 0; sleep 0.1; '
                'done; echo "still running" >&2; exit 1')


class DockerUnavailableError(ClusterError):
    """No Docker daemon could be reached or started (tests skip on this one)."""


# --------------------------------------------------------------------------------------------
# docker CLI
# --------------------------------------------------------------------------------------------
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
# --------------------------------------------------------------------------------------------
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
        self.ip_forward_before = _read_ip_forward()
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
        for mnt in _mounts_under(self.run_dir):
            procs.run(["umount", mnt], check=False)
        if self.ip_forward_before is not None and _read_ip_forward() != self.ip_forward_before:
            Path("/proc/sys/net/ipv4/ip_forward").write_text(self.ip_forward_before + "\n")
        if not self.had_docker0 and Path("/sys/class/net/docker0").exists():
            procs.run(["ip", "link", "delete", "docker0"], check=False)


def _mounts_under(top: Path) -> list[str]:
    """Mount points below ``top`` (deepest first), from /proc/self/mounts."""
    prefix = str(top).rstrip("/") + "/"
    points = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    return sorted({p for p in points if p.startswith(prefix)}, key=len, reverse=True)


def _read_ip_forward() -> str:
    return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------
def stage_context(dest: Path, wheels: Path | None, repo: Path = REPO_ROOT) -> None:
    """Copy the files the image needs into ``dest`` (the repository layout, nothing else)."""
    for rel in CONTEXT_FILES:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / rel, target)
    for top, pattern in CONTEXT_TREES:
        for src in sorted((repo / top).rglob(pattern)):
            if src.is_file() and "__pycache__" not in src.parts:
                target = dest / src.relative_to(repo)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target)
    wdir = dest / "docker" / "wheels"
    wdir.mkdir(parents=True, exist_ok=True)
    if wheels:
        for whl in sorted(wheels.glob("*.whl")):
            shutil.copy2(whl, wdir / whl.name)


def content_hash(context: Path, base_id: str) -> str:
    """sha256 over the staged context (paths and bytes) and the base image id."""
    h = hashlib.sha256(base_id.encode())
    for p in sorted(context.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(context)).encode() + b"\0")
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "slurmft" / "docker"


def build_wheels(cache: Path | None = None, repo: Path = REPO_ROOT) -> Path | None:
    """slurmft's dependencies as wheels (so the build needs no index), cached per setup.cfg.

    None when this Python is not the image's (wheels would not fit) or pip cannot fetch them
    here; the image build then installs from its own index.
    """
    if sys.version_info[:2] != IMAGE_PYTHON:
        return None
    cache = cache or cache_dir()
    key = hashlib.sha256((repo / "setup.cfg").read_bytes()).hexdigest()[:16]
    wdir = cache / f"wheels-{key}"
    if (wdir / ".complete").exists():
        return wdir
    tmp = Path(tempfile.mkdtemp(prefix="wheels-", dir=_mkdir(cache)))
    cp = procs.run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(tmp), str(repo)],
                   check=False, timeout=600)
    if cp.returncode != 0:
        log.warning("pip wheel failed; the image will install from an index: %s",
                    (cp.stderr.strip().splitlines() or ["?"])[-1])
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    for whl in tmp.glob("slurmft-*.whl"):
        whl.unlink()       # slurmft itself is installed from the staged sources
    (tmp / ".complete").touch()
    shutil.rmtree(wdir, ignore_errors=True)
    tmp.rename(wdir)
    return wdir


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def debian_mirror(sources: Sequence[Path] = (Path("/etc/apt/sources.list"),
                                             Path("/etc/apt/sources.list.d"))) -> str:
    """The Debian mirror apt already uses (one-line or deb822 sources)."""
    files: list[Path] = []
    for s in sources:
        if s.is_dir():
            files += sorted(s.glob("*.list")) + sorted(s.glob("*.sources"))
        elif s.is_file():
            files.append(s)
    return mirror_from_sources([f.read_text(errors="replace") for f in files])


def mirror_from_sources(texts: Sequence[str]) -> str:
    """The first ``.../debian`` URI (not debian-security) in apt source texts."""
    uri_re = re.compile(r"(?:^deb\s+(?:\[[^\]]*\]\s+)?|^URIs:\s*)(\S+)", re.M)
    for text in texts:
        for uri in uri_re.findall(text):
            if uri.rstrip("/").endswith("/debian"):
                return uri.rstrip("/")
    raise ClusterError("no Debian mirror found in /etc/apt/sources.list(.d): set "
                       "SLURMFT_DOCKER_BASE_IMAGE=debian:bookworm if a registry is reachable")


@dataclass(frozen=True)
class ImageResult:
    tag: str
    content_hash: str
    built: bool              # False: reused from the cache
    base_built: bool
    seconds: float


def ensure_base_image(docker: Docker, base: str = "") -> tuple[str, bool]:
    """(base image reference, built now?). ``base`` empty: debootstrap'd bookworm, imported."""
    if base:
        return base, False
    if docker.ok("image", "inspect", BASE_IMAGE):
        return BASE_IMAGE, False
    if not shutil.which("debootstrap"):
        log.info("no debootstrap: building FROM %s (needs a registry)", REGISTRY_BASE)
        return REGISTRY_BASE, False
    mirror = debian_mirror()
    root = Path(tempfile.mkdtemp(prefix="slurmft-rootfs-"))
    try:
        log.info("debootstrap bookworm from %s", mirror)
        procs.run(["debootstrap", "--variant=minbase", "bookworm", str(root), mirror],
                  timeout=900, what="debootstrap")
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        try:
            imp = subprocess.run(docker.argv("import", "-c", f"LABEL {IMAGE_LABEL}=base",
                                             "-c", 'CMD ["/bin/bash"]', "-", BASE_IMAGE),
                                 stdin=tar.stdout, capture_output=True, text=True,
                                 timeout=600, env=docker._env())
        finally:
            if tar.stdout:
                tar.stdout.close()
            tar.wait()
        if imp.returncode != 0 or tar.returncode != 0:
            raise ClusterError(f"docker import failed: {imp.stderr.strip()[-300:]}")
    finally:
        for mnt in _mounts_under(root):      # debootstrap's /proc, /sys if it failed midway
            procs.run(["umount", "-l", mnt], check=False)
        shutil.rmtree(root, ignore_errors=True)
    return BASE_IMAGE, True


def ensure_image(docker: Docker, base: str = "", repo: Path = REPO_ROOT) -> ImageResult:
    """The node image for the current sources: reused when one with the same hash exists."""
    t0 = time.monotonic()
    base_ref, base_built = ensure_base_image(docker, base)
    base_id = docker.run("image", "inspect", "--format", "{{.Id}}", base_ref, check=False).stdout.strip()
    wheels = build_wheels(repo=repo)
    with tempfile.TemporaryDirectory(prefix="slurmft-ctx-") as tmp:
        ctx = Path(tmp)
        stage_context(ctx, wheels, repo)
        digest = content_hash(ctx, base_id or base_ref)
        tag = f"{NODE_IMAGE_REPO}:{digest[:12]}"
        have = docker.run("image", "inspect", "--format",
                          "{{index .Config.Labels \"" + HASH_LABEL + "\"}}", tag, check=False)
        if have.returncode == 0 and have.stdout.strip() == digest:
            return ImageResult(tag, digest, False, base_built, time.monotonic() - t0)
        log.info("building %s", tag)
        cp = docker.run("build", "--network", "host", "-f", "docker/Dockerfile",
                        "--build-arg", f"BASE_IMAGE={base_ref}",
                        "--build-arg", f"PIP_NO_INDEX={1 if wheels else 0}",
                        "--label", f"{HASH_LABEL}={digest}", "--label", f"{IMAGE_LABEL}=node",
                        "-t", tag, str(ctx), check=False, timeout=1200, what="docker build")
        build_log = _mkdir(cache_dir()) / "build.log"
        build_log.write_text(cp.stdout + cp.stderr)
        if cp.returncode != 0:
            last = " | ".join((cp.stderr or cp.stdout).strip().splitlines()[-3:])
            raise ClusterError(f"docker build failed (rc={cp.returncode}): {last}; "
                               f"full output in {build_log}")
    _prune_node_images(docker, keep=tag)
    return ImageResult(tag, digest, True, base_built, time.monotonic() - t0)


def _prune_node_images(docker: Docker, keep: str) -> None:
    """Remove older node images (one per source hash) that no container uses; keep ``keep``."""
    keep_id = docker.run("image", "inspect", "--format", "{{.Id}}", keep, check=False).stdout.strip()
    for ref in docker.ids("image", f"{IMAGE_LABEL}=node"):
        if not keep_id.startswith(f"sha256:{ref}") and ref not in keep_id:
            docker.ok("image", "rm", ref)          # no -f: an image in use stays


def _remove_images(docker: Docker, keep_base: bool = True) -> list[str]:
    """Remove the node images slurmft built (and the base image unless ``keep_base``)."""
    gone = []
    for ref in docker.ids("image", f"{IMAGE_LABEL}=node"):
        if docker.ok("image", "rm", "-f", ref):
            gone.append(ref)
    if not keep_base and docker.ok("image", "inspect", BASE_IMAGE):
        if docker.ok("image", "rm", "-f", BASE_IMAGE):
            gone.append(BASE_IMAGE)
    return gone


# --------------------------------------------------------------------------------------------
# compose file
# --------------------------------------------------------------------------------------------
_VAR = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")


def substitute(obj, values: Mapping[str, str]):
    """Replace ``${VAR}`` in every string of a loaded YAML tree; unknown VAR is an error."""
    if isinstance(obj, dict):
        return {substitute(k, values): substitute(v, values) for k, v in obj.items()}
    if isinstance(obj, list):
        return [substitute(v, values) for v in obj]
    if isinstance(obj, str):
        def repl(m: re.Match) -> str:
            if m.group(1) not in values:
                raise ClusterError(f"docker/compose.yml: no value for ${{{m.group(1)}}}")
            return str(values[m.group(1)])
        return _VAR.sub(repl, obj)
    return obj


def compose_doc(base_text: str, layout: Layout, image: str, etc_dir: Path) -> dict:
    """The compose document for ``layout``: ctl plus node1..nodeN copied from ``x-node``."""
    base = yaml.safe_load(base_text)
    try:
        node_tpl = base.pop("x-node")
        ctl_tpl = base["services"]["ctl"]
    except (KeyError, TypeError):
        raise ClusterError("docker/compose.yml needs an x-node block and a ctl service") from None
    common = {
        "SLURMFT_IMAGE": image, "SLURMFT_CLUSTER": layout.name,
        "SLURMFT_CLUSTER_ETC": str(etc_dir), "SLURMFT_LOG_DIR": str(layout.log_dir),
        "SLURMFT_SHARED_DIR": str(layout.shared_dir), "SLURMFT_SUBNET": str(layout.subnet),
        "SLURMFT_GATEWAY": gateway(layout), "CTL_IP": layout.ctl_ip,
    }
    extra_hosts = [f"{CTL_HOST}:{layout.ctl_ip}"] + [f"{n}:{layout.ip(n)}" for n in layout.node_names]
    services = {}
    for svc, tpl, ip in [(CTL_HOST, ctl_tpl, layout.ctl_ip)] + [
            (n, node_tpl, layout.ip(n)) for n in layout.node_names]:
        s = substitute(tpl, {**common, "NODE_IP": ip})
        s["hostname"] = svc
        s["container_name"] = container_name(layout.name, svc)
        s["extra_hosts"] = extra_hosts
        services[svc] = s
    doc = substitute(base, common)
    doc["services"] = services
    return doc


def gateway(layout: Layout) -> str:
    """The network's gateway: the subnet's last usable address, reserved and never assigned
    (the bridge gets no IPv4 address; ctl takes .1, nodes follow)."""
    return str(layout.subnet.broadcast_address - 1)


def container_name(cluster: str, host: str) -> str:
    return f"slurmft-{cluster}-{host}"


def pick_docker_subnet(name: str, nodes: int, used: Sequence[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    candidates = list(SUBNET_POOL.subnets(new_prefix=24))
    start = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") % len(candidates)
    for i in range(len(candidates)):
        net = candidates[(start + i) % len(candidates)]
        if not any(net.overlaps(u) for u in used):
            check_subnet(net, nodes + 1, [])        # +1: the gateway takes the last address
            return net
    raise UsageError(f"no free /24 left in {SUBNET_POOL}: take some clusters down")


def used_networks() -> list[ipaddress.IPv4Network]:
    out: list[ipaddress.IPv4Network] = []
    for argv in (["ip", "-j", "route", "show", "table", "all"], ["ip", "-j", "addr"]):
        cp = procs.run(argv, check=False)
        if cp.returncode == 0 and cp.stdout.strip():
            out += parse_networks(json.loads(cp.stdout))
    return out


# --------------------------------------------------------------------------------------------
# the cluster
# --------------------------------------------------------------------------------------------
@dataclass
class DockerClusterState:
    """What ``up`` recorded: enough for ``down``/``fault``/``exec`` from another process."""

    name: str
    nodes: int
    subnet: str
    image: str
    docker_host: str = ""
    project: str = ""
    epilog: str = ""
    complete: bool = False
    started_daemon: dict = field(default_factory=dict)   # PrivateDockerd fields if we started it
    timings: dict = field(default_factory=dict)


class DockerCluster:
    """A Slurm cluster of containers with the public surface of ``slurmft.testbed.Cluster``.

    ``up/down/status/fault/run/exec_argv/node_exec_argv/execvpe/env`` and the path properties
    behave as the namespace backend's; paths name places INSIDE the containers except
    ``state_dir`` and ``log_path`` (the log folder is bind-mounted at the same path).
    """

    backend = "docker"

    def __init__(self, name: str = DEFAULT_NAME, root: str | os.PathLike | None = None, *,
                 docker_host: str | None = None, base_image: str = "") -> None:
        self.name = validate_name(name)
        self.root = Path(root or os.environ.get("SLURMFT_DOCKER_CLUSTER_ROOT") or DOCKER_ROOT)
        self.base_image = base_image or os.environ.get("SLURMFT_DOCKER_BASE_IMAGE", "")
        self._docker_host = docker_host
        self.state: DockerClusterState | None = self._load()

    # --- state -------------------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self.root / self.name

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def etc_dir(self) -> Path:
        return self.state_dir / "etc"

    @property
    def compose_file(self) -> Path:
        return self.state_dir / "compose.json"

    def _load(self) -> DockerClusterState | None:
        try:
            return DockerClusterState(**json.loads(self.state_file.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            raise ClusterError(f"{self.state_file} is damaged ({exc}): remove the containers "
                               f"labelled {LABEL}={self.name} and that folder") from None

    def _save(self) -> None:
        assert self.state is not None
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.state), indent=2))
        tmp.replace(self.state_file)

    def _need_state(self) -> DockerClusterState:
        if self.state is None:
            raise ClusterError(f"docker cluster {self.name} is not up: run "
                               f"`slurmft cluster up --backend docker --name {self.name}`")
        return self.state

    @property
    def docker(self) -> Docker:
        if self.state is not None:
            return Docker(self.state.docker_host)
        if self._docker_host is not None:
            return Docker(self._docker_host)
        return Docker(os.environ.get("DOCKER_HOST", ""))

    @property
    def layout(self) -> Layout:
        st = self._need_state()
        return self._layout(st.nodes, ipaddress.IPv4Network(st.subnet), st.epilog)

    def _layout(self, nodes: int, subnet: ipaddress.IPv4Network, epilog: str = "") -> Layout:
        # The same Layout as the namespace cluster: inside the containers the Slurm paths are
        # <root>/<name>/{spool,run,log,munge}, and the log folder is the host's.
        return Layout(self.name, nodes, subnet, root=self.root, epilog=epilog)

    def is_up(self) -> bool:
        """Recorded state exists and every container is running."""
        if self.state is None or not self.state.complete:
            return False
        running = self._container_states()
        return all(running.get(self.container(h)) == "running" for h in self.hosts)

    # --- public read-only API (as Cluster) ---------------------------------------------------
    @property
    def nodes(self) -> list[str]:
        return list(self.layout.node_names)

    @property
    def hosts(self) -> list[str]:
        return [CTL_HOST, *self.nodes]

    @property
    def subnet(self) -> str:
        return str(self.layout.subnet)

    @property
    def ssh_config_path(self) -> Path:
        return Path(SSH_CONFIG)

    @property
    def ssh_key_path(self) -> Path:
        return Path(SSH_KEY)

    @property
    def known_hosts_path(self) -> Path:
        return Path(KNOWN_HOSTS)

    @property
    def slurm_conf_path(self) -> Path:
        return Path("/etc/slurm/slurm.conf")

    @property
    def shared_dir(self) -> Path:
        """The shared volume, at this path in every container."""
        return self.layout.shared_dir

    def ip(self, node: str) -> str:
        return self.layout.ip(node)

    def log_path(self, what: str) -> Path:
        """Log of a daemon on the host: ``slurmctld`` or ``slurmd-node2``."""
        return self.layout.log(what)

    def container(self, host: str = CTL_HOST) -> str:
        """The container of ``host`` (``ctl`` or ``nodeN``)."""
        if host != CTL_HOST:
            self.layout.check_node(host)
        return container_name(self.name, host)

    # --- up ------------------------------------------------------------------------------------
    def up(self, nodes: int = 4, *, slurm: bool = True, epilog: str = "",
           subnet: str | None = None, timeout: float = 90.0) -> UpResult:
        """Build (or reuse) the image, start ctl + nodes, wait until every node is idle.

        Idempotent: returns ``already_up=True`` for a running cluster. A failed ``up`` tears
        down what it created.
        """
        validate_nodes(nodes)
        if not slurm:
            raise UsageError("the docker backend always runs Slurm (no --no-slurm)")
        if epilog and not Path(epilog).is_absolute():
            raise UsageError(f"--epilog must be an absolute path, not {epilog!r}")
        if not (DOCKER_DIR / "Dockerfile").is_file():
            raise ClusterError(f"{DOCKER_DIR}/Dockerfile not found: the docker backend builds "
                               "its image from a source checkout of slurmft (pip install -e)")
        if self.is_up():
            return UpResult(self.name, self.nodes, self.subnet, 0.0, {}, already_up=True)
        if self.state is not None or self.state_dir.exists():
            log.info("docker cluster %s: removing leftovers of an earlier run", self.name)
            self.down()
        t0 = time.monotonic()
        docker = self.docker
        daemon: dict = {}
        if not docker.reachable():
            if self._docker_host is not None or os.environ.get("DOCKER_HOST"):
                raise DockerUnavailableError(f"no Docker daemon answers on {docker.host}")
            private = PrivateDockerd().start()
            docker = private.docker
            if private.proc is not None:
                daemon = {"pid": private.proc.pid, "start": private.proc.start,
                          "ip_forward_before": private.ip_forward_before,
                          "had_docker0": private.had_docker0}
        used = used_networks()
        if subnet:
            net = parse_subnet(subnet)
            check_subnet(net, nodes + 1, used)      # +1: the gateway takes the last address
        else:
            net = pick_docker_subnet(self.name, nodes, used)
        lay = self._layout(nodes, net, epilog)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        self.state = DockerClusterState(self.name, nodes, str(net), "", docker.host,
                                        f"slurmft-{self.name}", epilog, False, daemon)
        self._save()
        try:
            img = ensure_image(docker, self.base_image)
            self.state.image = img.tag
            self._save()
            t_image = time.monotonic() - t0
            self._write_config(lay)
            doc = compose_doc((DOCKER_DIR / "compose.yml").read_text(), lay, img.tag,
                              self.etc_dir)
            self.compose_file.write_text(json.dumps(doc, indent=2))
            t1 = time.monotonic()
            docker.compose(self.state.project, self.compose_file, "up", "-d", "--no-build")
            self._wait_idle(lay, timeout)
            t_up = time.monotonic() - t1
        except BaseException:
            log.error("docker cluster %s failed to come up; removing it", self.name)
            try:
                self.down(stop_daemon=False)
            except SlurmFTError as exc:
                log.error("cleanup after failed up: %s", exc)
            raise
        self.state.complete = True
        self.state.timings = {"image_s": round(t_image, 2), "image_built": img.built,
                              "base_built": img.base_built, "up_s": round(t_up, 2)}
        self._save()
        started = {f"{h}:container": pid for h, pid in self._container_pids().items()}
        return UpResult(self.name, list(lay.node_names), str(net),
                        round(time.monotonic() - t0, 2), started)

    def _write_config(self, lay: Layout) -> None:
        etc = _mkdir(self.etc_dir)
        os.chmod(etc, 0o700)
        lay.log_dir.mkdir(parents=True, exist_ok=True)
        (etc / "slurm.conf").write_text(lay.slurm_conf_text())
        key = etc / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        for f in ("id_ed25519", "ssh_host_ed25519_key"):
            procs.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                       f"slurmft-{self.name}", "-f", str(etc / f)], what="ssh-keygen")
        keytype, hostkey = (etc / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        hosts = [(CTL_HOST, lay.ctl_ip)] + [(n, lay.ip(n)) for n in lay.node_names]
        (etc / "known_hosts").write_text(
            "".join(f"{h},{ip} {keytype} {hostkey}\n" for h, ip in hosts))
        (etc / "ssh_config").write_text(render("ssh_config.j2", {
            "cluster_name": self.name,
            "hosts": [{"name": h, "ip": ip} for h, ip in hosts],
            "identity_file": SSH_KEY, "known_hosts": KNOWN_HOSTS,
        }))

    def _wait_idle(self, lay: Layout, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = self.slurm_view()
            if len(states) == lay.nodes and all(s == "idle" for s in states.values()):
                return
            for h in [CTL_HOST, *lay.node_names]:
                if self._container_states().get(self.container(h)) not in ("running", None):
                    raise ClusterError(f"container {self.container(h)} stopped: "
                                       f"`docker logs {self.container(h)}`")
            time.sleep(0.5)
        raise ClusterError(f"nodes not idle after {timeout:g}s: {states or 'slurmctld silent'}; "
                           f"logs in {lay.log_dir}")

    # --- down ----------------------------------------------------------------------------------
    def down(self, *, remove_images: bool = False, keep_base: bool = True,
             stop_daemon: bool = True) -> list[str]:
        """Remove the cluster's containers, network, volume and files; safe to call twice.

        ``remove_images`` also removes the node images slurmft built (and the debootstrap base
        image unless ``keep_base``). A private dockerd that ``up`` started is stopped once no
        slurmft cluster uses it.
        """
        st = self.state
        docker = self.docker
        done: list[str] = []
        reachable = docker.reachable()
        if st is not None and self.compose_file.exists() and reachable:
            procs.run(docker.compose_argv(st.project, self.compose_file, "down", "-v",
                                          "--remove-orphans", "-t", "1"),
                      check=False, timeout=120, env=docker._env())
        if reachable:
            label = f"{LABEL}={self.name}"
            for kind, rm in (("container", ("rm", "-f", "-v")), ("network", ("network", "rm")),
                             ("volume", ("volume", "rm", "-f"))):
                for obj in docker.ids(kind, label):
                    docker.ok(*rm, obj)
            if st is not None:
                done += [f"containers {', '.join(self.container(h) for h in self.hosts)}",
                         f"network {st.project}_cluster", f"volume {st.project}_shared"]
            if remove_images:
                done += [f"image {i}" for i in _remove_images(docker, keep_base=keep_base)]
        if st is not None and st.started_daemon and stop_daemon and not docker.ids("container", LABEL):
            d = st.started_daemon
            PrivateDockerd(proc=procs.Proc(d["pid"], d["start"]),
                           ip_forward_before=d.get("ip_forward_before"),
                           had_docker0=d.get("had_docker0", True)).stop()
            done.append(f"dockerd {d['pid']}")
        if self.state_dir.exists():
            shutil.rmtree(self.state_dir)
            done.append(f"state {self.state_dir}")
        self.state = None
        return done

    # --- running commands ----------------------------------------------------------------------
    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for ``exec_argv`` commands: DOCKER_HOST for the docker CLI, plus the
        SLURMFT_* settings that ``exec_argv`` hands into the container."""
        env = dict(os.environ if base is None else base)
        env.pop("DOCKER_HOST", None)
        if self.docker.host:
            env["DOCKER_HOST"] = self.docker.host
        env.update(self.container_env())
        return env

    def container_env(self) -> dict[str, str]:
        """slurmft's settings for commands inside the containers (paths are container paths)."""
        lay = self.layout
        return {
            "SLURMFT_PROBE_SSH_CONFIG": SSH_CONFIG,
            "SLURMFT_PROBE_SSH_KEY": SSH_KEY,
            "SLURMFT_PROBE_KNOWN_HOSTS": KNOWN_HOSTS,
            "SLURMFT_PROBE_SLURMD_PORT": str(lay.ports[1]),
            "SLURMFT_RESCHEDULE_STATE_DIR": str(lay.slurmft_state_dir),
            "SLURMFT_CLUSTER_NAME": self.name,
            "SLURMFT_CLUSTER_SHARED": str(lay.shared_dir),
            "SLURMFT_CLUSTER_SUBNET": str(lay.subnet),
        }

    def _exec(self, host: str, argv: Sequence[str], tty: bool = False) -> list[str]:
        if not argv:
            raise UsageError("no command given: slurmft cluster exec -- CMD ...")
        flags = ["-i", *(["-t"] if tty else [])]
        for k, v in self.container_env().items():
            flags += ["-e", f"{k}={v}"]
        return self.docker.argv("exec", *flags, self.container(host), *argv)

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """argv that runs ``argv`` in the controller container (node names resolve)."""
        return self._exec(CTL_HOST, argv)

    def node_exec_argv(self, node: str, argv: Sequence[str]) -> list[str]:
        """argv that runs ``argv`` ON ``node`` (its container), without SSH."""
        self.layout.check_node(node)
        return self._exec(node, argv)

    def run(self, argv: Sequence[str], *, check: bool = False, timeout: float = 60.0,
            input: str | None = None, cwd: str | os.PathLike | None = None):
        """Run ``argv`` in the controller container; the CompletedProcess (text)."""
        return subprocess.run(self.exec_argv(argv), env=self.env(), capture_output=True,
                              text=True, timeout=timeout, check=check, input=input, cwd=cwd)

    def execvpe(self, argv: Sequence[str]) -> None:
        """Replace this process by ``argv`` run in the controller container (CLI ``exec``)."""
        if not self.is_up():
            raise ClusterError(f"docker cluster {self.name} is not up")
        full = self._exec(CTL_HOST, argv, tty=sys.stdin.isatty() and sys.stdout.isatty())
        os.execvpe(full[0], full, self.env())

    # --- status --------------------------------------------------------------------------------
    def _container_states(self) -> dict[str, str]:
        cp = self.docker.run("ps", "-a", "--filter", f"label={LABEL}={self.name}",
                             "--format", "{{.Names}}\t{{.State}}", check=False)
        return dict(line.split("\t", 1) for line in cp.stdout.splitlines() if "\t" in line)

    def _container_pids(self) -> dict[str, int]:
        """{host: pid of the container's init on this machine} for running containers."""
        cp = self.docker.run("inspect", "--format", "{{.Name}} {{.State.Pid}}",
                             *[self.container(h) for h in self.hosts], check=False)
        by_name = {}
        for line in cp.stdout.splitlines():
            name, _, pid = line.strip().lstrip("/").partition(" ")
            if pid.isdigit() and int(pid) > 0:
                by_name[name] = int(pid)
        return {h: by_name[self.container(h)] for h in self.hosts if self.container(h) in by_name}

    def slurm_view(self) -> dict[str, str]:
        """{node: state} from ``sinfo`` in the controller ({} if it does not answer)."""
        try:
            cp = procs.run(self.exec_argv(["sinfo", "-h", "-N", "-o", "%N %T"]), check=False,
                           timeout=20, env=self.env(), what="sinfo")
        except ClusterError:
            return {}
        if cp.returncode != 0:
            return {}
        out = {}
        for line in cp.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2:
                out[parts[0]] = parts[1].lower()
        return out

    def _daemons(self, pids: Mapping[str, int], ppid_of: Mapping[int, int]) -> dict[str, dict]:
        """{host: {daemon: {pid, state}}} from the host's process table (no docker exec)."""
        out: dict[str, dict] = {}
        for host, root in pids.items():
            daemons: dict[str, dict] = {}
            for pid in sorted(procs.descendants([root], ppid_of)):
                comm = procs.comm(pid)
                if comm in DAEMONS and comm not in daemons and ppid_of.get(pid) != pid:
                    p = procs.record(pid)
                    daemons[comm] = {"pid": pid, "state": procs.state(p)}
            out[host] = daemons
        return out

    def status(self) -> dict:
        """The namespace backend's status shape, with containers for namespaces."""
        st = self.state
        if st is None:
            return {"name": self.name, "up": False, "backend": self.backend}
        lay = self.layout
        states = self._container_states()
        view = self.slurm_view() if states.get(self.container()) == "running" else {}
        daemons = self._daemons(self._container_pids(), procs.parents())
        links = self._links()
        nodes = [{"name": n, "address": lay.ip(n), "netns": self.container(n),
                  "container": states.get(self.container(n), "missing"),
                  "daemons": daemons.get(n, {}), "slurm_state": view.get(n, ""),
                  "link": links.get(n, "")} for n in lay.node_names]
        ctl = {"name": CTL_HOST, "address": lay.ctl_ip, "netns": self.container(),
               "container": states.get(self.container(), "missing"),
               "daemons": daemons.get(CTL_HOST, {})}
        return {"name": self.name, "backend": self.backend, "up": self.is_up(),
                "subnet": st.subnet, "slurm": True, "state_dir": str(self.state_dir),
                "shared_dir": str(lay.shared_dir), "slurm_conf": str(self.slurm_conf_path),
                "ssh_config": SSH_CONFIG, "image": st.image,
                "docker_host": st.docker_host or "(default)", "timings": st.timings,
                "controller": ctl, "nodes": nodes}

    def _links(self) -> dict[str, str]:
        """{node: up|down}: is the node's container attached to the cluster network?"""
        st = self._need_state()
        cp = self.docker.run("network", "inspect", "--format",
                             "{{range .Containers}}{{.Name}} {{end}}", f"{st.project}_cluster",
                             check=False)
        attached = set(cp.stdout.split())
        return {n: "up" if self.container(n) in attached else "down" for n in self.nodes}

    # --- faults --------------------------------------------------------------------------------
    def fault(self, node: str, action: str) -> str:
        """Inject ``action`` (one of FAULT_ACTIONS) on ``node``; return what was done."""
        if action not in FAULT_ACTIONS:
            raise UsageError(f"unknown fault {action!r}: use one of {', '.join(FAULT_ACTIONS)}")
        st = self._need_state()
        lay = self.layout
        lay.check_node(node)
        ctr = self.container(node)
        d = self.docker
        sshd_pid = "/run/sshd.pid"
        slurmd_pid = str(lay.run_dir / f"slurmd-{node}.pid")
        net = f"{st.project}_cluster"

        def in_node(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
            return d.run("exec", ctr, *argv, check=check, what=f"{action} on {node}")

        if action == "link-down":
            d.run("network", "disconnect", "-f", net, ctr, what=f"{action} {node}")
            return f"link of {node} down (disconnected from {net})"
        if action == "link-up":
            if self._links().get(node) == "up":
                return f"link of {node} already up"
            d.run("network", "connect", "--ip", lay.ip(node), net, ctr, what=f"{action} {node}")
            in_node("ip", "route", "del", "default", check=False)   # Docker re-adds it
            return f"link of {node} up"
        if action == "node-down":
            d.run("stop", "-t", "1", ctr, what=f"{action} {node}")
            return f"container {ctr} stopped"
        if action == "node-up":
            d.run("start", ctr, what=f"{action} {node}")
            return f"container {ctr} started"
        if action == "kill-slurmd":
            in_node("pkill", "-KILL", "-F", slurmd_pid)
            return f"killed slurmd on {node}"
        if action == "restart-slurmd":
            in_node("pkill", "-TERM", "-F", slurmd_pid, check=False)
            in_node("sh", "-c", WAIT_GONE_SH, "sh", slurmd_pid)
            in_node("/usr/sbin/slurmd")
            return f"started slurmd on {node}"
        if action == "stop-sshd":
            in_node("pkill", "-CONT", "-F", sshd_pid, check=False)
            in_node("pkill", "-TERM", "-F", sshd_pid)
            in_node("sh", "-c", WAIT_GONE_SH, "sh", sshd_pid)
            return f"stopped sshd on {node}"
        if action == "start-sshd":
            if in_node("pkill", "-0", "-F", sshd_pid, check=False).returncode == 0:
                return f"sshd on {node} already running"
            in_node("/usr/sbin/sshd")
            return f"started sshd on {node}"
        if action == "freeze-sshd":
            in_node("pkill", "-STOP", "-F", sshd_pid)
            return f"froze sshd on {node} (SIGSTOP)"
        if action == "thaw-sshd":
            in_node("pkill", "-CONT", "-F", sshd_pid)
            return f"thawed sshd on {node} (SIGCONT)"
        # kill-job-procs
        return procs.kill_job_procs(node, self.job_pids(node))

    def job_pids(self, node: str) -> list[int]:
        """Host pids of job processes in ``node``'s container: what runs under its slurmstepd
        and the non-sshd processes under its sshd (MPI ranks started over SSH)."""
        root = self._container_pids().get(node)
        if root is None:
            return []
        ppid_of = procs.parents()
        mine = procs.descendants([root], ppid_of)
        stepds = [p for p in mine if procs.comm(p) == "slurmstepd"]
        out = procs.descendants(stepds, ppid_of)
        sshds = [p for p in mine if procs.comm(p) in ("sshd", "sshd-session")]
        out |= {p for p in procs.descendants(sshds, ppid_of)
                if procs.comm(p) not in ("sshd", "sshd-session")}
        return sorted(p for p in out if procs.comm(p) != "slurmstepd")
