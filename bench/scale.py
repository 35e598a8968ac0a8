"""Scale bench: one sweep of 10,000 real addresses on this machine, new prober against today's.

    sudo .venv/bin/python bench/scale.py [--hosts 10000] [--silent 1000] [--frozen 100]
                                         [--timeout 1] [--baseline-hosts 1000] [--json FILE]
    sudo .venv/bin/python bench/scale.py --quick          # 1,000 hosts, for CI
    sudo .venv/bin/python bench/scale.py --cleanup        # leftovers of a killed run

The test bed (all of it inside two network namespaces this script creates and deletes):

- ``sftscale-hosts``: every answering host address (10.200.0.0/18, a /32 each) on a dummy
  interface (on the namespace's loopback where the kernel has no dummy driver), so the kernel
  answers their pings. Port 22 of all of them: an epoll listener (``responder``) that hands
  every real SSH client (one that speaks first, as OpenSSH and paramiko do) to OpenSSH's
  ``sshd -i`` with the bed's own config and host key, so every login is a real OpenSSH login,
  and answers a banner check with OpenSSH's identification line. Why not one ``sshd -D``: it
  forks per connection and served about 650 banners a second here (``--plain-sshd`` shows it),
  where a real cluster has one sshd per node. *Frozen* hosts: nftables redirects their port 22
  to a real second sshd (16 ports, 2200-2215) stopped with SIGSTOP, so TCP connects and no
  banner ever comes. *Silent* hosts: routed into this namespace, assigned nowhere, forwarding
  off: their packets vanish with no answer, as a dead node's do (checked at start: a ping times
  out rather than failing fast).
- ``sftscale-prober``: the other end of a veth, a route to 10.200.0.0/18 through it and nothing
  else. Every prober runs here, in a private mount namespace whose /etc/hosts is the bed's
  hosts file (node00001 ... node10000); the machine's /etc/hosts is never touched.

The root namespace gets only ``unreachable 10.200.0.0/17`` (a stray packet fails locally) and
no link into the bed. Every process is started by this script and stopped by PID (start time
checked); the bed is torn down on exit, on error and on Ctrl-C/SIGTERM/SIGHUP. It refuses to
run while its namespaces (or its state file, /run/sftscale-bench.json) exist.

Measured, in the same run: the new prober (FanoutProber with its sweep), today's prober
(FanoutProber with probe.sweep_min_hosts=0: ping + paramiko login per host, 256 threads) on
``--baseline-hosts`` of them, and the sequential ``ping -c1 -W`` loop on ``--loop-hosts``,
each with the bed's share of silent and frozen hosts. Each probe runs in its own process with
RLIMIT_NOFILE at 1,024: wall time of ``probe()``, CPU (getrusage, children included), peak
open descriptors (sampled every 20 ms), peak RSS. Exit status 1 when the sweep misses a
target, 2 when the bench cannot run.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NS_HOSTS = "sftscale-hosts"
NS_PROBER = "sftscale-prober"
NETNS_DIR = Path("/run/netns")
SUPERNET = ipaddress.IPv4Network("10.200.0.0/17")     # unreachable in the root namespace
HOST_NET = ipaddress.IPv4Network("10.200.0.0/18")     # node addresses
PROBER_IP, HOSTS_IP = "10.200.64.1", "10.200.64.2"    # the veth, a /30 of its own
FROZEN_PORTS = list(range(2200, 2216))                # sshd listens on at most 16 sockets
RESPONDERS = 2                                        # port-22 listeners (one per core)
STATE_FILE = Path("/run/sftscale-bench.json")         # what a killed run left: pids, route, dir
CLEANUP_CMD = "sudo .venv/bin/python bench/scale.py --cleanup"

# Runs in a fresh mount namespace inside the hosts netns: a private /run with /run/sshd, and
# root's ~/.bashrc hidden (bash sources it for SSH commands; root's runs pyenv here). Then exec.
SSHD_NS_SH = ('set -e; mount -t tmpfs -o mode=755 tmpfs /run; mkdir -p /run/sshd; '
              'if [ -f /root/.bashrc ]; then mount --bind /dev/null /root/.bashrc; fi; '
              'exec "$@"')
# Runs in a fresh mount namespace inside the prober netns: the bed's hosts file as /etc/hosts.
HOSTS_NS_SH = 'set -e; mount --bind "$1" /etc/hosts; shift; exec "$@"'

SSHD_CONFIG = """\
# sshd of the slurmft scale bench ({role}); one process answers every address.
{listen}
HostKey {host_key}
PidFile {pid_file}
AuthorizedKeysFile {authorized_keys}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
UseDNS no
PrintMotd no
PrintLastLog no
MaxStartups 20000
MaxSessions 10
LogLevel ERROR
"""


# ------------------------------------------------------------------ the port-22 listener
def responder(config: str, log: str, hold: float) -> int:
    """Port 22 of every answering address (runs in the hosts netns, in sshd's mount namespace).

    One forking OpenSSH serves about 650 banners a second on these 2 cores (measured: 236 in
    0.36 s, then its fixed listen backlog of 128 overflows); a real cluster has one sshd per
    node. So this epoll loop stands in for 9,000 independent sshds: a client that speaks first
    (OpenSSH and paramiko send their identification at once) is handed, socket and all, to a
    real ``sshd -i`` with the bed's config, so every login is OpenSSH's; a client that waits
    (a banner check) gets OpenSSH's identification line after ``hold`` seconds, then the
    connection closes. ``RESPONDERS`` of these share port 22 (SO_REUSEPORT). Frozen addresses
    never get here (nftables sends them to the stopped sshd).
    """
    import selectors
    import socket

    banner = (subprocess.run(["/usr/sbin/sshd", "-V"], capture_output=True, text=True)
              .stderr.split(",")[0].strip() or "OpenSSH_9.2p1")
    line = f"SSH-2.0-{banner.split()[0]}\r\n".encode()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)   # handed-off sshds are reaped by the kernel
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)   # RESPONDERS share port 22
    lsock.bind(("0.0.0.0", 22))
    lsock.listen(16384)
    lsock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ, None)
    waiting: dict[int, tuple[float, socket.socket]] = {}   # fd -> (accepted at, conn)
    order: deque[tuple[float, int, socket.socket]] = deque()
    print("listening", flush=True)
    while True:
        now = time.monotonic()
        while order and order[0][0] + hold <= now:
            _, fd, conn = order.popleft()
            entry = waiting.get(fd)
            if entry is None or entry[1] is not conn:   # handed off, fd reused since
                continue
            del waiting[fd]
            try:
                entry[1].send(line)    # then close: a banner check needs nothing more
            except OSError:
                pass
            sel.unregister(entry[1])
            entry[1].close()
        wait = max(0.0, order[0][0] + hold - now) if order else None
        for key, _ in sel.select(wait):
            if key.data is None:
                while True:
                    try:
                        conn, _addr = lsock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    conn.setblocking(False)
                    t = time.monotonic()
                    waiting[conn.fileno()] = (t, conn)
                    order.append((t, conn.fileno(), conn))
                    sel.register(conn, selectors.EVENT_READ, 1)
                continue
            # the client spoke first: a real SSH client, give it a real sshd
            _, conn = waiting.pop(key.fd)
            sel.unregister(conn)
            conn.setblocking(True)
            subprocess.Popen(["/usr/sbin/sshd", "-i", "-f", config, "-E", log],
                             stdin=conn.fileno(), stdout=conn.fileno(),
                             stderr=subprocess.DEVNULL, close_fds=True)
            conn.close()


class BenchError(Exception):
    """A one-line reason the bench cannot run."""


def host_addresses(n: int) -> list[str]:
    """``n`` addresses in HOST_NET, skipping .0 and .255 (no address looks like a broadcast)."""
    out = []
    for a in HOST_NET.hosts():
        if int(a) & 0xFF not in (0, 255):
            out.append(str(a))
            if len(out) == n:
                return out
    raise BenchError(f"--hosts {n}: at most {len(out)} hosts fit in {HOST_NET}")


def host_name(i: int, width: int = 5) -> str:
    return f"node{i:0{width}d}"


def spread(items: list, count: int, offset: int = 0) -> list:
    """``count`` items spread evenly over ``items`` (deterministic)."""
    if count <= 0:
        return []
    step = len(items) / count
    return [items[int(offset + i * step) % len(items)] for i in range(count)]


def run(argv: list[str], *, input: str | None = None, check: bool = True,
        timeout: float = 120) -> subprocess.CompletedProcess:
    cp = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
    if check and cp.returncode != 0:
        msg = (cp.stderr or cp.stdout).strip().splitlines()
        raise BenchError(f"{' '.join(argv[:5])} failed: {msg[-1] if msg else cp.returncode}")
    return cp


def in_ns(ns: str, argv: list[str]) -> list[str]:
    return ["nsenter", f"--net={NETNS_DIR / ns}", *argv]


def prober_argv(hosts_file: Path, argv: list[str]) -> list[str]:
    """``argv`` in the prober netns, with the bed's hosts file as /etc/hosts."""
    return in_ns(NS_PROBER, ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             HOSTS_NS_SH, "sh", str(hosts_file), *argv])


# ------------------------------------------------------------------ the bed
class Bed:
    """Builds and tears down the namespaces, addresses, nftables rules and sshds."""

    def __init__(self, hosts: int, silent: int, frozen: int, *, plain_sshd: bool = False,
                 hold: float = 0.03) -> None:
        from slurmft.testbed import procs

        self.procs = procs
        if hosts < 1 or silent < 0 or frozen < 0 or silent + frozen > hosts:
            raise BenchError(f"need 1 <= hosts and silent + frozen <= hosts, not hosts={hosts} "
                             f"silent={silent} frozen={frozen}")
        self.addresses = host_addresses(hosts)
        self.width = max(5, len(str(hosts)))
        self.names = [host_name(i + 1, self.width) for i in range(hosts)]
        self.address_of = dict(zip(self.names, self.addresses))
        self.silent = set(spread(self.names, silent))
        rest = [n for n in self.names if n not in self.silent]
        self.frozen = set(spread(rest, frozen, offset=0.5))
        self.plain_sshd = plain_sshd
        self.hold = hold
        self.dir: Path | None = None
        self.state: dict = {"pids": {}, "route": False, "dir": "", "netns": []}

    # paths
    @property
    def hosts_file(self) -> Path:
        return self.dir / "hosts"

    @property
    def key(self) -> Path:
        return self.dir / "id_ed25519"

    def _save(self) -> None:
        STATE_FILE.write_text(json.dumps(self.state))

    def up(self) -> float:
        t0 = time.monotonic()
        self.dir = Path(tempfile.mkdtemp(prefix="sftscale-"))
        self.state["dir"] = str(self.dir)
        self._save()
        self._root_route()
        self._network()
        self._nftables()
        self._files()
        self._sshds()
        self._check_silent()
        return time.monotonic() - t0

    def _root_route(self) -> None:
        routes = json.loads(run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout
                            or "[]")
        for r in routes:
            dst = r.get("dst", "")
            if dst in ("", "default") or r.get("type") in ("local", "broadcast"):
                continue
            try:
                net = ipaddress.IPv4Network(dst if "/" in dst else f"{dst}/32", strict=False)
            except ValueError:
                continue
            if net.overlaps(SUPERNET):
                raise BenchError(f"{SUPERNET} clashes with the route {dst} on this machine: "
                                 f"a leftover? run `{CLEANUP_CMD}`")
        run(["ip", "route", "add", "unreachable", str(SUPERNET)])
        self.state["route"] = True
        self._save()

    def _network(self) -> None:
        self.state["netns"] = [NS_HOSTS, NS_PROBER]
        self._save()
        run(["ip", "netns", "add", NS_HOSTS])
        run(["ip", "netns", "add", NS_PROBER])
        # The veth is created with each end directly in its namespace: nothing in the root one.
        run(["ip", "link", "add", "vp", "netns", NS_PROBER, "type", "veth", "peer", "name",
             "vh", "netns", NS_HOSTS])
        run(in_ns(NS_PROBER, ["ip", "-batch", "-"]), input="\n".join([
            "link set lo up", f"addr add {PROBER_IP}/30 dev vp", "link set vp up",
            f"route add {HOST_NET} via {HOSTS_IP} dev vp"]) + "\n")
        answering = [self.address_of[n] for n in self.names if n not in self.silent]
        # A dummy interface holds the node addresses; a kernel without the dummy driver (some
        # containers) gets them on the namespace's own loopback, which behaves the same here.
        dummy = run(in_ns(NS_HOSTS, ["ip", "link", "add", "d0", "type", "dummy"]),
                    check=False).returncode == 0
        self.dev = "d0" if dummy else "lo"
        batch = ["link set lo up", f"link set {self.dev} up",
                 f"addr add {HOSTS_IP}/30 dev vh", "link set vh up"]
        batch += [f"addr add {a}/32 dev {self.dev}" for a in answering]
        run(in_ns(NS_HOSTS, ["ip", "-batch", "-"]), input="\n".join(batch) + "\n", timeout=300)
        # Forwarding off (the default of a new netns, set anyway): a packet for an address not
        # assigned here is dropped without an ICMP error, as a dead node would.
        run(in_ns(NS_HOSTS, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"]))
        # Room for a whole sweep's SYNs and echo replies at once.
        for ns in (NS_HOSTS, NS_PROBER):
            run(in_ns(ns, ["sysctl", "-q", "-w", "net.ipv4.tcp_max_syn_backlog=16384",
                           "net.core.somaxconn=16384"]))

    def _nftables(self) -> None:
        if not self.frozen:
            return
        rules = [f"    ip daddr {self.address_of[n]} tcp dport 22 redirect to :{port}"
                 for n, port in zip(sorted(self.frozen),
                                    FROZEN_PORTS * (len(self.frozen) // 16 + 1))]
        frozen = ", ".join(self.address_of[n] for n in sorted(self.frozen))
        lo, hi = FROZEN_PORTS[0], FROZEN_PORTS[-1]
        # Connection tracking only for what NAT needs (the frozen hosts' connections): the
        # other 9,000 connections of a sweep skip it, which saves the bed CPU.
        text = ("table ip sftscale {\n"
                f"  set frozen {{ type ipv4_addr; elements = {{ {frozen} }} }}\n"
                "  chain raw_in {\n    type filter hook prerouting priority raw;\n"
                "    ip daddr @frozen accept\n    notrack\n  }\n"
                "  chain raw_out {\n    type filter hook output priority raw;\n"
                f"    tcp sport {lo}-{hi} accept\n    ip saddr @frozen accept\n"
                "    notrack\n  }\n"
                "  chain pre {\n    type nat hook prerouting priority dstnat; policy accept;\n"
                + "\n".join(rules) + "\n  }\n}\n")
        (self.dir / "frozen.nft").write_text(text)
        run(in_ns(NS_HOSTS, ["nft", "-f", str(self.dir / "frozen.nft")]))

    def _files(self) -> None:
        lines = [f"{self.address_of[n]} {n}" for n in self.names]
        self.hosts_file.write_text("127.0.0.1 localhost\n" + "\n".join(lines) + "\n")
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.dir / "host_key")])
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)])
        (self.dir / "authorized_keys").write_text(Path(f"{self.key}.pub").read_text())
        for role, listen in (("answers", "Port 22\nListenAddress 0.0.0.0"),
                             ("frozen", "\n".join(f"ListenAddress 0.0.0.0:{p}"
                                                  for p in FROZEN_PORTS))):
            (self.dir / f"sshd-{role}.conf").write_text(SSHD_CONFIG.format(
                role=role, listen=listen, host_key=self.dir / "host_key",
                pid_file=self.dir / f"sshd-{role}.pid",
                authorized_keys=self.dir / "authorized_keys"))

    def _spawn_sshd(self, role: str, responder: bool = False, tag: str = ""):
        conf, log = str(self.dir / f"sshd-{role}.conf"), str(self.dir / f"sshd-{role}.log")
        cmd = ([sys.executable, str(Path(__file__).resolve()), "--responder", conf, log,
                "--hold", str(self.hold)] if responder
               else ["/usr/sbin/sshd", "-D", "-f", conf, "-E", log])
        argv = in_ns(NS_HOSTS, ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                SSHD_NS_SH, "sh", *cmd])
        out = self.dir / f"sshd-{role}{tag}-out.log"
        proc = self.procs.spawn(argv, out)
        self.state["pids"][role + tag] = proc.to_dict()
        self._save()
        pid_file = self.dir / f"sshd-{role}.pid"
        deadline = time.monotonic() + 10

        def ready() -> bool:   # sshd writes its pid file once its sockets listen
            if responder:
                return "listening" in out.read_text()
            return pid_file.exists()

        while not ready():
            if not self.procs.alive(proc):
                log = (Path(log).read_text() if Path(log).exists() else out.read_text())
                log = log[-300:].strip()
                raise BenchError(f"sshd ({role}) exited: {log or 'no log'}")
            if time.monotonic() > deadline:
                raise BenchError(f"sshd ({role}) did not start within 10 s")
            time.sleep(0.02)
        return proc

    def _sshds(self) -> None:
        if self.plain_sshd:
            self._spawn_sshd("answers")
        for i in range(0 if self.plain_sshd else RESPONDERS):
            self._spawn_sshd("answers", responder=True, tag=str(i))
        if self.frozen:
            proc = self._spawn_sshd("frozen")
            self.procs.signal_proc(proc, signal.SIGSTOP)
            if not self.procs.wait_for_state(proc, "stopped", 5):
                raise BenchError("the frozen sshd did not stop on SIGSTOP")

    def _check_silent(self) -> None:
        """A silent address must time out, not fail fast; a healthy one must answer."""
        if self.silent:
            target = self.address_of[sorted(self.silent)[0]]
            t0 = time.monotonic()
            cp = run(in_ns(NS_PROBER, ["ping", "-n", "-q", "-c", "1", "-W", "0.5", target]),
                     check=False)
            took = time.monotonic() - t0
            if cp.returncode != 1 or took < 0.4:
                raise BenchError(f"silent address {target} did not time out (rc "
                                 f"{cp.returncode} after {took:.2f}s): the bed is wrong")
        ok = next(n for n in self.names if n not in self.silent)
        cp = run(in_ns(NS_PROBER, ["ping", "-n", "-q", "-c", "1", "-W", "1",
                                   self.address_of[ok]]), check=False)
        if cp.returncode != 0:
            raise BenchError(f"{ok} ({self.address_of[ok]}) does not answer ping: bed broken")

    def down(self) -> list[str]:
        return teardown(self.state)


def teardown(state: dict) -> list[str]:
    """Undo what ``state`` records: our processes by PID (start time checked), the namespaces,
    the root route, the temp dir. Safe to call twice."""
    from slurmft.testbed import procs

    done = []
    mine = [procs.Proc.from_dict(d) for d in state.get("pids", {}).values()]
    # the sshd -i sessions the responder started are ours too (found before it goes)
    kids = procs.descendants([p.pid for p in mine if procs.alive(p)])
    for k in kids:
        st = procs.start_time(k)
        if st is not None:
            mine.append(procs.Proc(k, st))
    killed = []
    for p in mine:
        if procs.alive(p):
            procs.signal_proc(p, signal.SIGKILL)   # a stopped sshd dies of SIGKILL too
            killed.append(str(p.pid))
    if killed:
        done.append(f"{len(killed)} processes ({', '.join(killed[:4])}"
                    f"{', ...' if len(killed) > 4 else ''})")
    procs.wait_gone(mine, 5)
    procs.reap([p.pid for p in mine])
    for ns in state.get("netns", []):
        if (NETNS_DIR / ns).exists():
            run(["ip", "netns", "del", ns], check=False)
            done.append(f"netns {ns}")
    if state.get("route"):
        if run(["ip", "route", "del", "unreachable", str(SUPERNET)], check=False).returncode == 0:
            done.append(f"route unreachable {SUPERNET}")
    if state.get("dir") and Path(state["dir"]).name.startswith("sftscale-"):
        shutil.rmtree(state["dir"], ignore_errors=True)
    STATE_FILE.unlink(missing_ok=True)
    return done


def cleanup_leftovers() -> list[str]:
    """``--cleanup``: what a killed run recorded, else our namespace names alone."""
    try:
        state = json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        state = {}
    state.setdefault("netns", [])
    for ns in (NS_HOSTS, NS_PROBER):
        if (NETNS_DIR / ns).exists() and ns not in state["netns"]:
            state["netns"].append(ns)
    return teardown(state)


# ------------------------------------------------------------------ inner: in the prober netns
LOOP = ('for h in "$@"; do ping -n -q -c 1 -W "$SLURMFT_BENCH_W" "$h" >/dev/null 2>&1; '
        'echo "$h $?"; done')


class FdWatch:
    """Peak open descriptors of this process, sampled every ``every`` seconds."""

    def __init__(self, every: float = 0.02) -> None:
        self.peak = self.count()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(every,), daemon=True)

    @staticmethod
    def count() -> int:
        return len(os.listdir("/proc/self/fd"))

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            self.peak = max(self.peak, self.count())

    def __enter__(self) -> FdWatch:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.count())


def inner(mode: str, names_file: str, timeout: float, key: str, fd_limit: int) -> dict:
    """One probe of the names in ``names_file``; measurements as a dict (printed as JSON)."""
    names = Path(names_file).read_text().split()
    # The target is a hard limit here: a prober that needed more descriptors would fail.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(fd_limit, hard), hard))
    from slurmft.core.config import ProbeConfig
    from slurmft.probe.fanout import FanoutProber

    stats = None
    r0, c0 = (resource.getrusage(resource.RUSAGE_SELF),
              resource.getrusage(resource.RUSAGE_CHILDREN))
    if mode == "loop":
        env = dict(os.environ, SLURMFT_BENCH_W=f"{timeout:g}")
        with FdWatch() as fds:
            t0 = time.monotonic()
            cp = subprocess.run(["bash", "-c", LOOP, "loop", *names], env=env,
                                capture_output=True, text=True, check=True)
            wall = time.monotonic() - t0
        states = {}
        for line in cp.stdout.splitlines():
            h, rc = line.split()
            states[h] = "HEALTHY" if rc == "0" else "UNREACHABLE"
    else:
        cfg = ProbeConfig(timeout=timeout, ssh_key=key, accept_unknown_hosts=True,
                          hosts_file="/etc/hosts" if mode == "sweep" else "",
                          sweep_min_hosts=ProbeConfig().sweep_min_hosts if mode == "sweep"
                          else 0)
        prober = FanoutProber(cfg)
        with FdWatch() as fds:
            t0 = time.monotonic()
            res = prober.probe(names)
            wall = time.monotonic() - t0
        states = {h: r.health.value for h, r in res.items()}
        stats = vars(prober.last_sweep) if prober.last_sweep else None
        if stats is not None:
            stats["full_checks"] = sum("command" in r.checks or "login" in r.checks
                                       for r in res.values())
            stats["full_unfinished"] = sum("login" in r.checks for r in res.values())
        reasons = {h: r.reason for h, r in res.items()}
    r1, c1 = (resource.getrusage(resource.RUSAGE_SELF),
              resource.getrusage(resource.RUSAGE_CHILDREN))
    cpu = sum(b.ru_utime - a.ru_utime + b.ru_stime - a.ru_stime
              for a, b in ((r0, r1), (c0, c1)))
    return {"mode": mode, "hosts": len(names), "wall": wall, "cpu": cpu, "max_fds": fds.peak,
            "rss_mb": max(r1.ru_maxrss, c1.ru_maxrss) / 1024, "states": states,
            "sweep": stats, "reasons": reasons if mode != "loop" else {}}


# ------------------------------------------------------------------ outer: owns the bed
def measure(bed: Bed, mode: str, names: list[str], timeout: float, limit: float) -> dict:
    nf = bed.dir / f"names-{mode}"
    nf.write_text("\n".join(names) + "\n")
    argv = prober_argv(bed.hosts_file, [sys.executable, str(Path(__file__).resolve()),
                                        "--inner", mode, "--names-file", str(nf),
                                        "--timeout", str(timeout), "--key", str(bed.key)])
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=limit, cwd=ROOT)
    if cp.returncode != 0:
        raise BenchError(f"the {mode} probe failed: {cp.stderr.strip()[-400:]}")
    doc = json.loads(cp.stdout.strip().splitlines()[-1])
    doc.update(score(bed, doc["states"], doc.get("reasons") or {}))
    return doc


def score(bed: Bed, states: dict, reasons: dict) -> dict:
    """Per state counts and misclassified hosts against what the bed made of each host."""
    out = {"unreachable_ok": 0, "frozen_ok": 0, "healthy_ok": 0, "misclassified": 0,
           "silent": 0, "frozen": 0, "by_state": {}, "wrong": {}}
    for h, st in states.items():
        out["by_state"][st] = out["by_state"].get(st, 0) + 1
        want = ("UNREACHABLE" if h in bed.silent else
                "UNRESPONSIVE" if h in bed.frozen else "HEALTHY")
        kind = {"UNREACHABLE": "unreachable_ok", "UNRESPONSIVE": "frozen_ok",
                "HEALTHY": "healthy_ok"}[want]
        out["silent"] += h in bed.silent
        out["frozen"] += h in bed.frozen
        if st == want:
            out[kind] += 1
        else:
            out["misclassified"] += 1
            if len(out["wrong"]) < 5:
                why = f" ({reasons[h]})" if reasons.get(h) else ""
                out["wrong"][h] = f"{st}{why}, want {want}"
    return out


def sample(bed: Bed, count: int) -> list[str]:
    """``count`` hosts of the bed with the bed's shares of silent and frozen ones."""
    if count >= len(bed.names):
        return list(bed.names)
    ns = round(count * len(bed.silent) / len(bed.names))
    nf = round(count * len(bed.frozen) / len(bed.names))
    if bed.frozen and nf == 0 and count >= 20:
        nf = 1
    healthy = [n for n in bed.names if n not in bed.silent and n not in bed.frozen]
    picked = (sorted(bed.silent)[:ns] + sorted(bed.frozen)[:nf]
              + healthy[:count - ns - nf])
    return sorted(picked)


TARGETS = {"wall": 2.0, "cpu": 2.0, "max_fds": 1024, "rss_mb": 300.0, "misclassified": 0}


def table(rows: list[dict], total: int, timeout: float, plain_sshd: bool = False) -> str:
    hdr = (f"{'method':38} {'hosts':>6} {'silent':>6} {'frozen':>6} {'wall s':>7} "
           f"{'CPU s':>6} {'max fds':>7} {'RSS MB':>7} {'UNREACH':>7} {'UNRESP':>6} "
           f"{'HEALTHY':>7} {'miscl.':>6}")
    lines = [hdr, "-" * len(hdr)]
    for r in rows:
        lines.append(
            f"{r['label']:38} {r['hosts']:6d} {r['silent']:6d} {r['frozen']:6d} "
            f"{r['wall']:7.2f} {r['cpu']:6.2f} {r['max_fds']:7d} {r['rss_mb']:7.1f} "
            f"{r['unreachable_ok']:7d} {r['frozen_ok']:6d} {r['healthy_ok']:7d} "
            f"{r['misclassified']:6d}")
    new = rows[0]
    lines.append("")
    lines.append("UNREACH/UNRESP/HEALTHY: silent hosts found UNREACHABLE, frozen found "
                 "UNRESPONSIVE, healthy found HEALTHY; miscl.: every other verdict.")
    for r in rows[1:]:
        if r["hosts"] < total:
            lines.append(f"{r['label'].strip()}: capped at {r['hosts']} hosts (all {total} "
                         f"would take about {r['wall'] * total / r['hosts']:.0f} s, "
                         "linear projection).")
    lines.append("Today's prober logs in to every host: each login's sshd runs on these same "
                 "2 cores (on a cluster, on the node), so its wrong verdicts here are timeouts "
                 "under that load as much as its design; its wall and CPU are its own.")
    if plain_sshd:
        lines.append("--plain-sshd: OpenSSH's sshd itself listens on port 22 and forks per "
                     "connection: the banners it can send in time bound what ANY prober sees "
                     "here, not the prober.")
    met = {k: (new[k] <= v) for k, v in TARGETS.items()}
    lines.append("targets for the sweep: " + ", ".join(
        f"{k} <= {v:g}: {'met' if met[k] else 'MISSED'}" for k, v in TARGETS.items()))
    return "\n".join(lines)


# ------------------------------------------------------------------ main
def watcher_figures(jobs: int) -> list | None:
    """The watcher's side of the scale question (issue 16 item 3): bench/watcher_scale.py for
    ``jobs`` jobs on 10,000 nodes, its table printed here; its figures, or None if it failed."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "watcher.json"
        cp = subprocess.run([sys.executable, str(Path(__file__).with_name("watcher_scale.py")),
                             "--jobs", str(jobs), "--json", str(out)],
                            capture_output=True, text=True, timeout=900, check=False)
        print()
        print(cp.stdout.rstrip())
        if cp.returncode != 0 or not out.exists():
            print(f"watcher_scale failed (rc {cp.returncode}): {cp.stderr.strip()[-300:]}")
            return None
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=10000)
    ap.add_argument("--silent", type=int, default=1000)
    ap.add_argument("--frozen", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=1.0)
    ap.add_argument("--baseline-hosts", type=int, default=1000,
                    help="hosts for today's prober (default 1000; it needs minutes for more)")
    ap.add_argument("--loop-hosts", type=int, default=100,
                    help="hosts for the sequential ping loop (default 100)")
    ap.add_argument("--json", metavar="FILE", help="write the figures here")
    ap.add_argument("--watcher-jobs", type=int, default=2000,
                    help="also measure one watch cycle with this many jobs on 10,000 nodes (the "
                         "fake Slurm, bench/watcher_scale.py: Slurm commands, cycle time, "
                         "memory, against the tree before the cached view); 0: skip")
    ap.add_argument("--quick", action="store_true",
                    help="1,000 hosts (100 silent, 10 frozen), smaller baselines: for CI")
    ap.add_argument("--plain-sshd", action="store_true",
                    help="OpenSSH's sshd itself listens on port 22 (shows its banner rate "
                         "limit on this machine; see the module doc)")
    ap.add_argument("--cleanup", action="store_true",
                    help="remove what a killed run left (its namespaces, processes, route)")
    ap.add_argument("--responder", nargs=2, metavar=("CONFIG", "LOG"), help=argparse.SUPPRESS)
    ap.add_argument("--hold", type=float, default=0.03, help=argparse.SUPPRESS)
    ap.add_argument("--inner", choices=["sweep", "old", "loop"], help=argparse.SUPPRESS)
    ap.add_argument("--names-file", help=argparse.SUPPRESS)
    ap.add_argument("--key", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.responder:
        return responder(args.responder[0], args.responder[1], args.hold)
    if args.inner:
        print(json.dumps(inner(args.inner, args.names_file, args.timeout, args.key,
                               TARGETS["max_fds"])))
        return 0
    if os.geteuid() != 0:
        raise BenchError("needs root (it builds network namespaces): run it with sudo")
    if args.cleanup:
        done = cleanup_leftovers()
        print("removed: " + (", ".join(done) if done else "nothing was left"))
        return 0
    if args.quick:
        args.hosts, args.silent, args.frozen = 1000, 100, 10
        args.baseline_hosts, args.loop_hosts = min(args.baseline_hosts, 200), 20
    if not (args.timeout > 0 and args.timeout <= 30):
        raise BenchError(f"--timeout must be in (0, 30], not {args.timeout}")
    for tool in ("ip", "nsenter", "unshare", "ping", "ssh-keygen", "/usr/sbin/sshd",
                 *(["nft"] if args.frozen else [])):
        if not shutil.which(tool):
            raise BenchError(f"{tool} not found: apt-get install iproute2 util-linux "
                             "iputils-ping openssh-server nftables")
    left = [ns for ns in (NS_HOSTS, NS_PROBER) if (NETNS_DIR / ns).exists()]
    if left or STATE_FILE.exists():
        raise BenchError(f"{', '.join(left) or STATE_FILE} exists: another run is going on, "
                         f"or a killed one left it; remove it with `{CLEANUP_CMD}`")
    bed = Bed(args.hosts, args.silent, args.frozen, plain_sshd=args.plain_sshd)

    def stop(signum, _frame):
        print(f"bench/scale.py: stopped by signal {signum}; tearing the bed down",
              file=sys.stderr)
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    try:
        up = bed.up()
        load = "/".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"bed: {args.hosts} hosts ({len(bed.silent)} silent, {len(bed.frozen)} sshd "
              f"frozen) on {bed.dev} of {NS_HOSTS}, up in {up:.1f}s; timeout "
              f"{args.timeout:g}s; {os.cpu_count()} cores, load {load}", flush=True)
        rows = []
        new = measure(bed, "sweep", bed.names, args.timeout, 120)
        new["label"] = "slurmft sweep (FanoutProber, new)"
        rows.append(new)
        old_names = sample(bed, args.baseline_hosts)
        old = measure(bed, "old", old_names, args.timeout, 600)
        old["label"] = "today's prober (sweep_min_hosts=0)"
        rows.append(old)
        loop_names = sample(bed, args.loop_hosts)
        loop = measure(bed, "loop", loop_names, args.timeout, 600)
        loop["label"] = "sequential `ping -c1 -W` loop"
        rows.append(loop)
        print()
        print(table(rows, args.hosts, args.timeout, args.plain_sshd))
        for r in rows:
            if r["wrong"]:
                print(f"  {r['label']}: wrong verdicts, e.g. "
                      + "; ".join(f"{h}: {w}" for h, w in list(r["wrong"].items())[:3]))
        if new.get("sweep"):
            sw = new["sweep"]
            print(f"sweep: {sw['echo_sent']} echo requests, {sw['echo_replies']} replies, "
                  f"{sw['connects']} TCP connects, at most {sw['sockets_peak']} sockets at "
                  f"once, {sw['icmp']} ICMP socket; full SSH login + health command on "
                  f"{sw['full_checks']} hosts ({sw['full_unfinished']} unfinished in time)")
        print(f"repeat: sudo .venv/bin/python bench/scale.py --hosts {args.hosts} --silent "
              f"{args.silent} --frozen {args.frozen} --timeout {args.timeout:g}")
        doc = {"hosts": new["hosts"], "silent": new["silent"], "frozen": new["frozen"],
               "timeout": args.timeout, "sweep_seconds": round(new["wall"], 3),
               "cpu_seconds": round(new["cpu"], 3), "max_fds": new["max_fds"],
               "rss_mb": round(new["rss_mb"], 1), "misclassified": new["misclassified"],
               "targets": TARGETS, "met": all(new[k] <= v for k, v in TARGETS.items()),
               "load": os.getloadavg(), "bed": {"device": bed.dev, "plain_sshd":
                                                args.plain_sshd},
               "baselines": [{k: r[k] for k in ("label", "hosts", "silent", "frozen", "wall",
                                                 "cpu", "max_fds", "rss_mb", "misclassified")}
                             for r in rows[1:]]}
        if args.watcher_jobs > 0:
            doc["watcher"] = watcher_figures(args.watcher_jobs)
        if args.json:
            Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
        return 0 if doc["met"] else 1
    finally:
        done = bed.down()
        print(f"torn down: {', '.join(done)}", file=sys.stderr)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench/scale.py: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("bench/scale.py: interrupted; bed torn down", file=sys.stderr)
        sys.exit(130)
