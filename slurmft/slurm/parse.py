"""Pure functions that read what Slurm prints: JSON and ``key=value`` records into JobInfo and
NodeInfo, ``sbatch --parsable``, step lists, and Slurm's error text into typed errors.

The JSON readers are chosen by what the document says it is (``slurm.version.json_schema``
over its ``meta``), never by trying one shape and falling back on failure:

- OpenAPI v0.0.38 (22.05): plain numbers, ``job_state`` and node ``state`` strings (flags in
  ``state_flags``), ``job_resources.allocated_nodes[].nodename``, ``exit_code`` the raw wait
  status (768 for ``exit 3``), ``sinfo --json`` a ``nodes[]`` list of node records;
- data_parser v0.0.39 and later (23.02 ... 26.05, checked on 24.11 and 26.05): numbers as
  ``{"set", "infinite", "number"}``, states as lists of words (flags after the base state),
  ``job_resources.nodes.allocation[].name``, ``exit_code.return_code``, ``sinfo --json`` a
  ``sinfo[]`` list of groups (one per node with ``--Node``, see ``slurm.commands``).

A document without ``meta`` (hand-made, a fake) is read by the keys it has. Real output of
each release lives in ``tests/data/slurm-<release>/``. The argv that produce this output are
built in ``slurm.commands``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from slurmft.core import nodeset as hosts
from slurmft.core.errors import (
    ControllerUnreachableError,
    InvalidJobError,
    InvalidNodeError,
    JobNotPendingError,
    JobPendingError,
    NodeStateError,
    RequeueDisabledError,
    SlurmBusyError,
    SlurmCommandError,
    SlurmParseError,
    UnsatisfiableRequestError,
)
from slurmft.slurm.commands import check_job_id
from slurmft.slurm.records import JobInfo, NodeInfo
from slurmft.slurm.version import JsonSchema, json_schema


def parse_step_ids(text: str, job_id: int) -> list[int]:
    """The numbered steps of ``job_id`` in ``build_steps_argv``'s output, ascending (the batch,
    extern and interactive steps are not the job's work and are left out)."""
    prefix = f"{check_job_id(job_id)}."
    ids = {int(word[len(prefix):]) for word in text.split()
           if word.startswith(prefix) and word[len(prefix):].isdigit()}
    return sorted(ids)


def parse_steps_by_job(text: str) -> dict[int, list[int]]:
    """``build_all_steps_argv``'s output: each job's numbered steps, ascending (batch, extern
    and interactive steps left out, as in ``parse_step_ids``; a job with none of them is
    absent)."""
    out: dict[int, set[int]] = {}
    for word in text.split():
        job, _, step = word.partition(".")
        if job.isdigit() and step.isdigit():
            out.setdefault(int(job), set()).add(int(step))
    return {job: sorted(ids) for job, ids in out.items()}


def parse_allocation(text: str) -> list[str]:
    """The node names in ``build_allocation_argv``'s output (a hostlist on the first line;
    nothing for a job that left the queue or holds no nodes yet)."""
    first = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not first or first in ("(null)", "n/a"):
        return []
    return [hosts.validate_hostname(n) for n in hosts.expand(first)]


# ----------------------------------------------------------------------------- error mapping

# (substring of Slurm's stderr, error class, hint for the user). First match wins.
_ERROR_PATTERNS: tuple[tuple[str, type[SlurmCommandError], str], ...] = (
    ("invalid job id", InvalidJobError, "no such job"),
    ("no longer pending", JobNotPendingError, "the job is no longer pending"),
    ("already finished", JobNotPendingError, "the job has already finished"),
    ("already completing or completed", JobNotPendingError, "the job has already finished"),
    ("job is pending execution", JobPendingError, "the job is still pending"),
    ("presently disabled", RequeueDisabledError, "Slurm will not requeue this job"),
    ("invalid node name", InvalidNodeError, "no such node"),
    ("invalid node state", NodeStateError, "node state change refused"),
    ("must specify a reason", NodeStateError, "a reason is required"),
    ("node configuration is not available", UnsatisfiableRequestError,
     "the cluster cannot satisfy the node request"),
    ("not supported", UnsatisfiableRequestError, "Slurm does not support this update"),
    ("try again in a bit", SlurmBusyError, "Slurm is busy with this job, try again shortly"),
    ("unable to contact slurm controller", ControllerUnreachableError,
     "slurmctld is unreachable"),
    ("socket timed out", ControllerUnreachableError, "slurmctld did not answer"),
    ("connection refused", ControllerUnreachableError, "slurmctld is unreachable"),
    ("zero bytes were transmitted or received", ControllerUnreachableError,
     "slurmctld did not answer"),
)


def slurm_message(stderr: str, stdout: str = "") -> str:
    """Slurm's own error text folded to one line."""
    text = (stderr or "").strip() or (stdout or "").strip()
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def error_for(argv: Sequence[str], returncode: int, stderr: str,
              stdout: str = "") -> SlurmCommandError:
    """The typed error for a failed Slurm command, carrying Slurm's message."""
    msg = slurm_message(stderr, stdout) or f"exit status {returncode}"
    low = msg.lower()
    cmd = " ".join(str(a) for a in argv[-4:]) if argv else "slurm"
    for needle, cls, hint in _ERROR_PATTERNS:
        if needle in low:
            return cls(f"{hint}: {msg} ({cmd})", argv=list(argv), returncode=returncode,
                       slurm_message=msg)
    return SlurmCommandError(f"Slurm command failed: {msg} ({cmd})", argv=list(argv),
                             returncode=returncode, slurm_message=msg)


# ----------------------------------------------------------------------------- value helpers

def num(value: Any) -> int | None:
    """An int from 22.05's plain numbers or newer ``{"set": .., "number": ..}``; None if unset."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, Mapping):
        if value.get("infinite") or value.get("set") is False:
            return None
        return num(value.get("number"))
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def _first(doc: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if key in doc and doc[key] is not None:
            return doc[key]
    return default


def _state(value: Any) -> tuple[str, tuple[str, ...]]:
    """(base state, extra flags) from a string or a list of state words."""
    if isinstance(value, str):
        parts = [p for p in re.split(r"[+,\s]+", value) if p]
    elif isinstance(value, (list, tuple)):
        parts = [str(p) for p in value if p]
    else:
        parts = []
    if not parts:
        return "", ()
    return parts[0], tuple(parts[1:])


def _names(expr: Any) -> tuple[str, ...]:
    """Host names from a hostlist string (or a list of them); empty for '', None, '(null)'."""
    if expr is None:
        return ()
    if isinstance(expr, (list, tuple)):
        return tuple(hosts.expand([str(e) for e in expr if e]))
    text = str(expr).strip()
    if not text or text in ("(null)", "None"):
        return ()
    return tuple(hosts.expand(text))


def _exit_code(value: Any, schema: JsonSchema | None = None) -> int | None:
    if isinstance(value, Mapping):  # newer: {"status": [...], "return_code": {...}}
        return num(value.get("return_code"))
    if schema is not None and schema.openapi <= 38 and num(value) is not None:
        # v0.0.38 (22.05) prints the raw wait status: 768 for `exit 3` (scontrol: 3:0)
        return (num(value) >> 8) & 0xFF
    if isinstance(value, str) and ":" in value:  # scontrol: "0:0"
        return num(value.split(":", 1)[0])
    return num(value)


def _allocated_nodes(doc: Mapping[str, Any], schema: JsonSchema | None = None) -> tuple[str, ...]:
    res = doc.get("job_resources") or {}
    if isinstance(res, Mapping):
        v38 = res.get("allocated_nodes")                    # 22.05 (and 23.02's v0.0.39)
        nodes = res.get("nodes")
        newer = nodes.get("allocation") if isinstance(nodes, Mapping) else None  # v0.0.40+
        if schema is None:
            alloc = v38 if v38 is not None else newer
        else:
            alloc = v38 if schema.openapi <= 39 else newer
        if isinstance(alloc, list):
            names = [a.get("nodename") or a.get("name") for a in alloc if isinstance(a, Mapping)]
            names = [n for n in names if n]
            if names and not any("[" in n or "," in n for n in names):
                # one plain name each (as 22.05 prints them): validated, not expanded
                # (python-hostlist per name was half the cost of listing 10,000 nodes' jobs)
                return tuple(dict.fromkeys(hosts.validate_hostname(str(n)) for n in names))
            if names:
                return tuple(hosts.expand(names))
    return _names(doc.get("nodes"))


# ----------------------------------------------------------------------------- parsers

def document_schema(doc: Mapping[str, Any]) -> JsonSchema | None:
    """The schema the document's ``meta`` names; None for a document without ``meta``."""
    return json_schema(doc) if "meta" in doc else None


def _load(text: str, what: str) -> Mapping[str, Any]:
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, TypeError) as exc:
        raise SlurmParseError(f"{what} --json printed something that is not JSON: {exc}") from None
    if not isinstance(doc, Mapping):
        raise SlurmParseError(f"{what} --json printed a {type(doc).__name__}, not an object")
    errors = doc.get("errors") or []
    if errors:
        first = errors[0]
        text = first.get("error") or first.get("description") if isinstance(first, Mapping) else first
        raise SlurmParseError(f"{what} reported an error: {text}")
    return doc


def job_from_json(doc: Mapping[str, Any], schema: JsonSchema | None = None) -> JobInfo:
    """One job record of ``squeue --json`` in ``schema`` (None: read by the keys it has)."""
    try:
        job_id = num(_first(doc, "job_id", "jobid"))
        if job_id is None:
            raise KeyError("job_id")
        state, _flags = _state(_first(doc, "job_state", "state", default=""))
        return JobInfo(
            job_id=job_id,
            name=str(_first(doc, "name", default="")),
            state=state.upper(),
            user=str(_first(doc, "user_name", "user", default="")),
            user_id=num(doc.get("user_id")),
            reason=str(_first(doc, "state_reason", "reason", default="")),
            nodes=_allocated_nodes(doc, schema),
            node_count=num(_first(doc, "node_count", "nodes_count")) or 0,
            excluded_nodes=_names(_first(doc, "excluded_nodes", "exc_nodes")),
            required_nodes=_names(_first(doc, "required_nodes", "req_nodes")),
            requeue=bool(doc.get("requeue", False)),
            restart_count=num(_first(doc, "restart_cnt", "restart_count")) or 0,
            exit_code=_exit_code(doc.get("exit_code"), schema),
            partition=str(_first(doc, "partition", default="")),
            work_dir=str(_first(doc, "current_working_directory", "work_dir", default="")),
            stdout=str(_first(doc, "standard_output", "stdout", default="")),
            command=str(_first(doc, "command", default="")),
            submit_time=num(doc.get("submit_time")),
            start_time=num(doc.get("start_time")),
            batch_host=str(_first(doc, "batch_host", default="")),
            comment=str(_first(doc, "comment", default="") or ""),
            tasks=num(_first(doc, "tasks", "num_tasks")) or 0,
            tasks_per_node=num(doc.get("tasks_per_node")) or 0,
            cpus_per_task=num(doc.get("cpus_per_task")) or 1,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SlurmParseError(f"cannot read a job record from squeue --json: {exc!r}") from None


def parse_squeue_json(text: str) -> list[JobInfo]:
    doc = _load(text, "squeue")
    schema = document_schema(doc)
    jobs = doc.get("jobs")
    if not isinstance(jobs, list):
        raise SlurmParseError("squeue --json output has no 'jobs' list")
    return [job_from_json(j, schema) for j in jobs]


def node_from_json(doc: Mapping[str, Any]) -> NodeInfo:
    """One node record of ``sinfo --json`` (22.05 ``nodes[]`` shape)."""
    try:
        base, extra = _state(_first(doc, "state", default=""))
        flags = tuple(str(f).upper() for f in (doc.get("state_flags") or ())) + tuple(
            f.upper() for f in extra)
        name = str(_first(doc, "name", "hostname"))
        reason = doc.get("reason", "")
        if isinstance(reason, Mapping):
            reason = reason.get("description", "")
        return NodeInfo(
            name=name,
            state=base.lower(),
            address=str(_first(doc, "address", "node_addr", default="")),
            flags=tuple(dict.fromkeys(flags)),
            reason=str(reason or ""),
            cpus=num(doc.get("cpus")) or 0,
            partitions=tuple(doc.get("partitions") or ()),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SlurmParseError(f"cannot read a node record from sinfo --json: {exc!r}") from None


def _group_cpus(cpus: Any, count: int) -> int:
    """CPUs of each node of a ``sinfo[]`` group: its minimum when all nodes agree (the total
    counts every node of the group)."""
    if not isinstance(cpus, Mapping):
        return 0
    lo, hi = num(cpus.get("minimum")), num(cpus.get("maximum"))
    if lo is not None and lo == hi:
        return lo
    total = num(cpus.get("total"))
    return total // count if total and count else 0


def _nodes_from_sinfo_groups(groups: list) -> list[NodeInfo]:
    """data_parser ``sinfo --json``: ``sinfo[]`` entries, each a group of nodes sharing a
    state (and, without ``--Node``, a reason of ONE of them: 24.11 groups two drained nodes
    with different reasons; ``build_sinfo_argv`` asks for one entry per node)."""
    out: dict[str, NodeInfo] = {}
    for g in groups:
        if not isinstance(g, Mapping):
            continue
        members = g.get("nodes") or {}
        names = hosts.expand([str(n) for n in members.get("nodes") or []])
        addresses = [str(a) for a in members.get("addresses") or []]
        node = g.get("node") or {}
        base, extra = _state(node.get("state", ""))
        reason = g.get("reason") or {}
        reason = reason.get("description", "") if isinstance(reason, Mapping) else str(reason)
        parts = g.get("partition") or {}
        part = (parts.get("name"),) if isinstance(parts, Mapping) and parts.get("name") else ()
        cpus = _group_cpus(g.get("cpus"), len(names))
        for i, name in enumerate(names):
            prev = out.get(name)
            out[name] = NodeInfo(
                name=hosts.validate_hostname(name), state=base.lower(),
                address=addresses[i] if len(addresses) == len(names) else "",
                flags=tuple(dict.fromkeys(f.upper() for f in extra)),
                reason=reason or (prev.reason if prev else ""), cpus=cpus,
                partitions=(prev.partitions if prev else ()) + part,
            )
    return list(out.values())


def parse_sinfo_json(text: str) -> list[NodeInfo]:
    """``sinfo --json``: v0.0.38's ``nodes[]`` records or data_parser's ``sinfo[]`` groups,
    as the document's ``meta`` says (without meta: the list it has)."""
    doc = _load(text, "sinfo")
    schema = document_schema(doc)
    key = ("nodes" if schema.openapi <= 38 else "sinfo") if schema else (
        "nodes" if "nodes" in doc else "sinfo")
    items = doc.get(key)
    if not isinstance(items, list):
        release = f" (Slurm {schema.release}, OpenAPI v0.0.{schema.openapi})" if schema else ""
        raise SlurmParseError(f"sinfo --json output{release} has no '{key}' list")
    if key == "nodes":
        return [node_from_json(n) for n in items]
    return _nodes_from_sinfo_groups(items)


_KV_RE = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=(.*?)(?=\s+[A-Za-z][A-Za-z0-9_:/]*=|\s*$)")


def parse_key_values(line: str) -> dict[str, str]:
    """``Key=Value Key2=Value with spaces`` (scontrol -o) into a dict; values may hold '='."""
    return {m.group(1): m.group(2).strip() for m in _KV_RE.finditer(line.strip())}


def _user(text: str) -> tuple[str, int | None]:
    m = re.match(r"^([^()]*)\((\d+)\)$", text or "")
    if m:
        return m.group(1), int(m.group(2))
    return text or "", None


def _time(text: str | None) -> int | None:
    """scontrol prints times as 2026-11-25T16:10:09 (local time) or Unknown/None."""
    if not text or text in ("Unknown", "None", "(null)"):
        return None
    import datetime as _dt

    try:
        return int(_dt.datetime.fromisoformat(text).timestamp())
    except ValueError:
        return None


def job_from_key_values(kv: Mapping[str, str]) -> JobInfo:
    if "JobId" not in kv:
        raise SlurmParseError("scontrol show job output has no JobId")
    job_id = num(kv["JobId"])
    if job_id is None:
        raise SlurmParseError(f"scontrol show job printed a bad JobId {kv['JobId']!r}")
    user, uid = _user(kv.get("UserId", ""))
    nodes = _names(kv.get("NodeList"))
    return JobInfo(
        job_id=job_id,
        name=kv.get("JobName", ""),
        state=_state(kv.get("JobState", ""))[0].upper(),
        user=user,
        user_id=uid,
        reason=kv.get("Reason", ""),
        nodes=nodes,
        node_count=num(kv.get("NumNodes", "").split("-", 1)[0]) or len(nodes),
        excluded_nodes=_names(kv.get("ExcNodeList")),
        required_nodes=_names(kv.get("ReqNodeList")),
        requeue=kv.get("Requeue", "0") == "1",
        restart_count=num(kv.get("Restarts")) or 0,
        exit_code=_exit_code(kv.get("ExitCode")),
        partition=kv.get("Partition", ""),
        work_dir=kv.get("WorkDir", ""),
        stdout=kv.get("StdOut", ""),
        command=kv.get("Command", ""),
        submit_time=_time(kv.get("SubmitTime")),
        start_time=_time(kv.get("StartTime")),
        batch_host=kv.get("BatchHost", "") if kv.get("BatchHost") != "(null)" else "",
        comment=kv.get("Comment", "") if kv.get("Comment") != "(null)" else "",
        tasks=num(kv.get("NumTasks")) or 0,
        # NtasksPerN:B:S:C=1:0:*:* -> 1 (0 when --ntasks-per-node was not given)
        tasks_per_node=num(kv.get("NtasksPerN:B:S:C", "0").split(":", 1)[0]) or 0,
        cpus_per_task=num(kv.get("CPUs/Task")) or 1,
    )


def parse_show_job(text: str) -> list[JobInfo]:
    """``scontrol show job -o`` output: one job per non-empty line."""
    jobs = [job_from_key_values(parse_key_values(line))
            for line in (text or "").splitlines() if line.strip()]
    if not jobs:
        raise SlurmParseError("scontrol show job printed nothing")
    return jobs


def parse_sbatch_parsable(text: str) -> int:
    """``sbatch --parsable`` prints ``<jobid>`` or ``<jobid>;<cluster>``."""
    line = (text or "").strip().splitlines()[-1:] or [""]
    head = line[0].split(";", 1)[0].strip()
    if not head.isdigit():
        raise SlurmParseError(f"sbatch --parsable printed {text.strip()!r}, not a job id")
    return int(head)


def parse_salloc_granted(text: str) -> int:
    """The job id in salloc's ``salloc: Granted job allocation <id>``."""
    m = re.search(r"Granted job allocation (\d+)", text or "")
    if m is None:
        raise SlurmParseError(f"salloc printed {text.strip()[:200]!r}, not a granted allocation")
    return int(m.group(1))


def node_from_key_values(kv: Mapping[str, str]) -> NodeInfo:
    """One ``scontrol show node -o`` line: ``State=IDLE+DRAIN`` (base state, then flags),
    ``Reason=text [user@time]``, ``NodeAddr``, ``CPUTot``, ``Partitions``."""
    if "NodeName" not in kv:
        raise SlurmParseError("scontrol show node output has no NodeName")
    base, flags = _state(kv.get("State", ""))
    reason = re.sub(r"\s*\[[^\]]*@[^\]]*\]$", "", kv.get("Reason", "")).strip()
    parts = kv.get("Partitions", "")
    return NodeInfo(
        name=hosts.validate_hostname(kv["NodeName"]),
        state=base.lower(),
        address=kv.get("NodeAddr", ""),
        flags=tuple(dict.fromkeys(f.upper() for f in flags)),
        reason="" if reason in ("(null)", "None") else reason,
        cpus=num(kv.get("CPUTot")) or 0,
        partitions=tuple(p for p in parts.split(",") if p and p != "(null)"),
    )


def parse_show_node(text: str) -> list[NodeInfo]:
    """``scontrol show node -o`` output: one node per non-empty line."""
    nodes = [node_from_key_values(parse_key_values(line))
             for line in (text or "").splitlines() if line.strip()]
    if not nodes:
        raise SlurmParseError("scontrol show node printed nothing")
    return nodes
