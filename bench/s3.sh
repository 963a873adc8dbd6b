#!/usr/bin/env bash
# The S3 gateway against the local disk, in the same run (machines here are
# shared and noisy: compare the ratios). `tessera dev --s3` (one metaserver,
# three chunkservers, replicas:3, on this machine's disk) and boto3 clients,
# one per thread; the same workloads on a local directory. Prints a markdown
# table for docs/benchmarks.md.
#
#   bench/s3.sh [--quick] [--big-mib N] [--big16-mib N] [--small-count N]
#               [--dir DIR] [--bin PATH] [--port P] [--python PATH]
#   bench/s3.sh --workload versions [--quick] [--versions N]
#               [--object-mib N] [--overwrites N] [...]
#
# `--workload versions` measures what object versions cost instead
# (bench/s3_versions.py): 1,000 versions of a 64 MiB object made by
# CopyObject onto itself in a versioned bucket against the disk of one copy,
# restoring an old version by a copy with its versionId, and a small-object
# overwrite in a versioned bucket beside an unversioned one and the local
# disk.
#
# Large objects: one of --big-mib (1024) at concurrency 1 and 16 of
# --big16-mib (256) at concurrency 16, each a single PutObject and a single
# GetObject; small objects: --small-count (10000) of 4 KiB at both
# concurrencies. --quick is a smoke run (64 MiB, 16 x 8 MiB, 300 objects).
# Needs python3 with boto3: --python, else $TESSERA_PYTHON, else the venv
# that .ci/run makes ($HOME/.cache/tessera/venv), else python3 on PATH. Run
# as root so reads start from a cold page cache.
set -euo pipefail

DIR=/var/tmp/tessera-bench-s3
BIN=${TESSERA_BIN:-}
PORT=23700
PY=${TESSERA_PYTHON:-}
WORKLOAD=put-get
ARGS=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --quick) ARGS+=(--quick); shift ;;
        --big-mib|--big16-mib|--small-count) ARGS+=("$1" "$2"); shift 2 ;;
        --versions|--object-mib|--overwrites) ARGS+=("$1" "$2"); shift 2 ;;
        --workload) WORKLOAD=$2; shift 2 ;;
        --dir) DIR=$2; shift 2 ;;
        --bin) BIN=$2; shift 2 ;;
        --port) PORT=$2; shift 2 ;;
        --python) PY=$2; shift 2 ;;
        *) echo "usage: $0 [--workload put-get|versions] [--quick] [--big-mib N] [--big16-mib N] [--small-count N] [--versions N] [--object-mib N] [--overwrites N] [--dir DIR] [--bin PATH] [--port P] [--python PATH]" >&2; exit 2 ;;
    esac
done
HERE=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z $BIN ]]; then
    BIN=$HERE/target/release/tessera
fi
[[ -x $BIN ]] || { echo "no tessera binary at $BIN; run cargo build --release -p tessera" >&2; exit 1; }
if [[ -z $PY ]]; then
    if [[ -x $HOME/.cache/tessera/venv/bin/python ]]; then
        PY=$HOME/.cache/tessera/venv/bin/python
    else
        PY=python3
    fi
fi
"$PY" -c 'import boto3' 2>/dev/null || {
    echo "$PY has no boto3: pip install boto3, or run the venv step of .ci/run" >&2
    exit 1
}

DEV_PID=
cleanup() {
    if [[ -n $DEV_PID ]] && kill -0 "$DEV_PID" 2>/dev/null; then
        kill -INT "$DEV_PID" 2>/dev/null || true
        for _ in $(seq 300); do
            kill -0 "$DEV_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$DEV_PID" 2>/dev/null || true
        wait "$DEV_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
rm -rf "$DIR"
mkdir -p "$DIR"

echo "== tessera dev --s3 127.0.0.1:$PORT: 1 metaserver, 3 chunkservers (replicas:3) on one disk" >&2
NO_COLOR=1 RUST_LOG=warn "$BIN" dev --data "$DIR/data" --s3 "127.0.0.1:$PORT" \
    --meta-listen "127.0.0.1:$((PORT + 1))" --metrics-listen "127.0.0.1:$((PORT + 2))" \
    > "$DIR/dev.log" 2>&1 &
DEV_PID=$!
ready=
for _ in $(seq 600); do
    kill -0 "$DEV_PID" 2>/dev/null || break
    if [[ -s $DIR/data/s3-credentials ]] && (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        ready=1
        break
    fi
    sleep 0.1
done
if [[ -z $ready ]]; then
    echo "tessera dev did not serve S3 on 127.0.0.1:$PORT within 60 s:" >&2
    cat "$DIR/dev.log" >&2
    exit 1
fi

case $WORKLOAD in
    put-get) SCRIPT=("$HERE/bench/s3_bench.py") ;;
    versions) SCRIPT=("$HERE/bench/s3_versions.py" --data "$DIR/data") ;;
    *) echo "--workload takes put-get or versions" >&2; exit 2 ;;
esac
"$PY" "${SCRIPT[@]}" --endpoint "http://127.0.0.1:$PORT" \
    --credentials "$DIR/data/s3-credentials" --local "$DIR/local" ${ARGS[@]+"${ARGS[@]}"}
