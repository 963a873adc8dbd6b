#!/usr/bin/env bash
# What versions cost: 1,000 versions of a 64 MiB object made by CopyObject
# onto itself in a versioned bucket (the disk they take against one copy),
# restoring an old version by a copy with its versionId, and the time of a
# small-object overwrite in a versioned bucket beside an unversioned one
# and beside the local disk, in the same run. `tessera dev --s3` (one
# metaserver, three chunkservers, replicas:3, on this machine's disk) and
# boto3. Prints a markdown table for docs/benchmarks.md.
#
#   bench/s3_versions.sh [--quick] [--versions N] [--object-mib N]
#                        [--overwrites N] [--dir DIR] [--bin PATH]
#                        [--port P] [--python PATH]
set -euo pipefail

DIR=/var/tmp/tessera-bench-s3-versions
BIN=${TESSERA_BIN:-}
PORT=23800
PY=${TESSERA_PYTHON:-}
ARGS=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --quick) ARGS+=(--quick); shift ;;
        --versions|--object-mib|--overwrites) ARGS+=("$1" "$2"); shift 2 ;;
        --dir) DIR=$2; shift 2 ;;
        --bin) BIN=$2; shift 2 ;;
        --port) PORT=$2; shift 2 ;;
        --python) PY=$2; shift 2 ;;
        *) echo "usage: $0 [--quick] [--versions N] [--object-mib N] [--overwrites N] [--dir DIR] [--bin PATH] [--port P] [--python PATH]" >&2; exit 2 ;;
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

"$PY" "$HERE/bench/s3_versions.py" --endpoint "http://127.0.0.1:$PORT" --data "$DIR/data" \
    --credentials "$DIR/data/s3-credentials" --local "$DIR/local" ${ARGS[@]+"${ARGS[@]}"}
