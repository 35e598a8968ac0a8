"""The compose document of a docker cluster (from files/compose.yml, package data) and its network."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from slurmft.core.errors import ClusterError, UsageError
from slurmft.testbed import procs
from slurmft.testbed.layout import CTL_HOST, Layout, check_subnet, parse_networks

SUBNET_POOL = ipaddress.IPv4Network("10.98.0.0/16")   # apart from the namespace clusters' pool
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
                raise ClusterError(f"compose.yml: no value for ${{{m.group(1)}}}")
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
        raise ClusterError("compose.yml needs an x-node block and a ctl service") from None
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
