#!/usr/bin/env bash
# CPU seconds per GiB of a cold `tessera get`, client and servers apart, a
# few times over in one cluster: the figure that moves with the read path's
# levers (hashing, copies, allocation) while wall time moves with the host.
# One metaserver and three chunkservers (deploy/local-cluster.sh), a 1 GiB
# file under the given policy.
#
#   bench/get_cpu.sh --bin PATH [--runs N] [--policy P] [--dir DIR]
#
# Needs root to drop the page cache before each get.
set -euo pipefail

BIN=${TESSERA_BIN:-}
RUNS=5
POLICY=replicas:3
DIR=/var/tmp/tessera-bench-get-cpu
while [[ $# -gt 0 ]]; do
    case $1 in
        --bin) BIN=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --policy) POLICY=$2; shift 2 ;;
        --dir) DIR=$2; shift 2 ;;
        *) echo "usage: $0 --bin PATH [--runs N] [--policy P] [--dir DIR]" >&2; exit 2 ;;
    esac
done
HERE=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$HERE/target/release/tessera}
[[ -x $BIN ]] || { echo "no tessera binary at $BIN; run cargo build --release -p tessera" >&2; exit 1; }

cleanup() { bash "$HERE/deploy/local-cluster.sh" down "$DIR/cluster" >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup
rm -rf "$DIR"
mkdir -p "$DIR"
bash "$HERE/deploy/local-cluster.sh" up "$DIR/cluster" --meta 1 --chunk 3 --bin "$BIN" \
    --base-port 24500 > "$DIR/up.log" 2>&1 || { cat "$DIR/up.log" >&2; exit 1; }
export TESSERA_CONFIG=$DIR/cluster/client.toml
"$BIN" policy set / "$POLICY" >/dev/null 2>&1
head -c 1G /dev/urandom > "$DIR/source"
"$BIN" put "$DIR/source" /file >/dev/null 2>&1
TICKS=$(getconf CLK_TCK)
servers_ticks() {
    local total=0 pid
    for pid in $(pgrep -f -- "$DIR/cluster/"); do
        total=$((total + $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat")))
    done
    echo "$total"
}
echo "| run | seconds | MiB/s | client CPU s | servers CPU s | total CPU s/GiB |"
echo "|---|---:|---:|---:|---:|---:|"
for i in $(seq "$RUNS"); do
    sync
    echo 3 > /proc/sys/vm/drop_caches
    before=$(servers_ticks)
    read -r wall user sys < <(/usr/bin/time -f "%e %U %S" "$BIN" get /file - 2>&1 >/dev/null | tail -1)
    after=$(servers_ticks)
    awk -v i="$i" -v w="$wall" -v u="$user" -v s="$sys" -v t="$((after - before))" -v hz="$TICKS" 'BEGIN {
        printf "| %d | %.2f | %.0f | %.2f | %.2f | %.2f |\n", i, w, 1024 / w, u + s, t / hz, u + s + t / hz }'
done
