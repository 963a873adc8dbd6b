#!/usr/bin/env bash
# A Tessera cluster of separate processes on loopback, in one folder.
#
#   deploy/local-cluster.sh up DIR [--meta N] [--chunk N] [--bin PATH]
#                                  [--base-port P] [--timeout SECONDS]
#                                  [--meta-toml TOML] [--chunk-toml TOML]
#                                  [--disk-cap-mib N] [--sync-interval-ms N]
#   deploy/local-cluster.sh down DIR
#   deploy/local-cluster.sh status DIR
#
# See docs/local-cluster.md for what it lays out and why.
set -euo pipefail

PROG=${0##*/}

usage() {
    cat <<EOF
usage:
  $PROG up DIR [--meta N] [--chunk N] [--bin PATH] [--base-port P] [--timeout SECONDS]
               [--meta-toml TOML] [--chunk-toml TOML] [--disk-cap-mib N]
               [--sync-interval-ms N]
      Start N metaservers (default 3) and N chunkservers (default 4) as separate
      processes on 127.0.0.1, each with its own config, data and log under DIR,
      and return once the cluster has a leader, every metaserver is a voter and
      every chunkserver is up. On a DIR from an earlier run, restart the same
      cluster with its data (the layout recorded in DIR/cluster.env is reused).
      Ports: metaservers P.., chunkservers P+100.., metrics P+2000.. and
      P+2100.. (P defaults to 7500). --timeout defaults to 60.
      Binary: --bin, else \$TESSERA_BIN, else tessera on PATH, else
      ./target/release/tessera, else ~/.cache/tessera/target/{release,debug}/tessera.
      --meta-toml and --chunk-toml append TOML tables (for example
      \$'[repair]\ndown_after_s = 5') to the configurations the first run writes;
      a [scrub] table there replaces the chunkservers' default one.
      --disk-cap-mib caps what each chunkserver's disk may hold (they all share
      one file system here), so disk use differs between them as it would on
      disks of their own.
      --sync-interval-ms sets the chunkservers' sync_interval_ms (how long a
      sealed piece may wait for its fsync; 0 fsyncs before acknowledging).
  $PROG down DIR
      Stop exactly the processes recorded in DIR/pids: SIGTERM, up to 10 s, then
      SIGKILL. Data stays; \`up DIR\` brings the same cluster back.
  $PROG status DIR
      Show which recorded processes are alive (exit 1 if any is not).
EOF
}

die() {
    echo "$PROG: $*" >&2
    exit 1
}

# ---------------------------------------------------------------- helpers

# TOML basic string.
toml_str() {
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    printf '"%s"' "$s"
}

# The pid is alive and still the process we started (its command line names
# our config file), so a reused pid is never signalled.
is_ours() {
    local pid=$1 config=$2 args
    args=$(ps -ww -o args= -p "$pid" 2>/dev/null) || return 1
    [[ $args == *"--config $config"* ]]
}

# Reads DIR/pids into the arrays P_NAME and P_PID.
read_pids() {
    P_NAME=() P_PID=()
    [[ -f $DIR/pids ]] || return 0
    local name pid
    while read -r name pid; do
        [[ -n ${name:-} && ${pid:-} =~ ^[0-9]+$ ]] || continue
        P_NAME+=("$name") P_PID+=("$pid")
    done <"$DIR/pids"
}

# meta-1 -> DIR/meta-1/meta.toml, chunk-2 -> DIR/chunk-2/chunk.toml
config_of() {
    echo "$DIR/$1/${1%%-*}.toml"
}

# Stops the recorded processes that are still ours; forgets DIR/pids.
stop_recorded() {
    read_pids
    local i pid name config live=() live_name=()
    # Chunkservers first, so they do not spend the shutdown re-registering.
    for kind in chunk meta; do
        for i in "${!P_PID[@]}"; do
            name=${P_NAME[$i]} pid=${P_PID[$i]}
            [[ $name == "$kind"-* ]] || continue
            config=$(config_of "$name")
            if is_ours "$pid" "$config"; then
                kill -TERM "$pid" 2>/dev/null || true
                live+=("$pid") live_name+=("$name")
            else
                echo "  $name (pid $pid) was not running"
            fi
        done
    done
    local deadline=$((SECONDS + 10)) remaining
    while :; do
        remaining=()
        for i in "${!live[@]}"; do
            is_ours "${live[$i]}" "$(config_of "${live_name[$i]}")" && remaining+=("$i")
        done
        ((${#remaining[@]} == 0)) && break
        if ((SECONDS >= deadline)); then
            for i in "${remaining[@]}"; do
                echo "  ${live_name[$i]} (pid ${live[$i]}) ignored SIGTERM for 10 s; SIGKILL"
                kill -KILL "${live[$i]}" 2>/dev/null || true
            done
            sleep 0.2
            break
        fi
        sleep 0.2
    done
    for i in "${!live[@]}"; do
        echo "  stopped ${live_name[$i]} (pid ${live[$i]})"
        # Reap it if it is our own child (a failed `up`); harmless otherwise.
        wait "${live[$i]}" 2>/dev/null || true
    done
    rm -f "$DIR/pids"
}

log_tails() {
    local name
    for name in "${NAMES[@]}"; do
        [[ -f $DIR/$name/log ]] || continue
        echo "----- $DIR/$name/log (last 15 lines) -----" >&2
        tail -n 15 "$DIR/$name/log" >&2
    done
}

resolve_bin() {
    local candidate
    if [[ -n ${BIN_FLAG:-} ]]; then
        candidate=$BIN_FLAG
    elif [[ -n ${TESSERA_BIN:-} ]]; then
        candidate=$TESSERA_BIN
    elif candidate=$(command -v tessera 2>/dev/null); then
        :
    else
        candidate=
        for c in ./target/release/tessera \
            "$HOME/.cache/tessera/target/release/tessera" \
            "$HOME/.cache/tessera/target/debug/tessera"; do
            if [[ -x $c ]]; then candidate=$c; break; fi
        done
        [[ -n $candidate ]] || die "no tessera binary: pass --bin PATH or set TESSERA_BIN (build one with: cargo build --release -p tessera)"
    fi
    [[ -x $candidate && -f $candidate ]] || die "$candidate is not an executable file"
    BIN=$(realpath "$candidate")
}

# ---------------------------------------------------------------- layout

meta_addr() { echo "127.0.0.1:$((BASE_PORT + $1 - 1))"; }
chunk_addr() { echo "127.0.0.1:$((BASE_PORT + 100 + $1 - 1))"; }
meta_metrics() { echo "127.0.0.1:$((BASE_PORT + 2000 + $1 - 1))"; }
chunk_metrics() { echo "127.0.0.1:$((BASE_PORT + 2100 + $1 - 1))"; }

tls_section() {
    cat <<EOF
[tls]
ca = $(toml_str "$DIR/ca/ca.crt")
cert = $(toml_str "$DIR/ca/$1.crt")
key = $(toml_str "$DIR/ca/$1.key")
EOF
}

meta_list() {
    local i out=
    for ((i = 1; i <= META; i++)); do
        out+="${out:+, }\"$(meta_addr "$i")\""
    done
    echo "[$out]"
}

# Client configuration (client.toml with a client certificate; admin.toml
# with a metaserver certificate, which membership changes require).
write_client_config() {
    local path=$1 cert=$2
    [[ -f $path ]] && return 0
    {
        echo "# Written by deploy/local-cluster.sh."
        echo "meta = $(meta_list)"
        echo
        tls_section "$cert"
    } >"$path"
}

write_meta_config() {
    local i=$1 name=meta-$1 path
    path=$(config_of "$name")
    [[ -f $path ]] && return 0
    local replicas=$((CHUNK < 3 ? CHUNK : 3))
    cat >"$path" <<EOF
# Written by deploy/local-cluster.sh; kept across restarts, edit freely
# (keys as in deploy/meta.example.toml).
name = "$name"
node_id = $i
listen = "$(meta_addr "$i")"
metrics_listen = "$(meta_metrics "$i")"
data_dir = $(toml_str "$DIR/$name/data")
token_key = $(toml_str "$DIR/ca/token.key")
default_policy = "replicas:$replicas"
chunk_heartbeat_interval_ms = 1000

$(tls_section "$name")
${META_TOML:+
# From --meta-toml.
$META_TOML}
EOF
}

write_chunk_config() {
    local i=$1 name=chunk-$1 path
    path=$(config_of "$name")
    [[ -f $path ]] && return 0
    cat >"$path" <<EOF
# Written by deploy/local-cluster.sh; kept across restarts, edit freely
# (keys as in deploy/chunk.example.toml).
name = "$name"
listen = "$(chunk_addr "$i")"
metrics_listen = "$(chunk_metrics "$i")"
token_key = $(toml_str "$DIR/ca/token.key")
meta = $(meta_list)
heartbeat_interval_ms = 1000
${SYNC_INTERVAL_MS:+sync_interval_ms = $SYNC_INTERVAL_MS}

$(tls_section "$name")

[[disks]]
path = $(toml_str "$DIR/$name/disk")
reserve_bytes = 268435456
${DISK_CAP_MIB:+capacity_bytes = $((DISK_CAP_MIB * 1048576))}

$(default_scrub)
${CHUNK_TOML:+
# From --chunk-toml.
$CHUNK_TOML}
EOF
}

# Every chunkserver shares one disk here; keep verification in the
# background, unless --chunk-toml brings its own [scrub].
default_scrub() {
    [[ $CHUNK_TOML == *"[scrub]"* ]] && return 0
    printf '[scrub]\nrate_mb_per_s = 4.0\n'
}

# Starts one daemon detached (own session: no SIGHUP when the terminal goes,
# no SIGINT from a Ctrl-C aimed at this script) and records its pid.
start_daemon() {
    local name=$1
    shift
    local log=$DIR/$name/log
    echo "=== $(date '+%Y-%m-%d %H:%M:%S') $PROG: $BIN $*" >>"$log"
    # setsid execs in place (we are not a process group leader), so $! is
    # the daemon itself. fd 9 is the lock on DIR; the daemon must not keep it.
    # NO_COLOR: the daemons colour their logs even when writing to a file.
    NO_COLOR=1 setsid "$BIN" "$@" </dev/null >>"$log" 2>&1 9>&- &
    local pid=$!
    echo "$name $pid" >>"$DIR/pids"
    STARTED_NAME+=("$name") STARTED_PID+=("$pid")
    echo "  started $name (pid $pid)"
}

# Fails (with log tails) if a process we started has exited.
check_started_alive() {
    local i
    for i in "${!STARTED_PID[@]}"; do
        if ! is_ours "${STARTED_PID[$i]}" "$(config_of "${STARTED_NAME[$i]}")"; then
            fail "${STARTED_NAME[$i]} (pid ${STARTED_PID[$i]}) exited during start-up"
        fi
    done
}

fail() {
    echo "$PROG: $*" >&2
    log_tails
    exit 1
}

# Runs `tessera admin status --json` and reads it into ST_LEADER (a
# metaserver id or "none"), ST_ROLE[id] (leader, follower or learner) and
# ST_CHUNK[name] (up, suspect, down, ...). Returns 1 when no metaserver
# answered; ST_OUT then holds the error. The JSON is read with python3 (no
# text table is parsed, so the table's layout can change freely).
declare -A ST_ROLE=() ST_CHUNK=()
ST_OUT=
query_status() {
    ST_LEADER=none
    ST_ROLE=()
    ST_CHUNK=()
    if ! command -v python3 >/dev/null; then
        ST_OUT="python3 is needed to read \`tessera admin status --json\`; install it (apt-get install python3)"
        return 1
    fi
    if ! ST_OUT=$(timeout 20 "$BIN" admin status --json --config "$DIR/client.toml" 2>"$DIR/.status.err"); then
        ST_OUT=$(tail -n 5 "$DIR/.status.err")
        return 1
    fi
    local kind key value
    while read -r kind key value; do
        case $kind in
        leader) ST_LEADER=$key ;;
        meta) ST_ROLE[$key]=$value ;;
        chunk) ST_CHUNK[$key]=$value ;;
        esac
    done < <(python3 -c '
import json, sys
s = json.load(sys.stdin)
print("leader", s["leader"] if s.get("leader") is not None else "none")
for m in s.get("members", []):
    print("meta", m["node"], m["role"])
for c in s.get("chunkservers", []):
    print("chunk", c["name"], c["state"])
' <<<"$ST_OUT" 2>"$DIR/.status.err" || true)
    return 0
}

# DIR holds nothing but our lock file.
dir_is_empty() {
    local entry
    for entry in "$DIR"/* "$DIR"/.*; do
        case ${entry##*/} in
        . | .. | .lock) ;;
        *) [[ -e $entry ]] && return 1 ;;
        esac
    done
    return 0
}

# A failed or interrupted `up` stops whatever it started.
UP_DONE=1
on_up_exit() {
    local rc=$?
    if ((!UP_DONE)); then
        if ((rc >= 128)); then
            echo "$PROG: up interrupted; stopping what it started (logs stay in $DIR)" >&2
        else
            echo "$PROG: up failed; stopping what it started (logs stay in $DIR)" >&2
        fi
        stop_recorded >&2
    fi
    exit "$rc"
}

# ---------------------------------------------------------------- commands

cmd_up() {
    local meta_flag='' chunk_flag='' base_flag=''
    BIN_FLAG='' TIMEOUT=60 META_TOML='' CHUNK_TOML='' DISK_CAP_MIB='' SYNC_INTERVAL_MS=''

    while (($#)); do
        case $1 in
        --meta) meta_flag=${2:-}; shift 2 || die "--meta needs a number" ;;
        --chunk) chunk_flag=${2:-}; shift 2 || die "--chunk needs a number" ;;
        --bin) BIN_FLAG=${2:-}; shift 2 || die "--bin needs a path" ;;
        --base-port) base_flag=${2:-}; shift 2 || die "--base-port needs a port" ;;
        --timeout) TIMEOUT=${2:-}; shift 2 || die "--timeout needs seconds" ;;
        --meta-toml) META_TOML=${2:-}; shift 2 || die "--meta-toml needs TOML" ;;
        --chunk-toml) CHUNK_TOML=${2:-}; shift 2 || die "--chunk-toml needs TOML" ;;
        --disk-cap-mib) DISK_CAP_MIB=${2:-}; shift 2 || die "--disk-cap-mib needs a number" ;;
        --sync-interval-ms) SYNC_INTERVAL_MS=${2:-}; shift 2 || die "--sync-interval-ms needs a number" ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
        esac
    done
    local v
    for v in "$meta_flag" "$chunk_flag"; do
        [[ -z $v || ($v =~ ^[0-9]+$ && $v -ge 1 && $v -le 100) ]] || die "--meta and --chunk take 1 to 100, not $v"
    done
    [[ -z $base_flag || ($base_flag =~ ^[0-9]+$ && $base_flag -ge 1024 && $base_flag -le 63000) ]] ||
        die "--base-port takes 1024 to 63000 (it uses P up to P+2199), not $base_flag"
    [[ $TIMEOUT =~ ^[0-9]+$ && $TIMEOUT -ge 1 ]] || die "--timeout takes whole seconds, not $TIMEOUT"
    [[ -z $SYNC_INTERVAL_MS || $SYNC_INTERVAL_MS =~ ^[0-9]+$ ]] || die "--sync-interval-ms takes milliseconds, not $SYNC_INTERVAL_MS"
    [[ -z $DISK_CAP_MIB || $DISK_CAP_MIB =~ ^[1-9][0-9]*$ ]] || die "--disk-cap-mib takes MiB, not $DISK_CAP_MIB"
    resolve_bin

    mkdir -p "$DIR"
    DIR=$(realpath "$DIR")
    # One `up` or `down` at a time per folder.
    exec 9>"$DIR/.lock"
    flock -n 9 || die "another $PROG is working on $DIR"

    read_pids
    local running=() i
    for i in "${!P_PID[@]}"; do
        is_ours "${P_PID[$i]}" "$(config_of "${P_NAME[$i]}")" && running+=("${P_NAME[$i]} (pid ${P_PID[$i]})")
    done
    if ((${#running[@]})); then
        die "the cluster in $DIR is already running: ${running[*]}
stop it first with: $0 down $DIR"
    fi

    # The layout is fixed by the first run: the metaserver addresses are in
    # the Raft membership and the chunkserver names in the namespace.
    if [[ -f $DIR/cluster.env ]]; then
        local key value
        META='' CHUNK='' BASE_PORT=''
        while IFS='=' read -r key value; do
            case $key in
            META) META=$value ;;
            CHUNK) CHUNK=$value ;;
            BASE_PORT) BASE_PORT=$value ;;
            esac
        done <"$DIR/cluster.env"
        [[ $META =~ ^[0-9]+$ && $CHUNK =~ ^[0-9]+$ && $BASE_PORT =~ ^[0-9]+$ ]] ||
            die "$DIR/cluster.env is damaged; it should hold META=, CHUNK= and BASE_PORT= lines"
        [[ -z $meta_flag || $meta_flag == "$META" ]] || die "$DIR was created with --meta $META; changing it is not supported (remove $DIR for a new cluster)"
        [[ -z $chunk_flag || $chunk_flag == "$CHUNK" ]] || die "$DIR was created with --chunk $CHUNK; changing it is not supported (remove $DIR for a new cluster)"
        [[ -z $base_flag || $base_flag == "$BASE_PORT" ]] || die "$DIR was created with --base-port $BASE_PORT; the addresses are recorded in the Raft membership (remove $DIR for a new cluster)"
    elif dir_is_empty; then
        META=${meta_flag:-3} CHUNK=${chunk_flag:-4} BASE_PORT=${base_flag:-7500}
        printf 'META=%s\nCHUNK=%s\nBASE_PORT=%s\n' "$META" "$CHUNK" "$BASE_PORT" >"$DIR/cluster.env"
    else
        die "$DIR is not empty and holds no cluster.env: not a folder of $PROG (pick an empty or new folder)"
    fi

    NAMES=()
    for ((i = 1; i <= META; i++)); do NAMES+=("meta-$i"); done
    for ((i = 1; i <= CHUNK; i++)); do NAMES+=("chunk-$i"); done

    # The metaserver group is created once, by `meta init` on meta-1; after
    # that every member restarts from its data folder with plain `meta`
    # (membership and namespace are in RocksDB). DIR/meta-1/group-formed marks
    # that a leader was seen, rather than meta-1/data existing: the metaserver
    # creates its RocksDB before it binds its port, so a run that failed on a
    # busy port leaves data that was never initialized.
    local bootstrap=1
    [[ -f $DIR/meta-1/group-formed ]] && bootstrap=0
    if ((!bootstrap && META == 1)) && [[ ! -e $DIR/meta-1/data/CURRENT ]]; then
        die "$DIR/meta-1/data is gone and it was the only metaserver: the namespace is lost (remove $DIR to start over)"
    fi

    # PKI: the CA once, then whatever certificate is missing.
    if [[ ! -f $DIR/ca/ca.crt ]]; then
        [[ -f $DIR/ca/ca.key ]] && die "$DIR/ca holds a key but no ca.crt: an interrupted \`ca init\`; remove $DIR/ca (no node can be using it yet)"
        "$BIN" ca init --dir "$DIR/ca" >/dev/null
    fi
    local name role
    for name in "${NAMES[@]}" client admin; do
        case $name in
        meta-* | admin) role=meta ;;
        chunk-*) role=chunk ;;
        client) role=client ;;
        esac
        [[ -f $DIR/ca/$name.crt ]] || "$BIN" ca issue --role "$role" --name "$name" --dir "$DIR/ca" >/dev/null
    done

    for ((i = 1; i <= META; i++)); do
        mkdir -p "$DIR/meta-$i"
        write_meta_config "$i"
    done
    for ((i = 1; i <= CHUNK; i++)); do
        mkdir -p "$DIR/chunk-$i/disk"
        write_chunk_config "$i"
    done
    write_client_config "$DIR/client.toml" client
    write_client_config "$DIR/admin.toml" admin

    # From here on, a failure or Ctrl-C stops whatever this run started.
    STARTED_NAME=() STARTED_PID=()
    UP_DONE=0
    trap on_up_exit EXIT
    trap 'exit 130' INT TERM
    : >"$DIR/pids"

    echo "starting $META metaserver(s) and $CHUNK chunkserver(s) in $DIR"
    if ((bootstrap)); then
        start_daemon meta-1 meta init --config "$(config_of meta-1)"
    else
        start_daemon meta-1 meta --config "$(config_of meta-1)"
    fi
    for ((i = 2; i <= META; i++)); do
        start_daemon "meta-$i" meta --config "$(config_of "meta-$i")"
    done

    local deadline=$((SECONDS + TIMEOUT))
    until query_status && [[ $ST_LEADER != none ]]; do
        check_started_alive
        ((SECONDS < deadline)) || fail "no metaserver leader after ${TIMEOUT}s; last status:
${ST_OUT}"
        sleep 0.5
    done
    echo "  leader: metaserver $ST_LEADER"
    [[ -f $DIR/meta-1/group-formed ]] || date '+%Y-%m-%d %H:%M:%S' >"$DIR/meta-1/group-formed"

    # Members the group does not list as voters yet: new ones, or ones a
    # previous interrupted run added only as learners.
    for ((i = 2; i <= META; i++)); do
        role=${ST_ROLE[$i]:-}
        [[ $role == leader || $role == follower ]] && continue
        echo "  adding meta-$i to the group"
        "$BIN" admin member add --config "$DIR/admin.toml" --node "$i" --address "$(meta_addr "$i")" >/dev/null ||
            fail "could not add meta-$i to the metaserver group"
    done

    for ((i = 1; i <= CHUNK; i++)); do
        start_daemon "chunk-$i" chunk --config "$(config_of "chunk-$i")"
    done

    local last_progress='' progress voters up ready
    while :; do
        check_started_alive
        ready=0
        if query_status; then
            voters=0 up=0
            for ((i = 1; i <= META; i++)); do
                [[ ${ST_ROLE[$i]:-} == leader || ${ST_ROLE[$i]:-} == follower ]] && voters=$((voters + 1))
            done
            for ((i = 1; i <= CHUNK; i++)); do
                [[ ${ST_CHUNK[chunk-$i]:-} == up ]] && up=$((up + 1))
            done
            progress="leader $ST_LEADER, voters $voters/$META, chunkservers up $up/$CHUNK"
            [[ $ST_LEADER != none ]] && ((voters == META && up == CHUNK)) && ready=1
        else
            progress="no metaserver answers"
        fi
        if [[ $progress != "$last_progress" ]]; then
            echo "  $progress"
            last_progress=$progress
        fi
        ((ready)) && break
        ((SECONDS < deadline)) || fail "the cluster was not ready after ${TIMEOUT}s ($progress); last status:
${ST_OUT}"
        sleep 0.5
    done
    UP_DONE=1
    trap - EXIT INT TERM

    local show_bin=$BIN
    [[ $(command -v tessera 2>/dev/null || true) == "$BIN" ]] && show_bin=tessera
    echo
    echo "Tessera local cluster is up in $DIR ($BIN)"
    for ((i = 1; i <= META; i++)); do
        printf '  %-8s %-16s pid %-8s metrics http://%s/metrics  log %s\n' "meta-$i" "$(meta_addr "$i")" \
            "${STARTED_PID[$((i - 1))]}" "$(meta_metrics "$i")" "$DIR/meta-$i/log"
    done
    for ((i = 1; i <= CHUNK; i++)); do
        printf '  %-8s %-16s pid %-8s metrics http://%s/metrics  log %s\n' "chunk-$i" "$(chunk_addr "$i")" \
            "${STARTED_PID[$((META + i - 1))]}" "$(chunk_metrics "$i")" "$DIR/chunk-$i/log"
    done
    cat <<EOF

use it:
  export TESSERA_CONFIG=$DIR/client.toml
  $show_bin admin status
  $show_bin mkdir /photos && $show_bin ls /
membership changes need a metaserver certificate: --config $DIR/admin.toml
stop it (data stays; \`up $DIR\` brings it back):
  $0 down $DIR
EOF
}

cmd_down() {
    (($# == 0)) || die "down takes only DIR"
    [[ -d $DIR ]] || die "no such folder: $DIR"
    DIR=$(realpath "$DIR")
    exec 9>"$DIR/.lock"
    flock -n 9 || die "another $PROG is working on $DIR"
    if [[ ! -s $DIR/pids ]]; then
        echo "nothing recorded as running in $DIR"
        rm -f "$DIR/pids"
        return 0
    fi
    echo "stopping the cluster in $DIR"
    stop_recorded
}

cmd_status() {
    (($# == 0)) || die "status takes only DIR"
    [[ -d $DIR ]] || die "no such folder: $DIR"
    DIR=$(realpath "$DIR")
    read_pids
    if ((${#P_PID[@]} == 0)); then
        echo "nothing recorded as running in $DIR"
        return 1
    fi
    local i dead=0
    for i in "${!P_PID[@]}"; do
        if is_ours "${P_PID[$i]}" "$(config_of "${P_NAME[$i]}")"; then
            printf '  %-8s pid %-8s running\n' "${P_NAME[$i]}" "${P_PID[$i]}"
        else
            printf '  %-8s pid %-8s NOT RUNNING (see %s)\n' "${P_NAME[$i]}" "${P_PID[$i]}" "$DIR/${P_NAME[$i]}/log"
            dead=1
        fi
    done
    ((dead == 0)) && echo "cluster view: tessera admin status --config $DIR/client.toml"
    return "$dead"
}

(($# >= 1)) || { usage >&2; exit 2; }
COMMAND=$1
shift
case $COMMAND in
-h | --help | help) usage; exit 0 ;;
up | down | status) ;;
*) usage >&2; exit 2 ;;
esac
(($# >= 1)) || { usage >&2; exit 2; }
DIR=$1
shift
"cmd_$COMMAND" "$@"
