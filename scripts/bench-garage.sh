#!/usr/bin/env bash
# The offsite-backup bench against Garage (an S3-compatible server from the Rust registry,
# which assembles a multipart upload without reading its parts again), besides the s3s-fs
# that `make bench` uses: builds Garage once (cargo install, about 6 minutes on 2 cores),
# runs a single node on loopback with its data under a temporary directory, and removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=/var/cache/projstore/garage
garage="$root/bin/garage"
if ! "$garage" --version >/dev/null 2>&1; then
    cargo install --locked garage --version 2.5.0 --root "$root"
fi
dir=$(mktemp -d /var/tmp/projstore-garage.XXXXXX)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
s3=$(port); rpc=$(port)
cat > "$dir/garage.toml" <<CONF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "lmdb"
replication_factor = 1
compression_level = "none"
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"

[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"
CONF
g() { "$garage" -c "$dir/garage.toml" "$@"; }
"$garage" -c "$dir/garage.toml" server > "$dir/server.log" 2>&1 &
pid=$!
for _ in $(seq 1 50); do g status >/dev/null 2>&1 && break; sleep 0.2; done
node=$(g status 2>/dev/null | awk '/127.0.0.1/ {print $1; exit}')
g layout assign -z dc1 -c 10G "$node" >/dev/null
g layout apply --version 1 >/dev/null
key=GK$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
g key import --yes "$key" "$secret" -n bench >/dev/null
g bucket create bench >/dev/null
g bucket allow --read --write --owner bench --key "$key" >/dev/null
PROJSTORE_BENCH_S3="http://127.0.0.1:$s3,$key,$secret" cargo bench -p projstore-agent --bench backup
