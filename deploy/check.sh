#!/usr/bin/env bash
# Checks the deployment files under deploy/:
#
#   - systemd units (deploy/systemd): `systemd-analyze verify` on each, with
#     no warning allowed; the sysusers file with `systemd-sysusers --dry-run`;
#   - Prometheus (deploy/prometheus): `promtool check config`,
#     `promtool check rules` and the rule unit tests (`promtool test rules`);
#   - the Grafana dashboard (deploy/grafana/tessera.json): valid JSON, every
#     panel on the ${datasource} variable, every query valid PromQL that
#     names at least one metric;
#   - every metric the rules and the dashboard name is exported somewhere in
#     the Rust sources (a metric not added yet can be listed in PROPOSED
#     below meanwhile).
#
#   deploy/check.sh [--metrics-out FILE]
#
# --metrics-out FILE writes the metric names the rules and the dashboard
# use, one per line, sorted: the names a scrape of the daemons' /metrics
# should show (Prometheus's own `up` is left out). Histograms appear as the
# series the queries read (NAME_bucket, NAME_sum, NAME_count).
#
# Installs what it needs when missing: Debian's `systemd` (systemd-analyze),
# `prometheus` (promtool; its service is stopped and disabled if the package
# started it) and python3, with apt-get --no-install-recommends (through
# sudo unless root). With all three present it needs neither root nor the
# network, and takes a few seconds.
set -euo pipefail

PROG=${0##*/}
DEPLOY=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$DEPLOY")

# Metrics the rules or the dashboard use that no daemon exports yet, each
# with a comment saying what it should be; empty when every one is
# exported. A name used but found neither in the sources nor here is a
# typo, and fails the check.
PROPOSED=(
)

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

METRICS_OUT=
while (($#)); do
    case $1 in
    --metrics-out)
        [[ $# -ge 2 && -n $2 ]] || { echo "$PROG: --metrics-out needs a file" >&2; exit 2; }
        METRICS_OUT=$2
        shift 2
        ;;
    --metrics-out=*) METRICS_OUT=${1#*=}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "$PROG: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

SUDO=
APT_UPDATED=0
apt_install() {
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || { echo "$PROG: $* missing, and not root and no sudo to install it with" >&2; exit 1; }
        SUDO=sudo
    fi
    if ((!APT_UPDATED)); then
        echo "  apt-get update"
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        APT_UPDATED=1
    fi
    echo "  apt-get install $*"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

FAILED=0
fail() {
    echo "FAIL: $*" >&2
    FAILED=1
}

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

echo "== tools"
if ! command -v systemd-analyze >/dev/null; then
    apt_install systemd
fi
if ! command -v promtool >/dev/null; then
    apt_install prometheus
    # Only promtool is wanted: a Prometheus server the package started
    # would listen on :9090 from now on.
    if [[ -d /run/systemd/system ]] && systemctl is-active --quiet prometheus.service 2>/dev/null; then
        echo "  stopping and disabling prometheus.service (installed for promtool only)"
        $SUDO systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    fi
fi
if ! command -v python3 >/dev/null; then
    apt_install python3
fi
echo "  $(systemd-analyze --version | head -n 1)"
echo "  $(promtool --version 2>&1 | head -n 1)"
echo "  $(python3 --version)"

# ---------------------------------------------------------------- systemd
echo "== systemd units"
UNITS=(tessera-meta.service tessera-chunk.service tessera-gateway.service tessera-mount@.service)
# systemd-analyze verify insists that ExecStart's program exists. The units
# name /usr/local/bin/tessera, which a checking machine need not have: they
# are verified as copies whose only change is that path, pointing at a stub.
STUB=$TMP/bin/tessera
mkdir -p "$TMP/bin" "$TMP/units"
printf '#!/bin/sh\nexit 0\n' >"$STUB"
chmod +x "$STUB"
for unit in "${UNITS[@]}"; do
    src=$DEPLOY/systemd/$unit
    [[ -f $src ]] || { fail "$src is missing"; continue; }
    grep -q '^ExecStart=/usr/local/bin/tessera ' "$src" || fail "$unit: ExecStart must run /usr/local/bin/tessera"
    for key in 'Type=notify' 'NotifyAccess=main' 'WatchdogSec=' 'Restart=on-failure' 'LimitNOFILE=' 'NoNewPrivileges=yes'; do
        grep -q "^$key" "$src" || fail "$unit: no $key line"
    done
    sed "s#/usr/local/bin/tessera#$STUB#g" "$src" >"$TMP/units/$unit"
done
for unit in tessera-meta.service tessera-chunk.service tessera-gateway.service; do
    grep -q '^User=tessera$' "$DEPLOY/systemd/$unit" || fail "$unit: should run as User=tessera"
    grep -q '^ProtectSystem=strict$' "$DEPLOY/systemd/$unit" || fail "$unit: no ProtectSystem=strict"
    grep -q '^CapabilityBoundingSet=$' "$DEPLOY/systemd/$unit" || fail "$unit: capabilities not emptied"
done
# A mount namespace of its own would hide the FUSE mount from the system.
for key in ProtectSystem ProtectHome PrivateTmp PrivateDevices PrivateMounts ProtectKernelTunables \
    ProtectKernelModules ProtectKernelLogs ProtectControlGroups ReadWritePaths ReadOnlyPaths; do
    if grep -q "^$key=" "$DEPLOY/systemd/tessera-mount@.service"; then
        fail "tessera-mount@.service sets $key=, which would hide the mount in a private mount namespace"
    fi
done
# The template is verified as itself and as an instance.
cp "$TMP/units/tessera-mount@.service" "$TMP/units/tessera-mount@mnt-tessera.service"
for unit in "${UNITS[@]}" tessera-mount@mnt-tessera.service; do
    [[ -f $TMP/units/$unit ]] || continue
    # Warnings (unknown keys, bad values) come out on stderr with status 0:
    # any output at all is a failure.
    if out=$(cd "$TMP/units" && systemd-analyze verify --man=no "./$unit" 2>&1) && [[ -z $out ]]; then
        echo "  ok  systemd-analyze verify $unit"
    else
        fail "systemd-analyze verify $unit:"$'\n'"$out"
    fi
done
if systemd-analyze security --help 2>/dev/null | grep -q -- '--offline'; then
    for unit in tessera-meta.service tessera-chunk.service tessera-gateway.service tessera-mount@mnt-tessera.service; do
        level=$(cd "$TMP/units" && systemd-analyze security --offline=true --no-pager "./$unit" 2>/dev/null | tail -n 1 | sed 's/^→ //') || true
        echo "      ${level:-$unit: no security assessment}"
    done
fi
sysusers=$DEPLOY/systemd/tessera.sysusers
mkdir -p "$TMP/root"
if out=$(systemd-sysusers --dry-run --root="$TMP/root" "$sysusers" 2>&1) && grep -q "user 'tessera'" <<<"$out"; then
    echo "  ok  systemd-sysusers --dry-run tessera.sysusers"
else
    fail "systemd-sysusers --dry-run $sysusers:"$'\n'"$out"
fi

# The flags the units pass exist, when a tessera binary is at hand (the same
# places deploy/local-cluster.sh looks).
BIN=
for candidate in "${TESSERA_BIN:-}" "$(command -v tessera 2>/dev/null || true)" "$REPO/target/release/tessera" \
    "${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/release/tessera}" "${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/debug/tessera}" \
    "$HOME/.cache/tessera/target/release/tessera" "$HOME/.cache/tessera/target/debug/tessera"; do
    if [[ -n $candidate && -x $candidate ]]; then BIN=$candidate; break; fi
done
if [[ -n $BIN ]]; then
    for unit in "${UNITS[@]}"; do
        line=$(grep '^ExecStart=' "$DEPLOY/systemd/$unit" | head -n 1)
        read -r -a words <<<"${line#ExecStart=}"
        sub=${words[1]}
        help=$("$BIN" "$sub" --help 2>&1) || { fail "$BIN $sub --help failed"; continue; }
        for word in "${words[@]:2}"; do
            [[ $word == --?* ]] || continue
            grep -q -- "$word" <<<"$help" || fail "$unit: \`tessera $sub\` has no flag $word ($BIN)"
        done
        echo "  ok  flags of \`tessera $sub\` in $unit ($BIN)"
    done
else
    echo "  --  no tessera binary found (TESSERA_BIN, PATH, target/release): flags in ExecStart not checked"
fi

# ---------------------------------------------------------------- prometheus
echo "== prometheus"
run() {
    local what=$1
    shift
    if out=$("$@" 2>&1); then
        echo "  ok  $what"
    else
        fail "$what:"$'\n'"$out"
    fi
}
# In the folder, as prometheus.yml names its rule file relative to itself.
in_prom() { (cd "$DEPLOY/prometheus" && "$@"); }
run "promtool check config prometheus.yml" in_prom promtool check config prometheus.yml
run "promtool check rules tessera.rules.yml" in_prom promtool check rules tessera.rules.yml
run "promtool test rules tessera.rules.test.yml" in_prom promtool test rules tessera.rules.test.yml

# ---------------------------------------------------------------- grafana and metric names
echo "== grafana and metric names"
# The dashboard's queries, with Grafana's variables filled in, become
# recording rules so promtool parses them as PromQL.
if python3 - "$DEPLOY" "$REPO" "$TMP" "${PROPOSED[*]}" >"$TMP/names.out" <<'PY'; then
import json, os, re, sys

deploy, repo, tmp, proposed = sys.argv[1], sys.argv[2], sys.argv[3], set(sys.argv[4].split())
errors = []

# -- the dashboard
path = os.path.join(deploy, "grafana", "tessera.json")
try:
    dash = json.load(open(path))
except (OSError, ValueError) as err:
    print(f"FAIL {path}: {err}")
    sys.exit(1)
if not 36 <= dash.get("schemaVersion", 0) <= 41:
    errors.append(f"schemaVersion {dash.get('schemaVersion')} (expected about 39)")
variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
ds = variables.get("datasource")
if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
    errors.append("no `datasource` variable of type datasource for prometheus")

def walk(panels):
    for p in panels:
        yield p
        yield from walk(p.get("panels", []))

ids = set()
exprs = []
for p in walk(dash.get("panels", [])):
    title = p.get("title", "?")
    if p.get("id") in ids:
        errors.append(f"panel id {p.get('id')} used twice")
    ids.add(p.get("id"))
    g = p.get("gridPos", {})
    if not all(k in g for k in "hwxy") or g["x"] + g["w"] > 24:
        errors.append(f"panel {title!r}: bad gridPos {g}")
    if p.get("type") == "row":
        continue
    if p.get("datasource", {}).get("uid") != "${datasource}":
        errors.append(f"panel {title!r}: datasource is not ${{datasource}}")
    targets = p.get("targets", [])
    if not targets:
        errors.append(f"panel {title!r}: no query")
    for t in targets:
        if t.get("datasource", {}).get("uid") != "${datasource}":
            errors.append(f"panel {title!r}: a query's datasource is not ${{datasource}}")
        expr = t.get("expr", "").strip()
        if not expr:
            errors.append(f"panel {title!r}: empty expr")
            continue
        exprs.append((f"panel {title!r}", expr))
dash_count = len(exprs)

# -- the rules: `expr:` of every rule (block scalars or one line)
rules_path = os.path.join(deploy, "prometheus", "tessera.rules.yml")
lines = open(rules_path).read().splitlines()
rule_count = sum(1 for l in lines if re.match(r"\s*- (alert|record):", l))
found = 0
i = 0
while i < len(lines):
    m = re.match(r"(\s*)expr:\s*(.*)$", lines[i])
    if not m:
        i += 1
        continue
    indent, rest = len(m.group(1)), m.group(2).strip()
    if rest in ("|", "|-", ">", ">-"):
        body = []
        i += 1
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
            body.append(lines[i])
            i += 1
        expr = "\n".join(body).strip()
    else:
        expr = rest.strip("'\"")
        i += 1
    found += 1
    exprs.append((f"rule #{found}", expr))
if found != rule_count:
    errors.append(f"{rules_path}: read {found} exprs for {rule_count} rules")

# -- metric names in a PromQL expression
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
            "bool", "offset", "inf", "nan"}
def metric_names(expr):
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # strings
    e = re.sub(r"\{[^}]*\}", " ", e)                                    # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)                                   # ranges, subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)  # label lists
    names = set()
    for m in re.finditer(r"(?<![\w:$.])([a-zA-Z_:][\w:]*)\b(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in KEYWORDS:
            continue
        names.add(word)
    return names

# -- every metric is exported, or proposed
sources = []
for top in ("metaserver", "chunkserver", "gateway", "fuse", "client", "cli", "proto"):
    for root, dirs, files in os.walk(os.path.join(repo, top)):
        dirs[:] = [d for d in dirs if d not in ("target", ".git")]
        for f in files:
            if f.endswith(".rs"):
                try:
                    sources.append(open(os.path.join(root, f), encoding="utf-8", errors="replace").read())
                except OSError:
                    pass
source = "\n".join(sources)
def family(name):
    return re.sub(r"_(bucket|sum|count)$", "", name)
def exported(name):
    return f'"{name}"' in source or f'"{family(name)}"' in source

SYNTHETIC = {"up"}  # Prometheus's own; never on a daemon's /metrics
all_names = set()
still_proposed = set()
exported_now = set()
for where, expr in exprs:
    names = metric_names(expr)
    if not names:
        errors.append(f"{where}: names no metric: {expr}")
    for n in names:
        if n in SYNTHETIC:
            continue
        if not n.startswith("tessera_"):
            errors.append(f"{where}: {n} is not a Tessera metric (a typo in a label or a function?)")
            continue
        all_names.add(n)
        if exported(n):
            if family(n) in proposed or n in proposed:
                exported_now.add(family(n))
        elif family(n) in proposed or n in proposed:
            still_proposed.add(family(n))
        else:
            errors.append(f"{where}: metric {n} is neither exported by the sources nor in PROPOSED")

# -- the dashboard's queries as recording rules, for promtool
subst = {"$__rate_interval": "5m", "${__rate_interval}": "5m", "$__interval": "1m", "$cluster": "prod",
         "${cluster}": "prod", "$__range": "1h"}
with open(os.path.join(tmp, "dashboard.rules.yml"), "w") as out:
    out.write("groups:\n  - name: dashboard\n    rules:\n")
    for n, (where, expr) in enumerate(exprs[:dash_count]):
        for k, v in subst.items():
            expr = expr.replace(k, v)
        if "$" in expr:
            errors.append(f"{where}: unknown variable in {expr}")
        out.write(f"      - record: dashboard:query_{n}\n        expr: {json.dumps(expr)}\n")

# -- every alert has a unit test where it fires, and a section in the runbook
alerts = re.findall(r"^\s*- alert:\s*(\S+)", open(rules_path).read(), re.M)
tests = open(os.path.join(deploy, "prometheus", "tessera.rules.test.yml")).read().splitlines()
fires = set()
for i, l in enumerate(tests):
    m = re.match(r"\s*alertname:\s*(\S+)\s*$", l)
    if m and i + 2 < len(tests) and re.match(r"\s*exp_alerts:\s*$", tests[i + 1]) \
            and re.match(r"\s*- exp_labels:", tests[i + 2]):
        fires.add(m.group(1))
runbook_path = os.path.join(repo, "docs", "operations.md")
try:
    runbook = open(runbook_path).read()
except OSError:
    runbook = ""
for a in alerts:
    if a not in fires:
        errors.append(f"alert {a}: no test in tessera.rules.test.yml where it fires")
    if not re.search(rf"^#+ {re.escape(a)}\s*$", runbook, re.M):
        errors.append(f"alert {a}: no section `{a}` in docs/operations.md (its runbook)")

for n in sorted(exported_now):
    print(f"NOTE {n} is exported now: take it off PROPOSED in deploy/check.sh")
for e in errors:
    print("FAIL " + e)
print(f"OK {dash_count} dashboard queries, {found} rules ({len(fires)} with a firing test, all in the runbook), {len(all_names)} metrics")
for n in sorted(still_proposed):
    print(f"PROPOSED {n}")
for n in sorted(all_names):
    print(f"NAME {n}")
sys.exit(1 if errors else 0)
PY
    grep '^NOTE' "$TMP/names.out" | sed 's/^NOTE /  note: /' || true
    sed -n 's/^OK /  ok  /p' "$TMP/names.out"
    run "promtool check rules (the dashboard's queries as PromQL)" promtool check rules "$TMP/dashboard.rules.yml"
else
    grep -E '^(FAIL|NOTE)' "$TMP/names.out" | sed 's/^FAIL /FAIL: /; s/^NOTE /  note: /' >&2 || true
    FAILED=1
fi
if grep -q '^PROPOSED ' "$TMP/names.out"; then
    echo "  used but not exported yet (PROPOSED in $PROG):"
    sed -n 's/^PROPOSED /    /p' "$TMP/names.out"
fi
if [[ -n $METRICS_OUT ]]; then
    sed -n 's/^NAME //p' "$TMP/names.out" >"$METRICS_OUT"
    echo "  wrote $(wc -l <"$METRICS_OUT") metric names to $METRICS_OUT"
fi

echo
if ((FAILED)); then
    echo "$PROG: FAILED" >&2
    exit 1
fi
echo "$PROG: all checks passed"
