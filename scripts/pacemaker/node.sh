#!/bin/bash
# The "init" of one Pacemaker node of `npm run bench -- --peer pacemaker` (scripts/bench-pacemaker.mjs).
# Runs as PID 1 of the node's own PID namespace, inside its network namespace and a private mount
# and UTS namespace of its own (the orchestrator starts it with `ip netns exec NS unshare --pid
# --fork --mount-proc --mount --uts --propagation private`). A power cut is a SIGKILL of this
# process: the kernel then kills every process of the namespace at once, and the mounts below go
# with the mount namespace.
#
# Usage: node.sh NAME STATE_DIR OCF_PROVIDER_DIR
#   STATE_DIR holds this node's etc-corosync/ (corosync.conf), lib-pacemaker/, lib-corosync/,
#   run/, log/ and shm/; they are bind-mounted over /etc/corosync, /var/lib/pacemaker,
#   /var/lib/corosync, /run, /var/log and /dev/shm, so the nodes share nothing but the kernel.
#   OCF_PROVIDER_DIR (scripts/pacemaker/ocf) is mounted as the OCF provider `vigilbench`: the
#   stand-in resource `ocf:vigilbench:Stamp`.
set -eu
name=$1 state=$2 provider=$3

hostname "$name"
# The OCF root: the Debian agents stay visible, plus our provider. Mount the originals into the
# state dir first (in this private namespace only), then the state dir over the OCF root.
mkdir -p "$state/ocf/heartbeat" "$state/ocf/pacemaker" "$state/ocf/vigilbench"
for p in heartbeat pacemaker; do
  [ -d "/usr/lib/ocf/resource.d/$p" ] && mount --bind "/usr/lib/ocf/resource.d/$p" "$state/ocf/$p"
done
mount --bind "$provider" "$state/ocf/vigilbench"
mount --rbind "$state/ocf" /usr/lib/ocf/resource.d  # --rbind: with the three mounts above
mount --bind "$state/etc-corosync" /etc/corosync
mount --bind "$state/lib-pacemaker" /var/lib/pacemaker
mount --bind "$state/lib-corosync" /var/lib/corosync
mount --bind "$state/log" /var/log
mount --bind "$state/run" /run
# libqb's IPC keeps ring buffers in /dev/shm, named after pids, which repeat across PID namespaces.
mount --bind "$state/shm" /dev/shm

export PCMK_logfile=/var/log/pacemaker/pacemaker.log PCMK_logfacility=none PCMK_debug=no
corosync -f >/var/log/corosync/stdout.log 2>&1 &
for _ in $(seq 1 200); do
  corosync-cfgtool -s >/dev/null 2>&1 && break
  sleep 0.05
done
pacemakerd >/var/log/pacemaker/stdout.log 2>&1 &
# As PID 1: reap whatever gets orphaned, until the power cut (or the end of the bench).
while true; do wait || true; sleep 1; done
