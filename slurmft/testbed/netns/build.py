"""Building a namespace cluster: its subnet claim, network, files and daemons (``Builder``,
mixed into ``Cluster``; ``Cluster.up`` drives it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from slurmft.core.errors import ClusterError, SlurmFTError
from slurmft.testbed import procs
from slurmft.testbed.layout import CTL_HOST, Layout, parse_networks, parse_subnet
from slurmft.testbed.netns import rest as restd

NETNS_DIR = Path("/run/netns")


def _paths_jobs_need() -> list[str]:
    """The folder holding the slurmft package (its examples/ and templates/ are package data)
    and this Python's prefix (the venv): nodes must see them at the same path even when they
    live under /tmp, which nodes privatise."""
    import slurmft
    return [str(Path(slurmft.__file__).resolve().parent.parent), sys.prefix]


class Builder:
    """The build steps of ``Cluster`` (it provides ``_state``, ``_save``, ``_proc``...)."""

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

    def _claim(self, lay: Layout, rest: bool = False) -> None:
        """Record the cluster, then route its subnet to nowhere in the root namespace.
        ``rest``: the cluster runs slurmrestd too (``netns/rest.py``)."""
        for d in (lay.state_dir, lay.etc_dir, lay.ssh_dir, lay.log_dir, lay.run_dir,
                  lay.shared_dir, lay.slurmft_state_dir, lay.spool_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._state = {"name": lay.name, "nodes": lay.nodes, "subnet": str(lay.subnet),
                       "slurm": lay.slurm, "epilog": lay.epilog,
                       "slurm_user": lay.slurm_user, "rest": rest, "complete": False,
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
        if lay.slurm and self._state.get("rest"):
            self._start_slurmrestd(lay)
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
            conf = lay.slurm_conf_text()
            if self._state.get("rest"):
                conf += restd.jwt_conf_text(lay)
                restd.write_jwt_key(lay)
            lay.slurm_conf.write_text(conf)
            (lay.spool_dir / "ctld").mkdir(parents=True, exist_ok=True)
            if lay.slurm_user != "root":
                self._own_ctld_files(lay)
            for n in lay.node_names:
                (lay.spool_dir / n).mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _own_ctld_files(lay: Layout) -> None:
        """What slurmctld writes once it runs as SlurmUser: its state dir, log and pid file."""
        import pwd

        try:
            pw = pwd.getpwnam(lay.slurm_user)
        except KeyError:
            raise ClusterError(f"SlurmUser {lay.slurm_user} does not exist: create it "
                               f"(useradd --system {lay.slurm_user})") from None
        owned = [lay.spool_dir / "ctld", lay.log("slurmctld"), lay.run_dir / "slurmctld.pid"]
        for path in owned[1:]:
            path.touch()
        for path in owned:
            os.chown(path, pw.pw_uid, pw.pw_gid)

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

    def _start_slurmrestd(self, lay: Layout) -> None:
        """slurmrestd on the cluster's unix socket, then root's token (``netns/rest.py``)."""
        paths = restd.rest_paths(lay)
        restd.make_socket_dir(lay)
        self._set_proc("ctl:slurmrestd", procs.spawn(
            restd.restd_argv(lay, str(NETNS_DIR / lay.netns_ctl)), paths.log,
            env=restd.restd_env(self.env())))
        self._wait(lambda: paths.socket.exists() or not procs.alive(self._proc("ctl:slurmrestd")),
                   10, "slurmrestd's socket", log_hint=paths.log)
        self._check_alive("ctl:slurmrestd", paths.log)
        restd.issue_token(lay, self.exec_argv, self.env())

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
