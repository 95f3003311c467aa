#!/usr/bin/env bash
# Installs what `make test` needs, only when it is missing (idempotent; safe to run often).
set -euo pipefail

apt_missing=()
need_cmd() { command -v "$1" >/dev/null 2>&1 || apt_missing+=("$2"); }
need_cmd zfs-fuse zfs-fuse
need_cmd sshfs sshfs
need_cmd bindfs bindfs
[ -x /usr/sbin/sshd ] || apt_missing+=(openssh-server)
need_cmd fusermount3 fuse3
need_cmd ssh-keygen openssh-client
need_cmd openssl openssl
need_cmd setpriv util-linux
# A stock kubectl is usually installed; Debian's kubernetes-client conflicts with it, so it is
# only installed where no kubectl exists.
command -v kubectl >/dev/null 2>&1 || apt_missing+=(kubernetes-client)

if [ ${#apt_missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing ${apt_missing[*]} and not root: install them and rerun" >&2
    exit 1
  fi
  echo "install-deps: apt-get install ${apt_missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
fi

# Debian's kubectl 1.20 client, for the kubectl sessions of e2e/tests/kubectl.rs: unpacked, not
# installed (it conflicts with an installed kubectl).
kubectl120_dir=${PROJSTORE_KUBECTL_120_DIR:-/var/cache/projstore/kubernetes-client}
if [ ! -x "$kubectl120_dir/usr/bin/kubectl" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: Debian's kubernetes-client (kubectl 1.20) is missing from $kubectl120_dir and not root: run as root" >&2
    exit 1
  fi
  echo "install-deps: apt-get download kubernetes-client into $kubectl120_dir"
  mkdir -p "$kubectl120_dir"
  debs=$(mktemp -d)
  chmod 755 "$debs"   # apt's download user must be able to write there
  chown _apt "$debs" 2>/dev/null || true
  (cd "$debs" && { apt-get download -qq kubernetes-client 2>/dev/null || { apt-get update -qq && apt-get download -qq kubernetes-client; }; })
  dpkg -x "$debs"/kubernetes-client_*.deb "$kubectl120_dir"
  rm -rf "$debs"
fi

# The S3-compatible server the offsite-backup tests and benchmark run against (SigV4, objects
# as files): from the Rust registry, built once.
if ! command -v s3s-fs >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: s3s-fs is missing and not root: cargo install s3s-fs --features binary" >&2
    exit 1
  fi
  echo "install-deps: cargo install s3s-fs (a few minutes, once)"
  build=$(mktemp -d)
  CARGO_TARGET_DIR="$build" cargo install -q s3s-fs --version 0.14.1 --features binary --locked --root /usr/local
  rm -rf "$build"
fi

pip_missing=()
python3 -c 'import kubernetes_validate' 2>/dev/null || pip_missing+=(kubernetes-validate)
python3 -c 'import helm_python' 2>/dev/null || pip_missing+=(helm-python-sdk)
python3 -c 'import yaml' 2>/dev/null || pip_missing+=(pyyaml)
python3 -c 'import celpy' 2>/dev/null || pip_missing+=(cel-python)
if [ ${#pip_missing[@]} -gt 0 ]; then
  echo "install-deps: pip install ${pip_missing[*]}"
  python3 -m pip install -q --disable-pip-version-check "${pip_missing[@]}" 2>&1 | grep -v "Running pip as the 'root' user" || true
fi
