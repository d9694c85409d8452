#!/usr/bin/env bash
# Instructions per request (issue 12, item 1): callgrind counts for one forwarded
# request, one refusal of a known key from a wrong address, and one refusal of an
# unknown key, for ipgate and for the bare-hyper floor (benches/bare_hyper.rs).
#
#   benches/instructions.sh                      # N=2000 W=200, both targets
#   TARGETS=ipgate N=500 benches/instructions.sh
#   ROWS="http1 h2c tls tls-handshake" benches/instructions.sh    # every row
#
# Instruction counts repeat on the same binary (to a few instructions per request),
# so a change of 1% can be judged on this noisy shared machine, where wall-clock
# figures move by tens of percent. They are not time: a cache miss costs nothing here.
#
# How only the steady-state requests are counted: by difference, client-side.
# For each target, four runs of the server under callgrind, each with the same start,
# the same set-up and the same warm-up (W requests of each path on one kept-alive
# connection: the upstream connection is open, buffers and tables are sized), then:
#   base         nothing more
#   accepted     N more forwarded requests on that connection
#   refused_ip   N more requests with a known key whose list lacks 127.0.0.1
#   unknown_key  N more requests with a key that is not in the store
# and the server stopped (SIGTERM; callgrind writes its totals at exit). A path's
# figure is (its run's total - base's total) / N: start-up, set-up, warm-up and
# shutdown cancel out, and so does everything else the runs share. The client sends
# one request at a time (python3 http.client, keep-alive), so each request is also
# one wake-up of the server: the per-request cost at low concurrency (wrk -c64 batches
# several requests per epoll_wait, which makes that part a little cheaper there).
# callgrind_control's zero/dump was not used: the server sits in epoll_wait between
# requests, and valgrind only acts on such a command when the program runs again.
#
# sha2: valgrind's CPU has no SHA extensions, so SHA-256 runs sha2's portable code
# under callgrind (~2,000 instructions a hash instead of ~200 with SHA-NI). Both
# targets hash once per request; the "sha2" column is that part (self cost of sha2::
# functions per request), and "w/o sha2" the rest, the figure to compare.
#
# Rows (ROWS, "http1" unless told): each a kind of client, against the floor of the
# same kind (bare_hyper --h2c, --tls), the counting by difference the same:
#   http1          as above
#   h2c            HTTP/2 with prior knowledge: h2load -c1 -m$STREAMS, one connection per
#                  path (W requests each, in the order above), the measured path's
#                  connection carrying N more; STREAMS=16 requests in flight on it
#   tls            HTTP/1.1 over TLS 1.3 (ALPN http/1.1), one kept-alive connection
#   tls-handshake  the same, a new connection and a full TLS 1.3 handshake (no session
#                  resumption) per request; HANDSHAKE_N=200 and HANDSHAKE_W=20 requests
#                  instead of N and W (a handshake costs ~30 forwarded requests)
# The certificate is a throwaway P-256 one made with openssl, as in the README's TLS
# section; ipgate gets it as `[server] tls`. A row other than http1 is labelled with
# its name in the table's path column.
#
# Knobs: N=2000, W=200, TARGETS="ipgate bare-hyper", IPGATE_RECORD_USAGE=true (false:
# ipgate without usage counting, to measure what it costs), IPGATE_WORKERS=1 (2: the
# multi-threaded runtime, to see that the counts hold per request), IPGATE_LOG_LEVEL=warn
# (info: the shipped level, an access line per request), KEEP=0 (1 keeps the work folder
# with callgrind.out files for callgrind_annotate), IPGATE_BIN (target/release/ipgate,
# built if missing), BARE_BIN (built with `cargo bench --bench bare_hyper --no-run`).
# Needs valgrind, python3, curl, and nginx (the upstream; else a python3 server); h2load
# (nghttp2-client) for h2c, openssl for the TLS rows.
# ipgate runs as load.sh runs it: workers = 1, log level warn, the refusal limiter on
# with a limit no client here reaches, refresh.interval 1h (no poll during the runs).

set -euo pipefail

N=${N:-2000}
W=${W:-200}
TARGETS=${TARGETS:-"ipgate bare-hyper"}
ROWS=${ROWS:-http1}
STREAMS=${STREAMS:-16}
HANDSHAKE_N=${HANDSHAKE_N:-200}
HANDSHAKE_W=${HANDSHAKE_W:-20}
KEEP=${KEEP:-0}
IPGATE_RECORD_USAGE=${IPGATE_RECORD_USAGE:-true}
IPGATE_WORKERS=${IPGATE_WORKERS:-1}
IPGATE_LOG_LEVEL=${IPGATE_LOG_LEVEL:-warn}
KEY_HEADER="X-Bunq-Client-Authentication"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
IPGATE_BIN=${IPGATE_BIN:-$ROOT/target/release/ipgate}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ipgate-instr.XXXXXX")
STARTED=()

note() { printf '%s\n' "$*" >&2; }
die() {
	note "instructions.sh: $*"
	exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

stop_pid() {
	local pid=$1 i kept=()
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null || true
		for i in $(seq 300); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
	for i in "${STARTED[@]}"; do [[ $i == "$pid" ]] || kept+=("$i"); done
	STARTED=("${kept[@]}")
}

cleanup() {
	local pid
	for pid in "${STARTED[@]}"; do stop_pid "$pid"; done
	if [[ $KEEP == 1 ]]; then note "work folder kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start() { # LOG CMD...: sets LAST_PID
	local log=$1
	shift
	"$@" >"$log" 2>&1 &
	LAST_PID=$!
	STARTED+=("$LAST_PID")
}

free_ports() {
	python3 -c 'import socket, sys
held = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in held: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in held))' "$1"
}

wait_status() { # URL STATUS [curl args]: bounded (valgrind starts slowly)
	local url=$1 want=$2 i got
	shift 2
	for i in $(seq 600); do
		got=$(curl -s -o /dev/null -m 5 -w '%{http_code}' "$@" "$url" || true)
		[[ $got == "$want" ]] && return 0
		sleep 0.2
	done
	die "$url answered $got, expected $want"
}

# Waits for the floor's "listening" line: no request, no handshake, so that no run
# counts a second one when a first attempt times out (a TLS handshake under callgrind,
# cold, can take longer than curl waits: ~1.3M instructions in one run and not the other).
wait_listening() { # LOG
	local i
	for i in $(seq 600); do
		grep -q '^bare_hyper: listening' "$1" 2>/dev/null && return 0
		sleep 0.2
	done
	die "the floor did not start (see $1)"
}

new_key() { echo "ipg_$(tr -dc 'A-Za-z0-9' </dev/urandom | head -c 43)"; }

start_upstream() {
	local port
	port=$(free_ports 1)
	UPSTREAM_ADDR="127.0.0.1:$port"
	mkdir -p "$WORK/upstream/tmp"
	if have nginx; then
		cat >"$WORK/upstream/nginx.conf" <<-EOF
			worker_processes 1;
			daemon off;
			pid $WORK/upstream/nginx.pid;
			error_log $WORK/upstream/error.log warn;
			events { worker_connections 1024; }
			http {
			    access_log off;
			    # Never a "Connection: close" during a run: nginx ends a connection after
			    # 1000 requests, and the floor hands that header on, so its client had to
			    # reconnect (over TLS, a full handshake) twice a run.
			    keepalive_requests 1000000;
			    client_body_temp_path $WORK/upstream/tmp;
			    proxy_temp_path $WORK/upstream/tmp;
			    fastcgi_temp_path $WORK/upstream/tmp;
			    uwsgi_temp_path $WORK/upstream/tmp;
			    scgi_temp_path $WORK/upstream/tmp;
			    server { listen $UPSTREAM_ADDR; location / { return 200 "ok\n"; } }
			}
		EOF
		start "$WORK/upstream/log" nginx -p "$WORK/upstream" -c "$WORK/upstream/nginx.conf" \
			-e "$WORK/upstream/error.log"
	else
		start "$WORK/upstream/log" python3 -m http.server --bind 127.0.0.1 "$port"
	fi
	wait_status "http://$UPSTREAM_ADDR/" 200
}

# The ipgate store, made once through the public interface: a user, two keys created
# with `ipgate admin` and bound by device registration (one to 127.0.0.1, one to an
# address elsewhere), so every run starts from a copy of the same file.
prepare_ipgate() {
	local dir=$WORK/ipgate admin user
	mkdir -p "$dir"
	read -r IPGATE_PORT admin <<<"$(free_ports 2)"
	cat >"$dir/config.toml" <<-EOF
		[server]
		listen = "127.0.0.1:$IPGATE_PORT"
		admin_listen = "127.0.0.1:$admin"
		workers = $IPGATE_WORKERS
		[upstream]
		url = "http://$UPSTREAM_ADDR"
		[store]
		url = "sqlite://ipgate.db"
		[refresh]
		interval = "1h"
		[limits]
		refusals_per_second = 1000000000
		[insight]
		record_usage = $IPGATE_RECORD_USAGE
		[log]
		level = "$IPGATE_LOG_LEVEL"
	EOF
	# The same, and TLS on the listener (the TLS rows): the one place they differ.
	sed "/^workers = /a tls = { cert = \"$WORK/cert.pem\", key = \"$WORK/key.pem\" }" \
		"$dir/config.toml" >"$dir/config-tls.toml"
	IPGATE_URL="http://127.0.0.1:$IPGATE_PORT/"
	IPGATE_READY="http://127.0.0.1:$admin/readyz"
	# Only serve and `admin init` create a store; the users and keys come before serve.
	env -u RUST_LOG "$IPGATE_BIN" admin --config "$dir/config.toml" init >/dev/null 2>&1
	user=$(env -u RUST_LOG "$IPGATE_BIN" admin --config "$dir/config.toml" user add --name instr)
	KEY_OK=$("$IPGATE_BIN" admin --config "$dir/config.toml" key create --user "$user" --json |
		python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])')
	KEY_NOIP=$("$IPGATE_BIN" admin --config "$dir/config.toml" key create --user "$user" --json |
		python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])')
	KEY_UNKNOWN=$(new_key)
	start "$dir/setup.log" env -u RUST_LOG "$IPGATE_BIN" serve --config "$dir/config.toml"
	local pid=$LAST_PID key ips
	wait_status "$IPGATE_READY" 200
	for key in "$KEY_OK" "$KEY_NOIP"; do
		ips='"127.0.0.1"'
		[[ $key == "$KEY_NOIP" ]] && ips='"192.0.2.7"'
		curl -fsS -o /dev/null -H 'Content-Type: application/json' \
			-d "{\"description\":\"instr\",\"secret\":\"$key\",\"permitted_ips\":[$ips]}" \
			"${IPGATE_URL}v1/device-server" || die "device registration failed"
	done
	stop_pid "$pid"
	cp "$dir/ipgate.db" "$dir/ipgate.db.clean"
}

# A throwaway certificate for 127.0.0.1 (the TLS rows), as the README's TLS section
# makes one.
make_cert() {
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
		-subj "/CN=localhost" -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
		-keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null || die "openssl failed"
}

prepare_bare() {
	if [[ -z ${BARE_BIN:-} ]]; then
		note "building the floor (cargo bench --bench bare_hyper --no-run)"
		BARE_BIN=$(cd "$ROOT" && cargo bench --bench bare_hyper --no-run --message-format=json |
			python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "bare_hyper":
        print(m["executable"])')
	fi
	[[ -x $BARE_BIN ]] || die "no bare_hyper binary ($BARE_BIN)"
	BARE_PORT=$(free_ports 1)
}

# The requests and warm-up requests of a row (tls-handshake has its own).
counts() { # ROW: prints "N W"
	if [[ $1 == tls-handshake ]]; then echo "$HANDSHAKE_N $HANDSHAKE_W"; else echo "$N $W"; fi
}

# Sends W requests of every path, then N of $3 (none for "base"), one at a time on one
# kept-alive connection (tls-handshake: each on a new one), and checks every status.
drive() { # URL ROW PATH
	local n w
	read -r n w <<<"$(counts "$2")"
	python3 - "$1" "$2" "$3" "$n" "$w" "$KEY_HEADER" "$KEY_OK" "$KEY_NOIP" "$KEY_UNKNOWN" \
		"$WORK/cert.pem" <<'EOF'
import http.client, ssl, sys, urllib.parse
url, row, path, n, w, header, ok, noip, unknown, cafile = sys.argv[1:]
n, w = int(n), int(w)
keys = {"accepted": (ok, 200), "refused_ip": (noip, 403), "unknown_key": (unknown, 403)}
u = urllib.parse.urlsplit(url)
if row == "http1":
    connect = lambda: http.client.HTTPConnection(u.hostname, u.port, timeout=60)
else:
    tls = ssl.create_default_context(cafile=cafile)
    tls.minimum_version = ssl.TLSVersion.TLSv1_3
    tls.set_alpn_protocols(["http/1.1"])
    connect = lambda: http.client.HTTPSConnection(u.hostname, u.port, timeout=60, context=tls)
conn = connect()
def send(p, count):
    global conn
    key, want = keys[p]
    for _ in range(count):
        conn.request("GET", "/", headers={header: key})
        r = conn.getresponse()
        r.read()
        if r.status != want:
            sys.exit(f"{row} {p}: HTTP {r.status}, expected {want}")
        if row == "tls-handshake":
            conn.close()
            conn = connect()
for p in keys:
    send(p, w)
if path != "base":
    send(path, n)
conn.close()
EOF
}

# h2c: one h2load connection per path, W requests each (the measured path N more), up
# to STREAMS in flight on it, and checks every status.
drive_h2c() { # URL PATH
	local path key want count out
	for path in accepted refused_ip unknown_key; do
		count=$W
		[[ $path == "$2" ]] && count=$((W + N))
		case $path in
		accepted) key=$KEY_OK want="$count 2xx" ;;
		refused_ip) key=$KEY_NOIP want="0 2xx, 0 3xx, $count 4xx" ;;
		unknown_key) key=$KEY_UNKNOWN want="0 2xx, 0 3xx, $count 4xx" ;;
		esac
		out=$(h2load -n "$count" -c 1 -m "$STREAMS" -H "$KEY_HEADER: $key" "$1" 2>&1) ||
			die "h2load failed: $out"
		[[ $out == *"status codes: $want"* ]] ||
			die "h2c $path: $(grep 'status codes' <<<"$out"), expected $want"
	done
}

# One server run under callgrind; prints "total_Ir sha2_Ir".
count_run() { # TARGET ROW PATH
	local target=$1 row=$2 path=$3 out=$WORK/callgrind.$1.$2.$3 pid port config
	local mode=() scheme=http
	case $row in
	h2c) mode=(--h2c) ;;
	tls*) mode=(--tls "$WORK/cert.pem" "$WORK/key.pem") scheme=https ;;
	esac
	case $target in
	ipgate)
		config=$WORK/ipgate/config.toml
		[[ $scheme == https ]] && config=$WORK/ipgate/config-tls.toml
		cp "$WORK/ipgate/ipgate.db.clean" "$WORK/ipgate/ipgate.db"
		rm -f "$WORK/ipgate/ipgate.db-wal" "$WORK/ipgate/ipgate.db-shm"
		start "$out.log" env -u RUST_LOG valgrind --tool=callgrind --callgrind-out-file="$out" \
			"$IPGATE_BIN" serve --config "$config"
		pid=$LAST_PID
		port=$IPGATE_PORT
		wait_status "$IPGATE_READY" 200
		;;
	bare-hyper)
		start "$out.log" valgrind --tool=callgrind --callgrind-out-file="$out" \
			"$BARE_BIN" "${mode[@]}" "127.0.0.1:$BARE_PORT" "$UPSTREAM_ADDR" 10 "$KEY_OK" "$KEY_NOIP"
		pid=$LAST_PID
		port=$BARE_PORT
		wait_listening "$out.log"
		;;
	esac
	if [[ $row == h2c ]]; then
		drive_h2c "http://127.0.0.1:$port/" "$path"
	else
		drive "$scheme://127.0.0.1:$port/" "$row" "$path"
	fi
	stop_pid "$pid"
	[[ -s $out ]] || die "callgrind wrote nothing for $target $path (see $out.log)"
	callgrind_annotate --threshold=100 "$out" 2>/dev/null | python3 -c '
import re, sys
total = sha = 0
for line in sys.stdin:
    m = re.match(r"\s*([\d,]+) \(.*\)\s+PROGRAM TOTALS", line) or re.match(r"\s*([\d,]+)\s+(\(.*\)\s+)?PROGRAM TOTALS", line)
    if m:
        total = int(m.group(1).replace(",", ""))
        continue
    m = re.match(r"\s*([\d,]+) (\([^)]*\)\s+)?.*sha2::", line)
    if m:
        sha += int(m.group(1).replace(",", ""))
print(total, sha)'
}

main() {
	have valgrind || die "valgrind not found (Debian: apt-get install valgrind)"
	have python3 || die "python3 not found"
	have curl || die "curl not found"
	local row
	for row in $ROWS; do
		case $row in
		http1 | tls | tls-handshake) ;;
		h2c) have h2load || die "h2load not found (Debian: apt-get install nghttp2-client)" ;;
		*) die "ROWS: unknown row $row (http1, h2c, tls, tls-handshake)" ;;
		esac
	done
	if [[ ! -x $IPGATE_BIN ]]; then
		note "building $IPGATE_BIN (cargo build --release)"
		(cd "$ROOT" && cargo build --release)
	fi
	if [[ " $ROWS " == *" tls"* ]]; then
		have openssl || die "openssl not found"
		make_cert
	fi
	start_upstream
	note "upstream at $UPSTREAM_ADDR"
	if [[ " $TARGETS " == *" ipgate "* ]]; then
		prepare_ipgate
	else
		KEY_OK=$(new_key) KEY_NOIP=$(new_key) KEY_UNKNOWN=$(new_key)
	fi
	local target path n total sha results=$WORK/results
	for target in $TARGETS; do
		[[ $target == bare-hyper ]] && prepare_bare
		for row in $ROWS; do
			read -r n _ <<<"$(counts "$row")"
			for path in base accepted refused_ip unknown_key; do
				note "  $target $row $path: callgrind run"
				read -r total sha <<<"$(count_run "$target" "$row" "$path")"
				printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$row" "$path" "$n" "$total" "$sha" >>"$results"
			done
		done
	done
	printf '\ninstructions.sh: callgrind, %s requests per path after %s of each path as warm-up, ' "$N" "$W"
	printf 'one kept-alive connection, one request at a time; commit %s\n' \
		"$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')"
	[[ " $ROWS " == *" h2c "* ]] && printf 'h2c: one connection per path, %s streams in flight\n' "$STREAMS"
	[[ " $ROWS " == *" tls-handshake "* ]] &&
		printf 'tls-handshake: %s requests after %s, a new connection each\n' "$HANDSHAKE_N" "$HANDSHAKE_W"
	echo
	python3 - "$results" "$ROWS" <<'EOF'
import sys
runs = {}
for line in open(sys.argv[1]):
    target, row, path, n, total, sha = line.split()
    runs[(target, row, path)] = (int(n), int(total), int(sha))
order = sys.argv[2].split()
head = ("target", "path", "instr/req", "sha2", "w/o sha2", "vs bare-hyper (w/o sha2)")
rows = [head]
per = {}
for (target, row, path), (n, total, sha) in runs.items():
    if path == "base":
        continue
    _, bt, bs = runs[(target, row, "base")]
    per[(target, row, path)] = ((total - bt) / n, (sha - bs) / n)
# Row by row, each target's paths beside the floor's of the same kind.
for (target, row, path), (ir, sha) in sorted(per.items(), key=lambda kv: order.index(kv[0][1])):
    floor = per.get(("bare-hyper", row, path))
    ratio = f"{(ir - sha) / (floor[0] - floor[1]):.2f}" if floor else "-"
    label = path if row == "http1" else f"{row} {path}"
    rows.append((target, label, f"{ir:,.0f}", f"{sha:,.0f}", f"{ir - sha:,.0f}", ratio))
widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
for k, r in enumerate(rows):
    print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    if k == 0:
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
EOF
}

main "$@"
