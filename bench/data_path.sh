#!/usr/bin/env bash
# The bulk data path, every way in, next to the local disk measured in the
# same run (machines here are shared and noisy: compare the ratios), each
# with the CPU it cost per GiB moved. A cluster of separate processes on
# this machine's one disk (deploy/local-cluster.sh: one metaserver, six
# chunkservers so that ec:4+2 has its six), a `tessera mount` and a
# `tessera gateway`; directories (and buckets) /rep3 (replicas:3) and /ec42 (ec:4+2).
#
#   bench/data_path.sh [--size-mib N] [--runtime S] [--dir DIR] [--bin PATH]
#                      [--only seq,get,s3,rand] [--mfs MOUNTPOINT]
#
# Rows:
#   seq   fio sequential write (1 MiB blocks, fsync at end) and cold read of
#         SIZE_MIB through the mount, per policy; local: the same on a folder.
#   get   `tessera put` from the page cache and cold `tessera get` to
#         /dev/null; local: dd with conv=fsync and a cold dd read.
#   s3    `aws s3 cp` up and down, file to object and back to a file (its
#         default multipart settings); local: cp with a sync, and a cold cp
#         to another file.
#   rand  fio 4 KiB random read and write for RUNTIME seconds over a
#         SIZE_MIB file, at queue depth 1 (one psync job) and 16 (sixteen
#         psync jobs: FUSE serves each thread's call on its own), caches
#         dropped first; replicas:3. With --mfs, each also runs on that
#         MooseFS mount (the yardstick: ../shared/tools/moosefs_up.sh with
#         MFS_GOAL=3) in the same run, as rows of their own.
#
# CPU per GiB is the whole machine's busy time (user, system, irq and
# softirq from /proc/stat: the client, the daemons, the kernel and the
# benchmark tool itself) over the bytes moved, and in brackets the Tessera
# processes' own share (mount or client, gateway, metaserver, chunkservers).
# Random rows give CPU per GiB of 4 KiB operations too.
#
# Needs root (to mount, and to drop the page cache before reads), fio, and
# awscli (the venv .ci/test makes, or AWS_CLI=PATH) for the s3 rows.
set -euo pipefail

SIZE_MIB=2048
RUNTIME=15
DIR=/var/tmp/tessera-bench-data-path
BIN=${TESSERA_BIN:-}
ONLY=seq,get,s3,rand
MFS=
while [[ $# -gt 0 ]]; do
    case $1 in
        --size-mib) SIZE_MIB=$2; shift 2 ;;
        --mfs) MFS=$2; shift 2 ;;
        --runtime) RUNTIME=$2; shift 2 ;;
        --dir) DIR=$2; shift 2 ;;
        --bin) BIN=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        *) echo "usage: $0 [--size-mib N] [--runtime S] [--dir DIR] [--bin PATH] [--only seq,get,s3,rand] [--mfs MOUNTPOINT]" >&2; exit 2 ;;
    esac
done
HERE=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$HERE/target/release/tessera}
[[ -x $BIN ]] || { echo "no tessera binary at $BIN; run cargo build --release -p tessera" >&2; exit 1; }
command -v fio >/dev/null || { echo "fio is missing: apt-get install fio" >&2; exit 1; }
AWS=${AWS_CLI:-$HOME/.cache/tessera/venv/bin/aws}
if [[ ,$ONLY, == *,s3,* ]] && ! [[ -x $AWS ]]; then
    echo "no aws CLI at $AWS (set AWS_CLI, or run bash .ci/test once to make the venv)" >&2
    exit 1
fi
want() { [[ ,$ONLY, == *,$1,* ]]; }

MNT=$DIR/mnt
LOCAL=$DIR/local
PORT=23500
S3_PORT=23790
MOUNT_PID=
GATEWAY_PID=
cleanup() {
    for pid in $MOUNT_PID $GATEWAY_PID; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    umount -l "$MNT" 2>/dev/null || true
    bash "$HERE/deploy/local-cluster.sh" down "$DIR/cluster" >/dev/null 2>&1 || true
}
trap cleanup EXIT
umount -l "$MNT" 2>/dev/null || true
rm -rf "$DIR"
mkdir -p "$MNT" "$LOCAL"

drop_caches() {
    sync
    echo 3 > /proc/sys/vm/drop_caches
}

TICKS=$(getconf CLK_TCK)
# Busy CPU ticks of the whole machine, and of Tessera's processes.
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
tessera_ticks() {
    local total=0 pid
    for pid in $(pgrep -f -- "$DIR/" || true); do
        [[ -r /proc/$pid/stat ]] || continue
        total=$((total + $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

# CPU ticks of this shell's waited-for children: a `tessera put` or `get`
# has exited before its processes could be read from /proc.
children_ticks() { awk '{ sub(/^.*\) /, ""); print $14 + $15 }' "/proc/$1/stat"; }

# measure COMMAND...: runs the command, prints
# "seconds machine_cpu_s tessera_cpu_s" and keeps them for the row. When
# the command is Tessera's own client, its CPU counts as Tessera's.
measure() {
    local m0 t0 s0 s1 m1 t1 c0 c1 me=$BASHPID
    m0=$(machine_ticks); t0=$(tessera_ticks); c0=$(children_ticks "$me"); s0=$(date +%s.%N)
    "$@" >/dev/null || { echo "failed: $*" >&2; exit 1; }
    c1=$(children_ticks "$me"); s1=$(date +%s.%N); m1=$(machine_ticks); t1=$(tessera_ticks)
    if [[ $1 == "$BIN" ]]; then t1=$((t1 + c1 - c0)); fi
    awk -v a="$s0" -v b="$s1" -v m="$((m1 - m0))" -v t="$((t1 - t0))" -v hz="$TICKS" \
        'BEGIN { printf "%.3f %.2f %.2f\n", b - a, m / hz, t / hz }'
}

per_gib() { awk -v c="$1" -v b="$2" 'BEGIN { printf "%.2f", c * 1073741824 / b }'; }
mibps() { awk -v s="$1" -v b="$2" 'BEGIN { printf "%.0f", b / 1048576 / s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

ROWS=()
# row NAME BYTES "secs cpu tcpu" "local secs cpu tcpu"
row() {
    local name=$1 bytes=$2 s c t ls lc
    read -r s c t <<<"$3"
    read -r ls lc _ <<<"$4"
    local rate lrate
    rate=$(mibps "$s" "$bytes"); lrate=$(mibps "$ls" "$bytes")
    ROWS+=("| $name | $rate MiB/s | $lrate MiB/s | $(ratio "$rate" "$lrate") | $(per_gib "$c" "$bytes") ($(per_gib "$t" "$bytes")) | $(per_gib "$lc" "$bytes") |")
    echo "   $name: $rate MiB/s (local $lrate), CPU $(per_gib "$c" "$bytes") s/GiB" >&2
}

BYTES=$((SIZE_MIB << 20))
echo "== source: $SIZE_MIB MiB of random bytes" >&2
head -c "$BYTES" /dev/urandom > "$DIR/source"

echo "== cluster: 1 metaserver, 6 chunkservers on one disk; mount; gateway" >&2
bash "$HERE/deploy/local-cluster.sh" up "$DIR/cluster" --meta 1 --chunk 6 --bin "$BIN" --base-port "$PORT" >&2
export TESSERA_CONFIG=$DIR/cluster/client.toml
for p in rep3:replicas:3 ec42:ec:4+2; do
    "$BIN" mkdir "/${p%%:*}" >/dev/null
    "$BIN" policy set "/${p%%:*}" "${p#*:}" >/dev/null
done
NO_COLOR=1 RUST_LOG=warn "$BIN" mount "$MNT" --config "$TESSERA_CONFIG" 2> "$DIR/mount.log" >/dev/null &
MOUNT_PID=$!
for _ in $(seq 100); do
    grep -q " $MNT " /proc/self/mounts && break
    sleep 0.1
done
grep -q " $MNT " /proc/self/mounts || { cat "$DIR/mount.log" >&2; exit 1; }

if want s3; then
    {
        echo "listen = \"127.0.0.1:$S3_PORT\""
        echo "[client]"
        sed -e 's/^\[\(.*\)\]$/[client.\1]/' "$TESSERA_CONFIG"
    } > "$DIR/gateway.toml"
    NO_COLOR=1 "$BIN" gateway --config "$DIR/gateway.toml" --log-level warn > "$DIR/gateway.log" 2>&1 &
    GATEWAY_PID=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$S3_PORT") 2>/dev/null && break
        sleep 0.1
    done
    key=$("$BIN" admin key create --all-buckets --json --description bench \
        --config "$DIR/cluster/admin.toml")
    python3 - "$key" > "$DIR/s3-credentials" <<'EOF'
import json, sys
k = json.loads(sys.argv[1])
print("[default]")
print(f"aws_access_key_id = {k.get('access_key_id') or k.get('id')}")
print(f"aws_secret_access_key = {k.get('secret_access_key') or k.get('secret')}")
EOF
    export AWS_SHARED_CREDENTIALS_FILE=$DIR/s3-credentials AWS_DEFAULT_REGION=us-east-1 \
        AWS_CONFIG_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true
fi
s3() { "$AWS" --endpoint-url "http://127.0.0.1:$S3_PORT" s3 "$@" --only-show-errors; }

fio_seq() {
    fio --name=seq --filename="$1" --rw="$2" --bs=1M --size="${SIZE_MIB}M" --ioengine=psync \
        --numjobs=1 --output-format=json $3 --output="$DIR/fio.json"
}

if want seq; then
    echo "== sequential write and cold read of $SIZE_MIB MiB with fio" >&2
    drop_caches
    LW=$(measure fio_seq "$LOCAL/seq.dat" write --end_fsync=1)
    drop_caches
    LR=$(measure fio_seq "$LOCAL/seq.dat" read "")
    rm -f "$LOCAL/seq.dat"
    for p in rep3 ec42; do
        drop_caches
        W=$(measure fio_seq "$MNT/$p/seq.dat" write --end_fsync=1)
        drop_caches
        R=$(measure fio_seq "$MNT/$p/seq.dat" read "")
        rm -f "$MNT/$p/seq.dat"
        row "mount, $p: sequential write" "$BYTES" "$W" "$LW"
        row "mount, $p: sequential read (cold)" "$BYTES" "$R" "$LR"
    done
fi

if want get; then
    echo "== tessera put and get of $SIZE_MIB MiB" >&2
    drop_caches
    LW=$(measure dd if="$DIR/source" of="$LOCAL/dd.dat" bs=4M conv=fsync status=none)
    drop_caches
    LR=$(measure dd if="$LOCAL/dd.dat" of=/dev/null bs=4M status=none)
    rm -f "$LOCAL/dd.dat"
    for p in rep3 ec42; do
        cat "$DIR/source" > /dev/null
        W=$(measure "$BIN" put "$DIR/source" "/$p/file")
        drop_caches
        R=$(measure "$BIN" get "/$p/file" -)
        "$BIN" rm "/$p/file" >/dev/null
        row "tessera put, $p" "$BYTES" "$W" "$LW"
        row "tessera get, $p (cold)" "$BYTES" "$R" "$LR"
    done
fi

if want s3; then
    echo "== S3 PUT and GET of $SIZE_MIB MiB with aws s3 cp" >&2
    cp_sync() { cp "$1" "$2" && sync "$2"; }
    cat "$DIR/source" > /dev/null
    LW=$(measure cp_sync "$DIR/source" "$LOCAL/cp.dat")
    drop_caches
    LR=$(measure cp "$LOCAL/cp.dat" "$LOCAL/cp-back.dat")
    rm -f "$LOCAL/cp.dat" "$LOCAL/cp-back.dat"
    for p in rep3 ec42; do
        cat "$DIR/source" > /dev/null
        W=$(measure s3 cp "$DIR/source" "s3://$p/object")
        drop_caches
        R=$(measure s3 cp "s3://$p/object" "$LOCAL/s3-back.dat")
        cmp -s "$DIR/source" "$LOCAL/s3-back.dat" || { echo "S3 GET of $p returned other bytes" >&2; exit 1; }
        rm -f "$LOCAL/s3-back.dat"
        s3 rm "s3://$p/object"
        row "S3 PUT, $p" "$BYTES" "$W" "$LW"
        row "S3 GET, $p (cold)" "$BYTES" "$R" "$LR"
    done
fi

# fio_rand FILE RW JOBS: random 4 KiB I/O; prints "iops seconds cpu tcpu".
fio_rand() {
    local file=$1 rw=$2 jobs=$3 out m
    local extra=""
    [[ $rw == randwrite ]] && extra=--end_fsync=1
    drop_caches
    m=$(measure fio --name=rand --filename="$file" --rw="$rw" --bs=4k --size="${SIZE_MIB}M" \
        --ioengine=psync --numjobs="$jobs" --group_reporting --runtime="$RUNTIME" --time_based \
        $extra --output-format=json --output="$DIR/fio.json")
    out=$(python3 -c '
import json, sys
job = json.load(open(sys.argv[1]))["jobs"][0]
side = job["write"] if sys.argv[2] == "randwrite" else job["read"]
print("%.0f %d" % (side["iops"], side["io_bytes"]))' "$DIR/fio.json" "$rw")
    echo "$out $m"
}

if want rand; then
    echo "== 4 KiB random I/O, $RUNTIME s each, over a $SIZE_MIB MiB file" >&2
    cp "$DIR/source" "$LOCAL/rand.dat"
    cp "$DIR/source" "$MNT/rep3/rand.dat"
    if [[ -n $MFS ]]; then cp "$DIR/source" "$MFS/rand.dat"; fi
    sync
    for rw in randread randwrite; do
        for jobs in 1 16; do
            read -r liops lbytes _ lc _ < <(fio_rand "$LOCAL/rand.dat" "$rw" "$jobs")
            read -r iops bytes _ c t < <(fio_rand "$MNT/rep3/rand.dat" "$rw" "$jobs")
            ROWS+=("| mount, rep3: 4 KiB $rw, qd $jobs | $iops IOPS | $liops IOPS | $(ratio "$iops" "$liops") | $(per_gib "$c" "$bytes") ($(per_gib "$t" "$bytes")) | $(per_gib "$lc" "$lbytes") |")
            echo "   4 KiB $rw qd $jobs: $iops IOPS (local $liops)" >&2
            if [[ -n $MFS ]]; then
                read -r miops mbytes _ mc _ < <(fio_rand "$MFS/rand.dat" "$rw" "$jobs")
                ROWS+=("| MooseFS mount, goal 3: 4 KiB $rw, qd $jobs | $miops IOPS | $liops IOPS | $(ratio "$miops" "$liops") | $(per_gib "$mc" "$mbytes") | $(per_gib "$lc" "$lbytes") |")
                echo "   MooseFS 4 KiB $rw qd $jobs: $miops IOPS" >&2
            fi
        done
    done
    rm -f "$LOCAL/rand.dat" "$MNT/rep3/rand.dat"
    if [[ -n $MFS ]]; then rm -f "$MFS/rand.dat"; fi
fi

echo "| workload | Tessera | local disk | ratio | CPU s/GiB, machine (Tessera's processes) | local CPU s/GiB |"
echo "|---|---:|---:|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
