"""The bodies of slurmrestd (v0.0.38) requests: a job update in sbatch option names, and a
job submission with the script's ``#SBATCH`` lines read here (slurmrestd does not read them;
sbatch does, and the caller's options win). Pure: no I/O; ``rest.RestSlurmClient`` sends
them."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from slurmft.core.errors import RestUnsupportedError, UsageError
from slurmft.core.nodeset import NodeSet

#: The OpenAPI plugin whose request bodies these are (Slurm 22.05's slurmrestd).
API_VERSION = "v0.0.38"


def build_update_body(*, exclude: Sequence[str] | None = None,
                      num_nodes: tuple[int, int] | None = None, num_tasks: int | None = None,
                      num_cpus: int | None = None, start_now: bool = False,
                      required: Sequence[str] | None = None,
                      comment: str | None = None) -> dict[str, Any]:
    """The ``POST /job/{id}`` body for ``update_job``: sbatch option names, as v0.0.38 reads
    them (checked on 22.05.8). ``[]`` clears a node list (``""``), None leaves it alone.
    ``num_cpus`` is sent as ``cpus_per_task = num_cpus / num_tasks``: v0.0.38 has no total-CPU
    field, and Slurm then sets NumCPUs = tasks x cpus_per_task (checked); any other
    ``num_cpus`` raises RestUnsupportedError."""
    body: dict[str, Any] = {}
    if exclude is not None:
        body["exclude_nodes"] = str(NodeSet(exclude)) if exclude else ""
    if required is not None:
        body["nodelist"] = str(NodeSet(required)) if required else ""
    if num_nodes is not None:
        lo, hi = num_nodes
        if not (isinstance(lo, int) and isinstance(hi, int)) or lo < 1 or hi < lo:
            raise UsageError(f"invalid node count {num_nodes!r}: need 1 <= min <= max")
        body["nodes"] = f"{lo}-{hi}"
    for name, value in (("NumTasks", num_tasks), ("NumCPUs", num_cpus)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < 1):
            raise UsageError(f"invalid {name} {value!r}: need a whole number >= 1")
    if num_tasks is not None:
        body["tasks"] = num_tasks
    if num_cpus is not None:
        if num_tasks is None or num_cpus % num_tasks:
            raise RestUnsupportedError(
                f"slurmrestd {API_VERSION} cannot set NumCPUs={num_cpus} "
                f"{'without NumTasks' if num_tasks is None else f'for NumTasks={num_tasks}'} "
                "(only as tasks x cpus_per_task): use slurm.backend: cli",
                argv=["update_job"])
        body["cpus_per_task"] = num_cpus // num_tasks
    if start_now:
        body["begin_time"] = "now"
    if comment is not None:
        if any(ord(c) < 32 for c in comment):
            raise UsageError("a job comment may not contain control characters")
        body["comment"] = comment
    if not body:
        raise UsageError("nothing to update: give exclude, num_nodes, start_now or comment")
    return body


# sbatch option -> (v0.0.38 job property, kind). kind: "str", "int", "flag" (True when given),
# "noflag" (False when given). Only options whose REST twin was checked or is a plain rename.
_SBATCH_OPTIONS: dict[str, tuple[str, str]] = {
    "--nodes": ("nodes", "str"), "-N": ("nodes", "str"),
    "--exclude": ("exclude_nodes", "str"), "-x": ("exclude_nodes", "str"),
    "--nodelist": ("nodelist", "str"), "-w": ("nodelist", "str"),
    "--job-name": ("name", "str"), "-J": ("name", "str"),
    "--ntasks": ("tasks", "int"), "-n": ("tasks", "int"),
    "--ntasks-per-node": ("tasks_per_node", "int"),
    "--cpus-per-task": ("cpus_per_task", "int"), "-c": ("cpus_per_task", "int"),
    "--time": ("time_limit", "str"), "-t": ("time_limit", "str"),
    "--partition": ("partition", "str"), "-p": ("partition", "str"),
    "--account": ("account", "str"), "-A": ("account", "str"),
    "--qos": ("qos", "str"), "-q": ("qos", "str"),
    "--output": ("standard_output", "str"), "-o": ("standard_output", "str"),
    "--error": ("standard_error", "str"), "-e": ("standard_error", "str"),
    "--input": ("standard_input", "str"), "-i": ("standard_input", "str"),
    "--chdir": ("current_working_directory", "str"), "-D": ("current_working_directory", "str"),
    "--comment": ("comment", "str"),
    "--signal": ("signal", "str"),
    "--open-mode": ("open_mode", "str"),
    "--requeue": ("requeue", "flag"), "--no-requeue": ("requeue", "noflag"),
    "--hold": ("hold", "flag"), "-H": ("hold", "flag"),
    "--begin": ("begin_time", "str"), "-b": ("begin_time", "str"),
    "--dependency": ("dependency", "str"), "-d": ("dependency", "str"),
    "--mem": ("memory_per_node", "str"), "--mem-per-cpu": ("memory_per_cpu", "str"),
    "--constraint": ("constraints", "str"), "-C": ("constraints", "str"),
    "--gres": ("gres", "str"), "--gpus": ("gpus", "str"), "-G": ("gpus", "str"),
    "--gpus-per-node": ("gpus_per_node", "str"),
    "--reservation": ("reservation", "str"),
    "--wait-all-nodes": ("wait_all_nodes", "str"),
}
#: sbatch options that change nothing in what is submitted.
_SBATCH_IGNORED = frozenset({"--parsable"})


def sbatch_directives(script_text: str) -> list[str]:
    """The options of a script's ``#SBATCH`` lines, as sbatch reads them: from the top, up to
    the first line that is neither blank nor a comment; text after an unquoted ``#`` in a
    directive is a comment."""
    out: list[str] = []
    for i, raw in enumerate(script_text.splitlines()):
        line = raw.strip()
        if i == 0 and line.startswith("#!"):
            continue
        if not line:
            continue
        if not line.startswith("#"):
            break
        if line.startswith("#SBATCH") and (len(line) == 7 or line[7].isspace()):
            try:
                out += shlex.split(line[7:], comments=True)
            except ValueError as exc:
                raise UsageError(f"cannot read the directive {line!r}: {exc}") from None
    return out


def job_properties(options: Sequence[str]) -> dict[str, Any]:
    """sbatch options (``--nodes=3``, ``--nodes 3``, ``-N3``, ``-N 3``) as v0.0.38 job
    properties; an option this client cannot translate raises RestUnsupportedError."""
    props: dict[str, Any] = {}
    items = [str(o) for o in options]
    i = 0
    while i < len(items):
        opt, value = items[i], None
        i += 1
        if opt in _SBATCH_IGNORED:
            continue
        if opt.startswith("--") and "=" in opt:
            opt, value = opt.split("=", 1)
        elif len(opt) > 2 and opt[0] == "-" and opt[1] != "-" and opt[:2] in _SBATCH_OPTIONS:
            opt, value = opt[:2], opt[2:]
        if opt not in _SBATCH_OPTIONS:
            raise RestUnsupportedError(
                f"the REST backend cannot pass the sbatch option {opt!r} to slurmrestd "
                f"{API_VERSION}: use slurm.backend: cli", argv=["sbatch", opt])
        key, kind = _SBATCH_OPTIONS[opt]
        if kind in ("flag", "noflag"):
            if value is not None:
                raise UsageError(f"the sbatch option {opt} takes no value, not {value!r}")
            props[key] = kind == "flag"
            continue
        if value is None:
            if i >= len(items):
                raise UsageError(f"the sbatch option {opt} needs a value")
            value = items[i]
            i += 1
        if kind == "int":
            if not value.strip().isdigit():
                raise UsageError(f"the sbatch option {opt} needs a whole number, not {value!r}")
            props[key] = int(value)
        else:
            props[key] = value
    return props


#: Variables never handed to a job submitted over REST (the caller's credentials).
SECRET_ENV = frozenset({"SLURM_JWT", "SLURMFT_SLURM_REST_TOKEN_FILE"})


def build_submit_body(script_text: str, args: Sequence[str], *, cwd: str,
                      environment: Mapping[str, str]) -> dict[str, Any]:
    """``POST /job/submit``'s body: the script, its ``#SBATCH`` options overridden by
    ``args`` (as sbatch does), the working directory (sbatch: where it runs) and the
    environment (sbatch's default ``--export=ALL``, the token variables left out)."""
    if isinstance(args, str):
        raise TypeError("args must be a list of sbatch options, not a string")
    job = {"current_working_directory": cwd,
           "environment": {k: v for k, v in environment.items() if k not in SECRET_ENV}}
    job.update(job_properties(sbatch_directives(script_text)))
    job.update(job_properties(args))
    if not job["environment"]:
        job["environment"] = {"PATH": "/usr/bin:/bin"}   # slurmrestd refuses an empty one
    return {"script": script_text, "job": job}


__all__ = ["API_VERSION", "SECRET_ENV", "build_submit_body", "build_update_body", "job_properties",
           "sbatch_directives"]
