"""Which Slurm answers: its version from ``sinfo --version`` and the JSON schema from the
``meta`` of ``squeue --json`` / ``sinfo --json``.

The parsers (``slurm.parse``) choose how to read a document by what it says it is, never by
trying one shape and falling back on failure. Pure functions; the argv is built in
``slurm.commands.build_version_argv``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from slurmft.core.errors import SlurmParseError

_VERSION_RE = re.compile(r"\b(\d{2})\.(\d{1,2})\.(\d+)(?:-\S*)?\b")
_OPENAPI_RE = re.compile(r"v?0\.0\.(\d+)")


@dataclass(frozen=True, order=True)
class SlurmVersion:
    major: int
    minor: int
    micro: int = 0

    def __str__(self) -> str:
        return f"{self.major}.{self.minor:02d}.{self.micro}"

    @property
    def release(self) -> str:
        """``24.11``: the release (what the docker testbed's --slurm takes)."""
        return f"{self.major}.{self.minor:02d}"


def parse_version(text: str) -> SlurmVersion:
    """``slurm 24.11.5`` (``sinfo --version``; Debian may print ``slurm-wlm 22.05.8``)."""
    m = _VERSION_RE.search(text or "")
    if not m:
        raise SlurmParseError(f"sinfo --version printed {(text or '').strip()!r}, not a Slurm "
                              "version")
    return SlurmVersion(int(m.group(1)), int(m.group(2)), int(m.group(3)))


@dataclass(frozen=True)
class JsonSchema:
    """What a ``--json`` document says it is. ``openapi``: the minor of the OpenAPI/data_parser
    version (38 for v0.0.38 of 22.05, 42 for data_parser/v0.0.42 of 24.11, ...); ``release``:
    the Slurm that printed it, when the document says."""

    openapi: int
    release: SlurmVersion | None = None

    @property
    def nested_numbers(self) -> bool:
        """Numbers as ``{"set", "infinite", "number"}`` objects (data_parser, v0.0.39 on)."""
        return self.openapi >= 39

    @property
    def state_lists(self) -> bool:
        """``job_state`` and node ``state`` as lists of words (v0.0.39 on)."""
        return self.openapi >= 39


def json_schema(doc: Mapping[str, Any]) -> JsonSchema:
    """The schema of a ``squeue --json``/``sinfo --json`` document, from its ``meta``:
    22.05 writes ``meta.plugin.name = "Slurm OpenAPI v0.0.38"`` and
    ``meta.Slurm.version {major, micro, minor}``; data_parser releases (23.02 on) write
    ``meta.plugin.data_parser = "data_parser/v0.0.42"`` and ``meta.slurm.version``/
    ``meta.slurm.release``. A document without either is refused (SlurmParseError)."""
    meta = doc.get("meta")
    if not isinstance(meta, Mapping):
        raise SlurmParseError("the --json document has no 'meta': cannot tell which Slurm "
                              "printed it")
    plugin = meta.get("plugin") if isinstance(meta.get("plugin"), Mapping) else {}
    openapi = None
    for key in ("data_parser", "name"):
        m = _OPENAPI_RE.search(str(plugin.get(key) or ""))
        if m:
            openapi = int(m.group(1))
            break
    slurm = meta.get("slurm") or meta.get("Slurm") or {}
    release = _meta_release(slurm) if isinstance(slurm, Mapping) else None
    if openapi is None:
        raise SlurmParseError(f"the --json document's meta names no OpenAPI/data_parser "
                              f"version (plugin: {dict(plugin)!r})")
    return JsonSchema(openapi, release)


def _meta_release(slurm: Mapping[str, Any]) -> SlurmVersion | None:
    ver = slurm.get("version")
    if isinstance(ver, Mapping):
        try:
            return SlurmVersion(int(ver["major"]), int(ver["minor"]), int(ver.get("micro", 0)))
        except (KeyError, TypeError, ValueError):
            pass
    rel = slurm.get("release")
    if isinstance(rel, str):
        try:
            return parse_version(rel)
        except SlurmParseError:
            return None
    return None
