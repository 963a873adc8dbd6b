#!/usr/bin/env bash
# put and get of one large file under replicas:3 and ec:4+2 on a local
# cluster of separate processes, next to the local disk's own figures
# measured in the same run (machines here are shared and noisy: compare the
# ratios). Prints a markdown table for docs/benchmarks.md.
#
#   bench/put_get.sh [--size-mib N] [--dir DIR] [--bin PATH]
#
# Needs root for dropping the page cache before each read (reads are then
# served by the disk, as on a cold cluster); without root the reads come
# from the page cache and the table says so.
set -euo pipefail

SIZE_MIB=2048
DIR=/var/tmp/tessera-bench-put-get
BIN=${TESSERA_BIN:-}
while [[ $# -gt 0 ]]; do
    case $1 in
        --size-mib) SIZE_MIB=$2; shift 2 ;;
        --dir) DIR=$2; shift 2 ;;
        --bin) BIN=$2; shift 2 ;;
        *) echo "usage: $0 [--size-mib N] [--dir DIR] [--bin PATH]" >&2; exit 2 ;;
    esac
done
HERE=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z $BIN ]]; then
    BIN=$HERE/target/release/tessera
fi
[[ -x $BIN ]] || { echo "no tessera binary at $BIN; run cargo build --release -p tessera" >&2; exit 1; }

rm -rf "$DIR"
mkdir -p "$DIR"
cleanup() { bash "$HERE/deploy/local-cluster.sh" down "$DIR/cluster" >/dev/null 2>&1 || true; }
trap cleanup EXIT

drop_caches() {
    sync
    if [[ -w /proc/sys/vm/drop_caches ]]; then
        echo 3 > /proc/sys/vm/drop_caches
        CACHE=cold
    else
        CACHE=warm
    fi
}

# seconds and peak RSS (KiB) of a command, from GNU time.
timed() {
    local out
    out=$(/usr/bin/time -f "%e %M" "$@" 2>&1 >/dev/null | tail -1)
    echo "$out"
}

mibps() { awk -v s="$1" -v m="$SIZE_MIB" 'BEGIN { printf "%.0f", m / s }'; }

echo "== source file: $SIZE_MIB MiB of random bytes" >&2
head -c $((SIZE_MIB << 20)) /dev/urandom > "$DIR/source"

echo "== local disk: dd write with fsync, then cold read" >&2
drop_caches
read -r dd_w_s _ < <(timed dd if="$DIR/source" of="$DIR/dd-copy" bs=4M conv=fsync)
drop_caches
read -r dd_r_s _ < <(timed dd if="$DIR/dd-copy" of=/dev/null bs=4M)
rm -f "$DIR/dd-copy"
DD_W=$(mibps "$dd_w_s")
DD_R=$(mibps "$dd_r_s")

echo "== cluster: 1 metaserver, 6 chunkservers" >&2
bash "$HERE/deploy/local-cluster.sh" up "$DIR/cluster" --meta 1 --chunk 6 --bin "$BIN" --base-port 23500 >&2
export TESSERA_CONFIG=$DIR/cluster/client.toml
"$BIN" mkdir /r3 >/dev/null
"$BIN" policy set /r3 replicas:3 >/dev/null
"$BIN" mkdir /ec >/dev/null
"$BIN" policy set /ec ec:4+2 >/dev/null

echo "| policy | operation | MiB/s | local disk MiB/s (same run) | ratio | limit on one disk | ratio to limit | client peak RSS |"
echo "|---|---|---|---|---|---|---|---|"
for policy in r3 ec; do
    case $policy in
        r3) name=replicas:3; limit_w=$(awk -v d="$DD_W" 'BEGIN { printf "%.0f", d / 3 }') ;;
        ec) name=ec:4+2; limit_w=$(awk -v d="$DD_W" 'BEGIN { printf "%.0f", d * 4 / 6 }') ;;
    esac
    drop_caches
    cat "$DIR/source" > /dev/null   # the client reads its source from memory
    read -r put_s put_rss < <(timed "$BIN" put "$DIR/source" "/$policy/file")
    drop_caches
    read -r get_s get_rss < <(timed "$BIN" get "/$policy/file" -)
    PUT=$(mibps "$put_s")
    GET=$(mibps "$get_s")
    awk -v n="$name" -v p="$PUT" -v d="$DD_W" -v l="$limit_w" -v r="$put_rss" 'BEGIN {
        printf "| %s | put | %d | %d (write, fsync) | %.2f | %d | %.2f | %d MiB |\n", n, p, d, p / d, l, p / l, r / 1024 }'
    awk -v n="$name" -v g="$GET" -v d="$DD_R" -v r="$get_rss" -v c="$CACHE" 'BEGIN {
        printf "| %s | get (%s cache) | %d | %d (read) | %.2f | %d | %.2f | %d MiB |\n", n, c, g, d, g / d, d, g / d, r / 1024 }'
    "$BIN" rm "/$policy/file" >/dev/null
done
