"""A real local Slurm + SSH + Open MPI test cluster in network namespaces (needs root).

Used by ``slurmft cluster ...``, the integration tests, the demo and the benchmarks::

    from slurmft.testbed import Cluster
    c = Cluster("sft-test")                # name: 1-24 of [a-z0-9-], starts with a letter
    c.up(nodes=4)                          # -> UpResult; already_up=True if it was running
    c.run(["sinfo"])                       # CompletedProcess (text) run inside the cluster
    subprocess.run(c.exec_argv(["sbatch", "job.sh"]), env=c.env())   # the same, by hand
    c.fault("node3", Fault.LINK_DOWN)     # see backend.Fault; "link-down" works too
    c.status()                             # dict: nodes, addresses, daemon pids, sinfo view
    c.down()                               # stop all it started, remove netns/route/state

Layout of a cluster NAME (``Cluster(name, root=...)``; root defaults to
``/var/lib/slurmft/clusters`` or ``$SLURMFT_CLUSTER_ROOT``; not /run, which nodes privatise):

- Network: netns ``slurmft-NAME-ctl`` holds bridge ``br0`` with ``.1`` of the cluster's /24
  (``c.subnet``; the first free /24 of 10.99.0.0/16 from a hash of the name, or ``subnet=``;
  a clash with any route or address on the machine is refused). Each node ``nodeN`` has netns
  ``slurmft-NAME-nodeN`` (``c.netns(node)``, ``c.netns_path(node)``) with ``eth0`` at
  ``.N+1``, joined by a veth created directly between the two namespaces (``vN`` on the
  controller side): nothing appears in the root namespace except ``ip route add unreachable
  SUBNET``. No cluster namespace has a default route.
- Daemons: per node one holder process (keeps the node's uts+mount namespace: host name
  ``nodeN``, the cluster hosts file over /etc/hosts, private /tmp and /run), an ``sshd`` and a
  ``slurmd`` inside it; in the controller netns ``munged`` and ``slurmctld`` (host ``ctl``).
  ``up(slurm=False)`` (``--no-slurm``) starts holders and sshd only. Pids with their start
  times are recorded in ``<state>/state.json``; logs are in ``<state>/log/`` (``c.log_path(
  "slurmd-node2")``).
- Files: ``c.slurm_conf_path`` (from templates/slurm.conf.j2: partition ``main`` Default=YES,
  SlurmdTimeout=10, ReturnToService=2, JobRequeue=1, EpilogSlurmctld= only if ``epilog=``,
  SlurmUser=root unless ``up(slurm_user=NAME)``: slurmctld then drops to that existing user),
  ``c.ssh_config_path`` (``Host nodeN / HostName IP``, IdentityFile, UserKnownHostsFile,
  BatchMode yes), ``c.ssh_key_path``, ``c.known_hosts_path``, ``c.hosts_path``.
- ``c.shared_dir`` (``<state>/shared``) is at the same path on every node: put job scripts'
  working dir (``sbatch --chdir``), checkpoints and output there. Nodes have a PRIVATE /tmp,
  so never point a job at a path under /tmp. ``<shared>/slurmft`` is slurmft's state dir.

Running commands in the cluster: ``c.exec_argv(argv)`` wraps argv so it runs in the controller
netns, in its own private mount namespace with the hosts file over /etc/hosts (the real one is
never touched); run it with ``env=c.env()`` which sets SLURM_CONF, SLURMFT_PROBE_SSH_CONFIG,
SLURMFT_PROBE_SSH_KEY, SLURMFT_PROBE_KNOWN_HOSTS, SLURMFT_RESCHEDULE_STATE_DIR,
SLURMFT_RESCHEDULE_SSH_ARGS (the wrapper's ssh to a peer node), SLURMFT_CLUSTER_*
and puts this Python's bin dir first on PATH. ``c.node_exec_argv(node, argv)`` runs argv on a
node itself (no SSH). Ports: each cluster's daemons live in their own namespaces; Slurm ports
are derived from the name anyway (``Layout.ports``).

Faults (``c.fault(node, fault)``, ``testbed.backend.Fault``; dispatched in ``netns/faults.py``): kill-slurmd, restart-slurmd, link-down, link-up (the
controller-side veth), stop-sshd, start-sshd, freeze-sshd, thaw-sshd (SIGSTOP/SIGCONT: ping
answers, SSH hangs), kill-job-procs (SIGKILL to the tasks under the node's slurmstepd and to
non-sshd processes under its sshd, e.g. MPI ranks; see ``Cluster.job_pids``), hang, unhang
(SIGSTOP to one training rank among those, SIGCONT to the stopped ones).

Errors are ClusterError (system trouble: not root, missing binary -> `make install`, a daemon
died -> its log file) or UsageError (bad name, node count, subnet clash, unknown node/action).
A failed ``up`` tears down what it had built.
"""

from slurmft.testbed.backend import BACKENDS, ClusterBackend, Fault, open_cluster
from slurmft.testbed.layout import (
    CTL_HOST, DEFAULT_NAME, DEFAULT_ROOT, Layout, pick_subnet, validate_name,
)
from slurmft.testbed.netns import Cluster, UpResult

__all__ = ["BACKENDS", "CTL_HOST", "DEFAULT_NAME", "DEFAULT_ROOT", "Cluster", "ClusterBackend",
           "Fault", "Layout", "UpResult", "open_cluster", "pick_subnet", "validate_name"]
