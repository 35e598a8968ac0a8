"""Pure parts of the local cluster: name and subnet rules, paths, addresses, rendered files.

Nothing here touches the system; ``Layout`` is computed from (name, node count, subnet, root)
and everything else (namespace names, ports, file paths, slurm.conf) follows from it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from slurmft.core.errors import UsageError
from slurmft.render import render

DEFAULT_NAME = "sft"
DEFAULT_ROOT = Path("/var/lib/slurmft/clusters")   # not under /run: nodes get a private /run
SUBNET_POOL = ipaddress.IPv4Network("10.99.0.0/16")
CTL_HOST = "ctl"
MAX_NODES = 250
# A cluster name becomes part of namespace names, Slurm's ClusterName and paths.
_NAME_RE = re.compile(r"[a-z](?:[a-z0-9-]{0,22}[a-z0-9])?")
#: A user name as useradd(8) accepts it by default (SlurmUser=).
_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def validate_name(name: str) -> str:
    """Return ``name`` if it is a usable cluster name, else raise UsageError."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise UsageError(
            f"invalid cluster name {name!r}: use 1-24 lowercase letters, digits and '-', "
            "starting with a letter"
        )
    return name


def validate_nodes(nodes: int) -> int:
    if isinstance(nodes, bool) or not isinstance(nodes, int) or not 1 <= nodes <= MAX_NODES:
        raise UsageError(f"--nodes must be between 1 and {MAX_NODES}, not {nodes!r}")
    return nodes


def name_hash(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")


def ports_for(name: str) -> tuple[int, int]:
    """(SlurmctldPort, SlurmdPort): distinct per name (each cluster also has its own netns)."""
    k = name_hash(name) % 4000
    return 20000 + 2 * k, 20001 + 2 * k


def parse_networks(routes: Iterable[dict]) -> list[ipaddress.IPv4Network]:
    """IPv4 networks in use, from ``ip -j route show table all`` / ``ip -j addr`` entries."""
    out: list[ipaddress.IPv4Network] = []
    for r in routes:
        dst = r.get("dst")
        if dst and dst != "default":
            try:
                net = ipaddress.ip_network(dst, strict=False)
            except ValueError:
                continue
            if isinstance(net, ipaddress.IPv4Network):
                out.append(net)
        for a in r.get("addr_info", []) or []:
            if a.get("family") == "inet":
                out.append(ipaddress.IPv4Network(f"{a['local']}/{a.get('prefixlen', 32)}",
                                                 strict=False))
    return out


def check_subnet(subnet: ipaddress.IPv4Network, nodes: int,
                 used: Iterable[ipaddress.IPv4Network]) -> None:
    """Raise UsageError if ``subnet`` is too small for ``nodes`` or overlaps a network in use."""
    if subnet.num_addresses - 2 < nodes + 1:
        raise UsageError(f"subnet {subnet} is too small for {nodes} nodes and a controller")
    for net in used:
        if subnet.overlaps(net):
            raise UsageError(
                f"subnet {subnet} clashes with {net}, already routed on this machine: "
                "pick another --subnet or --name"
            )


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise UsageError(f"invalid subnet {text!r}: {exc}") from None
    if not isinstance(net, ipaddress.IPv4Network) or not net.is_private:
        raise UsageError(f"subnet {text!r} must be a private IPv4 network such as 10.99.7.0/24")
    return net


def pick_subnet(name: str, nodes: int,
                used: Iterable[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """The first free /24 in 10.99.0.0/16, starting at one derived from the name's hash."""
    used = list(used)
    candidates = list(SUBNET_POOL.subnets(new_prefix=24))
    start = name_hash(name) % len(candidates)
    for i in range(len(candidates)):
        net = candidates[(start + i) % len(candidates)]
        if not any(net.overlaps(u) for u in used):
            check_subnet(net, nodes, [])
            return net
    raise UsageError(f"no free /24 left in {SUBNET_POOL}: take some clusters down")


class StatePaths:
    """Where a cluster of any backend keeps its state: ``<root>/<name>/state.json``. Mixed
    into Layout and both backends (they set ``root`` and ``name``)."""

    root: Path
    name: str

    @property
    def state_dir(self) -> Path:
        return self.root / self.name

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"


def slurm_major_minor(version: str) -> tuple[int, int]:
    """(24, 11) from "24.11" or "24.11.5": what slurm.conf.j2 chooses its options by."""
    m = re.fullmatch(r"(\d{2})\.(\d{2})(?:\.\d+)?", str(version).strip())
    if not m:
        raise UsageError(f"invalid Slurm version {version!r}: expected MAJOR.MINOR, e.g. 24.11")
    return int(m.group(1)), int(m.group(2))


@dataclass(frozen=True)
class Layout(StatePaths):
    """Where everything of one cluster lives. Derived, never stored apart from its inputs."""

    name: str
    nodes: int
    subnet: ipaddress.IPv4Network
    root: Path = DEFAULT_ROOT
    slurm: bool = True
    epilog: str = ""
    slurm_user: str = "root"        # SlurmUser: slurmctld and EpilogSlurmctld run as this user
    cpus: int = 2
    real_memory: int = 1000
    slurm_version: str = "22.05"    # the release slurm.conf is rendered for (MAJOR.MINOR)
    node_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        validate_name(self.name)
        validate_nodes(self.nodes)
        object.__setattr__(self, "subnet", ipaddress.IPv4Network(self.subnet))
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "node_names",
                           tuple(f"node{i}" for i in range(1, self.nodes + 1)))
        check_subnet(self.subnet, self.nodes, [])
        if not _USER_RE.fullmatch(self.slurm_user):
            raise UsageError(f"SlurmUser must be a user name, not {self.slurm_user!r}")
        slurm_major_minor(self.slurm_version)

    # --- names and addresses -------------------------------------------------------------
    @property
    def netns_ctl(self) -> str:
        return f"slurmft-{self.name}-ctl"

    def netns(self, node: str) -> str:
        if node in (CTL_HOST, "controller"):
            return self.netns_ctl
        self.check_node(node)
        return f"slurmft-{self.name}-{node}"

    def all_netns(self) -> list[str]:
        return [self.netns_ctl] + [self.netns(n) for n in self.node_names]

    def check_node(self, node: str) -> str:
        if node not in self.node_names:
            raise UsageError(
                f"unknown node {node!r} in cluster {self.name}: nodes are node1..node{self.nodes}"
            )
        return node

    def index(self, node: str) -> int:
        return self.node_names.index(self.check_node(node)) + 1

    @property
    def ctl_ip(self) -> str:
        return str(self.subnet.network_address + 1)

    def ip(self, node: str) -> str:
        if node == CTL_HOST:
            return self.ctl_ip
        return str(self.subnet.network_address + 1 + self.index(node))

    def veth(self, node: str) -> str:
        """The controller-side end of the node's veth pair (inside the controller netns)."""
        return f"v{self.index(node)}"

    @property
    def prefixlen(self) -> int:
        return self.subnet.prefixlen

    @property
    def ports(self) -> tuple[int, int]:
        return ports_for(self.name)

    # --- paths (state_dir, state_file: StatePaths) -------------------------------------------
    @property
    def shared_dir(self) -> Path:
        return self.state_dir / "shared"

    @property
    def slurmft_state_dir(self) -> Path:
        return self.shared_dir / "slurmft"

    @property
    def etc_dir(self) -> Path:
        return self.state_dir / "etc"

    @property
    def slurm_conf(self) -> Path:
        return self.etc_dir / "slurm.conf"

    @property
    def hosts_file(self) -> Path:
        return self.etc_dir / "hosts"

    @property
    def ssh_dir(self) -> Path:
        return self.state_dir / "ssh"

    @property
    def ssh_key(self) -> Path:
        return self.ssh_dir / "id_ed25519"

    @property
    def ssh_config(self) -> Path:
        return self.ssh_dir / "config"

    @property
    def known_hosts(self) -> Path:
        return self.ssh_dir / "known_hosts"

    @property
    def authorized_keys(self) -> Path:
        return self.ssh_dir / "authorized_keys"

    def host_key(self, node: str) -> Path:
        return self.ssh_dir / f"ssh_host_ed25519_key.{node}"

    def sshd_config(self, node: str) -> Path:
        return self.ssh_dir / f"sshd_config.{node}"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "log"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def munge_dir(self) -> Path:
        return self.state_dir / "munge"

    @property
    def munge_socket(self) -> Path:
        return self.munge_dir / "munge.socket"

    @property
    def munge_key(self) -> Path:
        return self.munge_dir / "munge.key"

    @property
    def spool_dir(self) -> Path:
        return self.state_dir / "spool"

    def log(self, what: str) -> Path:
        return self.log_dir / f"{what}.log"

    # --- rendered files ----------------------------------------------------------------------
    def slurm_conf_text(self) -> str:
        ctld_port, slurmd_port = self.ports
        return render("slurm.conf.j2", {
            "cluster_name": self.name,
            "ctl_host": CTL_HOST,
            "ctl_ip": self.ctl_ip,
            "slurmctld_port": ctld_port,
            "slurmd_port": slurmd_port,
            "state_dir": str(self.spool_dir / "ctld"),
            "spool_dir": str(self.spool_dir),
            "run_dir": str(self.run_dir),
            "log_dir": str(self.log_dir),
            "munge_socket": str(self.munge_socket),
            "nodes": [{"name": n, "ip": self.ip(n)} for n in self.node_names],
            "cpus": self.cpus,
            "real_memory": self.real_memory,
            "epilog": self.epilog,
            "slurm_user": self.slurm_user,
            "slurm": slurm_major_minor(self.slurm_version),
        })

    def hosts_text(self) -> str:
        return render("hosts.j2", {
            "ctl_host": CTL_HOST, "ctl_ip": self.ctl_ip, "cluster_name": self.name,
            "nodes": [{"name": n, "ip": self.ip(n)} for n in self.node_names],
        })

    def ssh_config_text(self) -> str:
        return render("ssh_config.j2", {
            "cluster_name": self.name,
            "hosts": [{"name": CTL_HOST, "ip": self.ctl_ip}]
            + [{"name": n, "ip": self.ip(n)} for n in self.node_names],
            "identity_file": str(self.ssh_key),
            "known_hosts": str(self.known_hosts),
        })

    def sshd_config_text(self, node: str) -> str:
        return render("sshd_config.j2", {
            "node": node,
            "host_key": str(self.host_key(node)),
            "pid_file": str(self.run_dir / f"sshd-{node}.pid"),
            "authorized_keys": str(self.authorized_keys),
        })

    def known_hosts_text(self, host_pubkeys: dict[str, str]) -> str:
        """known_hosts lines ``nodeN,IP keytype key`` from {node: public key line}."""
        lines = []
        for node in self.node_names:
            keytype, key = host_pubkeys[node].split()[:2]
            lines.append(f"{node},{self.ip(node)} {keytype} {key}")
        return "\n".join(lines) + "\n"
