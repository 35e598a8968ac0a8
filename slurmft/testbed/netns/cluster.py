"""``Cluster``: the namespace backend of ``ClusterBackend`` (state, commands, up, status, down).

Building lives in ``build.py``, faults in ``faults.py``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import filelock

from slurmft.core.atomic import atomic_write
from slurmft.core.errors import ClusterError, SlurmFTError, UsageError
from slurmft.core.log import get_logger
from slurmft.testbed import procs
from slurmft.testbed.backend import PROCESS_FAULTS, Fault
from slurmft.testbed.layout import (
    CTL_HOST, DEFAULT_NAME, DEFAULT_ROOT, Layout, StatePaths, check_subnet, parse_subnet,
    pick_subnet, validate_name, validate_nodes,
)
from slurmft.testbed.netns.build import NETNS_DIR, Builder
from slurmft.testbed.netns.faults import FAULT_HANDLERS, NodeFaults
from slurmft.testbed.netns.rest import check_rest_binaries, rest_paths
from slurmft.testbed.procs import Proc

log = get_logger(__name__)

NEEDED = ("ip", "nsenter", "unshare", "mount", "hostname", "sleep", "ssh-keygen", "/usr/sbin/sshd")
NEEDED_SLURM = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd", "sinfo")


@dataclass
class UpResult:
    name: str
    nodes: list[str]
    subnet: str
    seconds: float
    started: dict[str, int]          # "node1:sshd" -> pid
    already_up: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class NodeStatus:
    name: str
    address: str
    netns: str
    daemons: dict[str, dict] = field(default_factory=dict)   # sshd -> {pid, state}
    slurm_state: str = ""
    link: str = ""


def _which(binary: str) -> str | None:
    if binary.startswith("/"):
        return binary if os.access(binary, os.X_OK) else None
    return shutil.which(binary)


class Cluster(StatePaths, Builder, NodeFaults):
    """A named local cluster; its state lives in ``<root>/<name>``.

    Construct it with a name, then ``up()``; or construct it for a running cluster and use
    it (properties read the recorded state).
    """

    backend = "netns"
    faults: tuple[Fault, ...] = PROCESS_FAULTS      # a node's namespaces cannot be stopped whole

    def __init__(self, name: str = DEFAULT_NAME, root: str | os.PathLike | None = None) -> None:
        self.name = validate_name(name)
        self.root = Path(root or os.environ.get("SLURMFT_CLUSTER_ROOT") or DEFAULT_ROOT)
        self._state: dict | None = None

    # --- state (state_dir, state_file: StatePaths) -------------------------------------------
    def lock_path(self, what: str = "") -> Path:
        """A lock file under ``<root>/.locks`` (kept: removing a lock file races its users)."""
        d = self.root / ".locks"
        d.mkdir(parents=True, exist_ok=True)
        return d / f"{what or self.name}.lock"

    def _lock(self) -> filelock.FileLock:
        return filelock.FileLock(str(self.lock_path()), timeout=120)

    def _load(self) -> dict | None:
        try:
            self._state = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            self._state = None
        except (OSError, ValueError) as exc:
            raise ClusterError(f"cluster state {self.state_file} is unreadable ({exc}): "
                               f"run `slurmft cluster down --name {self.name}`") from None
        return self._state

    def _save(self) -> None:
        assert self._state is not None
        atomic_write(self.state_file, json.dumps(self._state, indent=1))

    def _layout_from(self, st: Mapping) -> Layout:
        return Layout(name=st["name"], nodes=st["nodes"], subnet=st["subnet"], root=self.root,
                      slurm=st["slurm"], epilog=st.get("epilog", ""),
                      slurm_user=st.get("slurm_user", "root"))

    @property
    def layout(self) -> Layout:
        # Always from disk: another process (CLI fault, down, up) may have changed it.
        st = self._load()
        if not st:
            raise ClusterError(f"cluster {self.name} is not up: run `slurmft cluster up "
                               f"--name {self.name}`")
        return self._layout_from(st)

    def _proc(self, key: str) -> Proc | None:
        st = self._load() or {}
        d = st.get("procs", {}).get(key)
        return Proc.from_dict(d) if d else None

    def _set_proc(self, key: str, proc: Proc) -> None:
        assert self._state is not None
        self._state.setdefault("procs", {})[key] = proc.to_dict()
        self._save()

    def is_up(self) -> bool:
        """Recorded state exists and all its namespaces exist."""
        st = self._load()
        if not st or not st.get("complete"):
            return False
        return all((NETNS_DIR / ns).exists() for ns in self._layout_from(st).all_netns())

    # --- public read-only API ----------------------------------------------------------------
    @property
    def nodes(self) -> list[str]:
        return list(self.layout.node_names)

    @property
    def subnet(self) -> str:
        return str(self.layout.subnet)

    @property
    def ssh_config_path(self) -> Path:
        return self.layout.ssh_config

    @property
    def ssh_key_path(self) -> Path:
        return self.layout.ssh_key

    @property
    def known_hosts_path(self) -> Path:
        return self.layout.known_hosts

    @property
    def hosts_path(self) -> Path:
        return self.layout.hosts_file

    @property
    def slurm_conf_path(self) -> Path:
        return self.layout.slurm_conf

    @property
    def shared_dir(self) -> Path:
        return self.layout.shared_dir

    def ip(self, node: str) -> str:
        return self.layout.ip(node)

    def netns(self, node: str = CTL_HOST) -> str:
        """Network namespace name of ``node`` (``ctl`` for the controller)."""
        return self.layout.netns(node)

    def netns_path(self, node: str = CTL_HOST) -> str:
        return str(NETNS_DIR / self.netns(node))

    def log_path(self, what: str) -> Path:
        """Log of a daemon: ``slurmctld``, ``slurmd-node2``, ``sshd-node2``, ``munged``."""
        return self.layout.log(what)

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for commands in the cluster: Slurm's and slurmft's own settings."""
        lay = self.layout
        env = dict(os.environ if base is None else base)
        bindir = str(Path(sys.executable).parent)
        path = env.get("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        if bindir not in path.split(":"):
            path = f"{bindir}:{path}"
        env.update({
            "PATH": path,
            "SLURM_CONF": str(lay.slurm_conf),
            "SLURMFT_PROBE_SSH_CONFIG": str(lay.ssh_config),
            "SLURMFT_PROBE_SSH_KEY": str(lay.ssh_key),
            "SLURMFT_PROBE_KNOWN_HOSTS": str(lay.known_hosts),
            "SLURMFT_PROBE_SLURMD_PORT": str(lay.ports[1]),
            "SLURMFT_RESCHEDULE_STATE_DIR": str(lay.slurmft_state_dir),
            "SLURMFT_RESCHEDULE_SSH_ARGS": f"-F {lay.ssh_config}",
            "SLURMFT_CLUSTER_NAME": self.name,
            "SLURMFT_CLUSTER_SHARED": str(lay.shared_dir),
            "SLURMFT_CLUSTER_SUBNET": str(lay.subnet),
        })
        if (self._state or {}).get("rest"):
            # where the REST backend finds slurmrestd (SLURMFT_SLURM_BACKEND=rest picks it)
            rest = rest_paths(lay)
            env.update({"SLURMFT_SLURM_REST_URL": rest.url,
                        "SLURMFT_SLURM_REST_TOKEN_FILE": str(rest.token)})
        return env

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """argv that runs ``argv`` in the controller netns with node names resolvable.

        Run it with ``env=cluster.env()``. The hosts file is bind-mounted over /etc/hosts in a
        private mount namespace of that command only.
        """
        if not argv:
            raise UsageError("no command given: slurmft cluster exec -- CMD ...")
        lay = self.layout
        return ["nsenter", f"--net={NETNS_DIR / lay.netns_ctl}", "unshare", "--uts", "--mount",
                "--propagation", "private",
                *procs.ns_setup_argv(CTL_HOST, str(lay.hosts_file), "ctl", argv)]

    def node_exec_argv(self, node: str, argv: Sequence[str]) -> list[str]:
        """argv that runs ``argv`` ON ``node`` (its netns, host name, /tmp), without SSH."""
        holder = self._proc(f"{node}:holder")
        self.layout.check_node(node)
        if not procs.alive(holder):
            raise ClusterError(f"{node} of cluster {self.name} is not running")
        return ["nsenter", "-t", str(holder.pid), "--net", "--uts", "--mount", "--", *argv]

    def run(self, argv: Sequence[str], *, check: bool = False, timeout: float = 60.0,
            input: str | None = None, cwd: str | os.PathLike | None = None):
        """Run ``argv`` in the cluster (as ``exec``); return the CompletedProcess (text)."""
        return subprocess.run(self.exec_argv(argv), env=self.env(), capture_output=True,
                              text=True, timeout=timeout, check=check, input=input, cwd=cwd)

    def execvpe(self, argv: Sequence[str]) -> None:
        """Replace this process by ``argv`` run in the cluster (the CLI's ``exec``)."""
        full = self.exec_argv(argv)
        self._require_root("exec")
        if not self.is_up():
            raise ClusterError(f"cluster {self.name} is not up")
        os.execvpe(full[0], full, self.env())

    # --- up ------------------------------------------------------------------------------------
    @staticmethod
    def _require_root(what: str) -> None:
        if os.geteuid() != 0:
            raise ClusterError(f"slurmft cluster {what} needs root (network namespaces, "
                               "mounts): run it as root")

    @staticmethod
    def check_binaries(slurm: bool = True) -> None:
        missing = [b for b in NEEDED + (NEEDED_SLURM if slurm else ()) if not _which(b)]
        if missing:
            raise ClusterError(f"missing {', '.join(os.path.basename(m) for m in missing)}: "
                               "run `make install` (Debian packages slurm-wlm munge "
                               "openssh-server openmpi-bin iproute2 util-linux)")

    def up(self, nodes: int = 4, *, slurm: bool = True, epilog: str = "",
           subnet: str | None = None, timeout: float = 30.0,
           slurm_user: str = "root", rest: bool = False) -> UpResult:
        """Build the cluster and wait until it is usable; a failure tears down what was built.

        ``slurm_user``: SlurmUser of slurm.conf (an existing user; slurmctld drops to it and
        runs EpilogSlurmctld as it; it may act on every job and node, as a site's slurm user).
        ``rest``: also run slurmrestd with JWT auth (``netns/rest.py``; ``status()['rest']``
        says where its socket and token are).
        """
        validate_nodes(nodes)
        self._require_root("up")
        self.check_binaries(slurm)
        if rest:
            if not slurm:
                raise UsageError("--rest needs Slurm: drop --no-slurm")
            check_rest_binaries()
        if epilog and not Path(epilog).is_absolute():
            raise UsageError(f"--epilog must be an absolute path, not {epilog!r}")
        if slurm_user != "root":
            import pwd
            try:
                pwd.getpwnam(slurm_user)
            except KeyError:
                raise UsageError(f"SlurmUser {slurm_user!r} does not exist: create it "
                                 f"(useradd --system {slurm_user})") from None
        t0 = time.monotonic()
        with self._lock():
            if self.is_up():
                cur = self.layout
                return UpResult(self.name, list(cur.node_names), str(cur.subnet), 0.0,
                                {}, already_up=True)
            if self._state is not None or self.state_dir.exists():
                log.info("cluster %s: removing leftovers of an earlier run", self.name)
                self._down_locked()
            lay: Layout | None = None
            try:
                # One machine-wide lock while a subnet is chosen and its route added, so two
                # clusters coming up at once never pick the same one.
                with filelock.FileLock(str(self.lock_path(".subnets")), timeout=120):
                    used = self._used_networks()
                    if subnet:
                        net = parse_subnet(subnet)
                        check_subnet(net, nodes, used)
                    else:
                        net = pick_subnet(self.name, nodes, used)
                    lay = Layout(self.name, nodes, net, self.root, slurm=slurm, epilog=epilog,
                                 slurm_user=slurm_user)
                    self._claim(lay, rest=rest)
                self._build(lay, timeout)
            except BaseException as exc:
                if lay is None:
                    raise
                saved = self._save_logs(lay)
                try:
                    self._down_locked()
                except SlurmFTError as cleanup:   # keep the first error; say what is left
                    log.error("cleanup after failed up: %s", cleanup)
                if isinstance(exc, SlurmFTError) and saved:
                    raise type(exc)(str(exc).replace(str(lay.log_dir), str(saved))) from None
                raise
        st = self._state or {}
        started = {k: v["pid"] for k, v in st.get("procs", {}).items()}
        return UpResult(self.name, list(lay.node_names), str(net),
                        round(time.monotonic() - t0, 2), started)

    # --- status --------------------------------------------------------------------------------
    def slurm_client(self, timeout: float = 10.0):
        """A ``CommandSlurmClient`` that runs Slurm's commands inside this cluster."""
        from slurmft.slurm.client import CommandSlurmClient
        from slurmft.slurm.runner import SubprocessRunner
        lay = self.layout
        runner = SubprocessRunner(prefix=["nsenter", f"--net={NETNS_DIR / lay.netns_ctl}"],
                                  env={"SLURM_CONF": str(lay.slurm_conf)})
        return CommandSlurmClient(runner=runner, timeout=timeout)

    def slurm_view(self, lay: Layout | None = None) -> dict[str, str]:
        """{node: state} from ``sinfo --json`` in the controller netns, flags appended with '+'
        (``idle``, ``idle+NOT_RESPONDING``, ``down+DRAIN``); {} if Slurm does not answer."""
        lay = lay or self.layout
        if not lay.slurm:
            return {}
        try:
            nodes = self.slurm_client().nodes()
        except SlurmFTError as exc:
            log.debug("sinfo in cluster %s: %s", self.name, exc)
            return {}
        return {n.name: "+".join([n.state, *n.flags]) for n in nodes}

    def status(self) -> dict:
        """Nodes, addresses, daemon pids and whether they run, and Slurm's view of each node."""
        st = self._load()
        if not st:
            return {"name": self.name, "up": False}
        lay = self._layout_from(st)
        view = self.slurm_view(lay) if self.is_up() else {}
        nodes = []
        ctl = {"name": CTL_HOST, "address": lay.ctl_ip, "netns": lay.netns_ctl, "daemons": {}}
        for key, d in st.get("procs", {}).items():
            host, daemon = key.split(":")
            if host == "ctl":
                p = Proc.from_dict(d)
                ctl["daemons"][daemon] = {"pid": p.pid, "state": procs.state(p)}
        for n in lay.node_names:
            daemons = {}
            for daemon in ("holder", "sshd", "slurmd"):
                p = self._proc(f"{n}:{daemon}")
                if p:
                    daemons[daemon] = {"pid": p.pid, "state": procs.state(p)}
            nodes.append(asdict(NodeStatus(n, lay.ip(n), lay.netns(n), daemons,
                                           view.get(n, ""), self._link_state(lay, n))))
        rest = ({"url": rest_paths(lay).url, "token_file": str(rest_paths(lay).token),
                 "user": "root", "log": str(rest_paths(lay).log)} if st.get("rest") else None)
        return {"name": self.name, "up": self.is_up(), "subnet": str(lay.subnet),
                "slurm": lay.slurm, "rest": rest, "state_dir": str(lay.state_dir),
                "shared_dir": str(lay.shared_dir), "slurm_conf": str(lay.slurm_conf),
                "ssh_config": str(lay.ssh_config), "controller": ctl, "nodes": nodes}

    def _link_state(self, lay: Layout, node: str) -> str:
        if not (NETNS_DIR / lay.netns_ctl).exists():
            return ""
        cp = procs.run(["ip", "-n", lay.netns_ctl, "-j", "link", "show", lay.veth(node)],
                       check=False, what="ip link")
        try:
            flags = json.loads(cp.stdout)[0].get("flags", [])
        except (ValueError, IndexError):
            return ""
        return "up" if "UP" in flags else "down"

    # --- faults --------------------------------------------------------------------------------
    def fault(self, node: str, fault: Fault | str) -> str:
        """Inject ``fault`` (one of ``self.faults``) on ``node``; return what was done."""
        fault = Fault.parse(fault, self.faults)
        self._require_root("fault")
        with self._lock():
            if not self.is_up():
                raise ClusterError(f"cluster {self.name} is not up")
            lay = self.layout
            lay.check_node(node)
            if fault.needs_slurm and not lay.slurm:
                raise ClusterError(f"cluster {self.name} runs without Slurm (--no-slurm)")
            return FAULT_HANDLERS[fault](self, lay, node)

    def job_pids(self, node: str) -> list[int]:
        """Job processes on ``node``: what runs under its slurmstepd or its sshd sessions.

        slurmd double-forks slurmstepd (it is re-parented away from slurmd), so steps are
        found as slurmstepd processes in the node's network namespace; their descendants are
        the job's tasks. Processes launched over SSH (mpirun's rsh launcher) are the
        non-sshd descendants of the node's sshd.
        """
        lay = self.layout
        ino = procs.ns_inode(NETNS_DIR / lay.netns(node))
        ppid_of = procs.parents()
        in_ns = [p for p in ppid_of if procs.ns_inode(f"/proc/{p}/ns/net") == ino]
        stepds = [p for p in in_ns if procs.comm(p) == "slurmstepd"]
        out = procs.descendants(stepds, ppid_of)
        sshd = self._proc(f"{node}:sshd")
        if procs.alive(sshd):
            out |= {p for p in procs.descendants([sshd.pid], ppid_of)
                    if procs.comm(p) not in ("sshd", "sshd-session")}
        return sorted(p for p in out if procs.comm(p) != "slurmstepd")

    # --- down ----------------------------------------------------------------------------------
    def down(self) -> list[str]:
        """Stop everything the cluster started and remove its namespaces, route and state.

        Safe to call twice. Returns what was removed (empty when there was nothing).
        """
        self._require_root("down")
        with self._lock():
            return self._down_locked()

    def _down_locked(self) -> list[str]:
        st = self._load()
        if st is None:
            if self.state_dir.exists():
                shutil.rmtree(self.state_dir)
                return [f"state {self.state_dir}"]
            return []
        done: list[str] = []
        lay_ns = [ns for ns in st.get("netns", []) if (NETNS_DIR / ns).exists()]
        inodes = {procs.ns_inode(NETNS_DIR / ns) for ns in lay_ns} - {None}
        # Every process in the cluster's namespaces: daemons, job steps, exec'd commands.
        ppid_of = procs.parents()
        mine = procs.ancestors(os.getpid(), ppid_of)
        victims = [p for p in procs.pids_in_netns(inodes) if p not in mine]
        recorded = [Proc.from_dict(d) for d in st.get("procs", {}).values()]
        targets = [procs.Proc(p, procs.start_time(p) or -1) for p in victims]
        targets += [p for p in recorded if procs.alive(p) and p.pid not in victims]
        for p in targets:
            procs.signal_proc(p, signal.SIGKILL)
        left = procs.wait_gone(targets, 10)
        if targets:
            done.append(f"{len(targets) - len(left)} processes")
        if left:
            raise ClusterError(f"processes {' '.join(str(p.pid) for p in left)} of cluster "
                               f"{self.name} did not exit: state kept in {self.state_dir}")
        if lay_ns:
            procs.run(["ip", "-force", "-batch", "-"],
                      input="".join(f"netns del {ns}\n" for ns in lay_ns), check=False,
                      what="ip netns del")
            still = [ns for ns in lay_ns if (NETNS_DIR / ns).exists()]
            if still:
                raise ClusterError(f"could not remove namespaces {', '.join(still)}")
            done.append(f"{len(lay_ns)} namespaces")
        if st.get("route"):
            cp = procs.run(["ip", "route", "del", "unreachable", st["subnet"]], check=False)
            if cp.returncode == 0:
                done.append(f"route unreachable {st['subnet']}")
        shutil.rmtree(self.state_dir, ignore_errors=True)
        done.append(f"state {self.state_dir}")
        self._state = None
        return done
