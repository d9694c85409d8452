#!/usr/bin/env bash
# Load benchmark beside load.sh (issue 20): the backends other than HTTP/1.1, each with
# NGINX as the anchor, on loopback, one worker each.
#
#   benches/protocols.sh                       # DURATION=5 ROUNDS=3
#   DURATION=2 ROUNDS=1 benches/protocols.sh
#
# Rows:
#   h2   h2load (HTTP/2, prior knowledge, -c CONNECTIONS -m STREAMS) through ipgate
#        (upstream.protocol = "h2c", an allowed key) and through NGINX (`listen ...
#        http2` + `grpc_pass` to an upstream block with `keepalive 64`, its HTTP/2
#        proxy, no check), both to one h2c upstream
#        (NGINX `listen ... http2`, `return 200`); and h2load to the upstream directly.
#   ws   ws_echo (benches/ws_echo.rs): CONNECTIONS WebSockets, each sending a 32-byte
#        message and waiting for its echo in a loop, through ipgate (an allowed key) and
#        through NGINX (`proxy_http_version 1.1` + `Upgrade`/`Connection` headers, no
#        check), both to one echo server (ws_echo serve); and to the echo directly.
# CPU per request (or per round trip) is user+sys of the proxy's processes
# (/proc/PID/stat) over a run, divided by what it answered; for "direct" it is the
# upstream's.
#
# Knobs: DURATION=5, ROUNDS=3, CONNECTIONS=64 (h2load -c, ws connections), STREAMS=10
# (h2load -m), IPGATE_BIN (target/release/ipgate, built if missing), WS_BIN (built with
# `cargo bench --bench ws_echo --no-run` when unset), KEEP=0 (1 keeps the work folder).
# Needs nginx, h2load (Debian's nghttp2-client), curl, python3. Every port is picked
# free at run time, every process started here is stopped by its PID on exit, and every
# wait is bounded.

set -euo pipefail

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
STREAMS=${STREAMS:-10}
KEEP=${KEEP:-0}
KEY_HEADER="X-Bunq-Client-Authentication"
READY_TIMEOUT=30 # seconds a server may take to come up (lib.sh's wait_status)

ROOT=$(cd "$(dirname "$0")/.." && pwd)
IPGATE_BIN=${IPGATE_BIN:-$ROOT/target/release/ipgate}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ipgate-protocols.XXXXXX")
STARTED=()

note() { printf '%s\n' "$*" >&2; }
die() {
	note "protocols.sh: $*"
	exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"

cleanup() {
	local pid
	for pid in "${STARTED[@]}"; do stop_pid "$pid"; done
	if [[ $KEEP == 1 ]]; then note "work folder kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

start() { # LOG COMMAND...
	local log=$1
	shift
	"$@" >"$log" 2>&1 &
	LAST_PID=$!
	STARTED+=("$LAST_PID")
}

nginx_conf() { # DIR SERVER-BLOCK
	cat >"$1/nginx.conf" <<-EOF
		worker_processes 1;
		daemon off;
		pid $1/nginx.pid;
		error_log $1/error.log warn;
		events { worker_connections 4096; }
		http {
		    access_log off;
		    # nginx closes a client connection after 1,000 requests by default (HTTP/2 too,
		    # since 1.19.7): h2load does not reconnect, so a run would end there.
		    keepalive_requests 1000000000;
		    client_body_temp_path $1/tmp;
		    proxy_temp_path $1/tmp;
		    fastcgi_temp_path $1/tmp;
		    uwsgi_temp_path $1/tmp;
		    scgi_temp_path $1/tmp;
		    $2
		}
	EOF
}

start_nginx() { # NAME SERVER-BLOCK: sets LAST_PID
	local dir=$WORK/$1
	mkdir -p "$dir"
	nginx_conf "$dir" "$2"
	start "$dir/log" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
}

start_ipgate() { # UPSTREAM-URL PROTOCOL: sets IPGATE_PORT, IPGATE_PID, IPGATE_KEY
	local dir=$WORK/ipgate-$2 port admin user
	mkdir -p "$dir"
	read -r port admin <<<"$(free_ports 2)"
	cat >"$dir/config.toml" <<-EOF
		[server]
		listen = "127.0.0.1:$port"
		admin_listen = "127.0.0.1:$admin"
		workers = 1

		[upstream]
		url = "$1"
		protocol = "$2"

		[store]
		url = "sqlite://ipgate.db"

		[limits]
		refusals_per_second = 1000000000

		[log]
		level = "warn"
	EOF
	env -u RUST_LOG "$IPGATE_BIN" admin --config "$dir/config.toml" init >/dev/null 2>&1
	user=$(env -u RUST_LOG "$IPGATE_BIN" admin --config "$dir/config.toml" user add --name bench 2>/dev/null)
	IPGATE_KEY=$(env -u RUST_LOG "$IPGATE_BIN" admin --config "$dir/config.toml" key create --user "$user" 2>/dev/null)
	start "$dir/log" env -u RUST_LOG "$IPGATE_BIN" serve --config "$dir/config.toml"
	IPGATE_PID=$LAST_PID
	IPGATE_PORT=$port
	wait_status "http://127.0.0.1:$admin/readyz" 200
	curl -fsS -o /dev/null -X POST -H 'content-type: application/json' \
		-d "{\"description\":\"bench\",\"secret\":\"$IPGATE_KEY\",\"permitted_ips\":[\"127.0.0.1\"]}" \
		"http://127.0.0.1:$port/v1/device-server" || die "cannot register the bench key"
}

# ---- h2 ------------------------------------------------------------------------------

h2_run() { # NAME URL PID [HEADER]: one h2load run; prints "req/s cpu_us"
	local name=$1 url=$2 pid=$3 before after out done_n
	shift 3
	local args=(-D "$DURATION" -c "$CONNECTIONS" -m "$STREAMS" -t 1)
	[[ $# -gt 0 ]] && args+=(-H "$1")
	before=$(cpu_ticks "$pid")
	out=$(h2load "${args[@]}" "$url" 2>&1) || die "h2load failed for $name: $out"
	after=$(cpu_ticks "$pid")
	done_n=$(sed -n 's/^status codes: \([0-9]*\) 2xx.*/\1/p' <<<"$out")
	[[ ${done_n:-0} -gt 0 ]] || die "$name: no 2xx answers: $out"
	python3 -c "import sys; n, t, d, hz = map(float, sys.argv[1:]); print(f'{n/d:.0f} {t/hz*1e6/n:.1f}')" \
		"$done_n" "$((after - before))" "$DURATION" "$(getconf CLK_TCK)"
}

# ---- ws ------------------------------------------------------------------------------

ws_run() { # NAME URL PID [HEADER]: one ws_echo load run; prints "round_trips/s cpu_us p99_us"
	local name=$1 url=$2 pid=$3 before after out
	shift 3
	before=$(cpu_ticks "$pid")
	out=$("$WS_BIN" load "$url" "$DURATION" "$CONNECTIONS" "$@" 2>&1) || die "ws_echo failed for $name: $out"
	after=$(cpu_ticks "$pid")
	python3 -c "
import sys
f = sys.argv[1].split(); d = dict(zip(f[0::2], f[1::2]))
n = float(d['round_trips']); t = float(sys.argv[2]); hz = float(sys.argv[3])
print(f\"{float(d['per_second']):.0f} {t/hz*1e6/n:.1f} {d['p99_us']}\")" "$out" "$((after - before))" "$(getconf CLK_TCK)"
}

main() {
	have nginx || die "needs nginx (apt-get install nginx-light)"
	have h2load || die "needs h2load (apt-get install nghttp2-client)"
	have curl || die "needs curl"
	if [[ ! -x $IPGATE_BIN ]]; then
		(cd "$ROOT" && cargo build --release --bin ipgate) >&2
	fi
	if [[ -z ${WS_BIN:-} ]]; then
		WS_BIN=$(cd "$ROOT" && cargo bench --bench ws_echo --no-run --message-format=json 2>/dev/null |
			python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "ws_echo" and m.get("executable"):
        print(m["executable"])')
	fi
	[[ -x $WS_BIN ]] || die "no ws_echo binary"

	local up nx
	read -r up nx <<<"$(free_ports 2)"
	start_nginx h2-upstream "server { listen 127.0.0.1:$up http2; location / { return 200 \"ok\n\"; } }"
	local h2_up_pid=$LAST_PID
	start_nginx h2-nginx "upstream h2up { server 127.0.0.1:$up; keepalive 64; keepalive_requests 1000000000; } server { listen 127.0.0.1:$nx http2; location / { grpc_pass grpc://h2up; } }"
	local h2_nginx_pid=$LAST_PID
	start_ipgate "http://127.0.0.1:$up" h2c
	local h2_ipgate_pid=$IPGATE_PID h2_ipgate_port=$IPGATE_PORT h2_key=$IPGATE_KEY
	wait_status "http://127.0.0.1:$h2_ipgate_port/" 200 --http2-prior-knowledge -H "$KEY_HEADER: $h2_key"
	wait_status "http://127.0.0.1:$nx/" 200 --http2-prior-knowledge

	local echo_port ws_nx
	start "$WORK/ws-echo.log" "$WS_BIN" serve
	local ws_echo_pid=$LAST_PID
	for _ in $(seq 50); do
		echo_port=$(head -n1 "$WORK/ws-echo.log" 2>/dev/null || true)
		[[ -n $echo_port ]] && break
		sleep 0.1
	done
	[[ -n $echo_port ]] || die "the echo server did not start"
	ws_nx=$(free_ports 1)
	start_nginx ws-nginx "server { listen 127.0.0.1:$ws_nx; location / { proxy_pass http://127.0.0.1:$echo_port; proxy_http_version 1.1; proxy_set_header Upgrade \$http_upgrade; proxy_set_header Connection \"upgrade\"; } }"
	local ws_nginx_pid=$LAST_PID
	start_ipgate "http://127.0.0.1:$echo_port" http1
	local ws_ipgate_pid=$IPGATE_PID ws_ipgate_port=$IPGATE_PORT ws_key=$IPGATE_KEY

	local results=$WORK/results round
	: >"$results"
	for round in $(seq "$ROUNDS"); do
		note "round $round/$ROUNDS"
		{
			echo "h2 direct $(h2_run direct "http://127.0.0.1:$up/" "$h2_up_pid")"
			echo "h2 nginx $(h2_run nginx "http://127.0.0.1:$nx/" "$h2_nginx_pid")"
			echo "h2 ipgate $(h2_run ipgate "http://127.0.0.1:$h2_ipgate_port/" "$h2_ipgate_pid" "$KEY_HEADER: $h2_key")"
			echo "ws direct $(ws_run direct "ws://127.0.0.1:$echo_port/" "$ws_echo_pid")"
			echo "ws nginx $(ws_run nginx "ws://127.0.0.1:$ws_nx/" "$ws_nginx_pid")"
			echo "ws ipgate $(ws_run ipgate "ws://127.0.0.1:$ws_ipgate_port/" "$ws_ipgate_pid" "$KEY_HEADER:$ws_key")"
		} >>"$results"
	done
	python3 - "$results" "$DURATION" "$ROUNDS" "$CONNECTIONS" "$STREAMS" <<-'EOF'
		import statistics, sys
		path, duration, rounds, conns, streams = sys.argv[1:]
		rows = {}
		for line in open(path):
		    kind, target, *vals = line.split()
		    rows.setdefault((kind, target), []).append([float(v) for v in vals])
		print(f"duration {duration}s x {rounds} rounds, {conns} connections, h2 {streams} streams each; medians")
		print("| row | target | per second | vs nginx | CPU us per request | p99 us (ws) |")
		print("|---|---|---|---|---|---|")
		for kind in ("h2", "ws"):
		    med = {t: [statistics.median(c) for c in zip(*rows[(kind, t)])] for (k, t) in rows if k == kind}
		    for t in ("direct", "nginx", "ipgate"):
		        m = med[t]
		        p99 = f"{m[2]:.0f}" if len(m) > 2 else "-"
		        print(f"| {kind} | {t} | {m[0]:.0f} | {m[0] / med['nginx'][0]:.2f} | {m[1]:.1f} | {p99} |")
	EOF
	for pid in "$h2_ipgate_pid" "$ws_ipgate_pid" "$h2_nginx_pid" "$ws_nginx_pid" "$h2_up_pid" "$ws_echo_pid"; do
		stop_pid "$pid"
	done
}

main "$@"
