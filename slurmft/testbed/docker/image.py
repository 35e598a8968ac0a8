"""The node image: staged build context, content hash, cached wheels, the debootstrap'd base.

Without a registry the base image is built with ``debootstrap --variant=minbase bookworm`` and
``docker import``. The node image is tagged by a hash of its context, so unchanged sources
reuse the cached image.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from slurmft.core.errors import ClusterError
from slurmft.core.log import get_logger
from slurmft.testbed import procs
from slurmft.testbed.docker.client import HASH_LABEL, IMAGE_LABEL, Docker
from slurmft.testbed.docker.daemon import mounts_under

log = get_logger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]
DOCKER_DIR = REPO_ROOT / "docker"
BASE_IMAGE = "slurmft-base:bookworm"       # debootstrap'd + imported when no registry is used
REGISTRY_BASE = "debian:bookworm"           # without debootstrap: pulled by the build
IMAGE_PYTHON = (3, 11)                      # bookworm's python3: host wheels must match it
NODE_IMAGE_REPO = "slurmft-node"
# Files of the repository that go into the image (the build context is staged from these).
CONTEXT_FILES = ("setup.py", "setup.cfg", "README.md", "docker/Dockerfile", "docker/entrypoint.sh")
CONTEXT_TREES = (("slurmft", "*"),)            # the package with its data (templates, examples)


def stage_context(dest: Path, wheels: Path | None, repo: Path = REPO_ROOT) -> None:
    """Copy the files the image needs into ``dest`` (the repository layout, nothing else)."""
    for rel in CONTEXT_FILES:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / rel, target)
    for top, pattern in CONTEXT_TREES:
        for src in sorted((repo / top).rglob(pattern)):
            if src.is_file() and "__pycache__" not in src.parts:
                target = dest / src.relative_to(repo)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target)
    wdir = dest / "docker" / "wheels"
    wdir.mkdir(parents=True, exist_ok=True)
    if wheels:
        for whl in sorted(wheels.glob("*.whl")):
            shutil.copy2(whl, wdir / whl.name)


def content_hash(context: Path, base_id: str) -> str:
    """sha256 over the staged context (paths and bytes) and the base image id."""
    h = hashlib.sha256(base_id.encode())
    for p in sorted(context.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(context)).encode() + b"\0")
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "slurmft" / "docker"


def build_wheels(cache: Path | None = None, repo: Path = REPO_ROOT) -> Path | None:
    """slurmft's dependencies as wheels (so the build needs no index), cached per setup.cfg.

    None when this Python is not the image's (wheels would not fit) or pip cannot fetch them
    here; the image build then installs from its own index.
    """
    if sys.version_info[:2] != IMAGE_PYTHON:
        return None
    cache = cache or cache_dir()
    key = hashlib.sha256((repo / "setup.cfg").read_bytes()).hexdigest()[:16]
    wdir = cache / f"wheels-{key}"
    if (wdir / ".complete").exists():
        return wdir
    tmp = Path(tempfile.mkdtemp(prefix="wheels-", dir=mkdir_p(cache)))
    cp = procs.run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(tmp), str(repo)],
                   check=False, timeout=600)
    if cp.returncode != 0:
        log.warning("pip wheel failed; the image will install from an index: %s",
                    (cp.stderr.strip().splitlines() or ["?"])[-1])
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    for whl in tmp.glob("slurmft-*.whl"):
        whl.unlink()       # slurmft itself is installed from the staged sources
    (tmp / ".complete").touch()
    shutil.rmtree(wdir, ignore_errors=True)
    tmp.rename(wdir)
    return wdir


def mkdir_p(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


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


def ensure_image(docker: Docker, base: str = "", repo: Path = REPO_ROOT) -> ImageResult:
    """The node image for the current sources: reused when one with the same hash exists."""
    t0 = time.monotonic()
    base_ref, base_built = ensure_base_image(docker, base)
    base_id = docker.run("image", "inspect", "--format", "{{.Id}}", base_ref, check=False).stdout.strip()
    wheels = build_wheels(repo=repo)
    with tempfile.TemporaryDirectory(prefix="slurmft-ctx-") as tmp:
        ctx = Path(tmp)
        stage_context(ctx, wheels, repo)
        digest = content_hash(ctx, base_id or base_ref)
        tag = f"{NODE_IMAGE_REPO}:{digest[:12]}"
        have = docker.run("image", "inspect", "--format",
                          "{{index .Config.Labels \"" + HASH_LABEL + "\"}}", tag, check=False)
        if have.returncode == 0 and have.stdout.strip() == digest:
            return ImageResult(tag, digest, False, base_built, time.monotonic() - t0)
        log.info("building %s", tag)
        cp = docker.run("build", "--network", "host", "-f", "docker/Dockerfile",
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
