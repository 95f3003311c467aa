#!/usr/bin/env bash
# Makes sure a ZFS is usable: kernel ZFS if present, else starts the zfs-fuse daemon.
set -euo pipefail

if zpool list >/dev/null 2>&1; then
  exit 0
fi
if ! command -v zfs-fuse >/dev/null 2>&1; then
  echo "start-zfs: no working zpool and no zfs-fuse installed" >&2
  exit 1
fi
if [ ! -e /dev/fuse ]; then
  echo "start-zfs: /dev/fuse is missing; zfs-fuse cannot run" >&2
  exit 1
fi
# A daemon that is still shutting down holds the socket: wait for it to go.
for _ in $(seq 1 60); do
  pgrep -x zfs-fuse >/dev/null || break
  sleep 0.5
done
if pgrep -x zfs-fuse >/dev/null; then
  echo "start-zfs: a zfs-fuse process exists but does not answer; stop it and rerun" >&2
  exit 1
fi
mkdir -p /var/run/zfs
rm -f /var/run/zfs-fuse.pid   # stale: the process is gone
zfs-fuse --no-kstat-mount -p /var/run/zfs-fuse.pid
for _ in $(seq 1 50); do
  if zpool list >/dev/null 2>&1; then
    echo "start-zfs: zfs-fuse started"
    exit 0
  fi
  sleep 0.2
done
echo "start-zfs: zfs-fuse did not come up" >&2
exit 1
