#!/usr/bin/env bash
# Small operations and everyday workloads on the mount, against the local
# disk and MooseFS 3.0 in the same run (machines here are shared and noisy:
# compare the ratios). Tessera: deploy/local-cluster.sh with one metaserver
# and three chunkservers on this disk, replicas:3, `tessera mount`. MooseFS:
# ../shared/tools/moosefs_up.sh with three chunkservers and goal 3, when its
# packages are installed (apt-get install moosefs-master moosefs-chunkserver
# moosefs-client moosefs-metalogger moosefs-cli); left out otherwise.
# Figures: bench/small_ops.py (one process, one file at a time), then an
# untar of /usr/include and a diff against it, a git init/add/commit/gc of
# the tree, sqlite with 200 transactions of 50 inserts, and rm -rf.
# Prints a markdown table for docs/benchmarks.md.
#
#   bench/small_ops.sh [--files N] [--dir DIR] [--bin PATH] [--moosefs-up PATH]
set -euo pipefail

FILES=5000
DIR=/var/tmp/tessera-bench-small
BIN=${TESSERA_BIN:-}
HERE=$(cd "$(dirname "$0")/.." && pwd)
MFS_UP=$HERE/../shared/tools/moosefs_up.sh
while [[ $# -gt 0 ]]; do
    case $1 in
        --files) FILES=$2; shift 2 ;;
        --dir) DIR=$2; shift 2 ;;
        --bin) BIN=$2; shift 2 ;;
        --moosefs-up) MFS_UP=$2; shift 2 ;;
        *) echo "usage: $0 [--files N] [--dir DIR] [--bin PATH] [--moosefs-up PATH]" >&2; exit 2 ;;
    esac
done
if [[ -z $BIN ]]; then
    BIN=$HERE/target/release/tessera
fi
[[ -x $BIN ]] || { echo "no tessera binary at $BIN; run cargo build --release -p tessera" >&2; exit 1; }
for tool in git sqlite3 tar diff; do
    command -v $tool >/dev/null || { echo "$tool is missing: apt-get install $tool" >&2; exit 1; }
done

MNT=$DIR/mnt
LOCAL=$DIR/local
MFS_ROOT=$DIR/mfs
MOUNT_PID=
USE_MFS=
cleanup() {
    if [[ -n $MOUNT_PID ]]; then
        kill -TERM "$MOUNT_PID" 2>/dev/null || true
        wait "$MOUNT_PID" 2>/dev/null || true
    fi
    umount -l "$MNT" 2>/dev/null || true
    bash "$HERE/deploy/local-cluster.sh" down "$DIR/cluster" >/dev/null 2>&1 || true
    if [[ -n $USE_MFS ]]; then
        MFS_ROOT=$MFS_ROOT bash "$(dirname "$MFS_UP")/moosefs_down.sh" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT
umount -l "$MNT" 2>/dev/null || true
rm -rf "$DIR"
mkdir -p "$MNT" "$LOCAL"

echo "== /usr/include as a tarball" >&2
tar cf "$DIR/include.tar" -C /usr include
SOURCE=/usr/include

echo "== tessera: 1 metaserver, 3 chunkservers on one disk" >&2
bash "$HERE/deploy/local-cluster.sh" up "$DIR/cluster" --meta 1 --chunk 3 \
    --base-port 25500 --bin "$BIN" >&2
NO_COLOR=1 RUST_LOG=warn "$BIN" mount "$MNT" --config "$DIR/cluster/client.toml" \
    2> "$DIR/mount.log" >/dev/null &
MOUNT_PID=$!
for _ in $(seq 100); do
    grep -q " $MNT " /proc/self/mounts && break
    sleep 0.1
done
grep -q " $MNT " /proc/self/mounts || { echo "the mount did not appear; see $DIR/mount.log" >&2; exit 1; }

if [[ -f $MFS_UP ]] && command -v mfsmaster >/dev/null; then
    echo "== moosefs: 1 master, 3 chunkservers, goal 3" >&2
    USE_MFS=1
    MFS_ROOT=$MFS_ROOT MFS_GOAL=3 MFS_NCS=3 bash "$MFS_UP" >&2
else
    echo "== moosefs not installed: its column is left out" >&2
fi

measure() { # name dir -> $DIR/name.txt
    echo "== $1" >&2
    python3 "$HERE/bench/small_ops.py" "$2/bench" "$FILES" --workloads "$DIR/include.tar" "$SOURCE" \
        | tee "$DIR/$1.txt" >&2
}
measure local "$LOCAL"
measure tessera "$MNT"
if [[ -n $USE_MFS ]]; then
    measure moosefs "$MFS_ROOT/mnt"
fi

python3 - "$DIR" "$FILES" "$USE_MFS" <<'PY'
import sys
d, files, mfs = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
def load(name):
    out = {}
    for line in open(f"{d}/{name}.txt"):
        key, value, unit = line.split()
        out[key] = (float(value), unit)
    return out
local, tessera = load("local"), load("tessera")
moosefs = load("moosefs") if mfs else {}
labels = {
    "create": f"create {files} empty files",
    "stat": f"stat {files} files (cold)",
    "rename": f"rename {files} files",
    "unlink": f"unlink {files} files",
    "write_4k_files": f"write {files} files of 4 KiB",
    "read_4k_files_cold": f"read back {files} files of 4 KiB (cold)",
    "write_4k_fsync": "4 KiB write + fsync, new file each",
    "untar": "untar /usr/include",
    "diff": "diff -r against /usr/include",
    "git": "git init/add/commit/gc of the tree",
    "sqlite": "sqlite, 200 transactions of 50 inserts",
    "rm": "rm -rf of the tree",
}
head = "| workload | local disk | tessera |" + (" moosefs | tessera vs moosefs |" if mfs else "")
print(head)
print("|---|---:|---:|" + ("---:|---:|" if mfs else ""))
for key, label in labels.items():
    lv, unit = local[key]
    tv, _ = tessera[key]
    fmt = (lambda v: f"{v:,.0f}/s") if unit == "ops/s" else (lambda v: f"{v:.2f} s")
    row = f"| {label} | {fmt(lv)} | {fmt(tv)} |"
    if mfs:
        mv, _ = moosefs[key]
        # Above 1 is Tessera ahead: rates compare as t/m, times as m/t.
        ahead = tv / mv if unit == "ops/s" else mv / tv
        row += f" {fmt(mv)} | {ahead:.2f}x |"
    print(row)
PY
