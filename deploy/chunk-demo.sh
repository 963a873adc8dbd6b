#!/usr/bin/env bash
# Runs one chunkserver on a local folder: creates a cluster CA and a
# certificate on first start, writes a configuration, and starts
# `tessera chunk` in the foreground (Ctrl-C stops it cleanly).
# Usage: deploy/chunk-demo.sh DIR [TESSERA_BINARY]
# `tessera dev` replaces this once the metaserver and client land.
set -euo pipefail
dir=${1:?usage: deploy/chunk-demo.sh DIR [TESSERA_BINARY]}
bin=${2:-tessera}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
if [ ! -f "$dir/ca/ca.crt" ]; then
  "$bin" ca init --dir "$dir/ca"
  "$bin" ca issue --dir "$dir/ca" --role chunk --name chunk-1
fi
mkdir -p "$dir/disk1"
cat > "$dir/chunk.toml" <<TOML
name = "chunk-1"
listen = "127.0.0.1:7401"
metrics_listen = "127.0.0.1:9401"
token_key = "$dir/ca/token.key"
[tls]
ca = "$dir/ca/ca.crt"
cert = "$dir/ca/chunk-1.crt"
key = "$dir/ca/chunk-1.key"
[transport]
mtu_upper_bound_bytes = 65527
[[disks]]
path = "$dir/disk1"
reserve_bytes = 268435456
TOML
echo "chunkserver data in $dir/disk1, metrics at http://127.0.0.1:9401/metrics"
exec "$bin" chunk --config "$dir/chunk.toml"
