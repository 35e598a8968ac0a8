"""``DockerCluster``: a Slurm cluster of containers behind the ``ClusterBackend`` protocol.

One image (files/Dockerfile, package data) runs as the controller ``ctl`` and as ``node1..nodeN`` on an
internal compose network (files/compose.yml). slurm.conf comes from the same template and the
same ``Layout`` as the namespace cluster, so addresses (ctl = .1, nodeN = .N+1), ports and
paths match. No way out: the network is internal, its bridge holds no IPv4 address (the
gateway, the subnet's last address, is reserved, never assigned) and the containers drop the
default route Docker gives them.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from slurmft.core.atomic import atomic_write
from slurmft.core.errors import ClusterError, SlurmFTError, UsageError
from slurmft.core.log import get_logger
from slurmft.render import render
from slurmft.testbed import procs
from slurmft.testbed.backend import Fault
from slurmft.slurm.version import parse_version
from slurmft.testbed.docker.client import LABEL, Docker, DockerUnavailableError
from slurmft.testbed.docker.compose import (
    compose_doc, container_name, pick_docker_subnet, used_networks,
)
from slurmft.testbed.docker.context import docker_file, mkdir_p
from slurmft.testbed.docker.daemon import PrivateDockerd
from slurmft.testbed.docker.faults import FAULT_HANDLERS, NodeTarget
from slurmft.testbed.docker.image import ensure_image, remove_images
from slurmft.testbed.docker.releases import DEFAULT_RELEASE
from slurmft.testbed.docker.releases import slurm_release as find_release
from slurmft.testbed.layout import (
    CTL_HOST, DEFAULT_NAME, Layout, StatePaths, check_subnet, parse_subnet, validate_name,
    validate_nodes,
)
from slurmft.testbed.netns import UpResult

log = get_logger(__name__)

DOCKER_ROOT = Path("/var/lib/slurmft/docker-clusters")
SSH_CONFIG = "/root/.ssh/config"
SSH_KEY = "/root/.ssh/id_ed25519"           # inside the containers (files/entrypoint.sh)
KNOWN_HOSTS = "/root/.ssh/known_hosts"
DAEMONS = ("munged", "sshd", "slurmd", "slurmctld")


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
    slurm_release: str = DEFAULT_RELEASE                 # releases.RELEASES key (--slurm)
    slurm_version: str = ""                              # sinfo --version in ctl, once up


class DockerCluster(StatePaths):
    """A Slurm cluster of containers with the public surface of ``slurmft.testbed.Cluster``.

    ``up/down/status/fault/run/exec_argv/node_exec_argv/execvpe/env`` and the path properties
    behave as the namespace backend's; paths name places INSIDE the containers except
    ``state_dir`` and ``log_path`` (the log folder is bind-mounted at the same path).
    """

    backend = "docker"
    faults: tuple[Fault, ...] = tuple(Fault)      # every fault, node-down/up included

    def __init__(self, name: str = DEFAULT_NAME, root: str | os.PathLike | None = None, *,
                 docker_host: str | None = None, base_image: str = "") -> None:
        self.name = validate_name(name)
        self.root = Path(root or os.environ.get("SLURMFT_DOCKER_CLUSTER_ROOT") or DOCKER_ROOT)
        self.base_image = base_image or os.environ.get("SLURMFT_DOCKER_BASE_IMAGE", "")
        self._docker_host = docker_host
        self.state: DockerClusterState | None = self._load()

    # --- state -------------------------------------------------------------------------------
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
        atomic_write(self.state_file, json.dumps(asdict(self.state), indent=2))

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
        return self._layout(st.nodes, ipaddress.IPv4Network(st.subnet), st.epilog,
                            st.slurm_release)

    def _layout(self, nodes: int, subnet: ipaddress.IPv4Network, epilog: str = "",
                release: str = DEFAULT_RELEASE) -> Layout:
        # The same Layout as the namespace cluster: inside the containers the Slurm paths are
        # <root>/<name>/{spool,run,log,munge}, and the log folder is the host's; slurm.conf is
        # rendered for the image's Slurm release.
        return Layout(self.name, nodes, subnet, root=self.root, epilog=epilog,
                      slurm_version=release)

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
           subnet: str | None = None, timeout: float = 90.0,
           slurm_release: str | None = None) -> UpResult:
        """Build (or reuse) the image, start ctl + nodes, wait until every node is idle.

        ``slurm_release``: "22.05" (default), "24.11" or "26.05" (releases.RELEASES), each
        the Slurm of one Debian suite. Idempotent: returns ``already_up=True`` for a running
        cluster of the same release (another release is refused: take the cluster down first).
        A failed ``up`` tears down what it created.
        """
        validate_nodes(nodes)
        release = find_release(slurm_release)
        if not slurm:
            raise UsageError("the docker backend always runs Slurm (no --no-slurm)")
        if epilog and not Path(epilog).is_absolute():
            raise UsageError(f"--epilog must be an absolute path, not {epilog!r}")
        for name in ("Dockerfile", "entrypoint.sh", "compose.yml"):
            if not docker_file(name).is_file():
                raise ClusterError(f"{docker_file(name)} not found: this slurmft install lacks "
                                   "the docker backend's package data; reinstall slurmft")
        if self.is_up():
            assert self.state is not None
            if self.state.slurm_release != release.version:
                raise UsageError(f"docker cluster {self.name} is up with Slurm "
                                 f"{self.state.slurm_release}, not {release.version}: run "
                                 f"`slurmft cluster down --backend docker --name {self.name}` "
                                 "first")
            return UpResult(self.name, self.nodes, self.subnet, 0.0, {}, already_up=True)
        if self.state is not None or self.state_dir.exists():
            log.info("docker cluster %s: removing leftovers of an earlier run", self.name)
            self.down()
        t0 = time.monotonic()
        docker, daemon = self._reachable_docker()
        used = used_networks()
        if subnet:
            net = parse_subnet(subnet)
            check_subnet(net, nodes + 1, used)      # +1: the gateway takes the last address
        else:
            net = pick_docker_subnet(self.name, nodes, used)
        lay = self._layout(nodes, net, epilog, release.version)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        self.state = DockerClusterState(self.name, nodes, str(net), "", docker.host,
                                        f"slurmft-{self.name}", epilog, False, daemon,
                                        slurm_release=release.version)
        self._save()
        try:
            img = ensure_image(docker, self.base_image, release)
            self.state.image = img.tag
            self._save()
            t_image = time.monotonic() - t0
            self._write_config(lay)
            doc = compose_doc(docker_file("compose.yml").read_text(), lay, img.tag,
                              self.etc_dir)
            self.compose_file.write_text(json.dumps(doc, indent=2))
            t1 = time.monotonic()
            docker.compose(self.state.project, self.compose_file, "up", "-d", "--no-build")
            self._wait_idle(lay, timeout)
            t_up = time.monotonic() - t1
        except BaseException:
            log.error("docker cluster %s failed to come up; removing it", self.name)
            try:
                self.down()      # also the private dockerd this up started, if nothing else uses it
            except SlurmFTError as exc:
                log.error("cleanup after failed up: %s", exc)
            raise
        self.state.complete = True
        self.state.slurm_version = self.slurm_version()
        self.state.timings = {"image_s": round(t_image, 2), "image_built": img.built,
                              "base_built": img.base_built, "up_s": round(t_up, 2)}
        self._save()
        started = {f"{h}:container": pid for h, pid in self._container_pids().items()}
        return UpResult(self.name, list(lay.node_names), str(net),
                        round(time.monotonic() - t0, 2), started)

    def _reachable_docker(self) -> tuple[Docker, dict]:
        """The daemon to use, and the PrivateDockerd fields to record if one was started."""
        docker = self.docker
        if docker.reachable():
            return docker, {}
        if self._docker_host is not None or os.environ.get("DOCKER_HOST"):
            raise DockerUnavailableError(f"no Docker daemon answers on {docker.host}")
        private = PrivateDockerd().start()
        if private.proc is None:
            return private.docker, {}
        return private.docker, {"pid": private.proc.pid, "start": private.proc.start,
                                "ip_forward_before": private.ip_forward_before,
                                "had_docker0": private.had_docker0}

    def _write_config(self, lay: Layout) -> None:
        etc = mkdir_p(self.etc_dir)
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
                done += [f"image {i}" for i in remove_images(docker, keep_base=keep_base)]
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

    def slurm_version(self) -> str:
        """What ``sinfo --version`` prints in the controller (e.g. ``24.11.5``); '' if it
        does not answer."""
        try:
            cp = procs.run(self.exec_argv(["sinfo", "--version"]), check=False, timeout=20,
                           env=self.env(), what="sinfo --version")
        except ClusterError:
            return ""
        if cp.returncode != 0:
            return ""
        try:
            return str(parse_version(cp.stdout))
        except SlurmFTError:
            return ""

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
        ctl_running = states.get(self.container()) == "running"
        view = self.slurm_view() if ctl_running else {}
        daemons = self._daemons(self._container_pids(), procs.parents())
        links = self.links()
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
                "slurm_release": st.slurm_release,
                "slurm_version": (st.slurm_version or self.slurm_version()) if ctl_running
                else "",
                "docker_host": st.docker_host or "(default)", "timings": st.timings,
                "controller": ctl, "nodes": nodes}

    def links(self) -> dict[str, str]:
        """{node: up|down}: is the node's container attached to the cluster network?"""
        st = self._need_state()
        cp = self.docker.run("network", "inspect", "--format",
                             "{{range .Containers}}{{.Name}} {{end}}", f"{st.project}_cluster",
                             check=False)
        attached = set(cp.stdout.split())
        return {n: "up" if self.container(n) in attached else "down" for n in self.nodes}

    # --- faults --------------------------------------------------------------------------------
    def fault(self, node: str, fault: Fault | str) -> str:
        """Inject ``fault`` (one of ``self.faults``) on ``node``; return what was done."""
        fault = Fault.parse(fault, self.faults)
        st = self._need_state()
        lay = self.layout
        lay.check_node(node)
        target = NodeTarget(self.docker, fault, node, self.container(node), f"{st.project}_cluster",
                            lay.ip(node), str(lay.run_dir / f"slurmd-{node}.pid"))
        return FAULT_HANDLERS[fault](self, target)

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
