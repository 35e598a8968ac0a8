"""What every command group shares: parameter types, the config of this invocation, JSON output.

One rule for every ``--json``: the JSON document goes to stdout, errors stay on stderr
(``note_json_errors`` says so in each ``--json`` help text).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from typing import Any

import click

from slurmft.core.config import Config, load_config
from slurmft.core.errors import SlurmFTError, UsageError

JSON_ERRORS_NOTE = "Errors stay on stderr as one 'slurmft:' line."
#: Largest Slurm job id (2**32 - 2: NO_VAL and INFINITE are reserved).
MAX_JOB_ID = 2**32 - 2


def echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=False, default=str))


def get_config(ctx: click.Context, **overrides: dict) -> Config:
    """The layered config for this invocation (CLI flags passed as ``overrides``)."""
    obj = ctx.find_root().obj or {}
    return load_config(obj.get("config_path"), overrides=overrides or None)


class FiniteFloat(click.ParamType):
    """A finite number within [min, max] (no inf, nan or 1e400), e.g. seconds."""

    name = "float"

    def __init__(self, min: float | None = None, max: float = 1e9,  # noqa: A002
                 min_open: bool = False) -> None:
        self.min, self.max, self.min_open = min, max, min_open

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, float) and math.isfinite(value):
            number = value
        else:
            try:
                number = float(value)
            except (TypeError, ValueError, OverflowError):
                self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        low_ok = (self.min is None or (number > self.min if self.min_open
                                       else number >= self.min))
        if not low_ok or number > self.max:
            low = "any" if self.min is None else f"{'>' if self.min_open else '>='} {self.min:g}"
            self.fail(f"{value!r} is out of range ({low}, <= {self.max:g})", param, ctx)
        return number


class LazyChoice(click.Choice):
    """A ``click.Choice`` whose choices come from ``load()`` when first needed (parsing or
    --help), so that a command module need not import the module that owns the names."""

    def __init__(self, load: Callable[[], Iterable[str]]) -> None:
        self._load = load
        self._choices: tuple[str, ...] | None = None
        self.case_sensitive = True

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        if self._choices is None:
            self._choices = tuple(self._load())
        return self._choices

    @choices.setter
    def choices(self, value: Iterable[str]) -> None:
        self._choices = tuple(value)


def count(min: int = 0, max: int = 2**31 - 1) -> click.IntRange:  # noqa: A002
    """An integer option with a lower bound and an upper one that fits every C int."""
    return click.IntRange(min, max)


def job_id_type() -> click.IntRange:
    """A Slurm job id (1 .. 2**32 - 2)."""
    return count(1, MAX_JOB_ID)


def check_bind(bind: str, option: str = "--bind") -> str:
    """``bind`` as an IP address or a valid host name; a UsageError naming ``option`` if not."""
    import ipaddress

    from slurmft.core.nodeset import validate_hostname

    try:
        return str(ipaddress.ip_address(bind))
    except ValueError:
        try:
            return validate_hostname(bind)
        except SlurmFTError:
            raise UsageError(f"{option} must name an IP address or host name, "
                             f"not {bind!r}") from None


def note_json_errors(group: click.Group) -> None:
    """One rule for every --json: the document on stdout, errors on stderr (said in --help)."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            note_json_errors(command)
        for param in command.params:
            if (isinstance(param, click.Option) and "--json" in param.opts
                    and JSON_ERRORS_NOTE not in (param.help or "")):
                param.help = f"{(param.help or 'Print JSON.').rstrip()} {JSON_ERRORS_NOTE}"
