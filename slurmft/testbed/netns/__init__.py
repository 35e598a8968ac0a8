"""The local cluster in network namespaces (needs root): ``cluster`` (``Cluster``: state,
commands, up, status, down), ``build`` (network, files, daemons) and ``faults``."""

from slurmft.testbed.netns.build import NETNS_DIR
from slurmft.testbed.netns.cluster import Cluster, NodeStatus, UpResult

__all__ = ["NETNS_DIR", "Cluster", "NodeStatus", "UpResult"]
