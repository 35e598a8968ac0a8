"""Pure parts of the docker backend: compose document, substitution, mirror, context, hash."""

from __future__ import annotations

import configparser
import importlib.metadata
import ipaddress
import json
from pathlib import Path

import pytest

from slurmft.core.errors import ClusterError, UsageError
from slurmft.testbed import docker as db
from slurmft.testbed.docker import context as dctx
from slurmft.testbed.layout import Layout

REPO = Path(__file__).resolve().parents[2]


def layout(nodes: int = 3) -> Layout:
    return Layout("t1", nodes, ipaddress.IPv4Network("10.98.5.0/24"), root=Path("/x/dc"))


def doc(nodes: int = 3) -> dict:
    text = db.docker_file("compose.yml").read_text()
    return db.compose_doc(text, layout(nodes), "slurmft-node:abc", Path("/x/dc/t1/etc"))


def test_compose_doc_has_ctl_and_nodes_with_fixed_addresses():
    d = doc(3)
    assert list(d["services"]) == ["ctl", "node1", "node2", "node3"]
    assert "x-node" not in d
    addrs = {s: v["networks"]["cluster"]["ipv4_address"] for s, v in d["services"].items()}
    assert addrs == {"ctl": "10.98.5.1", "node1": "10.98.5.2", "node2": "10.98.5.3",
                     "node3": "10.98.5.4"}
    ctl, n2 = d["services"]["ctl"], d["services"]["node2"]
    assert ctl["command"] == ["controller"] and n2["command"] == ["node"]
    assert n2["hostname"] == "node2" and n2["container_name"] == "slurmft-t1-node2"
    assert "node3:10.98.5.4" in n2["extra_hosts"] and "ctl:10.98.5.1" in n2["extra_hosts"]
    assert n2["image"] == "slurmft-node:abc"
    assert "/x/dc/t1/etc:/etc/slurmft-cluster:ro" in n2["volumes"]
    assert "shared:/x/dc/t1/shared" in n2["volumes"]
    assert "${" not in json.dumps(d)


def test_compose_network_is_internal_without_bridge_address_and_everything_is_labelled():
    d = doc(2)
    net = d["networks"]["cluster"]
    assert net["internal"] is True
    assert net["driver_opts"]["com.docker.network.bridge.inhibit_ipv4"] == "true"
    assert net["ipam"]["config"] == [{"subnet": "10.98.5.0/24", "gateway": "10.98.5.254"}]
    assert net["labels"] == {"slurmft.cluster": "t1"}
    assert d["volumes"]["shared"]["labels"] == {"slurmft.cluster": "t1"}
    for svc in d["services"].values():
        assert svc["labels"]["slurmft.cluster"] == "t1"
        assert "privileged" not in svc and svc.get("network_mode") is None
    assert d["services"]["ctl"]["labels"]["slurmft.role"] == "controller"


def test_substitute_replaces_known_and_refuses_unknown():
    assert db.substitute({"a": ["${X}-y", 3]}, {"X": "v"}) == {"a": ["v-y", 3]}
    with pytest.raises(ClusterError, match=r"\$\{NOPE\}"):
        db.substitute("${NOPE}", {})


def test_compose_doc_needs_x_node_and_ctl():
    with pytest.raises(ClusterError, match="x-node"):
        db.compose_doc("services: {}\n", layout(), "img", Path("/e"))


@pytest.mark.parametrize("texts,want", [
    (["Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n",
      "Types: deb\nURIs: http://deb.debian.org/debian-security\n"], "http://deb.debian.org/debian"),
    (["deb http://security.debian.org/debian-security bookworm-security main\n"
      "deb [arch=amd64] http://mirror.example/debian/ bookworm main\n"], "http://mirror.example/debian"),
])
def test_mirror_from_sources(texts, want):
    assert db.mirror_from_sources(texts) == want


def test_mirror_from_sources_without_debian_is_a_clear_error():
    with pytest.raises(ClusterError, match="no Debian mirror"):
        db.mirror_from_sources(["deb https://packages.cloud.google.com/apt cloud-sdk main\n"])


def staged_names(ctx: Path) -> set[str]:
    return {p.relative_to(ctx).as_posix() for p in ctx.rglob("*") if p.is_file()}


def test_docker_files_are_package_data_not_repository_files():
    for name in ("Dockerfile", "entrypoint.sh", "compose.yml"):
        path = db.docker_file(name)
        assert path.is_file() and path.parts[-4:-1] == ("testbed", "docker", "files")
    assert db.DOCKERFILE == "slurmft/testbed/docker/files/Dockerfile"
    dockerfile = db.docker_file("Dockerfile").read_text()
    assert "COPY slurmft/testbed/docker/files/entrypoint.sh " in dockerfile
    assert "COPY wheels/ " in dockerfile and "docker/wheels" not in dockerfile


def test_stage_context_holds_the_package_and_docker_files_only(tmp_path):
    wheels = tmp_path / "w"
    wheels.mkdir()
    (wheels / "click-8-py3-none-any.whl").write_bytes(b"zip")
    ctx = tmp_path / "ctx"
    assert dctx.checkout_root() == REPO        # the tests run from the checkout
    db.stage_context(ctx, wheels)
    names = staged_names(ctx)
    assert {"setup.py", "setup.cfg", "README.md", db.DOCKERFILE,
            "slurmft/testbed/docker/files/entrypoint.sh", "slurmft/cli/__init__.py",
            "slurmft/testbed/docker/cluster.py", "slurmft/templates/slurm.conf.j2",
            "slurmft/examples/train.py", "wheels/click-8-py3-none-any.whl"} <= names
    assert not any(n.startswith((".venv", "tests/", ".git", "docker/")) or "__pycache__" in n
                   or n.endswith(".pyc") for n in names)
    assert (ctx / "setup.cfg").read_bytes() == (REPO / "setup.cfg").read_bytes()


def test_staged_context_hash_is_stable_across_stagings(tmp_path):
    db.stage_context(tmp_path / "a")
    db.stage_context(tmp_path / "b")
    assert db.content_hash(tmp_path / "a", "base") == db.content_hash(tmp_path / "b", "base")


def test_stage_context_outside_a_checkout_generates_installable_setup_files(tmp_path, monkeypatch):
    monkeypatch.setattr(dctx, "checkout_root", lambda: None)
    ctx = tmp_path / "ctx"
    db.stage_context(ctx)
    names = staged_names(ctx)
    assert {"setup.py", "setup.cfg", "README.md", db.DOCKERFILE,
            "slurmft/testbed/docker/files/entrypoint.sh",
            "slurmft/testbed/docker/files/compose.yml", "slurmft/templates/slurm.conf.j2",
            "slurmft/examples/train.py", "slurmft/cli/__init__.py"} <= names
    assert (ctx / "wheels").is_dir()
    assert "setup()" in (ctx / "setup.py").read_text()
    cfg = configparser.ConfigParser()
    cfg.read_string((ctx / "setup.cfg").read_text())
    assert cfg["metadata"]["name"] == "slurmft"
    assert cfg["metadata"]["version"] == importlib.metadata.version("slurmft")
    reqs = cfg["options"]["install_requires"].split()
    assert any(r.startswith("click") for r in reqs) and any(r.startswith("numpy") for r in reqs)
    assert not any(r.startswith(("torch", "mpi4py", "pytest", "extra")) for r in reqs)
    assert "extra" not in cfg["options"]["install_requires"]
    assert cfg["options"]["packages"] == "find_namespace:"
    data = cfg["options.package_data"]["slurmft"].split()
    assert {"templates/slurm.conf.j2", "testbed/docker/files/Dockerfile",
            "testbed/docker/files/entrypoint.sh", "testbed/docker/files/compose.yml"} <= set(data)
    assert cfg["options.entry_points"]["console_scripts"].strip() == "slurmft = slurmft.cli:main"
    # The same requirements as the checkout's setup.cfg declares (no drift between both paths).
    repo_cfg = configparser.ConfigParser()
    repo_cfg.read(REPO / "setup.cfg")
    assert len(reqs) == len(repo_cfg["options"]["install_requires"].split())


def test_base_requirements_drop_only_the_extras(monkeypatch):
    monkeypatch.setattr(dctx.metadata, "requires", lambda dist: [
        "click<9,>=8.1", 'tomli>=2; python_version < "3.11"', 'torch>=2; extra == "torch"',
        'keras; python_version >= "3.9" and extra == "dev"'])
    assert dctx.base_requirements() == ["click<9,>=8.1", 'tomli>=2; python_version < "3.11"']


def test_content_hash_follows_content_and_base(tmp_path):
    (tmp_path / "a").write_text("1")
    h1 = db.content_hash(tmp_path, "sha256:base")
    assert h1 == db.content_hash(tmp_path, "sha256:base")
    assert h1 != db.content_hash(tmp_path, "sha256:other")
    (tmp_path / "a").write_text("2")
    assert h1 != db.content_hash(tmp_path, "sha256:base")


def test_pick_docker_subnet_skips_used_networks():
    first = db.pick_docker_subnet("t1", 4, [])
    assert first.subnet_of(db.SUBNET_POOL) and first.prefixlen == 24
    second = db.pick_docker_subnet("t1", 4, [first])
    assert second != first and second.subnet_of(db.SUBNET_POOL)


def test_bad_input_is_refused_before_docker_is_touched(tmp_path):
    with pytest.raises(UsageError):
        db.DockerCluster("Bad_Name", root=tmp_path)
    c = db.DockerCluster("ok", root=tmp_path, docker_host="unix:///nonexistent.sock")
    with pytest.raises(UsageError):
        c.up(nodes=0)
    with pytest.raises(UsageError, match="always runs Slurm"):
        c.up(nodes=2, slurm=False)
    with pytest.raises(UsageError, match="unknown fault"):
        c.fault("node1", "explode")
    with pytest.raises(ClusterError, match="not up"):
        c.fault("node1", "link-down")
    assert c.status() == {"name": "ok", "up": False, "backend": "docker"}


def test_faults_cover_the_namespace_backend_and_every_fault_has_a_handler():
    from slurmft.testbed import Cluster, Fault
    from slurmft.testbed.docker.faults import FAULT_HANDLERS as DOCKER_HANDLERS
    from slurmft.testbed.netns.faults import FAULT_HANDLERS as NETNS_HANDLERS
    assert set(Cluster.faults) <= set(db.DockerCluster.faults) == set(Fault)
    assert set(NETNS_HANDLERS) == set(Cluster.faults)
    assert set(DOCKER_HANDLERS) == set(db.DockerCluster.faults)
    assert Fault.NODE_DOWN not in Cluster.faults


class RecordingDocker:
    """Answers what ensure_image asks; records each build (the context is gone afterwards)."""

    def __init__(self):
        self.builds: list[dict] = []

    def run(self, *args, check=True, timeout=60.0, what=""):
        import subprocess
        if args[0] == "build":
            dockerfile, ctx = Path(args[args.index("-f") + 1]), Path(args[-1])
            self.builds.append({"dockerfile": dockerfile, "ctx": ctx,
                                "dockerfile_in_ctx": dockerfile.is_file()
                                and dockerfile.is_relative_to(ctx),
                                "args": args})
            return subprocess.CompletedProcess(args, 0, "built", "")
        if args[:4] == ("image", "inspect", "--format", "{{.Id}}"):
            return subprocess.CompletedProcess(args, 0, "sha256:base\n", "")
        return subprocess.CompletedProcess(args, 1, "", "No such image")

    def ok(self, *args, timeout=30.0):
        return False

    def ids(self, kind, label):
        return []


def test_ensure_image_builds_with_the_staged_dockerfile_from_any_cwd(tmp_path, monkeypatch):
    from slurmft.testbed.docker import image as dimage
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(dimage, "build_wheels", lambda ctx, **kw: None)
    monkeypatch.chdir(tmp_path)                      # not the checkout: -f must not be relative
    docker = RecordingDocker()
    first = db.ensure_image(docker, base="debian:bookworm")
    second = db.ensure_image(docker, base="debian:bookworm")
    assert first.built and first.content_hash == second.content_hash   # same sources, same tag
    build = docker.builds[0]
    assert build["dockerfile"].is_absolute() and build["dockerfile_in_ctx"]
    assert build["dockerfile"].relative_to(build["ctx"]).as_posix() == db.DOCKERFILE
    # No wheels: the suite's Debian packages stand in for them, still no index.
    assert "PIP_NO_INDEX=1" in build["args"]
    assert f"DEBIAN_PYTHON_DEPS={' '.join(dimage.DEBIAN_PYTHON_DEPS)}" in build["args"]
    assert first.tag.startswith("slurmft-node:22.05-")
    assert "slurmft.slurm-release=22.05" in build["args"]


def test_each_release_has_its_own_image_from_its_own_suite(tmp_path, monkeypatch):
    from slurmft.testbed.docker import image as dimage
    from slurmft.testbed.docker.releases import RELEASES
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    seen = []
    monkeypatch.setattr(dimage, "build_wheels",
                        lambda ctx, python: seen.append(python) or None)
    # No debootstrap here: the base of each suite is named, not built.
    monkeypatch.setattr(dimage, "ensure_base_image",
                        lambda docker, base, suite: (dimage.base_image_tag(suite), False))
    docker = RecordingDocker()
    results = {v: db.ensure_image(docker, release=r) for v, r in RELEASES.items()}
    bases = [b["args"][b["args"].index("--build-arg") + 1] for b in docker.builds]
    assert bases == ["BASE_IMAGE=slurmft-base:bookworm", "BASE_IMAGE=slurmft-base:trixie",
                     "BASE_IMAGE=slurmft-base:sid"]
    assert [r.tag.split(":")[1].split("-")[0] for r in results.values()] == list(RELEASES)
    assert len({r.content_hash for r in results.values()}) == 3      # the suite is in the hash
    assert seen == [r.python for r in RELEASES.values()]
    assert db.ensure_image(docker, release=RELEASES["24.11"]).content_hash == \
        results["24.11"].content_hash                                 # same inputs: same tag


def test_content_hash_changes_with_the_suite(tmp_path):
    from slurmft.testbed.docker import image as dimage
    (tmp_path / "Dockerfile").write_text("FROM x\n")
    assert dimage.content_hash(tmp_path, "sha256:b", "trixie") != \
        dimage.content_hash(tmp_path, "sha256:b", "sid")
    assert dimage.base_image_tag("trixie") == "slurmft-base:trixie"


def test_unknown_release_is_refused_in_one_line():
    from slurmft.core.errors import UsageError
    from slurmft.testbed.docker.releases import slurm_release
    assert slurm_release(None).version == "22.05" and slurm_release("26.05").suite == "sid"
    with pytest.raises(UsageError, match="use one of 22.05, 24.11, 26.05"):
        slurm_release("23.02")


def test_slurm_conf_is_rendered_for_the_release():
    from slurmft.testbed.layout import Layout
    from slurmft.core.errors import UsageError
    for version in ("22.05", "24.11", "26.05"):
        text = Layout("t1", 2, "10.98.7.0/24", slurm_version=version).slurm_conf_text()
        assert "SlurmdTimeout=10" in text and "NodeName=node2" in text
        # 24.11 and 26.05 have no switch/none plugin (checked on the daemons: "(null)").
        assert ("\nSwitchType=switch/none\n" in text) == (version == "22.05")
    with pytest.raises(UsageError, match="MAJOR.MINOR"):
        Layout("t1", 2, "10.98.7.0/24", slurm_version="latest")


def test_failed_up_stops_the_private_dockerd_it_started(tmp_path, monkeypatch):
    from slurmft.testbed.docker import cluster as dcluster

    class NoDaemonDocker:              # the daemon is gone by the time down() asks
        host = "unix:///x/docker.sock"

        def __init__(self, host=""):
            pass

        def reachable(self):
            return False

        def ids(self, kind, label):
            return []

    stopped = []

    class RecordingDockerd:
        def __init__(self, proc=None, **kw):
            self.proc = proc

        def stop(self):
            stopped.append(self.proc.pid)

    def failing_image(docker, base="", release=None):
        raise ClusterError("docker build failed (rc=1)")

    monkeypatch.setattr(dcluster, "Docker", NoDaemonDocker)
    monkeypatch.setattr(dcluster, "PrivateDockerd", RecordingDockerd)
    monkeypatch.setattr(dcluster, "used_networks", lambda: [])
    monkeypatch.setattr(dcluster, "ensure_image", failing_image)
    c = db.DockerCluster("t1", root=tmp_path)
    monkeypatch.setattr(c, "_reachable_docker",
                        lambda: (NoDaemonDocker(), {"pid": 4242, "start": 7}))
    with pytest.raises(ClusterError, match="docker build failed"):
        c.up(nodes=2)
    assert stopped == [4242]
    assert not (tmp_path / "t1").exists() and c.state is None


def test_cli_slurm_release_needs_the_docker_backend(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from slurmft.cli import cli
    monkeypatch.delenv("SLURMFT_CLUSTER_BACKEND", raising=False)
    res = CliRunner().invoke(cli, ["cluster", "up", "--slurm", "24.11", "--name", "t1"])
    assert res.exit_code != 0 and "add --backend docker" in res.output
    assert "Traceback" not in res.output
    monkeypatch.setenv("SLURMFT_DOCKER_CLUSTER_ROOT", str(tmp_path))
    res = CliRunner().invoke(cli, ["cluster", "up", "--backend", "docker", "--slurm", "23.02",
                                   "--name", "t1"])
    assert res.exit_code != 0 and "use one of 22.05, 24.11, 26.05" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "t1").exists()


def test_capture_refuses_a_cluster_that_is_not_up(tmp_path, monkeypatch, capsys):
    from slurmft.testbed.docker import capture
    monkeypatch.setenv("SLURMFT_DOCKER_CLUSTER_ROOT", str(tmp_path))
    assert capture.main(["--name", "nope", "--out", str(tmp_path / "data")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "docker cluster nope is not up" in err
    assert not (tmp_path / "data").exists()
