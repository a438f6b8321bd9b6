#!/bin/sh
# PID 1 of a testbed node: already in the node's network namespace and in fresh
# mount/UTS/IPC/PID namespaces. Builds the node's root (overlay: lower = the host's /,
# upper = the node's private layer, wiped by `deploy`), starts OAR's sshd (port 6667,
# how OAR reaches nodes) and execs the node's own sshd (port 22).
#   usage: node_init.sh WORKDIR SHORTNAME HOSTNAME
set -eu
W=$1; N=$2; HN=$3
D=$W/nodes/$N
R=$D/root
mount --make-rprivate /
mkdir -p "$D/upper" "$D/work" "$R"
mount -t overlay "g5k-$N" -o "lowerdir=/,upperdir=$D/upper,workdir=$D/work" "$R"
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
mount --rbind /dev "$R/dev"
mount -t tmpfs -o mode=1777 tmpfs "$R/dev/shm"
mount -t tmpfs -o mode=755 tmpfs "$R/run"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
mkdir -p "$R/run/sshd"
mount --bind "$W/hosts" "$R/etc/hosts"
hostname "$HN"
cd "$R"
pivot_root . .
umount -l .
cd /
/usr/sbin/sshd -f /etc/oar/sshd_config -o PidFile=/run/oar-sshd.pid -E /var/log/oar-sshd.log || true
exec /usr/sbin/sshd -D -e
