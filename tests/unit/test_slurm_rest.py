"""RestSlurmClient (slurm.backend: rest) against a fake slurmrestd on a unix socket that
answers only with exchanges captured from the real 22.05 slurmrestd
(tests/data/slurmrestd-22.05/, see capture.py there), plus the pure request builders."""

from __future__ import annotations

import base64
import http.server
import json
import socket
import socketserver
import threading
import time
from pathlib import Path

import pytest

from slurmft.cli import adapters
from slurmft.core.config import load_config
from slurmft.core.errors import (
    ConfigError,
    ControllerUnreachableError,
    InvalidJobError,
    InvalidNodeError,
    JobNotPendingError,
    SlurmCommandError,
    SlurmParseError,
    UsageError,
)
from slurmft.slurm import parse as sparse
from slurmft.slurm.client import CommandSlurmClient
from slurmft.slurm.records import JobInfo
from slurmft.slurm.rest import (
    API,
    HttpTransport,
    RecordingTransport,
    RestAuthError,
    RestResponse,
    RestSlurmClient,
    RestUnsupportedError,
    TokenSource,
    check_rest_url,
    error_for_response,
    token_expiry,
)
from slurmft.slurm.rest_requests import (
    build_submit_body,
    build_update_body,
    job_properties,
    sbatch_directives,
)
from slurmft.slurm.runner import CommandResult

DATA = Path(__file__).resolve().parents[1] / "data" / "slurmrestd-22.05"


def capture(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


def jwt(payload: dict) -> str:
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{enc({'alg': 'HS256', 'typ': 'JWT'})}.{enc(payload)}.c2lnbmF0dXJl"


GOOD_TOKEN = jwt({"exp": int(time.time()) + 3600, "iat": int(time.time()), "sun": "root"})


class FakeRestd:
    """An HTTP server on a unix socket that replays captured slurmrestd answers.

    ``routes``: (method, path with query) -> capture name. Unrouted requests get the captured
    404. Every request is kept in ``requests`` (method, path, headers, JSON body)."""

    def __init__(self, sock_path: Path, routes: dict[tuple[str, str], str]) -> None:
        self.routes = dict(routes)
        self.requests: list[dict] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                fake.requests.append({"method": self.command, "path": self.path,
                                      "headers": dict(self.headers),
                                      "body": json.loads(raw) if raw else None})
                rec = capture(fake.routes.get((self.command, self.path), "not_found"))
                body = rec["body"].encode()
                self.send_response(rec["status"])
                self.send_header("Content-Type", rec["content_type"])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, *args) -> None:
                pass

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

            def get_request(self):
                conn, _ = self.socket.accept()
                return conn, ("local", 0)

        self.server = Server(str(sock_path), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,),
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# Every exchange of the capture run, routed as it was captured.
ROUTES = {(c["request"]["method"], c["request"]["path"]): name
          for name in ("ping", "nodes", "node", "node_unknown", "jobs", "job_running",
                       "job_unknown", "update_not_pending", "update_unknown_job",
                       "delete_kill", "delete_unknown", "submit")
          for c in [capture(name)]}
ROUTES[("GET", f"{API}/job/5")] = "job_pending"
ROUTES[("POST", f"{API}/job/5")] = "update_pending"


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text(f"SLURM_JWT={GOOD_TOKEN}\n")
    return path


@pytest.fixture
def restd(tmp_path):
    fake = FakeRestd(tmp_path / "restd.sock", ROUTES)
    yield fake
    fake.close()


@pytest.fixture
def client(restd, tmp_path, token_file):
    transport = HttpTransport(f"unix:{tmp_path / 'restd.sock'}", "root",
                              TokenSource(path=token_file))
    return RestSlurmClient(transport, timeout=5)


# ---------------------------------------------------------------------------- reads

def test_nodes_parse_like_sinfo_json(client, restd):
    nodes = client.nodes()
    assert [(n.name, n.state, n.cpus, n.partitions) for n in nodes] == [
        ("node1", "idle", 2, ("main",)), ("node2", "idle", 2, ("main",))]
    assert nodes[0].address.startswith("10.99.")
    assert client.node("node2").name == "node2"
    with pytest.raises(InvalidNodeError):
        client.node("node9")
    req = restd.requests[0]
    assert (req["method"], req["path"]) == ("GET", f"{API}/nodes")
    assert req["headers"]["X-SLURM-USER-NAME"] == "root"
    assert req["headers"]["X-SLURM-USER-TOKEN"] == GOOD_TOKEN


def test_rest_job_records_equal_the_squeue_parser(client):
    """GET /jobs has squeue --json's shape: the same parser reads it, field for field."""
    jobs = {j.job_id: j for j in client.jobs()}
    doc = json.loads(capture("jobs")["body"])
    assert jobs == {j.job_id: j for j in sparse.parse_squeue_json(json.dumps(doc))}
    running = jobs[4]
    assert (running.state, running.nodes, running.node_count, running.requeue) == (
        "RUNNING", ("node1", "node2"), 2, True)
    assert running.batch_host == "node1"
    pending = jobs[5]
    assert (pending.state, pending.excluded_nodes, pending.node_count, pending.comment,
            pending.tasks) == ("PENDING", ("node2",), 1, "updated by capture", 2)


def test_job_reads_one_job_and_maps_unknown_ids(client, restd):
    job = client.job(4)
    assert isinstance(job, JobInfo) and job.state == "RUNNING" and job.nodes == ("node1", "node2")
    assert client.read_job(4) == job
    assert client.allocation(4) == ["node1", "node2"]
    assert client.allocation(5) == []                      # pending: holds nothing
    with pytest.raises(InvalidJobError, match="Invalid job id specified"):
        client.job(999999)
    assert client.allocation(999999) == []
    assert [r["path"] for r in restd.requests][:2] == [f"{API}/job/4", f"{API}/job/4"]


def test_version_and_ping(client):
    assert str(client.version()) == "22.05.8"
    assert client.ping()[0]["ping"] == "UP"


# ---------------------------------------------------------------------------- writes

def test_update_job_sends_sbatch_names(client, restd):
    client.update_job(5, exclude=["node2"], num_nodes=(1, 1), num_tasks=2, num_cpus=2,
                      start_now=True, comment="updated by capture")
    req = restd.requests[-1]
    assert (req["method"], req["path"]) == ("POST", f"{API}/job/5")
    assert req["body"] == capture("update_pending")["request"]["body"]
    assert req["headers"]["Content-Type"] == "application/json"


def test_update_of_running_job_is_job_not_pending(client):
    with pytest.raises(JobNotPendingError, match="no longer pending"):
        client.update_job(4, exclude=["node2"])
    with pytest.raises(InvalidJobError):
        client.update_job(999999, comment="x")


def test_kill_and_unknown_kill(client, restd):
    client.kill_job(4)
    assert restd.requests[-1]["method"] == "DELETE"
    assert restd.requests[-1]["path"] == f"{API}/job/4?signal=KILL"
    with pytest.raises(InvalidJobError):
        client.kill_job(999999)


def test_submit_reads_sbatch_directives_and_args(client, restd, tmp_path, monkeypatch):
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\n#SBATCH --job-name=rest-a\n#SBATCH -N 1 --requeue  # x\n"
                      "echo hi\n#SBATCH --comment=ignored-after-code\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SLURM_JWT", "secret")
    monkeypatch.setenv("SOME_VAR", "kept")
    assert client.submit(str(script), ["--nodes=2", "--output", "/s/o-%j.out"]) == 4
    body = restd.requests[-1]["body"]
    assert body["script"] == script.read_text()
    job = body["job"]
    assert (job["name"], job["nodes"], job["requeue"], job["standard_output"]) == (
        "rest-a", "2", True, "/s/o-%j.out")
    assert "comment" not in job
    assert job["current_working_directory"] == str(tmp_path)
    assert job["environment"]["SOME_VAR"] == "kept" and "SLURM_JWT" not in job["environment"]


def test_submit_that_slurm_queues_but_cannot_start_returns_the_id(tmp_path, token_file, caplog):
    fake = FakeRestd(tmp_path / "s.sock", {("POST", f"{API}/job/submit"): "submit_unsatisfiable"})
    try:
        c = RestSlurmClient(HttpTransport(f"unix:{tmp_path / 's.sock'}", "root",
                                          TokenSource(path=token_file)))
        script = tmp_path / "j.sh"
        script.write_text("#!/bin/bash\ntrue\n")
        assert c.submit(str(script), ["-N", "7"]) == 6        # as sbatch: queued, rc 0
        assert "Requested partition configuration not available now" in caplog.text
    finally:
        fake.close()


def test_submit_refused(tmp_path, token_file):
    fake = FakeRestd(tmp_path / "s.sock", {("POST", f"{API}/job/submit"): "submit_no_environment"})
    try:
        c = RestSlurmClient(HttpTransport(f"unix:{tmp_path / 's.sock'}", "root",
                                          TokenSource(path=token_file)))
        script = tmp_path / "j.sh"
        script.write_text("#!/bin/bash\ntrue\n")
        with pytest.raises(SlurmCommandError, match="environment must be set"):
            c.submit(str(script))
        with pytest.raises(UsageError, match="cannot read the batch script"):
            c.submit(str(tmp_path / "missing.sh"))
    finally:
        fake.close()


# ---------------------------------------------------------------------------- errors

@pytest.mark.parametrize("name, cls, text", [
    ("job_unknown", InvalidJobError, "Invalid job id specified"),
    ("node_unknown", InvalidNodeError, "Invalid node name specified"),
    ("update_not_pending", JobNotPendingError, "no longer pending"),
    ("update_unknown_job", InvalidJobError, "Invalid job id"),
    ("delete_unknown", InvalidJobError, "Invalid job id"),
    ("update_unknown_key", SlurmCommandError, 'Unknown key "no_such_key"'),  # HTTP 200!
    ("submit_no_environment", SlurmCommandError, "environment must be set"),
    ("auth_bad_token", RestAuthError, "scontrol token"),
    ("auth_no_token", RestAuthError, "X-SLURM-USER-TOKEN"),
    ("not_found", SlurmCommandError, "openapi/v0.0.38"),
])
def test_every_captured_failure_maps_to_a_typed_error(name, cls, text):
    rec = capture(name)
    resp = RestResponse(rec["status"], rec["body"], rec["content_type"])
    from slurmft.slurm.rest import _load
    err = error_for_response(rec["request"]["method"], rec["request"]["path"], resp,
                             _load(resp))
    assert isinstance(err, cls), err
    assert text in str(err)


@pytest.mark.parametrize("name", ["ping", "nodes", "jobs", "job_running", "update_hold",
                                  "update_pending", "update_release", "delete_kill", "submit"])
def test_captured_successes_are_not_errors(name):
    rec = capture(name)
    resp = RestResponse(rec["status"], rec["body"], rec["content_type"])
    from slurmft.slurm.rest import _load
    assert error_for_response("GET", "/x", resp, _load(resp)) is None


def test_bad_token_through_the_socket(tmp_path, token_file):
    fake = FakeRestd(tmp_path / "s.sock", {("GET", f"{API}/jobs"): "auth_bad_token"})
    try:
        c = RestSlurmClient(HttpTransport(f"unix:{tmp_path / 's.sock'}", "root",
                                          TokenSource(path=token_file)))
        with pytest.raises(RestAuthError, match="invalid or expired token"):
            c.jobs()
    finally:
        fake.close()


def test_expired_token_is_refused_before_sending(tmp_path, restd):
    path = tmp_path / "token"
    path.write_text(jwt({"exp": 1000, "sun": "root"}) + "\n")
    c = RestSlurmClient(HttpTransport(f"unix:{tmp_path / 'restd.sock'}", "root",
                                      TokenSource(path=path)))
    with pytest.raises(RestAuthError, match="expired at .*scontrol token"):
        c.nodes()
    assert restd.requests == []
    path.write_text(GOOD_TOKEN)          # renewed while running: read again at each request
    assert len(c.nodes()) == 2


def test_missing_token_file_and_empty_token(tmp_path):
    with pytest.raises(RestAuthError, match="cannot read the slurmrestd token file"):
        TokenSource(path=tmp_path / "nope").token()
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(RestAuthError, match="is empty"):
        TokenSource(path=tmp_path / "empty").token()


def test_unreachable_slurmrestd(tmp_path, token_file):
    c = RestSlurmClient(HttpTransport(f"unix:{tmp_path / 'none.sock'}", "root",
                                      TokenSource(path=token_file)))
    with pytest.raises(ControllerUnreachableError, match="unreachable.*slurm.rest_url"):
        c.nodes()


def test_slurmrestd_that_never_answers_times_out(tmp_path, token_file):
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(tmp_path / "mute.sock"))
    srv.listen(1)
    try:
        c = RestSlurmClient(HttpTransport(f"unix:{tmp_path / 'mute.sock'}", "root",
                                          TokenSource(path=token_file)), timeout=0.3)
        t0 = time.monotonic()
        with pytest.raises(ControllerUnreachableError, match="did not answer"):
            c.jobs()
        assert time.monotonic() - t0 < 3
    finally:
        srv.close()


# ---------------------------------------------------------------------------- unsupported

class _FakeFallback:
    """Stands for CommandSlurmClient: records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __getattr__(self, name):
        return lambda *a, **k: self.calls.append((name, a, k)) or []


@pytest.mark.parametrize("call, name", [
    (lambda c: c.drain(["node1"], "bad"), "drain"),
    (lambda c: c.down(["node1"], "bad"), "down"),
    (lambda c: c.resume(["node1"]), "resume"),
    (lambda c: c.requeue(4), "requeue"),
    (lambda c: c.requeue_hold(4), "requeue_hold"),
    (lambda c: c.signal_batch(4, "USR1"), "signal_batch"),
    (lambda c: c.signal_steps(4, [0], "KILL"), "signal_steps"),
    (lambda c: c.steps(4), "steps"),
])
def test_what_v0038_cannot_do_is_refused_or_falls_back(call, name, client, restd):
    with pytest.raises(RestUnsupportedError, match=f"^{name}: .*slurm.backend: cli"):
        call(client)
    assert restd.requests == []                  # nothing sent that would half-do it
    fb = _FakeFallback()
    call(RestSlurmClient(client.transport, fallback=fb))
    assert [c[0] for c in fb.calls] == [name]


def test_kill_job_goes_to_the_commands_when_they_are_there(client, restd):
    # v0.0.38 cannot SIGKILL single steps; its DELETE is SIGTERM, then SIGKILL after KillWait
    fb = _FakeFallback()
    RestSlurmClient(client.transport, fallback=fb).kill_job(4)
    assert fb.calls == [("kill_job", (4, None), {})] and restd.requests == []


def test_num_cpus_only_as_tasks_times_cpus_per_task(client):
    assert build_update_body(num_tasks=4, num_cpus=8) == {"tasks": 4, "cpus_per_task": 2}
    with pytest.raises(RestUnsupportedError, match="NumCPUs=3 without NumTasks"):
        client.update_job(5, num_cpus=3)
    fb = _FakeFallback()
    RestSlurmClient(client.transport, fallback=fb).update_job(5, num_tasks=2, num_cpus=3)
    assert fb.calls == [("update_job", (5,), {"exclude": None, "num_nodes": None,
                                              "num_tasks": 2, "num_cpus": 3,
                                              "start_now": False, "required": None,
                                              "comment": None})]


# ---------------------------------------------------------------------------- dry run

def test_recording_dry_run_sends_no_write(client, restd):
    rec_client, recorder = client.recording(dry_run=True)
    assert rec_client.job(4).state == "RUNNING"               # reads go through
    rec_client.hold(4)
    rec_client.update_job(4, exclude=["node2"], num_nodes=(1, 1))
    assert rec_client.submit(str(Path(__file__)), ["-N", "1"]) == 0
    assert [r["method"] for r in restd.requests] == ["GET"]
    assert recorder.writes[0] == ["POST", f"{API}/job/4", '{"hold": true}']
    assert recorder.writes[1] == ["POST", f"{API}/job/4",
                                  '{"exclude_nodes": "node2", "nodes": "1-1"}']
    assert recorder.writes[2][:2] == ["POST", f"{API}/job/submit"]


def test_recording_shares_the_list_with_the_fallback_commands(client):
    class Runner:
        def __init__(self):
            self.argvs = []

        def run(self, argv, timeout):
            self.argvs.append(list(argv))
            return CommandResult(tuple(argv), 0, "", "")

    runner = Runner()
    c = RestSlurmClient(client.transport, fallback=CommandSlurmClient(runner=runner))
    rec_client, recorder = c.recording(dry_run=True)
    rec_client.hold(4)
    rec_client.drain(["node1"], "bad disk")
    rec_client.release(4)
    assert [w[0] for w in recorder.writes] == ["POST", "scontrol", "POST"]
    assert runner.argvs == []                                  # dry run: nothing ran


def test_recording_without_dry_run_sends_and_records(client, restd):
    rec_client, recorder = client.recording(dry_run=False)
    rec_client.kill_job(4)
    assert recorder.writes == [["DELETE", f"{API}/job/4?signal=KILL"]]
    assert restd.requests[-1]["method"] == "DELETE"


# ---------------------------------------------------------------------------- pure parts

def test_build_update_body():
    assert build_update_body(exclude=["node3", "node2"], num_nodes=(3, 3)) == {
        "exclude_nodes": "node[2-3]", "nodes": "3-3"}
    assert build_update_body(exclude=[], required=[]) == {"exclude_nodes": "", "nodelist": ""}
    assert build_update_body(start_now=True, comment="a b") == {"begin_time": "now",
                                                                "comment": "a b"}
    for bad in ({}, {"num_nodes": (2, 1)}, {"num_tasks": 0}, {"comment": "a\nb"},
                {"num_tasks": True}):
        with pytest.raises(UsageError):
            build_update_body(**bad)


def test_sbatch_directives_as_sbatch_reads_them():
    text = ("#!/bin/bash\n\n# a comment\n#SBATCH -N 2\n#SBATCH --job-name='a b' # note\n"
            "#SBATCHX --no\n   \nset -e\n#SBATCH --requeue\n")
    assert sbatch_directives(text) == ["-N", "2", "--job-name=a b"]


def test_job_properties():
    assert job_properties(["-N3", "--exclude", "node[1-2]", "--ntasks-per-node=2",
                           "--no-requeue", "--parsable", "-J", "x", "--time=1:00"]) == {
        "nodes": "3", "exclude_nodes": "node[1-2]", "tasks_per_node": 2, "requeue": False,
        "name": "x", "time_limit": "1:00"}
    with pytest.raises(RestUnsupportedError, match="'--export'.*slurm.backend: cli"):
        job_properties(["--export=NONE"])
    with pytest.raises(UsageError, match="needs a value"):
        job_properties(["--nodes"])
    with pytest.raises(UsageError, match="whole number"):
        job_properties(["--ntasks=two"])
    with pytest.raises(UsageError, match="takes no value"):
        job_properties(["--requeue=yes"])


def test_build_submit_body_args_win_and_secrets_stay_home():
    body = build_submit_body("#!/bin/sh\n#SBATCH -N 4\ntrue\n", ["-N", "2"], cwd="/w",
                             environment={"SLURM_JWT": "t", "SLURMFT_SLURM_REST_TOKEN_FILE": "/f",
                                          "HOME": "/root"})
    assert body["job"] == {"current_working_directory": "/w", "environment": {"HOME": "/root"},
                           "nodes": "2"}
    assert build_submit_body("true\n", [], cwd="/w", environment={})["job"]["environment"]
    with pytest.raises(TypeError):
        build_submit_body("x", "-N 2", cwd="/", environment={})


def test_token_helpers():
    assert token_expiry(jwt({"exp": 123})) == 123
    assert token_expiry("not-a-jwt") is None
    assert token_expiry(jwt({"sun": "x"})) is None
    assert TokenSource(value="abc").token() == "abc"           # not a JWT: slurmctld judges


def test_check_rest_url():
    for ok in ("http://ctl:6820", "https://rest.example.org/slurm", "unix:/run/s.sock"):
        assert check_rest_url(ok) == ok
    for bad in ("ftp://x", "http://", "unix:relative", "http://u@h:1", "http://h/?q=1",
                "http://h x"):
        with pytest.raises(UsageError):
            check_rest_url(bad)


def test_recording_transport_replies():
    class Inner:
        def request(self, *a):
            raise AssertionError("no request expected")

    t = RecordingTransport(Inner(), dry_run=True)
    assert json.loads(t.request("POST", f"{API}/job/submit", {"x": 1}, 1).body)["job_id"] == 0
    assert t.request("DELETE", f"{API}/job/3", None, 1).status == 200
    assert t.writes == [["POST", f"{API}/job/submit", '{"x": 1}'], ["DELETE", f"{API}/job/3"]]


# ---------------------------------------------------------------------------- config, adapters

def test_config_backend_keys(tmp_path):
    cfg = load_config(env={})
    assert cfg.slurm.backend == "cli" and not cfg.slurm.rest_cli_fallback
    cfg = load_config(env={"SLURMFT_SLURM_BACKEND": "rest",
                           "SLURMFT_SLURM_REST_URL": "unix:/run/restd.sock",
                           "SLURMFT_SLURM_REST_CLI_FALLBACK": "yes"})
    assert (cfg.slurm.backend, cfg.slurm.rest_url, cfg.slurm.rest_cli_fallback) == (
        "rest", "unix:/run/restd.sock", True)


@pytest.mark.parametrize("env, text", [
    ({"SLURMFT_SLURM_BACKEND": "pyslurm"}, "slurm.backend must be one of cli, rest"),
    ({"SLURMFT_SLURM_BACKEND": "rest"}, "slurm.rest_url is empty"),
    ({"SLURMFT_SLURM_REST_URL": "ctl:6820"}, "slurm.rest_url must be"),
    ({"SLURMFT_SLURM_REST_USER": "a b"}, "slurm.rest_user must be a user name"),
    ({"SLURMFT_SLURM_REST_TOKEN": "x"}, "unknown environment variable"),
])
def test_config_refuses_bad_rest_settings_in_one_line(env, text):
    with pytest.raises(ConfigError, match=text) as exc:
        load_config(env=env)
    assert "\n" not in str(exc.value)


def test_adapters_pick_the_backend(tmp_path, token_file):
    assert isinstance(adapters.slurm_client(load_config(env={})), CommandSlurmClient)
    env = {"SLURMFT_SLURM_BACKEND": "rest", "SLURMFT_SLURM_REST_URL": "unix:/x.sock",
           "SLURMFT_SLURM_REST_USER": "alice", "SLURMFT_SLURM_TIMEOUT": "7"}
    with pytest.raises(ConfigError, match="rest_token_file or SLURM_JWT"):
        adapters.slurm_client(load_config(env=env), env={})
    c = adapters.slurm_client(load_config(env=env), env={"SLURM_JWT": "tok"})
    assert isinstance(c, RestSlurmClient) and c.fallback is None and c.timeout == 7
    assert (c.transport.url, c.transport.user, c.transport.tokens.token()) == (
        "unix:/x.sock", "alice", "tok")
    env["SLURMFT_SLURM_REST_TOKEN_FILE"] = str(token_file)
    env["SLURMFT_SLURM_REST_CLI_FALLBACK"] = "true"
    c = adapters.slurm_client(load_config(env=env), env={})
    assert c.transport.tokens.token() == GOOD_TOKEN
    assert isinstance(c.fallback, CommandSlurmClient)


def test_parse_error_on_garbage_success():
    resp = RestResponse(200, "<html>proxy</html>", "text/html")
    assert isinstance(error_for_response("GET", "/x", resp, None), SlurmParseError)
