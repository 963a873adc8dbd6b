#!/usr/bin/env bash
# The FUSE mount against the local disk, in the same run (machines here are
# shared and noisy: compare the ratios). A cluster of one metaserver and
# three chunkservers on this machine's disk, replicas:3, mounted with
# `tessera mount`; the same workloads on a local directory. Prints a
# markdown table for docs/benchmarks.md.
#
#   bench/fuse.sh [--size-mib N] [--files N] [--runtime S] [--dir DIR] [--bin PATH]
#
# Needs fio and python3, and root (to mount with allow_other and to drop
# the page cache before each read, so reads come from the disk or the
# cluster rather than memory).
set -euo pipefail

SIZE_MIB=2048
FILES=10000
RUNTIME=20
DIR=/var/tmp/tessera-bench-fuse
BIN=${TESSERA_BIN:-}
while [[ $# -gt 0 ]]; do
    case $1 in
        --size-mib) SIZE_MIB=$2; shift 2 ;;
        --files) FILES=$2; shift 2 ;;
        --runtime) RUNTIME=$2; shift 2 ;;
        --dir) DIR=$2; shift 2 ;;
        --bin) BIN=$2; shift 2 ;;
        *) echo "usage: $0 [--size-mib N] [--files N] [--runtime S] [--dir DIR] [--bin PATH]" >&2; exit 2 ;;
    esac
done
HERE=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z $BIN ]]; then
    BIN=$HERE/target/release/tessera
fi
[[ -x $BIN ]] || { echo "no tessera binary at $BIN; run cargo build --release -p tessera" >&2; exit 1; }
command -v fio >/dev/null || { echo "fio is missing: apt-get install fio" >&2; exit 1; }

MNT=$DIR/mnt
LOCAL=$DIR/local
MOUNT_PID=
cleanup() {
    if [[ -n $MOUNT_PID ]]; then
        kill -TERM "$MOUNT_PID" 2>/dev/null || true
        wait "$MOUNT_PID" 2>/dev/null || true
    fi
    umount -l "$MNT" 2>/dev/null || true
    bash "$HERE/deploy/local-cluster.sh" down "$DIR/cluster" >/dev/null 2>&1 || true
}
trap cleanup EXIT
umount -l "$MNT" 2>/dev/null || true
rm -rf "$DIR"
mkdir -p "$MNT" "$LOCAL"

echo "== cluster: 1 metaserver, 3 chunkservers (replicas:3) on one disk" >&2
bash "$HERE/deploy/local-cluster.sh" up "$DIR/cluster" --meta 1 --chunk 3 \
    --base-port 23500 --bin "$BIN" >&2
NO_COLOR=1 RUST_LOG=warn "$BIN" mount "$MNT" --config "$DIR/cluster/client.toml" \
    2> "$DIR/mount.log" >/dev/null &
MOUNT_PID=$!
for _ in $(seq 100); do
    grep -q " $MNT " /proc/self/mounts && break
    sleep 0.1
done
grep -q " $MNT " /proc/self/mounts || { cat "$DIR/mount.log" >&2; exit 1; }

drop_caches() {
    sync
    echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
}

# fio's figure for one job: MiB/s for sequential runs, IOPS for random ones.
fio_run() {
    local dir=$1 name=$2 rw=$3 bs=$4 extra=$5
    fio --name="$name" --directory="$dir" --filename="$name.dat" --rw="$rw" --bs="$bs" \
        --size="${SIZE_MIB}M" --ioengine=psync --numjobs=1 --output-format=json $extra \
        > "$DIR/$name.$(basename "$dir").json"
    python3 - "$DIR/$name.$(basename "$dir").json" "$rw" <<'EOF'
import json, sys
job = json.load(open(sys.argv[1]))["jobs"][0]
side = job["write"] if "write" in sys.argv[2] else job["read"]
if sys.argv[2].startswith("rand"):
    print(f"{side['iops']:.0f}")
else:
    print(f"{side['bw'] / 1024:.0f}")
EOF
}

# Operations per second of a file workload written in Python (one process,
# one file at a time, as a build or an unpack would).
files_run() {
    python3 - "$1" "$2" "$FILES" <<'EOF'
import os, sys, time
root, what, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
d = os.path.join(root, "files-" + what)
os.makedirs(d, exist_ok=True)
names = [os.path.join(d, f"f{i:05}") for i in range(n)]
data = os.urandom(4096)
t = time.monotonic()
if what == "create":
    for p in names:
        os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644))
elif what == "stat":
    for p in names:
        os.stat(p)
elif what == "delete":
    for p in names:
        os.unlink(p)
elif what == "write4k":
    for p in names:
        fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        os.write(fd, data)
        os.close(fd)
elif what == "read4k":
    for p in names:
        with open(p, "rb") as f:
            assert len(f.read()) == 4096
print(f"{n / (time.monotonic() - t):.0f}")
EOF
}

declare -A R
for target in "$LOCAL" "$MNT"; do
    side=$(basename "$target")
    echo "== $side: fio sequential write, $SIZE_MIB MiB in 1 MiB blocks" >&2
    R[seqw,$side]=$(fio_run "$target" seq write 1M "--end_fsync=1")
    drop_caches
    echo "== $side: fio sequential read" >&2
    R[seqr,$side]=$(fio_run "$target" seq read 1M "")
    drop_caches
    echo "== $side: fio 4 KiB random read, $RUNTIME s" >&2
    R[randr,$side]=$(fio_run "$target" seq randread 4k "--runtime=$RUNTIME --time_based")
    echo "== $side: fio 4 KiB random write, $RUNTIME s" >&2
    R[randw,$side]=$(fio_run "$target" seq randwrite 4k "--runtime=$RUNTIME --time_based --end_fsync=1")
    rm -f "$target/seq.dat"
    for what in create stat delete; do
        echo "== $side: $what $FILES files" >&2
        R[$what,$side]=$(files_run "$target" "$what" | tail -1)
        [[ $what == create ]] && mv "$target/files-create" "$target/files-stat" && mkdir -p "$target/files-create"
        [[ $what == stat ]] && mv "$target/files-stat" "$target/files-delete"
    done
    echo "== $side: write and read back $FILES files of 4 KiB" >&2
    R[write4k,$side]=$(files_run "$target" write4k | tail -1)
    mv "$target/files-write4k" "$target/files-read4k"
    drop_caches
    R[read4k,$side]=$(files_run "$target" read4k | tail -1)
done

ratio() { python3 -c "print(f'{$1 / max($2, 1):.2f}')"; }
echo
echo "| workload | local disk | mount | mount / local |"
echo "|---|---|---|---|"
row() { echo "| $1 | ${R[$2,local]} $3 | ${R[$2,mnt]} $3 | $(ratio "${R[$2,mnt]}" "${R[$2,local]}") |"; }
row "sequential write, 1 MiB blocks, $SIZE_MIB MiB (fsync at end)" seqw MiB/s
row "sequential read, 1 MiB blocks (cold cache)" seqr MiB/s
row "4 KiB random read, ${RUNTIME} s" randr IOPS
row "4 KiB random write, ${RUNTIME} s (fsync at end)" randw IOPS
row "create $FILES empty files" create ops/s
row "stat $FILES files" stat ops/s
row "delete $FILES files" delete ops/s
row "write $FILES files of 4 KiB" write4k files/s
row "read back $FILES files of 4 KiB (cold cache)" read4k files/s
