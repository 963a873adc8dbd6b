#!/usr/bin/env bash
# Uncontended lock round trips through the mount against the local disk, in
# the same run: fcntl (F_SETLK write lock then unlock) and flock (LOCK_EX
# then LOCK_UN) on one file, from one process. Every lock and unlock on the
# mount is a call to the metaserver leader, committed through Raft; on the
# local disk it is the kernel's own table. Prints a markdown table for
# docs/benchmarks.md. Then sqlite with a rollback journal (fcntl locks alone
# keep its writers apart) from two mounts at once, 4 writers each, against
# 8 writers on the local disk.
#
#   bench/locks.sh [--ops N] [--txns N] [--dir DIR] [--bin PATH]
set -euo pipefail

OPS=5000
TXNS=500
DIR=/var/tmp/tessera-bench-locks
BIN=${TESSERA_BIN:-}
while [[ $# -gt 0 ]]; do
    case $1 in
        --ops) OPS=$2; shift 2 ;;
        --txns) TXNS=$2; shift 2 ;;
        --dir) DIR=$2; shift 2 ;;
        --bin) BIN=$2; shift 2 ;;
        *) echo "usage: $0 [--ops N] [--txns N] [--dir DIR] [--bin PATH]" >&2; exit 2 ;;
    esac
done
HERE=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z $BIN ]]; then
    BIN=$HERE/target/release/tessera
fi
[[ -x $BIN ]] || { echo "no tessera binary at $BIN; run cargo build --release -p tessera" >&2; exit 1; }

MNT=$DIR/mnt
MNT2=$DIR/mnt2
LOCAL=$DIR/local
MOUNT_PIDS=()
cleanup() {
    for pid in "${MOUNT_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    umount -l "$MNT" 2>/dev/null || true
    umount -l "$MNT2" 2>/dev/null || true
    bash "$HERE/deploy/local-cluster.sh" down "$DIR/cluster" >/dev/null 2>&1 || true
}
trap cleanup EXIT
umount -l "$MNT" 2>/dev/null || true
umount -l "$MNT2" 2>/dev/null || true
rm -rf "$DIR"
mkdir -p "$MNT" "$MNT2" "$LOCAL"

echo "== cluster: 1 metaserver, 3 chunkservers on one disk" >&2
bash "$HERE/deploy/local-cluster.sh" up "$DIR/cluster" --meta 1 --chunk 3 \
    --base-port 24500 --bin "$BIN" >&2
for mnt in "$MNT" "$MNT2"; do
    NO_COLOR=1 RUST_LOG=warn "$BIN" mount "$mnt" --config "$DIR/cluster/client.toml" \
        2> "$mnt.log" >/dev/null &
    MOUNT_PIDS+=($!)
    for _ in $(seq 100); do
        grep -q " $mnt " /proc/self/mounts && break
        sleep 0.1
    done
    grep -q " $mnt " /proc/self/mounts || { echo "the mount did not appear; see $mnt.log" >&2; exit 1; }
done

# Prints "fcntl_per_s flock_per_s" (lock+unlock pairs per second).
measure() {
    python3 - "$1" "$OPS" <<'PY'
import fcntl, os, sys, time
path, ops = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
rates = []
for kind in ("fcntl", "flock"):
    start = time.perf_counter()
    for i in range(ops):
        if kind == "fcntl":
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, i % 1024)
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, i % 1024)
        else:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
    rates.append(ops / (time.perf_counter() - start))
print(" ".join("%.0f" % r for r in rates))
PY
}

echo "== $OPS lock+unlock pairs each, local disk then the mount" >&2
read -r LOCAL_FCNTL LOCAL_FLOCK < <(measure "$LOCAL/lockfile")
read -r MOUNT_FCNTL MOUNT_FLOCK < <(measure "$MNT/lockfile")
ratio() { python3 -c "print('%.4f' % ($1 / $2))"; }
echo
echo "| lock+unlock pairs/s | local disk | mount | mount/local |"
echo "|---|---:|---:|---:|"
echo "| fcntl F_SETLK write lock, unlock | $LOCAL_FCNTL | $MOUNT_FCNTL | $(ratio "$MOUNT_FCNTL" "$LOCAL_FCNTL") |"
echo "| flock LOCK_EX, LOCK_UN | $LOCAL_FLOCK | $MOUNT_FLOCK | $(ratio "$MOUNT_FLOCK" "$LOCAL_FLOCK") |"

# sqlite: 8 writers of TXNS transactions each on one database; on the mount
# half of them go through each of the two mounts.
WRITER=$HERE/tests/locks/sqlite_writer.py
sqlite_run() {
    local first=$1 second=$2
    python3 - "$first/db" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("pragma journal_mode=delete")
c.execute("create table rows(writer integer, seq integer, primary key(writer, seq))")
c.execute("create table counter(n integer)")
c.execute("insert into counter values (0)")
c.close()
PY
    local start end pids=()
    start=$(date +%s.%N)
    for w in 0 1 2 3 4 5 6 7; do
        if (( w % 2 == 0 )); then db=$first/db; else db=$second/db; fi
        python3 "$WRITER" "$db" "$w" "$TXNS" >/dev/null &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
    end=$(date +%s.%N)
    local check
    check=$(python3 -c "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print(c.execute('pragma integrity_check').fetchone()[0], c.execute('select n from counter').fetchone()[0])" "$first/db")
    [[ $check == "ok $((8 * TXNS))" ]] || { echo "sqlite check failed: $check" >&2; exit 1; }
    python3 -c "print('%.1f %.0f' % ($end - $start, 8 * $TXNS / ($end - $start)))"
}
echo "== sqlite: 8 writers x $TXNS transactions, local disk then two mounts" >&2
read -r LOCAL_S LOCAL_TPS < <(sqlite_run "$LOCAL" "$LOCAL")
read -r MOUNT_S MOUNT_TPS < <(sqlite_run "$MNT" "$MNT2")
echo
echo "| sqlite, 8 writers x $TXNS transactions (rollback journal) | local disk | two mounts | mount/local |"
echo "|---|---:|---:|---:|"
echo "| seconds | $LOCAL_S | $MOUNT_S | |"
echo "| transactions/s | $LOCAL_TPS | $MOUNT_TPS | $(ratio "$MOUNT_TPS" "$LOCAL_TPS") |"
