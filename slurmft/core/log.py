"""One logging setup for all of slurmft.

Text lines look like::

    2026-11-25T16:10:09.123+00:00 INFO [slurmft.recovery.rescheduler] node=node1 job=42 message
    2026-11-25T16:10:09.125+00:00 ERROR [slurmft.probe.fanout] node=head job=- failed_node=node3 ...

which the shipped Logstash grok pattern
``%{TIMESTAMP_ISO8601:timestamp} %{LOGLEVEL:level} \\[%{DATA:module}\\] %{GREEDYDATA:msg}``
parses, then ``IDS_GROK`` below on ``msg``. ``fmt="json"`` writes one JSON object per line for
Filebeat's ndjson parser. ``node=`` is the host that *reports* (SLURMD_NODENAME or the host
name); the job id comes from SLURM_JOB_ID (``-`` outside a job); ``extra={"node": ...,
"job": ...}`` overrides them per record. Every line, ERROR lines included, carries both as
single tokens (whitespace becomes ``_``), and level names are the five the grok LOGLEVEL
pattern knows.

A line that reports a failed node says so in its own field, apart from the reporter:
``extra=failed_extra(nodes)`` adds ``failed_node=node3`` for one node, ``failed_nodes=node[3-4]``
(folded, as Slurm writes host lists) for several. Such lines are ERROR, or WARNING for a
degraded node (``failure_level``).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import socket
import sys
from collections.abc import Iterable, Mapping

from slurmft.core.nodeset import fold

LOGGER_NAME = "slurmft"
TEXT_FORMATS = ("text", "json")
#: What the Logstash pipeline matches on ``msg`` (the part after ``[module] ``).
IDS_GROK = (r"^node=%{NOTSPACE:node_id} job=%{NOTSPACE:job_id}"
            r"(?: failed_node=%{NOTSPACE:failed_node})?(?: failed_nodes=%{NOTSPACE:failed_nodes})?"
            r"(?: %{GREEDYDATA:text})?")


def _now_iso(created: float) -> str:
    return _dt.datetime.fromtimestamp(created, tz=_dt.timezone.utc).isoformat(
        timespec="milliseconds"
    )


def default_node_id(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return env.get("SLURMD_NODENAME") or env.get("SLURM_TOPOLOGY_ADDR") or socket.gethostname()


def default_job_id(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return env.get("SLURM_JOB_ID") or "-"


def _token(value: object) -> str:
    """An id as one whitespace-free token, so ``node=%{NOTSPACE}`` parses it; empty -> ``-``."""
    text = "_".join(str(value).split())
    return text or "-"


def _fold(nodes: list[str]) -> str:
    """Host names as one folded token (``node[1-3]``); never raises (a log line must not)."""
    try:
        return fold(nodes)
    except Exception:  # a name Slurm would not accept: list it as it is
        return _token(",".join(nodes))


def failed_extra(nodes: str | Iterable[str]) -> dict[str, list[str]]:
    """``extra=`` for a line that reports ``nodes`` as failed (one name or several)."""
    names = [nodes] if isinstance(nodes, str) else list(nodes)
    return {"failed": [str(n) for n in names]}


def failure_level(states: Iterable[object]) -> int:
    """ERROR for a line about failed nodes; WARNING when every one of them is only DEGRADED
    (``states``: Health values or their names)."""
    names = [str(getattr(s, "value", s)).upper() for s in states]
    return logging.WARNING if names and all(n == "DEGRADED" for n in names) else logging.ERROR


def _failed_fields(record: logging.LogRecord) -> dict[str, str]:
    nodes = [n for n in getattr(record, "failed", None) or () if n]
    if not nodes:
        return {}
    if len(nodes) == 1:
        return {"failed_node": _token(nodes[0])}
    return {"failed_nodes": _fold(nodes)}


# Level names the grok LOGLEVEL pattern knows; custom levels are shown as the next one up.
_GROK_LEVELS = ((logging.DEBUG, "DEBUG"), (logging.INFO, "INFO"), (logging.WARNING, "WARNING"),
                (logging.ERROR, "ERROR"), (logging.CRITICAL, "CRITICAL"))


def _level_name(levelno: int) -> str:
    for number, name in _GROK_LEVELS:
        if levelno <= number:
            return name
    return "CRITICAL"


class _ContextFilter(logging.Filter):
    """Adds node and job ids to every record (a record may override with extra=)."""

    def __init__(self, node_id: str, job_id: str) -> None:
        super().__init__()
        self.node_id = _token(node_id)
        self.job_id = _token(job_id)

    def filter(self, record: logging.LogRecord) -> bool:
        node = getattr(record, "node", None)
        record.node = _token(node) if node else self.node_id
        job = getattr(record, "job", None)
        record.job = _token(job) if job else self.job_id
        record.failed_fields = _failed_fields(record)
        return True


def _fields_of(record: logging.LogRecord) -> dict[str, str]:
    fields = getattr(record, "failed_fields", None)
    return fields if fields is not None else _failed_fields(record)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage().replace("\r\n", "\n").replace("\r", "\n").replace("\n", " | ")
        failed_part = "".join(f"{k}={v} " for k, v in _fields_of(record).items())
        line = (
            f"{_now_iso(record.created)} {_level_name(record.levelno)} [{record.name}] "
            f"node={record.node} job={record.job} {failed_part}{msg}"
        )
        if record.exc_info and record.levelno >= logging.ERROR:
            # One line per record: the exception type and text, no multi-line traceback.
            exc = record.exc_info[1]
            line += f" | {type(exc).__name__}: {exc}"
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "timestamp": _now_iso(record.created),
            "level": _level_name(record.levelno),
            "module": record.name,
            "node_id": record.node,
            "job_id": record.job,
            **_fields_of(record),
            "msg": record.getMessage(),
        }
        if record.exc_info and record.exc_info[1] is not None:
            doc["error"] = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        return json.dumps(doc, sort_keys=False)


def setup_logging(
    level: str | int = "INFO",
    fmt: str | None = None,
    stream=None,
    logfile: str | None = None,
    node_id: str | None = None,
    job_id: str | None = None,
) -> logging.Logger:
    """Configure the ``slurmft`` logger (idempotent: replaces its handlers).

    ``fmt`` defaults to SLURMFT_LOG_FORMAT or ``text``; ``logfile`` to SLURMFT_LOG_FILE.
    """
    fmt = (fmt or os.environ.get("SLURMFT_LOG_FORMAT") or "text").lower()
    if fmt not in TEXT_FORMATS:
        from slurmft.core.errors import ConfigError

        raise ConfigError(f"log format must be one of {', '.join(TEXT_FORMATS)}, not {fmt!r}")
    logfile = logfile or os.environ.get("SLURMFT_LOG_FILE")
    numeric = level if isinstance(level, int) else logging.getLevelName(str(level).upper())
    if not isinstance(numeric, int):
        from slurmft.core.errors import ConfigError

        raise ConfigError(f"log level must be DEBUG, INFO, WARNING or ERROR, not {level!r}")
    handlers: list[logging.Handler] = [logging.StreamHandler(stream or sys.stderr)]
    if logfile:
        try:
            handlers.append(logging.FileHandler(logfile))
        except OSError as exc:
            from slurmft.core.errors import ConfigError

            raise ConfigError(f"cannot open log file {logfile}: {exc.strerror}") from None
    logger = logging.getLogger(LOGGER_NAME)
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    context = _ContextFilter(node_id or default_node_id(), job_id or default_job_id())
    for h in handlers:
        h.setFormatter(formatter)
        h.addFilter(context)
        logger.addHandler(h)
    logger.setLevel(numeric)
    logger.propagate = False
    # paramiko logs tracebacks on failed connects: keep them out of user output.
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    return logger


def get_logger(name: str) -> logging.Logger:
    """A child of the slurmft logger: use ``get_logger(__name__)``."""
    if not name.startswith(LOGGER_NAME):
        name = f"{LOGGER_NAME}.{name}"
    return logging.getLogger(name)
