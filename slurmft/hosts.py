"""Host names and Slurm hostlist expressions (pure).

Expansion and folding use python-hostlist, the library Slurm sites already use; this module
adds the validation slurmft needs before a name ever reaches a command line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import hostlist as _hostlist

from slurmft.errors import HostNameError

# RFC 1123 label: letters, digits, hyphen; not starting/ending with a hyphen; 1-63 chars.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
# What may appear in a hostlist expression at all: names, brackets, ranges, commas.
_HOSTLIST_CHARS_RE = re.compile(r"^[A-Za-z0-9.\-\[\],]+$")

MAX_HOSTNAME_LEN = 253


def is_valid_hostname(name: str) -> bool:
    return (
        isinstance(name, str)
        and 0 < len(name) <= MAX_HOSTNAME_LEN
        and _HOSTNAME_RE.match(name) is not None
    )


def validate_hostname(name: str) -> str:
    """Return ``name`` if it is a valid RFC 1123 host name, else raise HostNameError."""
    if not is_valid_hostname(name):
        raise HostNameError(
            f"invalid host name {name!r}: use letters, digits, '-' and '.' only (RFC 1123)"
        )
    return name


def expand(expression: str | Iterable[str]) -> list[str]:
    """Expand a Slurm hostlist (``node[1-3,7],gpu[01-02]``) into validated host names.

    An iterable of expressions is expanded one by one and concatenated. Order is kept;
    duplicates are dropped.
    """
    if not isinstance(expression, str):
        out: list[str] = []
        for item in expression:
            out.extend(expand(item))
        return list(dict.fromkeys(out))
    text = expression.strip()
    if not text:
        return []
    if not _HOSTLIST_CHARS_RE.match(text):
        raise HostNameError(
            f"invalid hostlist {expression!r}: only names, brackets, ranges and commas are allowed"
        )
    try:
        names = _hostlist.expand_hostlist(text)
    except _hostlist.BadHostlist as exc:
        raise HostNameError(f"invalid hostlist {expression!r}: {exc}") from None
    for name in names:
        validate_hostname(name)
    return list(dict.fromkeys(names))


def fold(names: Iterable[str]) -> str:
    """Fold host names into the shortest Slurm hostlist expression (``node[1-3]``)."""
    items = [validate_hostname(n) for n in names]
    if not items:
        return ""
    return _hostlist.collect_hostlist(items)
