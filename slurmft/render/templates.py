"""Rendering of slurmft's Jinja2 templates (the ONLY jinja2 import).

Templates ship as package data (``templates/`` inside the ``slurmft`` package, found with
importlib.resources, so an installed wheel needs no checkout); SLURMFT_TEMPLATES names a folder
searched first. StrictUndefined makes a missing variable an error instead of an empty string;
the ``shquote`` filter quotes a value for POSIX shells, and ``hostname`` refuses anything that
is not an RFC 1123 host name.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable, Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any

import jinja2

from slurmft.core.errors import RenderError
from slurmft.core.nodeset import validate_hostname


def packaged_templates() -> Path:
    """The templates shipped in the package (a real folder for a wheel or editable install)."""
    return Path(str(files("slurmft").joinpath("templates")))


def template_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("SLURMFT_TEMPLATES"):
        dirs.append(Path(os.environ["SLURMFT_TEMPLATES"]))
    dirs.append(packaged_templates())
    return [d for d in dirs if d.is_dir()]


def _shquote(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(shlex.quote(str(v)) for v in value)
    return shlex.quote(str(value))


def _hostname(value: Any) -> str:
    return validate_hostname(str(value))


def make_environment(extra_dirs: Iterable[str | os.PathLike] = ()) -> jinja2.Environment:
    dirs = [str(d) for d in extra_dirs] + [str(d) for d in template_dirs()]
    if not dirs:
        raise RenderError("no templates folder found: reinstall slurmft (its package data is "
                          "missing) or set SLURMFT_TEMPLATES")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(dirs),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["shquote"] = _shquote
    env.filters["hostname"] = _hostname
    return env


def render(template: str, context: Mapping[str, Any],
           extra_dirs: Iterable[str | os.PathLike] = ()) -> str:
    """Render ``template`` (a file name under templates/) with ``context``."""
    env = make_environment(extra_dirs)
    try:
        return env.get_template(template).render(**context)
    except jinja2.TemplateNotFound:
        raise RenderError(f"template {template!r} not found in {', '.join(map(str, template_dirs()))}") from None
    except jinja2.UndefinedError as exc:
        raise RenderError(f"template {template!r}: {exc.message}") from None
    except jinja2.TemplateSyntaxError as exc:
        raise RenderError(f"template {template!r} line {exc.lineno}: {exc.message}") from None
