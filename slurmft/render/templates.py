"""Rendering of slurmft's Jinja2 templates (the ONLY jinja2 import).

Templates live in the project's ``templates/`` folder (or ``<prefix>/share/slurmft/templates``
for a non-editable install, or SLURMFT_TEMPLATES). StrictUndefined makes a missing variable an
error instead of an empty string; the ``shquote`` filter quotes a value for POSIX shells, and
``hostname`` refuses anything that is not an RFC 1123 host name.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jinja2

from slurmft.core.errors import RenderError
from slurmft.core.nodeset import validate_hostname


def template_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("SLURMFT_TEMPLATES"):
        dirs.append(Path(os.environ["SLURMFT_TEMPLATES"]))
    dirs.append(Path(__file__).resolve().parent.parent / "templates")
    dirs.append(Path(sys.prefix) / "share" / "slurmft" / "templates")
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
        raise RenderError("no templates folder found: set SLURMFT_TEMPLATES to slurmft's templates/")
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
