"""Host names and Slurm hostlist expressions (pure).

Expansion and folding use python-hostlist, the library Slurm sites already use; this module
adds the validation slurmft needs before a name ever reaches a command line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import hostlist as _hostlist

from slurmft.core.errors import HostNameError

# RFC 1123 label: letters, digits, hyphen; not starting/ending with a hyphen; 1-63 chars.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
# What may appear in a hostlist expression at all: names, brackets, ranges, commas.
_HOSTLIST_CHARS_RE = re.compile(r"^[A-Za-z0-9.\-\[\],]+$")

MAX_HOSTNAME_LEN = 253
#: The most hosts one expression may name (Slurm's largest clusters have some 10^4 nodes);
#: more is a typo such as node[1-10000000], refused before anything is expanded.
MAX_HOSTS = 65536
_BRACKET_RE = re.compile(r"\[([^\[\]]*)\]")


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
    if _planned_size(text) > MAX_HOSTS:
        raise HostNameError(f"hostlist {expression!r} names more than {MAX_HOSTS} hosts")
    try:
        names = _hostlist.expand_hostlist(text)
    except _hostlist.BadHostlist as exc:
        raise HostNameError(f"invalid hostlist {expression!r}: {exc}") from None
    for name in names:
        validate_hostname(name)
    return list(dict.fromkeys(names))


def _planned_size(text: str) -> int:
    """How many names ``text`` expands to, counted from its ranges without expanding them
    (malformed ranges count 1: python-hostlist reports them)."""
    total = 0
    for piece in re.split(r",(?![^\[]*\])", text):
        size = 1
        for group in _BRACKET_RE.findall(piece):
            count = 0
            for item in group.split(","):
                lo, sep, hi = item.partition("-")
                if sep and lo.isdigit() and hi.isdigit():
                    count += max(1, int(hi) - int(lo) + 1)
                else:
                    count += 1
            size *= max(1, count)
        total += size
    return total


def fold(names: Iterable[str]) -> str:
    """Fold host names into the shortest Slurm hostlist expression (``node[1-3]``)."""
    items = [validate_hostname(n) for n in names]
    if not items:
        return ""
    return _hostlist.collect_hostlist(items)
