#!/usr/bin/env bash
# Refusal flood isolation (issue 9, item 6): an allowed client's latency through ipgate
# alone, and while another address floods refusals on 32 connections, with the
# per-address refusal limit on (limits.refusals_per_second, default 100) and off (0).
#
#   benches/flood.sh                       # defaults below
#   DURATION=5 ROUNDS=1 benches/flood.sh   # a quick run
#
# Knobs (environment):
#   DURATION=10           seconds per measurement (one wrk run of the allowed client)
#   ROUNDS=3              rounds; each runs every scenario once, in turn
#   CONNECTIONS=8         the allowed client: wrk -t1 -c$CONNECTIONS
#   FLOOD_CONNECTIONS=32  the flood: wrk -t1 -c$FLOOD_CONNECTIONS, an unknown key
#   LIMIT=100             limits.refusals_per_second of the limited gateway
#   WORKERS=1             ipgate server.workers (and nginx worker_processes upstream)
#   IPGATE_LOG_LEVEL=info ipgate's [log] level; info (the default) writes the access log
#   IPGATE_BIN=target/release/ipgate   built with `cargo build --release` if missing
#   KEEP=0                1 keeps the work folder
#
# wrk cannot bind a source address, so both clients connect from 127.0.0.1, which the
# gateways trust as a proxy (client_ip.trusted_proxies), and name their client address
# in X-Forwarded-For: the allowed client is 192.0.2.10 (its key's ACTIVE address), the
# flood 198.51.100.7. Each gateway therefore sees two clients, as it would behind a
# load balancer.
#
# Installs nothing: wrk from Debian (`apt-get install wrk`), nginx as the upstream if
# present (else a small python3 server). Every port is picked free at run time, every
# process started here is stopped by its PID on exit, and every wait is bounded.

set -euo pipefail

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-8}
FLOOD_CONNECTIONS=${FLOOD_CONNECTIONS:-32}
LIMIT=${LIMIT:-100}
WORKERS=${WORKERS:-1}
IPGATE_LOG_LEVEL=${IPGATE_LOG_LEVEL:-info}
KEEP=${KEEP:-0}
KEY_HEADER="X-Bunq-Client-Authentication"
ALLOWED_IP=192.0.2.10
FLOOD_IP=198.51.100.7
UNKNOWN_KEY="ipg_0000000000000000000000000000000000000000000"
READY_TIMEOUT=60

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
IPGATE_BIN=${IPGATE_BIN:-$ROOT/target/release/ipgate}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ipgate-flood.XXXXXX")
RESULTS=$WORK/results.tsv
STARTED=()

note() { printf '%s\n' "$*" >&2; }
die() {
	note "flood.sh: $*"
	exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

cleanup() {
	local pid
	for pid in "${STARTED[@]}"; do stop_pid "$pid"; done
	if [[ $KEEP == 1 ]]; then note "work folder kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs "$@" in the background, logging to $LOG_TO; sets LAST_PID.
start() {
	"$@" >"$LOG_TO" 2>&1 &
	LAST_PID=$!
	STARTED+=("$LAST_PID")
}

start_upstream() {
	local dir=$WORK/upstream port
	mkdir -p "$dir"
	port=$(free_ports 1)
	UPSTREAM_ADDR="127.0.0.1:$port"
	LOG_TO=$dir/log
	if have nginx; then
		cat >"$dir/nginx.conf" <<-EOF
			worker_processes $WORKERS;
			daemon off;
			pid $dir/nginx.pid;
			error_log $dir/error.log warn;
			events { worker_connections 4096; }
			http {
			    access_log off;
			    client_body_temp_path $dir/tmp;
			    proxy_temp_path $dir/tmp;
			    fastcgi_temp_path $dir/tmp;
			    uwsgi_temp_path $dir/tmp;
			    scgi_temp_path $dir/tmp;
			    server {
			        listen 127.0.0.1:$port;
			        location / { return 200 "ok\n"; }
			    }
			}
		EOF
		start nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
		UPSTREAM_KIND="nginx return 200"
	else
		cat >"$dir/upstream.py" <<-'EOF'
			import asyncio, sys
			RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-type: text/plain\r\n\r\nok\n"
			async def serve(reader, writer):
			    try:
			        while True:
			            await reader.readuntil(b"\r\n\r\n")
			            writer.write(RESPONSE)
			            await writer.drain()
			    except (asyncio.IncompleteReadError, ConnectionError):
			        pass
			    finally:
			        writer.close()
			async def main():
			    server = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]))
			    async with server:
			        await server.serve_forever()
			asyncio.run(main())
		EOF
		start python3 "$dir/upstream.py" "$port"
		UPSTREAM_KIND="python3 asyncio"
	fi
	wait_status "http://$UPSTREAM_ADDR/" 200
}

# Starts a gateway with LIMIT refusals per second (0: off); sets GW_URL, GW_ADMIN and
# GW_KEY (the allowed client's key, registered for ALLOWED_IP). The EXIT trap stops it.
start_ipgate() { # NAME LIMIT
	local name=$1 limit=$2 dir=$WORK/ipgate-$1 port admin user config
	mkdir -p "$dir"
	read -r port admin <<<"$(free_ports 2)"
	config=$dir/config.toml
	cat >"$config" <<-EOF
		[server]
		listen = "127.0.0.1:$port"
		admin_listen = "127.0.0.1:$admin"
		workers = $WORKERS

		[upstream]
		url = "http://$UPSTREAM_ADDR"

		[client_ip]
		trusted_proxies = ["127.0.0.1"]

		[store]
		url = "sqlite://ipgate.db"

		[limits]
		refusals_per_second = $limit

		[log]
		level = "$IPGATE_LOG_LEVEL"
	EOF
	"$IPGATE_BIN" check-config "$config" >/dev/null
	# Only serve and `admin init` create a store; the users and keys come before serve.
	env -u RUST_LOG "$IPGATE_BIN" admin --config "$config" init >/dev/null 2>&1
	user=$(env -u RUST_LOG "$IPGATE_BIN" admin --config "$config" user add --name flood-bench)
	GW_KEY=$(env -u RUST_LOG "$IPGATE_BIN" admin --config "$config" key create --user "$user")
	LOG_TO=$dir/log
	start env -u RUST_LOG "$IPGATE_BIN" serve --config "$config"
	GW_URL="http://127.0.0.1:$port/"
	GW_ADMIN="http://127.0.0.1:$admin"
	wait_status "$GW_ADMIN/readyz" 200
	curl -fsS -o /dev/null "${GW_URL}v1/device-server" -H "X-Forwarded-For: $ALLOWED_IP" \
		-H 'Content-Type: application/json' \
		-d "{\"description\":\"flood bench\",\"secret\":\"$GW_KEY\",\"permitted_ips\":[\"*\"]}" ||
		die "$name: device registration failed"
	wait_status "$GW_URL" 200 -H "$KEY_HEADER: $GW_KEY" -H "X-Forwarded-For: $ALLOWED_IP"
	wait_status "$GW_URL" 403 -H "$KEY_HEADER: $UNKNOWN_KEY" -H "X-Forwarded-For: $FLOOD_IP"
}

metric() { # ADMIN SAMPLE
	curl -fsS "$1/metrics" | awk -v s="$2" '$1 == s { print $2 }'
}

# One measurement of the allowed client, alone or beside the flood. Appends: gateway,
# scenario, round, allowed requests, duration (us), p50 (us), p99 (us), allowed
# answers >= 400, socket errors, flood requests, flood refusals limited.
measure() { # NAME SCENARIO(alone|flood) ROUND URL ADMIN KEY
	local name=$1 scenario=$2 round=$3 url=$4 admin=$5 key=$6 flood="" out line
	local limited_before limited_after flood_out=$WORK/flood-$name-$round.txt
	limited_before=$(metric "$admin" ipgate_refusals_limited_total)
	if [[ $scenario == flood ]]; then
		LOG_TO=$flood_out
		start timeout $((DURATION + 30)) wrk -t1 -c"$FLOOD_CONNECTIONS" -d"$((DURATION + 2))s" \
			-H "$KEY_HEADER: $UNKNOWN_KEY" -H "X-Forwarded-For: $FLOOD_IP" "$url"
		flood=$LAST_PID
		sleep 1 # the flood is at full rate before the measurement starts
	fi
	out=$(timeout $((DURATION + 30)) wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency \
		-s "$WORK/report.lua" -H "$KEY_HEADER: $key" -H "X-Forwarded-For: $ALLOWED_IP" "$url") ||
		die "wrk failed on $name $scenario"
	local flood_requests=0
	if [[ -n $flood ]]; then
		wait "$flood" || true
		stop_pid "$flood"
		flood_requests=$(awk '/requests in/ { print $1 }' "$flood_out")
	fi
	limited_after=$(metric "$admin" ipgate_refusals_limited_total)
	line=$(grep '^WRK ' <<<"$out") || die "no result from wrk on $name $scenario"
	printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$scenario" "$round" \
		"$(tr ' ' '\t' <<<"${line#WRK }")" "${flood_requests:-0}" \
		"$(awk -v a="$limited_after" -v b="$limited_before" 'BEGIN { printf "%d", a - b }')" >>"$RESULTS"
	note "  $name $scenario: p99 $(awk '{ printf "%.2f ms", $4 / 1000 }' <<<"${line#WRK }")"
}

report() {
	python3 - "$RESULTS" "$((DURATION + 2))" <<'EOF'
import statistics, sys
from collections import defaultdict
rows = defaultdict(list)
for line in open(sys.argv[1]):
    name, scenario, _round, req, dur, p50, p99, bad, sock, flood, limited = line.split("\t")
    rows[(name, scenario)].append(dict(rps=int(req) / (int(dur) / 1e6), p50=int(p50), p99=int(p99),
        bad=int(bad), sock=int(sock), flood=int(flood), limited=int(limited)))
def med(k, f):
    return statistics.median(r[f] for r in rows[k])
head = ("gateway", "scenario", "allowed req/s", "p50 ms", "p99 ms", "p99 vs alone",
        "flood req/s", "flood 429s", "check")
out = [head]
for name in ("limit", "no-limit"):
    for scenario in ("alone", "flood"):
        k = (name, scenario)
        if k not in rows:
            continue
        runs = rows[k]
        ratio = med(k, "p99") / med((name, "alone"), "p99")
        flood_rps = statistics.median(r["flood"] for r in runs) / float(sys.argv[2])
        flood = sum(r["flood"] for r in runs)
        limited = sum(r["limited"] for r in runs)
        wrong = sum(r["bad"] + r["sock"] for r in runs)
        out.append((name, scenario, f"{med(k, 'rps'):,.0f}", f"{med(k, 'p50') / 1000:.2f}",
                    f"{med(k, 'p99') / 1000:.2f}", f"{ratio:.2f}",
                    "-" if scenario == "alone" else f"{flood_rps:,.0f}",
                    "-" if scenario == "alone" else f"{100 * limited / max(flood, 1):.1f}%",
                    "ok" if wrong == 0 else f"{wrong} failed"))
widths = [max(len(str(r[i])) for r in out) for i in range(len(head))]
for n, r in enumerate(out):
    print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")
    if n == 0:
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
EOF
}

main() {
	have wrk || die "wrk not found (Debian: apt-get install wrk); nothing to measure with"
	have python3 || die "python3 not found"
	have curl || die "curl not found"
	if [[ ! -x $IPGATE_BIN ]]; then
		note "building $IPGATE_BIN (cargo build --release)"
		(cd "$ROOT" && cargo build --release)
	fi
	note "flood.sh: $ROUNDS rounds x 4 runs x ${DURATION}s (+3 s per flood run)," \
		"bounded by $((ROUNDS * 4 * (DURATION + 35) + 4 * READY_TIMEOUT))s"
	cat >"$WORK/report.lua" <<-'EOF'
		done = function(summary, latency, requests)
		  local e = summary.errors
		  io.write(string.format("WRK %d %d %d %d %d %d\n", summary.requests,
		    summary.duration, math.floor(latency:percentile(50)),
		    math.floor(latency:percentile(99)), e.status,
		    e.connect + e.read + e.write + e.timeout))
		end
	EOF
	start_upstream
	start_ipgate limit "$LIMIT"
	local limit_url=$GW_URL limit_admin=$GW_ADMIN limit_key=$GW_KEY
	start_ipgate no-limit 0
	local open_url=$GW_URL open_admin=$GW_ADMIN open_key=$GW_KEY
	local r
	for r in $(seq "$ROUNDS"); do
		note "round $r/$ROUNDS"
		measure limit alone "$r" "$limit_url" "$limit_admin" "$limit_key"
		measure limit flood "$r" "$limit_url" "$limit_admin" "$limit_key"
		measure no-limit alone "$r" "$open_url" "$open_admin" "$open_key"
		measure no-limit flood "$r" "$open_url" "$open_admin" "$open_key"
	done
	printf '\nflood.sh: allowed client wrk -t1 -c%s, flood wrk -t1 -c%s (unknown key), %s s per run,\n' \
		"$CONNECTIONS" "$FLOOD_CONNECTIONS" "$DURATION"
	printf '%s rounds, ipgate workers %s, log level %s, limit %s/s; upstream %s; %s cores\n' \
		"$ROUNDS" "$WORKERS" "$IPGATE_LOG_LEVEL" "$LIMIT" "$UPSTREAM_KIND" "$(nproc)"
	printf 'medians over rounds; flood req/s over its %s s; flood 429s: share of its answers\n\n' \
		"$((DURATION + 2))"
	report
}

main "$@"
