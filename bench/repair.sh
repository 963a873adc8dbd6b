#!/usr/bin/env bash
# Repair of one lost chunkserver under replicas:3 and under ec:4+2, on a
# local cluster of separate processes (one metaserver, eight chunkservers,
# all on this machine's one disk), next to the disk's own read and write
# rates measured in the same run. Also the slowdown of a client reading a
# file while repair runs with the default throttles. Prints a markdown
# table for docs/benchmarks.md.
#
#   bench/repair.sh [--size-mib N] [--dir DIR] [--bin PATH]
#
# Each policy gets N MiB of data (default 2048); a chunkserver is SIGKILLed
# and never restarted; the grace period is set to 20 s: long enough to time
# a client read after the loss but before repair starts (a fresh client
# first tries the dead server), then the same read while repair runs.
# Needs root to drop the page cache (cold reads).
set -euo pipefail

SIZE_MIB=2048
DIR=/var/tmp/tessera-bench-repair
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
[[ -n $BIN ]] || BIN=$HERE/target/release/tessera
[[ -x $BIN ]] || { echo "no tessera binary at $BIN; run cargo build --release -p tessera" >&2; exit 1; }
command -v python3 >/dev/null || { echo "needs python3 (JSON)" >&2; exit 1; }

rm -rf "$DIR"
mkdir -p "$DIR"
cleanup() { bash "$HERE/deploy/local-cluster.sh" down "$DIR/cluster" >/dev/null 2>&1 || true; }
trap cleanup EXIT

drop_caches() {
    sync
    [[ -w /proc/sys/vm/drop_caches ]] && echo 3 > /proc/sys/vm/drop_caches || true
}
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# One field of `tessera admin status --json` (python3 expression on `s`).
status_field() {
    "$BIN" admin status --json 2>/dev/null | python3 -c "import json,sys; s=json.load(sys.stdin); print($1)" 2>/dev/null || echo ""
}
redundant() {
    [[ $(status_field "s['redundancy']['degraded'] == 0 and s['redundancy']['queue_length'] == 0 and s['redundancy']['jobs_running'] == 0 and s['redundancy']['chunks'] > 0") == True ]]
}
repair_bytes() {
    curl -s "http://127.0.0.1:$((BASE + 2000))/metrics" |
        awk '/^tessera_meta_repair_bytes_total/ { s += $NF } END { printf "%.0f", s }'
}

CHUNK_MIB=64
echo "== local disk: dd write with fsync, then cold read of $SIZE_MIB MiB" >&2
head -c $((SIZE_MIB << 20)) /dev/urandom > "$DIR/source"
drop_caches
t0=$(now); dd if="$DIR/source" of="$DIR/dd-copy" bs=4M conv=fsync status=none; t1=$(now)
drop_caches
t2=$(now); dd if="$DIR/dd-copy" of=/dev/null bs=4M status=none; t3=$(now)
rm -f "$DIR/dd-copy"
DD_W=$(awk -v m="$SIZE_MIB" -v s="$(elapsed "$t0" "$t1")" 'BEGIN { printf "%.0f", m / s }')
DD_R=$(awk -v m="$SIZE_MIB" -v s="$(elapsed "$t2" "$t3")" 'BEGIN { printf "%.0f", m / s }')
# A copy reads a piece and writes it: on one disk both share its time.
COPY_LIMIT=$(awk -v r="$DD_R" -v w="$DD_W" 'BEGIN { printf "%.0f", 1 / (1 / r + 1 / w) }')
echo "   write $DD_W MiB/s, read $DD_R MiB/s, copy limit $COPY_LIMIT MiB/s" >&2

BASE=23500
GRACE=20
echo "== cluster: 1 metaserver, 8 chunkservers, repair.down_after_s = $GRACE" >&2
bash "$HERE/deploy/local-cluster.sh" up "$DIR/cluster" --meta 1 --chunk 8 --bin "$BIN" \
    --base-port $BASE --meta-toml "$(printf '[repair]\ndown_after_s = %d' $GRACE)" >&2
export TESSERA_CONFIG=$DIR/cluster/client.toml

# A file a client reads while repair runs, on replicas:3 (the reader falls
# back from the dead server like any reader would).
"$BIN" mkdir /reader >/dev/null
"$BIN" policy set /reader replicas:3 >/dev/null
head -c $((512 << 20)) /dev/urandom > "$DIR/reader-src"
"$BIN" put "$DIR/reader-src" /reader/file >/dev/null

read_time() {
    drop_caches
    local a b
    a=$(now); "$BIN" get /reader/file - > /dev/null; b=$(now)
    elapsed "$a" "$b"
}

ROWS=()
kill_index=1
for policy in replicas:3 ec:4+2; do
    dir=/$(echo "$policy" | tr ':+' '__')
    "$BIN" mkdir "$dir" >/dev/null
    "$BIN" policy set "$dir" "$policy" >/dev/null
    echo "== $policy: writing $SIZE_MIB MiB" >&2
    "$BIN" put "$DIR/source" "$dir/data" >/dev/null
    until redundant; do sleep 1; done
    baseline=$(read_time)
    before=$(repair_bytes)
    echo "== $policy: SIGKILL chunk-$kill_index" >&2
    kill -KILL "$(awk -v n="chunk-$kill_index" '$1 == n { print $2 }' "$DIR/cluster/pids")"
    t_kill=$(now)
    sleep 1
    lost=$(read_time)
    until [[ $(status_field "s['redundancy']['jobs_running']") =~ ^[1-9] ]]; do sleep 0.5; done
    t_start=$(now)
    during=$(read_time)
    until redundant; do sleep 1; done
    t_done=$(now)
    after=$(repair_bytes)
    bytes=$((after - before))
    window=$(elapsed "$t_start" "$t_done")
    total=$(elapsed "$t_kill" "$t_done")
    rate=$(awk -v b="$bytes" -v s="$window" 'BEGIN { printf "%.0f", b / 1048576 / s }')
    case $policy in
        replicas:3) limit=$COPY_LIMIT ;;
        # A rebuilt shard costs k reads of a shard's size and one write.
        ec:4+2) limit=$(awk -v r="$DD_R" -v w="$DD_W" 'BEGIN { printf "%.0f", 1 / (4 / r + 1 / w) }') ;;
    esac
    ROWS+=("$(awk -v p="$policy" -v mb="$((bytes >> 20))" -v r="$rate" -v w="$window" -v t="$total" -v l="$limit" -v b="$baseline" -v x="$lost" -v d="$during" 'BEGIN {
        printf "| %s | %d MiB | %d | %s s | %s s | %d | %.2f | %.1f / %.1f / %.1f s (%.2fx) |", p, mb, r, w, t, l, r / l, b, x, d, d / x }')")
    "$BIN" rm "$dir/data" >/dev/null
    kill_index=$((kill_index + 1))
done

echo
echo "Disk (same run): write $DD_W MiB/s (fsync), cold read $DD_R MiB/s; $SIZE_MIB MiB per policy, 8 chunkservers on one disk."
echo
echo "| policy | rebuilt | repair MiB/s | repair time | kill to full redundancy (incl. $GRACE s grace) | limit on one disk MiB/s | ratio to limit | 512 MiB cold read: healthy / node lost, no repair yet / during repair (slowdown from repair) |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
