"""The Slurm releases the docker backend can run: each one Debian suite's own package.

``slurmft cluster up --backend docker --slurm 24.11`` builds its node image from a debootstrap
of the suite that ships that release (bookworm 22.05, trixie 24.11, sid 26.05). The image's
Python dependencies come from the host's wheel cache when the suite's python3 is the host's
(bookworm), else from the suite's own Debian packages (no index needed in either case).
"""

from __future__ import annotations

from dataclasses import dataclass

from slurmft.core.errors import UsageError


@dataclass(frozen=True)
class SlurmRelease:
    version: str               # "24.11": what --slurm takes and the image tag starts with
    suite: str                 # the Debian suite whose slurm-wlm is this release
    python: tuple[int, int]    # that suite's python3 (host wheels fit only when it is the host's)

    @property
    def major_minor(self) -> tuple[int, int]:
        major, minor = self.version.split(".")
        return int(major), int(minor)


RELEASES: dict[str, SlurmRelease] = {
    r.version: r for r in (
        SlurmRelease("22.05", "bookworm", (3, 11)),
        SlurmRelease("24.11", "trixie", (3, 13)),
        SlurmRelease("26.05", "sid", (3, 13)),
    )
}
DEFAULT_RELEASE = "22.05"

#: The Python packages of a suite that stand in for slurmft's install_requires when the host's
#: wheels do not fit the suite's python3 (same order as setup.cfg).
DEBIAN_PYTHON_DEPS = (
    "python3-click", "python3-jinja2", "python3-paramiko", "python3-yaml", "python3-hostlist",
    "python3-xxhash", "python3-filelock", "python3-tenacity", "python3-prometheus-client",
    "python3-rich", "python3-numpy", "python3-setuptools",
)


def slurm_release(version: str | None) -> SlurmRelease:
    """The release for ``--slurm VERSION`` (None: the default), or UsageError."""
    key = (version or DEFAULT_RELEASE).strip()
    if key not in RELEASES:
        raise UsageError(f"unknown Slurm release {version!r}: use one of "
                         f"{', '.join(RELEASES)}")
    return RELEASES[key]
