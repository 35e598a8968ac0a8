"""Pure parts of the docker backend: compose document, substitution, mirror, context, hash."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from slurmft.core.errors import ClusterError, UsageError
from slurmft.testbed import docker as db
from slurmft.testbed.layout import Layout

REPO = Path(__file__).resolve().parents[2]


def layout(nodes: int = 3) -> Layout:
    return Layout("t1", nodes, ipaddress.IPv4Network("10.98.5.0/24"), root=Path("/x/dc"))


def doc(nodes: int = 3) -> dict:
    text = (REPO / "docker" / "compose.yml").read_text()
    return db.compose_doc(text, layout(nodes), "slurmft-node:abc", Path("/x/dc/t1/etc"))


def test_compose_doc_has_ctl_and_nodes_with_fixed_addresses():
    d = doc(3)
    assert list(d["services"]) == ["ctl", "node1", "node2", "node3"]
    assert "x-node" not in d
    addrs = {s: v["networks"]["cluster"]["ipv4_address"] for s, v in d["services"].items()}
    assert addrs == {"ctl": "10.98.5.1", "node1": "10.98.5.2", "node2": "10.98.5.3",
                     "node3": "10.98.5.4"}
    ctl, n2 = d["services"]["ctl"], d["services"]["node2"]
    assert ctl["command"] == ["controller"] and n2["command"] == ["node"]
    assert n2["hostname"] == "node2" and n2["container_name"] == "slurmft-t1-node2"
    assert "node3:10.98.5.4" in n2["extra_hosts"] and "ctl:10.98.5.1" in n2["extra_hosts"]
    assert n2["image"] == "slurmft-node:abc"
    assert "/x/dc/t1/etc:/etc/slurmft-cluster:ro" in n2["volumes"]
    assert "shared:/x/dc/t1/shared" in n2["volumes"]
    assert "${" not in json.dumps(d)


def test_compose_network_is_internal_without_bridge_address_and_everything_is_labelled():
    d = doc(2)
    net = d["networks"]["cluster"]
    assert net["internal"] is True
    assert net["driver_opts"]["com.docker.network.bridge.inhibit_ipv4"] == "true"
    assert net["ipam"]["config"] == [{"subnet": "10.98.5.0/24", "gateway": "10.98.5.254"}]
    assert net["labels"] == {"slurmft.cluster": "t1"}
    assert d["volumes"]["shared"]["labels"] == {"slurmft.cluster": "t1"}
    for svc in d["services"].values():
        assert svc["labels"]["slurmft.cluster"] == "t1"
        assert "privileged" not in svc and svc.get("network_mode") is None
    assert d["services"]["ctl"]["labels"]["slurmft.role"] == "controller"


def test_substitute_replaces_known_and_refuses_unknown():
    assert db.substitute({"a": ["${X}-y", 3]}, {"X": "v"}) == {"a": ["v-y", 3]}
    with pytest.raises(ClusterError, match=r"\$\{NOPE\}"):
        db.substitute("${NOPE}", {})


def test_compose_doc_needs_x_node_and_ctl():
    with pytest.raises(ClusterError, match="x-node"):
        db.compose_doc("services: {}\n", layout(), "img", Path("/e"))


@pytest.mark.parametrize("texts,want", [
    (["Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n",
      "Types: deb\nURIs: http://deb.debian.org/debian-security\n"], "http://deb.debian.org/debian"),
    (["deb http://security.debian.org/debian-security bookworm-security main\n"
      "deb [arch=amd64] http://mirror.example/debian/ bookworm main\n"], "http://mirror.example/debian"),
])
def test_mirror_from_sources(texts, want):
    assert db.mirror_from_sources(texts) == want


def test_mirror_from_sources_without_debian_is_a_clear_error():
    with pytest.raises(ClusterError, match="no Debian mirror"):
        db.mirror_from_sources(["deb https://packages.cloud.google.com/apt cloud-sdk main\n"])


def test_stage_context_holds_the_package_and_docker_files_only(tmp_path):
    wheels = tmp_path / "w"
    wheels.mkdir()
    (wheels / "click-8-py3-none-any.whl").write_bytes(b"zip")
    ctx = tmp_path / "ctx"
    db.stage_context(ctx, wheels, REPO)
    names = {str(p.relative_to(ctx)) for p in ctx.rglob("*") if p.is_file()}
    assert {"setup.cfg", "docker/Dockerfile", "docker/entrypoint.sh", "slurmft/cli/__init__.py",
            "slurmft/testbed/docker/cluster.py", "slurmft/templates/slurm.conf.j2",
            "slurmft/examples/train.py",
            "docker/wheels/click-8-py3-none-any.whl"} <= names
    assert not any(n.startswith((".venv", "tests/", ".git")) or "__pycache__" in n for n in names)


def test_content_hash_follows_content_and_base(tmp_path):
    (tmp_path / "a").write_text("1")
    h1 = db.content_hash(tmp_path, "sha256:base")
    assert h1 == db.content_hash(tmp_path, "sha256:base")
    assert h1 != db.content_hash(tmp_path, "sha256:other")
    (tmp_path / "a").write_text("2")
    assert h1 != db.content_hash(tmp_path, "sha256:base")


def test_pick_docker_subnet_skips_used_networks():
    first = db.pick_docker_subnet("t1", 4, [])
    assert first.subnet_of(db.SUBNET_POOL) and first.prefixlen == 24
    second = db.pick_docker_subnet("t1", 4, [first])
    assert second != first and second.subnet_of(db.SUBNET_POOL)


def test_bad_input_is_refused_before_docker_is_touched(tmp_path):
    with pytest.raises(UsageError):
        db.DockerCluster("Bad_Name", root=tmp_path)
    c = db.DockerCluster("ok", root=tmp_path, docker_host="unix:///nonexistent.sock")
    with pytest.raises(UsageError):
        c.up(nodes=0)
    with pytest.raises(UsageError, match="always runs Slurm"):
        c.up(nodes=2, slurm=False)
    with pytest.raises(UsageError, match="unknown fault"):
        c.fault("node1", "explode")
    with pytest.raises(ClusterError, match="not up"):
        c.fault("node1", "link-down")
    assert c.status() == {"name": "ok", "up": False, "backend": "docker"}


def test_faults_cover_the_namespace_backend_and_every_fault_has_a_handler():
    from slurmft.testbed import Cluster, Fault
    from slurmft.testbed.docker.faults import FAULT_HANDLERS as DOCKER_HANDLERS
    from slurmft.testbed.netns.faults import FAULT_HANDLERS as NETNS_HANDLERS
    assert set(Cluster.faults) <= set(db.DockerCluster.faults) == set(Fault)
    assert set(NETNS_HANDLERS) == set(Cluster.faults)
    assert set(DOCKER_HANDLERS) == set(db.DockerCluster.faults)
    assert Fault.NODE_DOWN not in Cluster.faults
