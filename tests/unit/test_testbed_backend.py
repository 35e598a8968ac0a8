"""The testbed's shared contract: ClusterBackend, the one Fault list, open_cluster."""

from __future__ import annotations

import pytest

from slurmft.core.errors import UsageError
from slurmft.testbed import ClusterBackend, Fault, open_cluster
from slurmft.testbed.docker import DockerCluster
from slurmft.testbed.netns import Cluster


def protocol_members() -> set[str]:
    names = {n for n in vars(ClusterBackend) if not n.startswith("_")}
    return names | set(ClusterBackend.__annotations__)


@pytest.mark.parametrize("backend", [Cluster, DockerCluster])
def test_both_backends_offer_every_member_of_the_protocol(backend):
    missing = sorted(n for n in protocol_members() if not hasattr(backend, n)
                     and n not in ("name",))       # set per instance in __init__
    assert missing == []


def test_open_cluster_picks_the_backend_by_name(tmp_path):
    assert type(open_cluster("netns", "sft-a", root=tmp_path)) is Cluster
    assert type(open_cluster("", "sft-a", root=tmp_path)) is Cluster
    d = open_cluster("docker", "sft-a", root=tmp_path)
    assert type(d) is DockerCluster and d.name == "sft-a" and d.backend == "docker"
    with pytest.raises(UsageError, match="unknown cluster backend 'lxc'"):
        open_cluster("lxc", "sft-a")


def test_fault_parse_accepts_names_and_members_and_lists_the_choices():
    assert Fault.parse("link-down") is Fault.LINK_DOWN
    assert Fault.parse(Fault.THAW_SSHD) is Fault.THAW_SSHD
    assert str(Fault.KILL_JOB_PROCS) == "kill-job-procs"
    with pytest.raises(UsageError, match="unknown fault 'explode': use one of kill-slurmd"):
        Fault.parse("explode")
    with pytest.raises(UsageError, match="unknown fault 'node-down'") as err:
        Fault.parse("node-down", Cluster.faults)
    assert "node-down" not in str(err.value).split("use one of", 1)[1]


def test_netns_cluster_refuses_a_fault_it_cannot_do_before_needing_root(tmp_path):
    c = Cluster("sft-a", root=tmp_path)
    with pytest.raises(UsageError, match="unknown fault 'node-up'"):
        c.fault("node1", "node-up")


def test_only_slurmd_faults_need_slurm():
    assert {f for f in Fault if f.needs_slurm} == {Fault.KILL_SLURMD, Fault.RESTART_SLURMD}
