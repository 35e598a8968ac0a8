"""Pure parts of the local cluster: names, subnets, rendered files, argv/env, validation."""

import ipaddress
import json

import pytest
from click.testing import CliRunner

from slurmft.cli import cli
from slurmft.core.errors import ClusterError, UsageError
from slurmft.testbed import Cluster, Layout, pick_subnet, validate_name
from slurmft.testbed.netns import cluster as cluster_mod
from slurmft.testbed.layout import check_subnet, parse_networks, parse_subnet, ports_for
from slurmft.testbed.procs import ancestors, descendants

ROUTES = [  # `ip -j -4 route show table all` on this machine, plus another cluster's route
    {"dst": "default", "gateway": "192.0.2.1", "dev": "eth0"},
    {"type": "unreachable", "dst": "10.99.173.0/24"},
    {"dst": "192.0.2.0/24", "dev": "eth0", "protocol": "kernel"},
    {"type": "local", "dst": "127.0.0.1", "dev": "lo", "table": "local"},
]
ADDRS = [{"ifname": "eth0", "addr_info": [
    {"family": "inet", "local": "10.99.5.7", "prefixlen": 16},
    {"family": "inet6", "local": "fd00::2", "prefixlen": 64}]}]


def net(s):
    return ipaddress.IPv4Network(s)


@pytest.mark.parametrize("name", ["sft", "sft-test", "a", "demo2", "x" * 24])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "Sft", "sft_test", "1abc", "a-", "a b", "a;rm", "x" * 25,
                                  "../etc", "node1\n"])
def test_bad_names_rejected(name):
    with pytest.raises(UsageError, match="invalid cluster name"):
        validate_name(name)
    with pytest.raises(UsageError):
        Cluster(name)


@pytest.mark.parametrize("nodes", [0, -1, 251, True, "4"])
def test_bad_node_counts(nodes):
    with pytest.raises(UsageError, match="--nodes"):
        Layout("sft", nodes, net("10.99.1.0/24"))


def test_parse_networks_routes_and_addrs():
    used = parse_networks(ROUTES) + parse_networks(ADDRS)
    assert net("10.99.173.0/24") in used and net("192.0.2.0/24") in used
    assert net("10.99.0.0/16") in used          # from the address 10.99.5.7/16
    assert all(str(n) != "0.0.0.0/0" for n in used)   # the default route is not a clash


def test_pick_subnet_is_stable_and_skips_used():
    a = pick_subnet("sft-test", 4, [])
    assert a == pick_subnet("sft-test", 4, []) and a.subnet_of(net("10.99.0.0/16"))
    assert a.prefixlen == 24
    b = pick_subnet("sft-test", 4, [a])
    assert b != a and not b.overlaps(a)
    names = [f"c{i}" for i in range(20)]
    assert len({pick_subnet(n, 4, []) for n in names}) > 15   # hash spreads names


def test_pick_subnet_all_used():
    with pytest.raises(UsageError, match="no free /24"):
        pick_subnet("x", 4, [net("10.99.0.0/16")])


def test_subnet_clash_and_size_rejected():
    with pytest.raises(UsageError, match="clashes with 10.99.173.0/24"):
        check_subnet(net("10.99.173.0/24"), 4, parse_networks(ROUTES))
    with pytest.raises(UsageError, match="too small"):
        check_subnet(net("10.99.1.0/29"), 8, [])
    check_subnet(net("10.99.1.0/24"), 250, parse_networks(ROUTES))
    with pytest.raises(UsageError, match="private"):
        parse_subnet("8.8.8.0/24")
    with pytest.raises(UsageError, match="invalid subnet"):
        parse_subnet("10.99.1.5/24")


def test_layout_names_addresses_ports():
    lay = Layout("sft-test", 4, net("10.99.7.0/24"), root="/x")
    assert lay.node_names == ("node1", "node2", "node3", "node4")
    assert lay.ctl_ip == "10.99.7.1"
    assert lay.ip("node1") == "10.99.7.2" and lay.ip("node4") == "10.99.7.5"
    assert lay.netns("node2") == "slurmft-sft-test-node2"
    assert lay.netns("ctl") == "slurmft-sft-test-ctl"
    assert lay.veth("node3") == "v3"
    assert str(lay.shared_dir) == "/x/sft-test/shared"
    with pytest.raises(UsageError, match="unknown node 'node5'"):
        lay.netns("node5")
    assert ports_for("a") != ports_for("b") and ports_for("a") == ports_for("a")


def conf_lines(text):
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_slurm_conf_render():
    lay = Layout("sft-test", 3, net("10.99.7.0/24"), root="/x")
    lines = conf_lines(lay.slurm_conf_text())
    for want in ["ClusterName=sft-test", "SlurmctldHost=ctl(10.99.7.1)", "SlurmdTimeout=10",
                 "ReturnToService=2", "JobRequeue=1", "SlurmUser=root",
                 "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
                 "AuthInfo=socket=/x/sft-test/munge/munge.socket,cred_expire=10",
                 "SlurmdSpoolDir=/x/sft-test/spool/%n",
                 "SlurmdPidFile=/x/sft-test/run/slurmd-%n.pid",
                 "PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP"]:
        assert want in lines, want
    nodes = [line for line in lines if line.startswith("NodeName=")]
    assert len(nodes) == 3 and nodes[2].startswith("NodeName=node3 NodeAddr=10.99.7.4 CPUs=2")
    assert f"SlurmctldPort={ports_for('sft-test')[0]}" in lines
    assert not any(line.startswith("EpilogSlurmctld") for line in lines)
    with_epilog = Layout("sft-test", 3, net("10.99.7.0/24"), root="/x", epilog="/opt/ep.sh")
    assert "EpilogSlurmctld=/opt/ep.sh" in conf_lines(with_epilog.slurm_conf_text())


def test_slurm_user_is_slurm_confs_and_must_be_a_user_name():
    lay = Layout("sft-test", 2, net("10.99.7.0/24"), root="/x", slurm_user="slurmft-op")
    lines = conf_lines(lay.slurm_conf_text())
    assert "SlurmUser=slurmft-op" in lines and "SlurmdUser=root" in lines
    for bad in ("", "Root", "a b", "x\nSlurmUser=root", "-x"):
        with pytest.raises(UsageError, match="SlurmUser must be a user name"):
            Layout("sft-test", 2, net("10.99.7.0/24"), root="/x", slurm_user=bad)


def test_ssh_config_hosts_known_hosts_render():
    lay = Layout("sft-test", 2, net("10.99.7.0/24"), root="/x")
    cfg = lay.ssh_config_text()
    assert "Host node2\n    HostName 10.99.7.3" in cfg
    assert "IdentityFile /x/sft-test/ssh/id_ed25519" in cfg
    assert "UserKnownHostsFile /x/sft-test/ssh/known_hosts" in cfg and "BatchMode yes" in cfg
    hosts = lay.hosts_text()
    assert "10.99.7.1\tctl" in hosts and "10.99.7.3\tnode2" in hosts
    kh = lay.known_hosts_text({"node1": "ssh-ed25519 AAAA1 node1\n",
                               "node2": "ssh-ed25519 AAAA2 x"})
    assert kh == "node1,10.99.7.2 ssh-ed25519 AAAA1\nnode2,10.99.7.3 ssh-ed25519 AAAA2\n"
    sshd = lay.sshd_config_text("node1")
    assert "StrictModes no" in sshd and "UsePAM no" in sshd
    assert "AuthorizedKeysFile /x/sft-test/ssh/authorized_keys" in sshd


def fake_state(root, name="sft-u", nodes=2):
    d = root / name
    d.mkdir(parents=True)
    (d / "state.json").write_text(json.dumps({
        "name": name, "nodes": nodes, "subnet": "10.99.9.0/24", "slurm": True, "epilog": "",
        "complete": True, "route": True, "netns": [], "procs": {}}))
    return Cluster(name, root=root)


def test_exec_argv_and_env(tmp_path):
    c = fake_state(tmp_path)
    argv = c.exec_argv(["sinfo", "-N"])
    assert argv[:2] == ["nsenter", "--net=/run/netns/slurmft-sft-u-ctl"]
    assert argv[-2:] == ["sinfo", "-N"] and "--mount" in argv and "private" in argv
    assert str(tmp_path / "sft-u" / "etc" / "hosts") in argv
    # The shell snippet is constant: no name or path is interpolated into it.
    script = argv[argv.index("-c") + 1]
    assert "sft-u" not in script and str(tmp_path) not in script
    env = c.env({"PATH": "/usr/bin"})
    assert env["SLURM_CONF"] == str(tmp_path / "sft-u" / "etc" / "slurm.conf")
    assert env["SLURMFT_PROBE_SSH_CONFIG"] == str(c.ssh_config_path)
    assert env["SLURMFT_PROBE_SSH_KEY"].endswith("/ssh/id_ed25519")
    assert env["SLURMFT_PROBE_KNOWN_HOSTS"].endswith("/ssh/known_hosts")
    assert env["SLURMFT_RESCHEDULE_STATE_DIR"] == str(tmp_path / "sft-u" / "shared" / "slurmft")
    assert c.nodes == ["node1", "node2"] and c.subnet == "10.99.9.0/24"
    assert c.netns("node2") == "slurmft-sft-u-node2"
    with pytest.raises(UsageError, match="no command"):
        c.exec_argv([])


def test_not_up_is_a_clear_error(tmp_path):
    c = Cluster("sft-none", root=tmp_path)
    with pytest.raises(ClusterError, match="cluster sft-none is not up"):
        c.exec_argv(["sinfo"])
    assert c.status() == {"name": "sft-none", "up": False}


def test_up_needs_root(tmp_path, monkeypatch):
    monkeypatch.setattr(cluster_mod.os, "geteuid", lambda: 1000)
    with pytest.raises(ClusterError, match="needs root"):
        Cluster("sft-u", root=tmp_path).up(4)
    assert not (tmp_path / "sft-u").exists()


def test_up_missing_binary_says_make_install(tmp_path, monkeypatch):
    monkeypatch.setattr(cluster_mod.os, "geteuid", lambda: 0)
    real = cluster_mod._which
    monkeypatch.setattr(cluster_mod, "_which",
                        lambda b: None if "slurmctld" in b else real(b))
    with pytest.raises(ClusterError, match=r"missing slurmctld: run `make install`"):
        Cluster("sft-u", root=tmp_path).up(4)
    assert not (tmp_path / "sft-u").exists()


def test_fault_rejects_unknown_action_first(tmp_path):
    with pytest.raises(UsageError, match="unknown fault 'explode'"):
        fake_state(tmp_path).fault("node1", "explode")


def test_descendants_and_ancestors():
    ppid = {1: 0, 10: 1, 11: 10, 12: 11, 13: 10, 20: 1}
    assert descendants([10], ppid) == {11, 12, 13}
    assert descendants([20], ppid) == set()
    assert ancestors(12, ppid) == {12, 11, 10}


@pytest.mark.parametrize("args,msg", [
    (["cluster", "up", "--nodes", "0"], "--nodes must be between 1 and 250"),
    (["cluster", "up", "--name", "Bad_Name"], "invalid cluster name"),
    (["cluster", "fault", "node1", "explode", "--name", "sft-x"], "unknown fault"),
])
def test_cli_bad_input_one_line(args, msg):
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2
    assert res.output.strip().startswith("slurmft: ") and msg in res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output


def test_proc_records_guard_against_pid_reuse(tmp_path):
    import signal

    from slurmft.testbed import procs
    p = procs.spawn(["sleep", "30"], tmp_path / "sleep.log")
    try:
        assert procs.alive(p) and procs.state(p) == "running"
        stranger = procs.Proc(p.pid, p.start + 1)     # same pid, another start time
        assert not procs.alive(stranger)
        assert procs.signal_proc(stranger, signal.SIGKILL) is False
        assert procs.alive(p)
        assert procs.signal_proc(p, signal.SIGSTOP)
        assert procs.wait_for_state(p, "stopped", 5)
        procs.signal_proc(p, signal.SIGCONT)
    finally:
        procs.signal_proc(p, signal.SIGKILL)
    assert procs.wait_gone([p], 5) == []
    assert procs.state(p) == "dead" and procs.signal_proc(p, signal.SIGTERM) is False


def test_status_of_recorded_but_dead_cluster(tmp_path):
    c = fake_state(tmp_path)
    st = json.loads((tmp_path / "sft-u" / "state.json").read_text())
    st["procs"] = {"node1:sshd": {"pid": 999999999, "start": 1}}
    (tmp_path / "sft-u" / "state.json").write_text(json.dumps(st))
    out = c.status()
    assert out["up"] is False      # its namespaces do not exist
    assert out["nodes"][0]["daemons"]["sshd"] == {"pid": 999999999, "state": "dead"}
    assert [n["address"] for n in out["nodes"]] == ["10.99.9.2", "10.99.9.3"]


def test_paths_under_tmp_keeps_only_outermost_tmp_paths():
    from slurmft.testbed.procs import paths_under_tmp
    assert paths_under_tmp(["/tmp/ci/repo", "/tmp/ci/repo/.venv", "/usr", "/var/lib/x"]) == ["/tmp/ci/repo"]
    assert paths_under_tmp(["/tmp/a", "/tmp/ab"]) == ["/tmp/a", "/tmp/ab"]
    assert paths_under_tmp(["/opt/venv"]) == []


def test_ns_setup_argv_passes_kept_paths_positionally():
    import pytest

    from slurmft.testbed.procs import NS_SETUP_SH, ns_setup_argv
    argv = ns_setup_argv("node1", "/s/hosts", "node", ["sleep", "infinity"],
                         hosttmp="/s/hosttmp/node1", keep=["/tmp/ci repo"])
    assert argv[:3] == ["sh", "-c", NS_SETUP_SH]
    assert argv[3:] == ["sh", "node1", "/s/hosts", "node", "/s/hosttmp/node1", "1",
                        "/tmp/ci repo", "sleep", "infinity"]
    with pytest.raises(ValueError):
        ns_setup_argv("node1", "/s/hosts", "node", ["true"], keep=["/etc"])
