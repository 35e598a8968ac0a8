"""The node image: content hash of the staged context (context.py), the debootstrap'd base, the build.

Without a registry the base image is built with ``debootstrap --variant=minbase bookworm`` and
``docker import``. The node image is tagged by a hash of its context, so unchanged sources
reuse the cached image.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from slurmft.core.errors import ClusterError
from slurmft.core.log import get_logger
from slurmft.testbed import procs
from slurmft.testbed.docker.client import HASH_LABEL, IMAGE_LABEL, Docker
from slurmft.testbed.docker.context import (
    DOCKERFILE, add_wheels, build_wheels, cache_dir, mkdir_p, stage_context,
)
from slurmft.testbed.docker.daemon import mounts_under

log = get_logger(__name__)

BASE_IMAGE = "slurmft-base:bookworm"       # debootstrap'd + imported when no registry is used
REGISTRY_BASE = "debian:bookworm"           # without debootstrap: pulled by the build
NODE_IMAGE_REPO = "slurmft-node"


def content_hash(context: Path, base_id: str) -> str:
    """sha256 over the staged context (paths and bytes) and the base image id."""
    h = hashlib.sha256(base_id.encode())
    for p in sorted(context.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(context)).encode() + b"\0")
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def debian_mirror(sources: Sequence[Path] = (Path("/etc/apt/sources.list"),
                                             Path("/etc/apt/sources.list.d"))) -> str:
    """The Debian mirror apt already uses (one-line or deb822 sources)."""
    files: list[Path] = []
    for s in sources:
        if s.is_dir():
            files += sorted(s.glob("*.list")) + sorted(s.glob("*.sources"))
        elif s.is_file():
            files.append(s)
    return mirror_from_sources([f.read_text(errors="replace") for f in files])


def mirror_from_sources(texts: Sequence[str]) -> str:
    """The first ``.../debian`` URI (not debian-security) in apt source texts."""
    uri_re = re.compile(r"(?:^deb\s+(?:\[[^\]]*\]\s+)?|^URIs:\s*)(\S+)", re.M)
    for text in texts:
        for uri in uri_re.findall(text):
            if uri.rstrip("/").endswith("/debian"):
                return uri.rstrip("/")
    raise ClusterError("no Debian mirror found in /etc/apt/sources.list(.d): set "
                       "SLURMFT_DOCKER_BASE_IMAGE=debian:bookworm if a registry is reachable")


@dataclass(frozen=True)
class ImageResult:
    tag: str
    content_hash: str
    built: bool              # False: reused from the cache
    base_built: bool
    seconds: float


def ensure_base_image(docker: Docker, base: str = "") -> tuple[str, bool]:
    """(base image reference, built now?). ``base`` empty: debootstrap'd bookworm, imported."""
    if base:
        return base, False
    if docker.ok("image", "inspect", BASE_IMAGE):
        return BASE_IMAGE, False
    if not shutil.which("debootstrap"):
        log.info("no debootstrap: building FROM %s (needs a registry)", REGISTRY_BASE)
        return REGISTRY_BASE, False
    mirror = debian_mirror()
    root = Path(tempfile.mkdtemp(prefix="slurmft-rootfs-"))
    try:
        log.info("debootstrap bookworm from %s", mirror)
        procs.run(["debootstrap", "--variant=minbase", "bookworm", str(root), mirror],
                  timeout=900, what="debootstrap")
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        try:
            imp = subprocess.run(docker.argv("import", "-c", f"LABEL {IMAGE_LABEL}=base",
                                             "-c", 'CMD ["/bin/bash"]', "-", BASE_IMAGE),
                                 stdin=tar.stdout, capture_output=True, text=True,
                                 timeout=600, env=docker._env())
        finally:
            if tar.stdout:
                tar.stdout.close()
            tar.wait()
        if imp.returncode != 0 or tar.returncode != 0:
            raise ClusterError(f"docker import failed: {imp.stderr.strip()[-300:]}")
    finally:
        for mnt in mounts_under(root):      # debootstrap's /proc, /sys if it failed midway
            procs.run(["umount", "-l", mnt], check=False)
        shutil.rmtree(root, ignore_errors=True)
    return BASE_IMAGE, True


def ensure_image(docker: Docker, base: str = "") -> ImageResult:
    """The node image for the installed sources: reused when one with the same hash exists."""
    t0 = time.monotonic()
    base_ref, base_built = ensure_base_image(docker, base)
    base_id = docker.run("image", "inspect", "--format", "{{.Id}}", base_ref, check=False).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="slurmft-ctx-") as tmp:
        ctx = Path(tmp)
        stage_context(ctx)
        wheels = build_wheels(ctx)
        add_wheels(ctx, wheels)
        digest = content_hash(ctx, base_id or base_ref)
        tag = f"{NODE_IMAGE_REPO}:{digest[:12]}"
        have = docker.run("image", "inspect", "--format",
                          "{{index .Config.Labels \"" + HASH_LABEL + "\"}}", tag, check=False)
        if have.returncode == 0 and have.stdout.strip() == digest:
            return ImageResult(tag, digest, False, base_built, time.monotonic() - t0)
        log.info("building %s", tag)
        cp = docker.run("build", "--network", "host", "-f", str(ctx / DOCKERFILE),
                        "--build-arg", f"BASE_IMAGE={base_ref}",
                        "--build-arg", f"PIP_NO_INDEX={1 if wheels else 0}",
                        "--label", f"{HASH_LABEL}={digest}", "--label", f"{IMAGE_LABEL}=node",
                        "-t", tag, str(ctx), check=False, timeout=1200, what="docker build")
        build_log = mkdir_p(cache_dir()) / "build.log"
        build_log.write_text(cp.stdout + cp.stderr)
        if cp.returncode != 0:
            last = " | ".join((cp.stderr or cp.stdout).strip().splitlines()[-3:])
            raise ClusterError(f"docker build failed (rc={cp.returncode}): {last}; "
                               f"full output in {build_log}")
    _prune_node_images(docker, keep=tag)
    return ImageResult(tag, digest, True, base_built, time.monotonic() - t0)


def _prune_node_images(docker: Docker, keep: str) -> None:
    """Remove older node images (one per source hash) that no container uses; keep ``keep``."""
    keep_id = docker.run("image", "inspect", "--format", "{{.Id}}", keep, check=False).stdout.strip()
    for ref in docker.ids("image", f"{IMAGE_LABEL}=node"):
        if not keep_id.startswith(f"sha256:{ref}") and ref not in keep_id:
            docker.ok("image", "rm", ref)          # no -f: an image in use stays


def remove_images(docker: Docker, keep_base: bool = True) -> list[str]:
    """Remove the node images slurmft built (and the base image unless ``keep_base``)."""
    gone = []
    for ref in docker.ids("image", f"{IMAGE_LABEL}=node"):
        if docker.ok("image", "rm", "-f", ref):
            gone.append(ref)
    if not keep_base and docker.ok("image", "inspect", BASE_IMAGE):
        if docker.ok("image", "rm", "-f", BASE_IMAGE):
            gone.append(BASE_IMAGE)
    return gone


# --------------------------------------------------------------------------------------------
# compose file
# --------------------------------------------------------------------------------------------
_VAR = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")
