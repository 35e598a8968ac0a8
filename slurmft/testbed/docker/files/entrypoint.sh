#!/bin/bash
# Start one node of the slurmft container cluster: munged, sshd, then slurmctld (role
# "controller") or slurmd (role "node"), and stay up. Re-run by `docker start` after a
# node-down fault, so every step tolerates leftovers of an earlier run.
# Reads the cluster's files from /etc/slurmft-cluster (mounted read-only by the backend):
#   slurm.conf  munge.key  id_ed25519(.pub)  ssh_host_ed25519_key  known_hosts  ssh_config
set -euo pipefail

role="${1:-node}"
cfg=/etc/slurmft-cluster
log() { echo "slurmft-entrypoint[$(hostname)]: $*" >&2; }

case "$role" in
  controller|node) ;;
  *) log "unknown role '$role' (controller|node)"; exit 2 ;;
esac
for f in slurm.conf munge.key id_ed25519 id_ed25519.pub ssh_host_ed25519_key known_hosts ssh_config; do
  [ -r "$cfg/$f" ] || { log "missing $cfg/$f"; exit 2; }
done

# The cluster network has no way out; Docker adds a default route anyway: drop it.
ip route del default 2>/dev/null || true

# munge: one key for the whole cluster, one daemon per container.
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -o munge -g munge -m 0400 "$cfg/munge.key" /etc/munge/munge.key
# The socket slurm.conf names (AuthInfo=socket=PATH,...); Debian's default otherwise.
socket="$(sed -n 's/^AuthInfo=.*socket=\([^,]*\).*/\1/p' "$cfg/slurm.conf")"
socket="${socket:-/run/munge/munge.socket.2}"
install -d -o munge -g munge -m 0711 /run/munge "$(dirname "$socket")"
rm -f "$socket" "$socket.lock"
runuser -u munge -- /usr/sbin/munged --force --socket="$socket"

# sshd: the cluster's host key and root's key pair (for mpirun between nodes and the prober).
install -d -m 0755 /run/sshd
install -m 0600 "$cfg/ssh_host_ed25519_key" /etc/ssh/ssh_host_ed25519_key
install -d -m 0700 /root/.ssh
install -m 0600 "$cfg/id_ed25519" /root/.ssh/id_ed25519
install -m 0644 "$cfg/id_ed25519.pub" /root/.ssh/id_ed25519.pub
install -m 0600 "$cfg/id_ed25519.pub" /root/.ssh/authorized_keys
install -m 0644 "$cfg/known_hosts" /root/.ssh/known_hosts
install -m 0644 "$cfg/ssh_config" /root/.ssh/config
cat > /etc/ssh/sshd_config.d/slurmft.conf <<'EOF'
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
EOF
/usr/sbin/sshd

# Slurm: the rendered slurm.conf; create every directory it names (%n = this node's name).
install -d -m 0755 /etc/slurm
install -m 0644 "$cfg/slurm.conf" /etc/slurm/slurm.conf
node="$(hostname)"
grep -E '^(SlurmdSpoolDir|StateSaveLocation|SlurmctldPidFile|SlurmdPidFile|SlurmctldLogFile|SlurmdLogFile)=' \
    /etc/slurm/slurm.conf | while IFS='=' read -r key value; do
  path="${value//%n/$node}"
  case "$key" in *Dir|StateSaveLocation) mkdir -p "$path" ;; *) mkdir -p "$(dirname "$path")" ;; esac
done

if [ "$role" = controller ]; then
  /usr/sbin/slurmctld
else
  /usr/sbin/slurmd
fi
log "$role up"
# Stay in the foreground; docker's init (compose `init: true`) reaps the daemons' children.
exec sleep infinity
