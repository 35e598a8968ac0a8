"""The local test cluster in containers: the second ``ClusterBackend`` beside the network
namespaces, split by concern:

- ``client``: the docker (and compose) CLI for one daemon, argv lists only, and the labels
  (``slurmft.cluster=NAME``) that teardown goes by;
- ``daemon``: ``PrivateDockerd``, a dockerd on its own socket with no bridge, no iptables
  rules and no IP forwarding, for machines without a running daemon;
- ``image``: the node image (staged context, content hash, cached wheels, debootstrap base);
- ``compose``: the compose document and the cluster's subnet;
- ``faults``: one handler per ``Fault``;
- ``cluster``: ``DockerCluster`` (up/down/status/fault/run/exec_argv/node_exec_argv/execvpe/env).
"""

from slurmft.testbed.docker.client import (
    HASH_LABEL, IMAGE_LABEL, LABEL, Docker, DockerUnavailableError,
)
from slurmft.testbed.docker.cluster import DockerCluster, DockerClusterState
from slurmft.testbed.docker.compose import (
    SUBNET_POOL, compose_doc, container_name, gateway, pick_docker_subnet, substitute,
    used_networks,
)
from slurmft.testbed.docker.daemon import PrivateDockerd
from slurmft.testbed.docker.image import (
    BASE_IMAGE, DOCKER_DIR, REPO_ROOT, ImageResult, build_wheels, content_hash,
    debian_mirror, ensure_base_image, ensure_image, mirror_from_sources, stage_context,
)

__all__ = ["BASE_IMAGE", "DOCKER_DIR", "HASH_LABEL", "IMAGE_LABEL", "LABEL", "REPO_ROOT",
           "SUBNET_POOL", "Docker", "DockerCluster", "DockerClusterState",
           "DockerUnavailableError", "ImageResult", "PrivateDockerd", "build_wheels",
           "compose_doc", "container_name", "content_hash", "debian_mirror",
           "ensure_base_image", "ensure_image", "gateway", "mirror_from_sources",
           "pick_docker_subnet", "stage_context", "substitute", "used_networks"]
