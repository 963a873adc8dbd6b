#!/usr/bin/env bash
# put and get of one large file under replicas:3 and ec:4+2 on a local
# cluster of separate processes, next to the local disk's own figures
# measured in the same run (machines here are shared and noisy: compare the
# ratios). Prints a markdown table for docs/benchmarks.md, with the CPU
# each transfer cost per GiB moved: the client's user and system time (GNU
# time) plus the cluster's processes' (their /proc/PID/stat before and
# after), since wall time on a shared machine is noisy and CPU time is not.
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

# seconds, peak RSS (KiB) and CPU seconds (user + system) of a command,
# from GNU time.
timed() {
    local out
    out=$(/usr/bin/time -f "%e %M %U %S" "$@" 2>&1 >/dev/null | tail -1)
    echo "$out" | awk '{ printf "%s %s %.2f\n", $1, $2, $3 + $4 }'
}

TICKS=$(getconf CLK_TCK)
# CPU seconds (user + system) the cluster's processes have used so far.
cluster_cpu() {
    local total=0 pid
    for pid in $(pgrep -f -- "$DIR/cluster/" || true); do
        [[ -r /proc/$pid/stat ]] || continue
        # Fields 14 and 15 (utime, stime), counted after the command name.
        total=$((total + $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat")))
    done
    awk -v t="$total" -v hz="$TICKS" 'BEGIN { printf "%.2f", t / hz }'
}

# CPU seconds per GiB of SIZE_MIB moved.
per_gib() { awk -v c="$1" -v m="$SIZE_MIB" 'BEGIN { printf "%.2f", c * 1024 / m }'; }

mibps() { awk -v s="$1" -v m="$SIZE_MIB" 'BEGIN { printf "%.0f", m / s }'; }

echo "== source file: $SIZE_MIB MiB of random bytes" >&2
head -c $((SIZE_MIB << 20)) /dev/urandom > "$DIR/source"

echo "== local disk: dd write with fsync, then cold read" >&2
drop_caches
read -r dd_w_s _ dd_w_cpu < <(timed dd if="$DIR/source" of="$DIR/dd-copy" bs=4M conv=fsync)
drop_caches
read -r dd_r_s _ dd_r_cpu < <(timed dd if="$DIR/dd-copy" of=/dev/null bs=4M)
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

echo "| policy | operation | MiB/s | local disk MiB/s (same run) | ratio | limit on one disk | ratio to limit | CPU s/GiB: client + servers = total (local dd) | client peak RSS |"
echo "|---|---|---|---|---|---|---|---|---|"
for policy in r3 ec; do
    case $policy in
        r3) name=replicas:3; limit_w=$(awk -v d="$DD_W" 'BEGIN { printf "%.0f", d / 3 }') ;;
        ec) name=ec:4+2; limit_w=$(awk -v d="$DD_W" 'BEGIN { printf "%.0f", d * 4 / 6 }') ;;
    esac
    drop_caches
    cat "$DIR/source" > /dev/null   # the client reads its source from memory
    before=$(cluster_cpu)
    read -r put_s put_rss put_cpu < <(timed "$BIN" put "$DIR/source" "/$policy/file")
    put_srv=$(awk -v a="$before" -v b="$(cluster_cpu)" 'BEGIN { printf "%.2f", b - a }')
    drop_caches
    before=$(cluster_cpu)
    read -r get_s get_rss get_cpu < <(timed "$BIN" get "/$policy/file" -)
    get_srv=$(awk -v a="$before" -v b="$(cluster_cpu)" 'BEGIN { printf "%.2f", b - a }')
    PUT=$(mibps "$put_s")
    GET=$(mibps "$get_s")
    put_budget="$(per_gib "$put_cpu") + $(per_gib "$put_srv") = $(per_gib "$(awk -v a="$put_cpu" -v b="$put_srv" 'BEGIN { print a + b }')") ($(per_gib "$dd_w_cpu"))"
    get_budget="$(per_gib "$get_cpu") + $(per_gib "$get_srv") = $(per_gib "$(awk -v a="$get_cpu" -v b="$get_srv" 'BEGIN { print a + b }')") ($(per_gib "$dd_r_cpu"))"
    awk -v n="$name" -v p="$PUT" -v d="$DD_W" -v l="$limit_w" -v r="$put_rss" -v b="$put_budget" 'BEGIN {
        printf "| %s | put | %d | %d (write, fsync) | %.2f | %d | %.2f | %s | %d MiB |\n", n, p, d, p / d, l, p / l, b, r / 1024 }'
    awk -v n="$name" -v g="$GET" -v d="$DD_R" -v r="$get_rss" -v c="$CACHE" -v b="$get_budget" 'BEGIN {
        printf "| %s | get (%s cache) | %d | %d (read) | %.2f | %d | %.2f | %s | %d MiB |\n", n, c, g, d, g / d, d, g / d, b, r / 1024 }'
    "$BIN" rm "/$policy/file" >/dev/null
done
