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
mkdir -p /var/run/zfs
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
