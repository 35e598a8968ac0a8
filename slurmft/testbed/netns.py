"""The local cluster itself: build it, run commands in it, break it, tear it down."""

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

from slurmft.core.errors import ClusterError, SlurmFTError, UsageError
from slurmft.core.log import get_logger
from slurmft.testbed import procs
from slurmft.testbed.layout import (
    CTL_HOST, DEFAULT_NAME, DEFAULT_ROOT, Layout, check_subnet, parse_networks, parse_subnet,
    pick_subnet, validate_name, validate_nodes,
)
from slurmft.testbed.procs import Proc

log = get_logger(__name__)

FAULT_ACTIONS = ("kill-slurmd", "restart-slurmd", "link-down", "link-up", "stop-sshd",
                 "start-sshd", "freeze-sshd", "thaw-sshd", "kill-job-procs")
NEEDED = ("ip", "nsenter", "unshare", "mount", "hostname", "sleep", "ssh-keygen", "/usr/sbin/sshd")
NEEDED_SLURM = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd", "sinfo")
NETNS_DIR = Path("/run/netns")


def _paths_jobs_need() -> list[str]:
    """The folder holding the slurmft package (its examples/ and templates/ are package data)
    and this Python's prefix (the venv): nodes must see them at the same path even when they
    live under /tmp, which nodes privatise."""
    import slurmft
    return [str(Path(slurmft.__file__).resolve().parent.parent), sys.prefix]


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


class Cluster:
    """A named local cluster; its state lives in ``<root>/<name>``.

    Construct it with a name, then ``up()``; or construct it for a running cluster and use
    it (properties read the recorded state).
    """

    def __init__(self, name: str = DEFAULT_NAME, root: str | os.PathLike | None = None) -> None:
        self.name = validate_name(name)
        self.root = Path(root or os.environ.get("SLURMFT_CLUSTER_ROOT") or DEFAULT_ROOT)
        self._state: dict | None = None

    # --- state -------------------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self.root / self.name

    @property
    def _state_file(self) -> Path:
        return self.state_dir / "state.json"

    def lock_path(self, what: str = "") -> Path:
        """A lock file under ``<root>/.locks`` (kept: removing a lock file races its users)."""
        d = self.root / ".locks"
        d.mkdir(parents=True, exist_ok=True)
        return d / f"{what or self.name}.lock"

    def _lock(self) -> filelock.FileLock:
        return filelock.FileLock(str(self.lock_path()), timeout=120)

    def _load(self) -> dict | None:
        try:
            self._state = json.loads(self._state_file.read_text())
        except FileNotFoundError:
            self._state = None
        except (OSError, ValueError) as exc:
            raise ClusterError(f"cluster state {self._state_file} is unreadable ({exc}): "
                               f"run `slurmft cluster down --name {self.name}`") from None
        return self._state

    def _save(self) -> None:
        assert self._state is not None
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._state, indent=1))
        os.replace(tmp, self._state_file)

    def _layout_from(self, st: Mapping) -> Layout:
        return Layout(name=st["name"], nodes=st["nodes"], subnet=st["subnet"], root=self.root,
                      slurm=st["slurm"], epilog=st.get("epilog", ""))

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

    def _used_networks(self) -> list:
        routes = json.loads(procs.run(["ip", "-j", "-4", "route", "show", "table", "all"],
                                      what="ip route").stdout or "[]")
        addrs = json.loads(procs.run(["ip", "-j", "-4", "addr"], what="ip addr").stdout or "[]")
        used = parse_networks(routes) + parse_networks(addrs)
        # Subnets recorded by other clusters (their route may be gone after a crash).
        if self.root.is_dir():
            for sf in self.root.glob("*/state.json"):
                try:
                    used.append(parse_subnet(json.loads(sf.read_text())["subnet"]))
                except (OSError, ValueError, KeyError, SlurmFTError):
                    continue
        return used

    def up(self, nodes: int = 4, *, slurm: bool = True, epilog: str = "",
           subnet: str | None = None, timeout: float = 30.0) -> UpResult:
        """Build the cluster and wait until it is usable; a failure tears down what was built."""
        validate_nodes(nodes)
        self._require_root("up")
        self.check_binaries(slurm)
        if epilog and not Path(epilog).is_absolute():
            raise UsageError(f"--epilog must be an absolute path, not {epilog!r}")
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
                    lay = Layout(self.name, nodes, net, self.root, slurm=slurm, epilog=epilog)
                    self._claim(lay)
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

    def _save_logs(self, lay: Layout) -> Path | None:
        """Keep a failed up's logs (the state dir goes) in ``<root>/<name>.failed-up-logs``."""
        if not lay.log_dir.is_dir():
            return None
        dest = self.root / f"{self.name}.failed-up-logs"
        shutil.rmtree(dest, ignore_errors=True)
        try:
            shutil.copytree(lay.log_dir, dest)
        except OSError:
            return None
        return dest

    def _claim(self, lay: Layout) -> None:
        """Record the cluster, then route its subnet to nowhere in the root namespace."""
        for d in (lay.state_dir, lay.etc_dir, lay.ssh_dir, lay.log_dir, lay.run_dir,
                  lay.shared_dir, lay.slurmft_state_dir, lay.spool_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._state = {"name": lay.name, "nodes": lay.nodes, "subnet": str(lay.subnet),
                       "slurm": lay.slurm, "epilog": lay.epilog, "complete": False,
                       "route": False, "netns": [], "procs": {}, "created": time.time()}
        self._save()
        procs.run(["ip", "route", "add", "unreachable", str(lay.subnet)], what="ip route add")
        self._state["route"] = True
        self._save()

    def _build(self, lay: Layout, timeout: float) -> None:
        # Network: root has only the unreachable route; bridge and veths live in namespaces.
        self._state["netns"] = lay.all_netns()
        self._save()
        batch = [f"netns add {ns}" for ns in lay.all_netns()]
        batch += [f"link add {lay.veth(n)} netns {lay.netns_ctl} type veth peer name eth0 "
                  f"netns {lay.netns(n)}" for n in lay.node_names]
        procs.run(["ip", "-batch", "-"], input="\n".join(batch) + "\n", what="ip netns/veth")
        ctl = ["link set lo up", "link add br0 type bridge",
               f"addr add {lay.ctl_ip}/{lay.prefixlen} dev br0", "link set br0 up"]
        for n in lay.node_names:
            ctl += [f"link set {lay.veth(n)} master br0", f"link set {lay.veth(n)} up"]
        self._ns_ip(lay.netns_ctl, ctl)
        node_cmds = []
        for n in lay.node_names:
            node_cmds.append(self._ns_ip_argv(lay.netns(n), [
                "link set lo up", f"addr add {lay.ip(n)}/{lay.prefixlen} dev eth0",
                "link set eth0 up"]))
        self._run_parallel(node_cmds, "node network setup")
        self._write_files(lay)
        # One holder per node keeps its uts+mount namespace (host name, /etc/hosts, private
        # /tmp and /run); sshd and slurmd join it, so ssh sessions and job steps share /tmp.
        for n in lay.node_names:
            self._set_proc(f"{n}:holder", procs.spawn(
                ["nsenter", f"--net={NETNS_DIR / lay.netns(n)}", "unshare", "--uts", "--mount",
                 "--propagation", "private",
                 *procs.ns_setup_argv(n, str(lay.hosts_file), "node", ["sleep", "infinity"],
                                      hosttmp=str(lay.state_dir / "hosttmp" / n),
                                      keep=procs.paths_under_tmp(_paths_jobs_need()))],
                lay.log(f"holder-{n}")))
        self._wait(lambda: all(procs.comm(self._proc(f"{n}:holder").pid) == "sleep"
                               or not procs.alive(self._proc(f"{n}:holder"))
                               for n in lay.node_names), 10, "node namespaces")
        for n in lay.node_names:
            self._check_alive(f"{n}:holder", lay.log(f"holder-{n}"))
        for n in lay.node_names:
            self._start_sshd(lay, n)
        if lay.slurm:
            self._set_proc("ctl:munged", procs.spawn(
                ["nsenter", f"--net={NETNS_DIR / lay.netns_ctl}", "/usr/sbin/munged",
                 "--foreground", "--force", f"--socket={lay.munge_socket}",
                 f"--key-file={lay.munge_key}", f"--pid-file={lay.run_dir / 'munged.pid'}",
                 f"--log-file={lay.log('munged')}", f"--seed-file={lay.munge_dir / 'seed'}"],
                lay.log("munged-out")))
            self._wait(lambda: lay.munge_socket.exists()
                       or not procs.alive(self._proc("ctl:munged")), 10, "munged")
            self._check_alive("ctl:munged", lay.log("munged"))
            self._start_slurmctld(lay)
            for n in lay.node_names:
                self._start_slurmd(lay, n)
        # Ready: every sshd has written its pid file (it binds first), Slurm shows all idle.
        self._wait(lambda: self._sshd_ready(lay), timeout, "sshd on all nodes")
        if lay.slurm:
            self._wait(lambda: self._slurm_ready(lay), timeout, "all nodes idle in sinfo",
                       log_hint=lay.log("slurmctld"))
        self._state["complete"] = True
        self._save()

    def _sshd_ready(self, lay: Layout) -> bool:
        for n in lay.node_names:
            self._check_alive(f"{n}:sshd", lay.log(f"sshd-{n}"))
            if not (lay.run_dir / f"sshd-{n}.pid").exists():
                return False
        return True

    def _slurm_ready(self, lay: Layout) -> bool:
        self._check_alive("ctl:slurmctld", lay.log("slurmctld"))
        for n in lay.node_names:
            self._check_alive(f"{n}:slurmd", lay.log(f"slurmd-{n}"))
        views = self.slurm_view(lay)
        return bool(views) and all(views.get(n, "").startswith("idle") for n in lay.node_names)

    def _write_files(self, lay: Layout) -> None:
        lay.hosts_file.write_text(lay.hosts_text())
        lay.ssh_config.write_text(lay.ssh_config_text())
        keygens = [["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{lay.name}",
                    "-f", str(lay.ssh_key)]]
        keygens += [["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", n, "-f",
                     str(lay.host_key(n))] for n in lay.node_names]
        self._run_parallel(keygens, "ssh-keygen")
        lay.authorized_keys.write_text(Path(f"{lay.ssh_key}.pub").read_text())
        pubs = {n: Path(f"{lay.host_key(n)}.pub").read_text() for n in lay.node_names}
        lay.known_hosts.write_text(lay.known_hosts_text(pubs))
        for n in lay.node_names:
            lay.sshd_config(n).write_text(lay.sshd_config_text(n))
        if lay.slurm:
            lay.munge_dir.mkdir(mode=0o711, exist_ok=True)
            os.chmod(lay.munge_dir, 0o711)
            fd = os.open(lay.munge_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(os.urandom(1024))
            lay.slurm_conf.write_text(lay.slurm_conf_text())
            (lay.spool_dir / "ctld").mkdir(parents=True, exist_ok=True)
            for n in lay.node_names:
                (lay.spool_dir / n).mkdir(parents=True, exist_ok=True)

    def _start_sshd(self, lay: Layout, node: str) -> None:
        pidfile = lay.run_dir / f"sshd-{node}.pid"
        pidfile.unlink(missing_ok=True)
        holder = self._proc(f"{node}:holder")
        self._set_proc(f"{node}:sshd", procs.spawn(
            ["nsenter", "-t", str(holder.pid), "--net", "--uts", "--mount", "--",
             "/usr/sbin/sshd", "-D", "-f", str(lay.sshd_config(node)), "-E",
             str(lay.log(f"sshd-{node}"))], lay.log(f"sshd-{node}-out")))

    def _start_slurmctld(self, lay: Layout) -> None:
        self._set_proc("ctl:slurmctld", procs.spawn(
            ["nsenter", f"--net={NETNS_DIR / lay.netns_ctl}", "unshare", "--uts", "--mount",
             "--propagation", "private",
             *procs.ns_setup_argv(CTL_HOST, str(lay.hosts_file), "ctl",
                                  ["/usr/sbin/slurmctld", "-D", "-f", str(lay.slurm_conf)])],
            lay.log("slurmctld-out"), env=self.env()))

    def _start_slurmd(self, lay: Layout, node: str) -> None:
        holder = self._proc(f"{node}:holder")
        self._set_proc(f"{node}:slurmd", procs.spawn(
            ["nsenter", "-t", str(holder.pid), "--net", "--uts", "--mount", "--",
             "/usr/sbin/slurmd", "-D", "-N", node, "-f", str(lay.slurm_conf)],
            lay.log(f"slurmd-{node}-out"), env=self.env()))

    def _check_alive(self, key: str, log_file: Path) -> None:
        proc = self._proc(key)
        if proc is not None and not procs.alive(proc):
            rc = procs.exited_rc(proc)
            # The daemon's own log, else what it wrote to stderr (<what>-out.log).
            for f in (log_file, log_file.with_name(log_file.stem + "-out.log")):
                last = procs.tail(f)
                if last:
                    log_file = f
                    break
            raise ClusterError(f"{key.replace(':', ' ')} exited"
                               f"{f' (rc={rc})' if rc is not None else ''}: see {log_file}"
                               f"{f': {last}' if last else ''}")

    @staticmethod
    def _wait(cond, timeout: float, what: str, log_hint: Path | None = None) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                hint = f": see {log_hint}" if log_hint else ""
                raise ClusterError(f"timed out after {timeout:g}s waiting for {what}{hint}")
            time.sleep(0.05)

    @staticmethod
    def _ns_ip_argv(netns: str, cmds: Sequence[str]) -> tuple[list[str], str]:
        return (["nsenter", f"--net={NETNS_DIR / netns}", "ip", "-batch", "-"],
                "\n".join(cmds) + "\n")

    def _ns_ip(self, netns: str, cmds: Sequence[str]) -> None:
        argv, text = self._ns_ip_argv(netns, cmds)
        procs.run(argv, input=text, what=f"ip in {netns}")

    @staticmethod
    def _run_parallel(cmds: Sequence, what: str) -> None:
        """Run argv lists (or (argv, stdin) pairs) at once; ClusterError if any fails."""
        running = []
        for cmd in cmds:
            argv, text = cmd if isinstance(cmd, tuple) else (cmd, None)
            p = subprocess.Popen(argv, stdin=subprocess.PIPE if text else subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if text:
                p.stdin.write(text)
                p.stdin.close()
            running.append((argv, p))
        errors = []
        for argv, p in running:
            out = p.stdout.read()
            if p.wait(timeout=30) != 0:
                errors.append(f"{' '.join(argv[:3])}: {out.strip()[-200:]}")
            p.stdout.close()
        if errors:
            raise ClusterError(f"{what} failed: {errors[0]}")

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
        return {"name": self.name, "up": self.is_up(), "subnet": str(lay.subnet),
                "slurm": lay.slurm, "state_dir": str(lay.state_dir),
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
    def fault(self, node: str, action: str) -> str:
        """Inject ``action`` (one of FAULT_ACTIONS) on ``node``; return what was done."""
        if action not in FAULT_ACTIONS:
            raise UsageError(f"unknown fault {action!r}: use one of {', '.join(FAULT_ACTIONS)}")
        self._require_root("fault")
        with self._lock():
            if not self.is_up():
                raise ClusterError(f"cluster {self.name} is not up")
            lay = self.layout
            lay.check_node(node)
            if action in ("kill-slurmd", "restart-slurmd") and not lay.slurm:
                raise ClusterError(f"cluster {self.name} runs without Slurm (--no-slurm)")
            return getattr(self, "_fault_" + action.replace("-", "_"))(lay, node)

    def _signal(self, key: str, sig: int) -> Proc:
        proc = self._proc(key)
        if proc is None or not procs.signal_proc(proc, sig):
            raise ClusterError(f"{key.replace(':', ' ')} is not running")
        return proc

    def _fault_kill_slurmd(self, lay: Layout, node: str) -> str:
        p = self._signal(f"{node}:slurmd", signal.SIGKILL)
        procs.wait_gone([p], 5)
        return f"killed slurmd on {node} (pid {p.pid})"

    def _fault_restart_slurmd(self, lay: Layout, node: str) -> str:
        old = self._proc(f"{node}:slurmd")
        if old and procs.signal_proc(old, signal.SIGTERM):
            if procs.wait_gone([old], 5):
                procs.signal_proc(old, signal.SIGKILL)
                procs.wait_gone([old], 5)
        self._start_slurmd(lay, node)
        time.sleep(0.1)
        self._check_alive(f"{node}:slurmd", lay.log(f"slurmd-{node}"))
        return f"started slurmd on {node} (pid {self._proc(f'{node}:slurmd').pid})"

    def _fault_link_down(self, lay: Layout, node: str) -> str:
        procs.run(["ip", "-n", lay.netns_ctl, "link", "set", lay.veth(node), "down"])
        return f"link of {node} down"

    def _fault_link_up(self, lay: Layout, node: str) -> str:
        procs.run(["ip", "-n", lay.netns_ctl, "link", "set", lay.veth(node), "up"])
        return f"link of {node} up"

    def _fault_stop_sshd(self, lay: Layout, node: str) -> str:
        p = self._proc(f"{node}:sshd")
        if p:
            procs.signal_proc(p, signal.SIGCONT)
        p = self._signal(f"{node}:sshd", signal.SIGTERM)
        procs.wait_gone([p], 5)
        return f"stopped sshd on {node} (pid {p.pid})"

    def _fault_start_sshd(self, lay: Layout, node: str) -> str:
        old = self._proc(f"{node}:sshd")
        if procs.alive(old):
            return f"sshd on {node} already running (pid {old.pid})"
        self._start_sshd(lay, node)
        self._wait(lambda: (lay.run_dir / f"sshd-{node}.pid").exists()
                   or not procs.alive(self._proc(f"{node}:sshd")), 10, f"sshd on {node}")
        self._check_alive(f"{node}:sshd", lay.log(f"sshd-{node}"))
        return f"started sshd on {node} (pid {self._proc(f'{node}:sshd').pid})"

    def _fault_freeze_sshd(self, lay: Layout, node: str) -> str:
        p = self._signal(f"{node}:sshd", signal.SIGSTOP)
        procs.wait_for_state(p, "stopped", 5)
        return f"froze sshd on {node} (pid {p.pid}, SIGSTOP)"

    def _fault_thaw_sshd(self, lay: Layout, node: str) -> str:
        p = self._signal(f"{node}:sshd", signal.SIGCONT)
        return f"thawed sshd on {node} (pid {p.pid}, SIGCONT)"

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

    def _fault_kill_job_procs(self, lay: Layout, node: str) -> str:
        return procs.kill_job_procs(node, self.job_pids(node))

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
