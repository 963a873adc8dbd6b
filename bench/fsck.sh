#!/usr/bin/env bash
# `tessera admin fsck` and the metaserver's status page on a local cluster
# (one metaserver, three chunkservers, replicas:3) holding N files of
# 20 KiB, each its own chunk: fsck's wall time three times, then the page
# and /status.json fetched three times each. Prints lines for
# docs/benchmarks.md.
#
#   bench/fsck.sh [--files N] [--bin PATH]
set -euo pipefail

FILES=3000
BIN=${TESSERA_BIN:-}
while [[ $# -gt 0 ]]; do
    case $1 in
        --files) FILES=$2; shift 2 ;;
        --bin) BIN=$2; shift 2 ;;
        *) echo "usage: $0 [--files N] [--bin PATH]" >&2; exit 2 ;;
    esac
done
HERE=$(cd "$(dirname "$0")/.." && pwd)
[[ -n $BIN ]] || BIN=$HERE/target/release/tessera
BASE=26500
DIR=$(mktemp -d /var/tmp/tessera-bench-fsck.XXXXXX)
trap 'bash "$HERE/deploy/local-cluster.sh" down "$DIR/cluster" >/dev/null 2>&1 || true; rm -rf "$DIR"' EXIT

bash "$HERE/deploy/local-cluster.sh" up "$DIR/cluster" --bin "$BIN" --meta 1 --chunk 3 --base-port $BASE >/dev/null
export TESSERA_CONFIG=$DIR/cluster/client.toml
python3 - "$DIR/files" "$FILES" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    sub = os.path.join(root, f"d{i % 50}")
    os.makedirs(sub, exist_ok=True)
    with open(os.path.join(sub, f"f{i}"), "wb") as f:
        f.write(os.urandom(20 * 1024))
PY
echo "writing $FILES files of 20 KiB (chunked: above the 16 KiB inline limit)..." >&2
"$BIN" put -r "$DIR/files" /files >/dev/null
# Inventories learn of new pieces from heartbeats.
sleep 8
for run in 1 2 3; do
    start=$(date +%s.%N)
    "$BIN" admin fsck --json >"$DIR/fsck.json" || true
    end=$(date +%s.%N)
    python3 - "$DIR/fsck.json" "$start" "$end" "$run" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
took = float(sys.argv[3]) - float(sys.argv[2])
found = r["under_replicated"] + r["orphaned_chunks"] + r["dangling_extents"] + r["orphaned_pieces"] + r["files_at_risk"]
print(f"fsck run {sys.argv[4]}: {took:.3f} s for {r['chunks']} chunks and {r['extents']} extents, {found} findings")
PY
done
# The same tree on the local disk, walked with every file's attributes
# read (what fsck's extent walk compares to), in the same run.
start=$(date +%s.%N)
count=$(find "$DIR/files" -type f -printf '%s\n' | wc -l)
end=$(date +%s.%N)
echo "local disk: find -printf over the $count files: $(python3 -c "print(f'{$end - $start:.3f}')") s"
for path in / /status.json; do
    for _ in 1 2 3; do
        curl -s -o /dev/null -w "GET $path: %{http_code} in %{time_total} s, %{size_download} bytes\n" \
            "http://127.0.0.1:$((BASE + 2000))$path"
    done
done
