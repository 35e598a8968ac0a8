"""``RestSlurmClient``: the SlurmClient protocol over slurmrestd's HTTP API (``slurm.backend:
rest``), for sites that expose Slurm only through slurmrestd.

Supported: Slurm 22.05 through its ``openapi/v0.0.38`` plugin (the one Debian's 22.05
slurmrestd serves; v0.0.36/37 are older), tested against the real daemon that ``slurmft
cluster up --rest`` starts. Authentication is ``rest_auth/jwt``: every request carries
``X-SLURM-USER-NAME`` and ``X-SLURM-USER-TOKEN`` (a token from ``scontrol token``, read from
``slurm.rest_token_file`` at each request, so a cron job can renew it, or from ``SLURM_JWT``
as Slurm's own tools read it). 23.02 and later speak data_parser v0.0.39+ with other paths
and payloads: not implemented here (use ``slurm.backend: cli``).

What v0.0.38 can do, checked on 22.05.8 (captures in ``tests/data/slurmrestd-22.05/``):

- read: ``GET /jobs`` and ``GET /job/{id}`` (the same records as ``squeue --json``, so the
  same parser), ``GET /nodes`` and ``GET /node/{name}`` (as ``sinfo --json``);
- ``POST /job/submit`` (script text + sbatch options by name; ``#SBATCH`` lines are NOT read
  by slurmrestd: ``submit`` reads them here, as sbatch does, and the caller's ``args`` win);
- ``POST /job/{id}`` updates a job with sbatch option names: ``hold`` true/false (hold and
  release), ``exclude_nodes``, ``nodelist``, ``nodes`` (``min-max``), ``tasks``,
  ``cpus_per_task``, ``begin_time: now``, ``comment``;
- ``DELETE /job/{id}?signal=KILL``: ``slurm_kill_job2(KILL_FULL_JOB)``, which is
  ``scancel --signal=KILL --full`` (``kill_job`` without a fallback: SIGTERM first, SIGKILL
  ``KillWait`` later) and ends the job CANCELLED (``cancel``).

What it cannot do: change a node's state (no node write in v0.0.38: ``drain``, ``down``,
``resume``), ``requeue``/``requeue_hold`` (no endpoint), signal only the batch script
(``DELETE`` signals every step: ``signal_batch``) or single steps (``signal_steps``), list a
job's steps (``steps``), set ``NumCPUs`` other than as tasks x cpus-per-task. These raise
``RestUnsupportedError`` naming the operation, unless the client has a ``fallback`` (a
``CommandSlurmClient``; ``slurm.rest_cli_fallback: true``), which then runs them with
Slurm's commands: honest where the commands work as well (a login node with both), useless
where slurmrestd is the only way in (then those operations are simply not available).

Errors: slurmrestd 22.05 answers a failed Slurm call with HTTP 500 (sometimes 200) and an
``errors`` list carrying Slurm's own text ("Invalid job id specified"), mapped to the same
typed errors as the commands' stderr (``slurm.parse.error_for``). An invalid or expired token
is NOT a 401 in 22.05: slurmctld rejects it and slurmrestd says "Unspecified error" (500);
only a request without the headers gets 401. Both become ``RestAuthError``; an expired token
is caught here first (its ``exp`` claim) with a message that says how to get a new one.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from slurmft.core.errors import (
    ConfigError,
    ControllerUnreachableError,
    InvalidJobError,
    RestAuthError,
    RestUnsupportedError,
    SlurmCommandError,
    SlurmParseError,
    UsageError,
)
from slurmft.core.log import get_logger
from slurmft.slurm import parse as sparse
from slurmft.slurm.commands import check_job_id
from slurmft.slurm.records import JobInfo, NodeInfo, only_node, select_nodes
from slurmft.slurm.rest_requests import API_VERSION, build_submit_body, build_update_body
from slurmft.slurm.version import SlurmVersion, json_schema

log = get_logger(__name__)

#: The OpenAPI plugin this client speaks (Slurm 22.05): ``rest_requests.API_VERSION``.
API = f"/slurm/{API_VERSION}"
#: Releases whose slurmrestd serves ``API_VERSION`` (checked: 22.05.8).
SUPPORTED_RELEASES = ((22, 5),)


# ----------------------------------------------------------------------------- tokens

def read_token_text(text: str) -> str:
    """A token from a file's text: the bare token, or ``scontrol token``'s ``SLURM_JWT=...``."""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        return line.split("=", 1)[1].strip() if line.startswith("SLURM_JWT=") else line
    return ""


def token_expiry(token: str) -> int | None:
    """The ``exp`` claim of a JWT (seconds since the epoch), None when it has none or the
    token is not a readable JWT (slurmctld then judges it)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, TypeError):
        return None
    exp = payload.get("exp") if isinstance(payload, Mapping) else None
    return int(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None


_RENEW = "get a new one with `scontrol token lifespan=SECONDS`"


class TokenSource:
    """Where the JWT comes from: a file re-read at every request (renewable while slurmft
    runs) or a fixed value (``SLURM_JWT``). ``token()`` refuses an expired one."""

    def __init__(self, *, path: str | os.PathLike | None = None, value: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if (path is None) == (value is None):
            raise ValueError("give exactly one of path and value")
        self.path = Path(path) if path is not None else None
        self.value = value
        self.clock = clock

    @classmethod
    def from_config(cls, token_file: str, env: Mapping[str, str]) -> TokenSource:
        if token_file:
            return cls(path=token_file)
        if env.get("SLURM_JWT"):
            return cls(value=env["SLURM_JWT"].strip())
        raise ConfigError("slurm.backend is rest but no token is given: set "
                          "slurm.rest_token_file or SLURM_JWT (from `scontrol token`)")

    @property
    def where(self) -> str:
        return f"token file {self.path}" if self.path is not None else "SLURM_JWT"

    def token(self) -> str:
        if self.path is not None:
            try:
                token = read_token_text(self.path.read_text())
            except OSError as exc:
                raise RestAuthError(f"cannot read the slurmrestd token file {self.path}: "
                                    f"{exc.strerror}; write a token there ({_RENEW})") from None
        else:
            token = self.value or ""
        if not token:
            raise RestAuthError(f"the slurmrestd token ({self.where}) is empty: {_RENEW}")
        exp = token_expiry(token)
        if exp is not None and exp <= self.clock():
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(exp))
            raise RestAuthError(f"the slurmrestd token ({self.where}) expired at {when}: "
                                f"{_RENEW}")
        return token


# ----------------------------------------------------------------------------- transport

@dataclass(frozen=True)
class RestResponse:
    """One HTTP answer: status, the raw body text, its content type."""

    status: int
    body: str
    content_type: str = "application/json"


class Transport(Protocol):
    def request(self, method: str, path: str, body: Mapping[str, Any] | None,
                timeout: float) -> RestResponse: ...


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (slurmrestd's ``unix:/path``)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def check_rest_url(url: str) -> str:
    """``url`` if it is one slurmrestd can listen on: ``http(s)://HOST[:PORT]`` or
    ``unix:/ABSOLUTE/PATH``; UsageError otherwise."""
    if url.startswith("unix:"):
        if not url[5:].startswith("/") or any(c in url for c in "\0\n\r"):
            raise UsageError(f"invalid slurmrestd address {url!r}: unix:/ABSOLUTE/PATH")
        return url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query \
            or parts.fragment or parts.username or any(c in url for c in " \0\n\r"):
        raise UsageError(f"invalid slurmrestd address {url!r}: http://HOST:PORT, "
                         "https://HOST:PORT or unix:/PATH")
    return url


class HttpTransport:
    """Requests to slurmrestd at ``url`` (http, https or unix socket), as ``user`` with
    ``tokens``' JWT. No retries: the caller (rescheduler, watcher) owns those."""

    def __init__(self, url: str, user: str, tokens: TokenSource) -> None:
        self.url = check_rest_url(url)
        if not user or any(c in user for c in ":\0\n\r "):
            raise UsageError(f"invalid slurmrestd user name {user!r}")
        self.user = user
        self.tokens = tokens
        parts = urllib.parse.urlsplit(url) if not url.startswith("unix:") else None
        self._prefix = parts.path.rstrip("/") if parts else ""

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.url.startswith("unix:"):
            return _UnixConnection(self.url[5:], timeout)
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme == "https":
            return http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)

    def request(self, method: str, path: str, body: Mapping[str, Any] | None,
                timeout: float) -> RestResponse:
        headers = {"X-SLURM-USER-NAME": self.user, "X-SLURM-USER-TOKEN": self.tokens.token(),
                   "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = self._connection(timeout)
        try:
            conn.request(method, self._prefix + path, body=data, headers=headers)
            resp = conn.getresponse()
            text = resp.read().decode("utf-8", errors="replace")
        except TimeoutError:
            raise ControllerUnreachableError(
                f"slurmrestd at {self.url} did not answer {method} {path} within {timeout:g}s "
                "(is slurmrestd, and slurmctld behind it, up?)", argv=[method, path],
                slurm_message="timed out") from None
        except (OSError, http.client.HTTPException) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ControllerUnreachableError(
                f"slurmrestd at {self.url} is unreachable ({reason or type(exc).__name__}): "
                "is it running, and is slurm.rest_url its address?", argv=[method, path],
                slurm_message=reason) from None
        finally:
            conn.close()
        return RestResponse(resp.status, text, resp.getheader("Content-Type", "") or "")


def dry_run_reply(method: str, path: str) -> RestResponse:
    """What a write that a dry run only records answers: job id 0 for a submit."""
    if path.endswith("/job/submit"):
        return RestResponse(200, '{"errors": [], "job_id": 0}')
    return RestResponse(200, '{"errors": []}')


class RecordingTransport:
    """A transport in front of another: GETs pass through, every write (POST, DELETE) is
    recorded in ``writes`` as ``[METHOD, path, json body]`` and, with ``dry_run``, answered
    as a success without being sent (the REST twin of ``slurm.runner.RecordingRunner``)."""

    def __init__(self, inner: Transport, *, dry_run: bool,
                 writes: list[list[str]] | None = None) -> None:
        self.inner = inner
        self.dry_run = dry_run
        self.writes: list[list[str]] = writes if writes is not None else []

    def request(self, method: str, path: str, body: Mapping[str, Any] | None,
                timeout: float) -> RestResponse:
        if method == "GET":
            return self.inner.request(method, path, body, timeout)
        entry = [method, path]
        if body is not None:
            entry.append(json.dumps(body, sort_keys=True))
        self.writes.append(entry)
        if self.dry_run:
            return dry_run_reply(method, path)
        return self.inner.request(method, path, body, timeout)


# ----------------------------------------------------------------------------- pure helpers

def _error_text(err: Any) -> str:
    if not isinstance(err, Mapping):
        return str(err)
    error, desc = str(err.get("error") or ""), str(err.get("description") or "")
    if error and desc and desc != error:
        return f"{error} ({desc})"
    return error or desc or json.dumps(err)


def error_for_response(method: str, path: str, resp: RestResponse,
                       doc: Mapping[str, Any] | None) -> SlurmCommandError | None:
    """The typed error a response carries, None for a success. Slurm's text in ``errors``
    is mapped as the commands' stderr is; 401 and 22.05's "Unspecified error" (what an
    invalid or expired token gets from slurmctld) are ``RestAuthError``."""
    argv = [method, path]
    if resp.status == 401:
        return RestAuthError(
            f"slurmrestd refused the request ({resp.body.strip() or 'HTTP 401'}): it needs "
            "X-SLURM-USER-NAME and X-SLURM-USER-TOKEN; check slurm.rest_user and the token",
            argv=argv, returncode=401, slurm_message=resp.body.strip())
    errors = list(doc.get("errors") or []) if doc is not None else []
    if doc is None:
        if 200 <= resp.status < 300:
            return SlurmParseError(f"slurmrestd answered {method} {path} with something that "
                                   f"is not JSON: {resp.body.strip()[:200]!r}")
        hint = (f": this client speaks {API_VERSION} (Slurm 22.05); is slurm.rest_url "
                "slurmrestd, and does it load openapi/v0.0.38?" if resp.status == 404 else "")
        return SlurmCommandError(f"slurmrestd answered HTTP {resp.status} to {method} {path}"
                                 f" ({resp.body.strip()[:200]}){hint}", argv=argv,
                                 returncode=resp.status, slurm_message=resp.body.strip())
    if not errors:
        if 200 <= resp.status < 300:
            return None
        return SlurmCommandError(f"slurmrestd answered HTTP {resp.status} to {method} {path} "
                                 "without saying why", argv=argv, returncode=resp.status)
    text = "; ".join(_error_text(e) for e in errors)
    first = errors[0] if isinstance(errors[0], Mapping) else {}
    number = first.get("error_number", first.get("errno", first.get("error_code")))
    if str(first.get("error", "")).lower() == "unspecified error" and number == -1:
        return RestAuthError(
            f"slurmctld refused {method} {path} through slurmrestd ({text}); with Slurm 22.05 "
            "that is what an invalid or expired token, or a token of another user than "
            f"slurm.rest_user, gets: {_RENEW}", argv=argv, returncode=resp.status,
            slurm_message=text)
    return sparse.error_for(argv, resp.status, text)


def _load(resp: RestResponse) -> Mapping[str, Any] | None:
    if "json" not in resp.content_type and not resp.body.lstrip().startswith("{"):
        return None
    try:
        doc = json.loads(resp.body)
    except ValueError:
        return None
    return doc if isinstance(doc, Mapping) else None


def jobs_of(doc: Mapping[str, Any]) -> list[JobInfo]:
    """The job records of a ``GET /jobs`` or ``GET /job/{id}`` answer (squeue --json's
    shape, read by the same parser)."""
    jobs = doc.get("jobs")
    if not isinstance(jobs, list):
        raise SlurmParseError("slurmrestd's jobs answer has no 'jobs' list")
    schema = sparse.document_schema(doc)
    return [sparse.job_from_json(j, schema) for j in jobs]


def nodes_of(doc: Mapping[str, Any]) -> list[NodeInfo]:
    """The node records of a v0.0.38 ``GET /nodes`` answer (sinfo --json's ``nodes[]``)."""
    nodes = doc.get("nodes")
    if not isinstance(nodes, list):
        raise SlurmParseError("slurmrestd's nodes answer has no 'nodes' list")
    return [sparse.node_from_json(n) for n in nodes]


def version_of(doc: Mapping[str, Any]) -> SlurmVersion:
    """The Slurm release a v0.0.38 answer names in its ``meta``."""
    schema = json_schema(doc)
    if schema.release is None:
        raise SlurmParseError("slurmrestd's answer names no Slurm release in its meta")
    return schema.release


# ----------------------------------------------------------------------------- the client

class RestSlurmClient:
    """Talks to Slurm through slurmrestd (OpenAPI v0.0.38).

    ``transport``: ``HttpTransport`` for the real daemon, a fake in tests. ``timeout``:
    seconds per request. ``fallback``: a client (``CommandSlurmClient``) for what v0.0.38
    cannot do; None: those operations raise ``RestUnsupportedError``.
    """

    def __init__(self, transport: Transport, timeout: float = 30.0,
                 fallback: Any | None = None) -> None:
        if not timeout > 0:
            raise ValueError("timeout must be > 0")
        self.transport = transport
        self.timeout = float(timeout)
        self.fallback = fallback

    def recording(self, *, dry_run: bool) -> tuple[RestSlurmClient, RecordingTransport]:
        """The same client with every write recorded (``recorder.writes``) and, with
        ``dry_run``, not sent; a fallback client records into the same list."""
        recorder = RecordingTransport(self.transport, dry_run=dry_run)
        fallback = None
        if self.fallback is not None:
            fallback, fb_recorder = self.fallback.recording(dry_run=dry_run)
            fb_recorder.writes = recorder.writes          # one list, in the order of the calls
        return type(self)(recorder, self.timeout, fallback), recorder

    # ------------------------------------------------------------------ plumbing
    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None
              ) -> Mapping[str, Any]:
        resp = self.transport.request(method, API + path, body, self.timeout)
        doc = _load(resp)
        err = error_for_response(method, API + path, resp, doc)
        if err is not None:
            raise err
        assert doc is not None
        return doc

    def _unsupported(self, operation: str, why: str) -> Any:
        """The fallback client when there is one, else RestUnsupportedError."""
        if self.fallback is not None:
            log.debug("%s: not in slurmrestd %s, running Slurm's commands", operation,
                      API_VERSION)
            return self.fallback
        raise RestUnsupportedError(
            f"{operation}: slurmrestd {API_VERSION} (Slurm 22.05) {why}; set "
            "slurm.rest_cli_fallback: true (where Slurm's commands work too) or "
            "slurm.backend: cli", argv=[operation])

    # ------------------------------------------------------------------ reads
    def version(self) -> SlurmVersion:
        return version_of(self._call("GET", "/ping"))

    def ping(self) -> list[dict[str, Any]]:
        """slurmctld's answer to slurmrestd's ping (one entry per controller)."""
        return list(self._call("GET", "/ping").get("pings") or [])

    def jobs(self) -> list[JobInfo]:
        """Every job slurmctld knows (pending, running, recently finished)."""
        return jobs_of(self._call("GET", "/jobs"))

    def job(self, job_id: int) -> JobInfo:
        """One job (``GET /job/{id}``; also finished ones slurmctld still keeps)."""
        job_id = check_job_id(job_id)
        for j in jobs_of(self._call("GET", f"/job/{job_id}")):
            if j.job_id == job_id:
                return j
        raise sparse.error_for(["GET", f"{API}/job/{job_id}"], 1, "Invalid job id specified")

    read_job = job    # one request per job whatever the queue's size, as the view wants

    def allocation(self, job_id: int) -> list[str]:
        """The nodes the job holds now (empty once it ended or while it pends)."""
        try:
            info = self.job(job_id)
        except InvalidJobError:
            return []
        return list(info.nodes) if info.is_running else []

    def node_names(self, job: int | JobInfo) -> list[str]:
        info = job if isinstance(job, JobInfo) else self.job(job)
        return list(info.nodes)

    def steps(self, job_id: int) -> list[int]:
        return self._unsupported("steps", "lists no job steps").steps(job_id)

    def nodes(self, names: Sequence[str] | None = None) -> list[NodeInfo]:
        """All nodes (``GET /nodes``), or only ``names`` in that order (unknown skipped)."""
        return select_nodes(nodes_of(self._call("GET", "/nodes")), names)

    def node(self, name: str) -> NodeInfo:
        return only_node(self.nodes([name]), name)

    # ------------------------------------------------------------------ nodes
    def drain(self, nodes: Sequence[str], reason: str) -> None:
        self._unsupported("drain", "cannot change a node's state").drain(nodes, reason)

    def down(self, nodes: Sequence[str], reason: str) -> None:
        self._unsupported("down", "cannot change a node's state").down(nodes, reason)

    def resume(self, nodes: Sequence[str]) -> None:
        self._unsupported("resume", "cannot change a node's state").resume(nodes)

    # ------------------------------------------------------------------ jobs
    def hold(self, job_id: int) -> None:
        self._call("POST", f"/job/{check_job_id(job_id)}", {"hold": True})

    def release(self, job_id: int) -> None:
        self._call("POST", f"/job/{check_job_id(job_id)}", {"hold": False})

    def requeue(self, job_id: int) -> None:
        self._unsupported("requeue", "has no requeue").requeue(job_id)

    def requeue_hold(self, job_id: int) -> None:
        self._unsupported("requeue_hold", "has no requeue").requeue_hold(job_id)

    def signal_batch(self, job_id: int, signal: str) -> None:
        self._unsupported("signal_batch", "signals every step of a job, never the batch "
                          "script alone").signal_batch(job_id, signal)

    def signal_steps(self, job_id: int, steps: Sequence[int], signal: str = "KILL") -> None:
        if steps:
            self._unsupported("signal_steps", "cannot signal single job steps").signal_steps(
                job_id, steps, signal)

    def kill_job(self, job_id: int, steps: Sequence[int] | None = None) -> None:
        """End the job for a requeue. With the commands as fallback, their ``kill_job`` (the
        steps SIGKILLed by number first: v0.0.38 cannot signal single steps); else ``DELETE
        ?signal=KILL``, which Slurm carries out as SIGTERM, then SIGKILL after ``KillWait``."""
        if self.fallback is not None:
            self.fallback.kill_job(job_id, steps)
            return
        self._call("DELETE", f"/job/{check_job_id(job_id)}?signal=KILL")

    def cancel(self, job_id: int) -> None:
        """Cancel the job (v0.0.38's DELETE is SIGKILL to the whole job: it ends CANCELLED)."""
        self._call("DELETE", f"/job/{check_job_id(job_id)}")

    def update_job(self, job_id: int, *, exclude: Sequence[str] | None = None,
                   num_nodes: tuple[int, int] | None = None, num_tasks: int | None = None,
                   num_cpus: int | None = None, start_now: bool = False,
                   required: Sequence[str] | None = None, comment: str | None = None) -> None:
        """One ``POST /job/{id}`` (most fields need a PENDING job, as with scontrol)."""
        job_id = check_job_id(job_id)
        try:
            body = build_update_body(exclude=exclude, num_nodes=num_nodes, num_tasks=num_tasks,
                                     num_cpus=num_cpus, start_now=start_now,
                                     required=required, comment=comment)
        except RestUnsupportedError:
            if self.fallback is None:
                raise
            self.fallback.update_job(job_id, exclude=exclude, num_nodes=num_nodes,
                                     num_tasks=num_tasks, num_cpus=num_cpus,
                                     start_now=start_now, required=required, comment=comment)
            return
        self._call("POST", f"/job/{job_id}", body)

    def submit(self, script: str, args: Sequence[str] = ()) -> int:
        """Submit the batch script at path ``script`` with sbatch options ``args``; returns
        the new job id. Like sbatch, a job Slurm queued but cannot start yet (it names a
        reason in ``errors``) is submitted: its id is returned and the reason logged."""
        if isinstance(args, str):
            raise TypeError("args must be a list of sbatch options, not a string")
        try:
            text = Path(script).read_text()
        except OSError as exc:
            raise UsageError(f"cannot read the batch script {script}: {exc.strerror}") from None
        body = build_submit_body(text, args, cwd=os.getcwd(), environment=os.environ)
        resp = self.transport.request("POST", f"{API}/job/submit", body, self.timeout)
        doc = _load(resp)
        job_id = doc.get("job_id") if doc is not None else None
        if isinstance(job_id, int) and not isinstance(job_id, bool) and resp.status == 200:
            for err in (doc or {}).get("errors") or []:
                log.warning("job %s submitted, but Slurm says: %s", job_id, _error_text(err))
            return job_id
        err = error_for_response("POST", f"{API}/job/submit", resp, doc)
        raise err if err is not None else SlurmParseError(
            f"slurmrestd's answer to a submit names no job id: {resp.body.strip()[:200]!r}")
