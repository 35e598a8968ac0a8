"""The local test cluster in containers: the second ``ClusterBackend`` beside the network
namespaces, split by concern:

- ``client``: the docker (and compose) CLI for one daemon, argv lists only, and the labels
  (``slurmft.cluster=NAME``) that teardown goes by;
- ``daemon``: ``PrivateDockerd``, a dockerd on its own socket with no bridge, no iptables
  rules and no IP forwarding, for machines without a running daemon;
- ``context``: the image's build context, staged from the installed package (its data files,
  setup files from the checkout or generated from the metadata, cached dependency wheels);
- ``image``: the node image (content hash, debootstrap base, build);
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
from slurmft.testbed.docker.context import (
    DOCKERFILE, build_wheels, checkout_root, docker_file, generated_setup_files, stage_context,
)
from slurmft.testbed.docker.image import (
    BASE_IMAGE, ImageResult, content_hash, debian_mirror, ensure_base_image, ensure_image,
    mirror_from_sources,
)

__all__ = ["BASE_IMAGE", "DOCKERFILE", "HASH_LABEL", "IMAGE_LABEL", "LABEL",
           "SUBNET_POOL", "Docker", "DockerCluster", "DockerClusterState",
           "DockerUnavailableError", "ImageResult", "PrivateDockerd", "build_wheels",
           "checkout_root", "compose_doc", "container_name", "content_hash", "debian_mirror",
           "docker_file", "ensure_base_image", "ensure_image", "gateway",
           "generated_setup_files", "mirror_from_sources",
           "pick_docker_subnet", "stage_context", "substitute", "used_networks"]
