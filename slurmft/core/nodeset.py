"""Host names, Slurm hostlist expressions and ``NodeSet``, the value type for a set of nodes (pure).

Expansion and folding use python-hostlist, the library Slurm sites already use; this module
adds the validation slurmft needs before a name ever reaches a command line. ``NodeSet`` is
the one way to parse, merge, subtract and fold host lists (as ClusterShell's NodeSet): never
fold or merge host lists by hand.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

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
    return str(NodeSet._of_valid([validate_hostname(n) for n in names]))


class NodeSet:
    """An immutable set of validated host names that prints as a folded Slurm hostlist.

    ``NodeSet("node[1-3],gpu01")`` or ``NodeSet(["node1", "node[2-3]"])`` (each item may be an
    expression); bad names or more than MAX_HOSTS hosts raise HostNameError. Iteration is in
    natural order (node2 before node10); ``str()`` is the folded expression (``node[1-3]``).
    Supports ``|``/union, ``-``/difference, ``&``/intersection, ``in``, ``len``, equality and
    hashing, so it can key a dict or sit in a frozen dataclass.
    """

    __slots__ = ("_names", "_ordered")

    def __init__(self, nodes: str | Iterable[str] = "") -> None:
        if isinstance(nodes, NodeSet):
            names: Iterable[str] = nodes._ordered
        else:
            names = expand(nodes)
        self._init_from(names)

    def _init_from(self, names: Iterable[str]) -> None:
        unique = frozenset(names)
        if len(unique) > MAX_HOSTS:
            raise HostNameError(f"a node set may name at most {MAX_HOSTS} hosts, not {len(unique)}")
        object.__setattr__(self, "_names", unique)
        object.__setattr__(self, "_ordered", tuple(_hostlist.numerically_sorted(list(unique))))

    @classmethod
    def parse(cls, text: str) -> NodeSet:
        """Parse a hostlist expression (same as ``NodeSet(text)``)."""
        return cls(text)

    @classmethod
    def _of_valid(cls, names: Iterable[str]) -> NodeSet:
        """A NodeSet from names already validated (results of set operations)."""
        out = cls.__new__(cls)
        out._init_from(names)
        return out

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("NodeSet is immutable")

    def __iter__(self) -> Iterator[str]:
        return iter(self._ordered)

    def __len__(self) -> int:
        return len(self._names)

    def __bool__(self) -> bool:
        return bool(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def union(self, other: str | Iterable[str]) -> NodeSet:
        return NodeSet._of_valid(self._names | _names_of(other))

    def difference(self, other: str | Iterable[str]) -> NodeSet:
        return NodeSet._of_valid(self._names - _names_of(other))

    def intersection(self, other: str | Iterable[str]) -> NodeSet:
        return NodeSet._of_valid(self._names & _names_of(other))

    def __or__(self, other: object) -> NodeSet:
        return self.union(other) if isinstance(other, NodeSet) else NotImplemented

    def __sub__(self, other: object) -> NodeSet:
        return self.difference(other) if isinstance(other, NodeSet) else NotImplemented

    def __and__(self, other: object) -> NodeSet:
        return self.intersection(other) if isinstance(other, NodeSet) else NotImplemented

    def __eq__(self, other: object) -> bool:
        return self._names == other._names if isinstance(other, NodeSet) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._names)

    def __str__(self) -> str:
        return _hostlist.collect_hostlist(list(self._ordered)) if self._ordered else ""

    def __repr__(self) -> str:
        return f"NodeSet({str(self)!r})"


def _names_of(nodes: str | Iterable[str]) -> frozenset[str]:
    return nodes._names if isinstance(nodes, NodeSet) else frozenset(expand(nodes))
