"""The node image: content hash of the staged context (context.py), the debootstrap'd base, the build.

One image per Slurm release (releases.py): without a registry its base is built with
``debootstrap --variant=minbase SUITE`` (bookworm, trixie, sid) and ``docker import`` as
``slurmft-base:SUITE``. The node image is tagged ``slurmft-node:RELEASE-HASH`` by a hash of its
context, the suite and the base image, so unchanged sources reuse the cached image and a change
of the Dockerfile, the sources or the suite builds a new one.
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
from slurmft.testbed.docker.releases import (
    DEBIAN_PYTHON_DEPS, DEFAULT_RELEASE, RELEASES, SlurmRelease,
)

log = get_logger(__name__)

BASE_IMAGE = "slurmft-base:bookworm"       # debootstrap'd + imported when no registry is used
REGISTRY_BASE = "debian:bookworm"           # without debootstrap: pulled by the build
NODE_IMAGE_REPO = "slurmft-node"
RELEASE_LABEL = "slurmft.slurm-release"     # on node images: the Slurm release they run


def base_image_tag(suite: str) -> str:
    """The debootstrap'd base of ``suite``: ``slurmft-base:SUITE``."""
    return f"slurmft-base:{suite}"


def node_image_tag(release: SlurmRelease, digest: str) -> str:
    return f"{NODE_IMAGE_REPO}:{release.version}-{digest[:12]}"


def content_hash(context: Path, base_id: str, suite: str = "") -> str:
    """sha256 over the staged context (paths and bytes), the base image id and the suite."""
    h = hashlib.sha256(base_id.encode() + (b"\0suite=" + suite.encode() if suite else b""))
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


def ensure_base_image(docker: Docker, base: str = "", suite: str = "bookworm") -> tuple[str, bool]:
    """(base image reference, built now?). ``base`` empty: debootstrap'd ``suite``, imported."""
    if base:
        return base, False
    tag = base_image_tag(suite)
    if docker.ok("image", "inspect", tag):
        return tag, False
    if not shutil.which("debootstrap"):
        log.info("no debootstrap: building FROM debian:%s (needs a registry)", suite)
        return f"debian:{suite}", False
    mirror = debian_mirror()
    root = Path(tempfile.mkdtemp(prefix="slurmft-rootfs-"))
    try:
        log.info("debootstrap %s from %s", suite, mirror)
        procs.run(["debootstrap", "--variant=minbase", suite, str(root), mirror],
                  timeout=1200, what=f"debootstrap {suite}")
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        try:
            imp = subprocess.run(docker.argv("import", "-c", f"LABEL {IMAGE_LABEL}=base",
                                             "-c", 'CMD ["/bin/bash"]', "-", tag),
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
    return tag, True


def ensure_image(docker: Docker, base: str = "",
                 release: SlurmRelease = RELEASES[DEFAULT_RELEASE]) -> ImageResult:
    """The node image of ``release`` for the installed sources: reused when one with the same
    hash exists. The Python dependencies are the host's cached wheels when the suite's python3
    is this one, else the suite's Debian packages (``DEBIAN_PYTHON_DEPS``)."""
    t0 = time.monotonic()
    base_ref, base_built = ensure_base_image(docker, base, release.suite)
    base_id = docker.run("image", "inspect", "--format", "{{.Id}}", base_ref, check=False).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="slurmft-ctx-") as tmp:
        ctx = Path(tmp)
        stage_context(ctx)
        wheels = build_wheels(ctx, python=release.python)
        add_wheels(ctx, wheels)
        deb_deps = "" if wheels else " ".join(DEBIAN_PYTHON_DEPS)
        digest = content_hash(ctx, base_id or base_ref, f"{release.suite}:{deb_deps}")
        tag = node_image_tag(release, digest)
        have = docker.run("image", "inspect", "--format",
                          "{{index .Config.Labels \"" + HASH_LABEL + "\"}}", tag, check=False)
        if have.returncode == 0 and have.stdout.strip() == digest:
            return ImageResult(tag, digest, False, base_built, time.monotonic() - t0)
        log.info("building %s", tag)
        # --force-rm: the legacy builder otherwise keeps the container of a failed step.
        cp = docker.run("build", "--force-rm", "--network", "host", "-f", str(ctx / DOCKERFILE),
                        "--build-arg", f"BASE_IMAGE={base_ref}",
                        "--build-arg", "PIP_NO_INDEX=1",
                        "--build-arg", f"DEBIAN_PYTHON_DEPS={deb_deps}",
                        "--label", f"{HASH_LABEL}={digest}", "--label", f"{IMAGE_LABEL}=node",
                        "--label", f"{RELEASE_LABEL}={release.version}",
                        "-t", tag, str(ctx), check=False, timeout=1200, what="docker build")
        build_log = mkdir_p(cache_dir()) / f"build-{release.version}.log"
        build_log.write_text(cp.stdout + cp.stderr)
        if cp.returncode != 0:
            last = " | ".join((cp.stderr or cp.stdout).strip().splitlines()[-3:])
            raise ClusterError(f"docker build failed (rc={cp.returncode}): {last}; "
                               f"full output in {build_log}")
    _prune_node_images(docker, keep=tag, release=release)
    return ImageResult(tag, digest, True, base_built, time.monotonic() - t0)


def _prune_node_images(docker: Docker, keep: str, release: SlurmRelease) -> None:
    """Remove older node images of ``release`` (one per source hash) that no container uses;
    keep ``keep`` and every other release's images (each is its own cache)."""
    keep_id = docker.run("image", "inspect", "--format", "{{.Id}}", keep, check=False).stdout.strip()
    for ref in docker.ids("image", f"{RELEASE_LABEL}={release.version}"):
        if not keep_id.startswith(f"sha256:{ref}") and ref not in keep_id:
            docker.ok("image", "rm", ref)          # no -f: an image in use stays


def remove_images(docker: Docker, keep_base: bool = True) -> list[str]:
    """Remove the node images slurmft built (and the base image unless ``keep_base``)."""
    gone = []
    for ref in docker.ids("image", f"{IMAGE_LABEL}=node"):
        if docker.ok("image", "rm", "-f", ref):
            gone.append(ref)
    if not keep_base:
        for tag in [base_image_tag(r.suite) for r in RELEASES.values()]:
            if docker.ok("image", "inspect", tag) and docker.ok("image", "rm", "-f", tag):
                gone.append(tag)
    return gone


# --------------------------------------------------------------------------------------------
# compose file
# --------------------------------------------------------------------------------------------
_VAR = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")
