#!/usr/bin/env bash
# Load benchmark (issue 5, item 1): ipgate beside nginx's allow/deny and haproxy's `src`
# ACL, all in front of ONE upstream, on loopback, with equal worker counts, and beside
# bare-hyper (issue 12), the floor: a minimal hyper proxy doing the same check
# (benches/bare_hyper.rs), which shows how far ipgate is from what hyper allows.
#
#   benches/load.sh                                   # defaults below
#   DURATION=2 ROUNDS=1 SIZES="10 10000" benches/load.sh
#
# Knobs (environment):
#   DURATION=5            seconds per measurement (one wrk run)
#   ROUNDS=3              rounds; each round runs every target once, in turn (A B C A B C)
#   SIZES="10 10000 1000000"   allow-list sizes (credentials for ipgate, addresses for
#                         nginx and haproxy); each >= 2
#   WORKERS=1             nginx worker_processes = haproxy nbthread = ipgate server.workers
#   CONNECTIONS=64        wrk -t1 -c$CONNECTIONS
#   IPS_PER_CREDENTIAL=3  addresses on each ipgate credential
#   IPGATE_LOG_LEVEL=warn ipgate's [log] level; "info" adds its access log (a line per
#                         request; nginx and haproxy run without access logs)
#   IPGATE_REFUSALS_PER_SECOND=1000000000  ipgate's limits.refusals_per_second: the
#                         limiter runs (its cost is in every refusal) at a limit one
#                         client cannot reach; the default (100) would answer most of
#                         a refused run 429, held a second, as it is meant to
#   IPGATE_RECORD_USAGE=true  ipgate's insight.record_usage (usage counting on the hot
#                         path); false only to measure what counting costs
#   IPGATE_BIN=target/release/ipgate   built with `cargo build --release` if missing
#   BARE_BIN              the floor; built with `cargo bench --bench bare_hyper --no-run`
#                         when unset; BARE_BIN=none skips it
#   SWAP_EVERY=0.1        seconds between the writes of accepted_swapping
#   KEEP=0                1 keeps the work folder (configs, lists, logs, raw results)
#
# Installs nothing: wrk, nginx and haproxy come from Debian (`apt-get install wrk nginx
# haproxy`). Without nginx or haproxy that target is skipped with a note (and the
# upstream becomes a small python3 server); without wrk nothing can be measured.
#
# Paths measured, all from 127.0.0.1:
#   accepted     ipgate: a key whose list holds 127.0.0.1; nginx/haproxy: a list that
#                holds 127.0.0.1 (last in nginx's file: nginx checks rules in order)
#   refused_ip   ipgate: a known ACTIVE key whose list lacks 127.0.0.1 (wrk cannot bind
#                another source address); nginx/haproxy: a list without 127.0.0.1
#   unknown_key  ipgate and bare-hyper: a well-formed key that is not in the store
#   accepted_swapping  ipgate only: "accepted" while the key holder flips one of its
#                entries ACTIVE/INACTIVE through the management API every SWAP_EVERY
#                seconds: each write publishes a new snapshot under the load
# bare-hyper's accepted, refused_ip and unknown_key use keys of its own, as ipgate's:
# its map holds SIZE keys (an allowed address set each), 127.0.0.1 on the accepted one.
# CPU per request is user+sys of the target's processes (/proc/PID/stat) over a run,
# divided by the requests it answered; for "direct" it is the upstream's.
#
# Every port is picked free at run time, every process started here is stopped by its
# PID on exit, and every wait is bounded.

set -euo pipefail

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
SIZES=${SIZES:-"10 10000 1000000"}
WORKERS=${WORKERS:-1}
CONNECTIONS=${CONNECTIONS:-64}
IPS_PER_CREDENTIAL=${IPS_PER_CREDENTIAL:-3}
IPGATE_LOG_LEVEL=${IPGATE_LOG_LEVEL:-warn}
IPGATE_REFUSALS_PER_SECOND=${IPGATE_REFUSALS_PER_SECOND:-1000000000}
IPGATE_RECORD_USAGE=${IPGATE_RECORD_USAGE:-true}
SWAP_EVERY=${SWAP_EVERY:-0.1}
KEEP=${KEEP:-0}
KEY_HEADER="X-Bunq-Client-Authentication"
READY_TIMEOUT=300 # seconds a server may take to come up (1M-entry lists take a while)

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
IPGATE_BIN=${IPGATE_BIN:-$ROOT/target/release/ipgate}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ipgate-load.XXXXXX")
RESULTS=$WORK/results.tsv
CLK_TCK=$(getconf CLK_TCK)
STARTED=() # every PID this script started, for the EXIT trap

note() { printf '%s\n' "$*" >&2; }
die() {
	note "load.sh: $*"
	exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

# ---- process bookkeeping -------------------------------------------------------------

cleanup() {
	local pid
	for pid in "${STARTED[@]}"; do stop_pid "$pid"; done
	if [[ $KEEP == 1 ]]; then
		note "work folder kept: $WORK"
	else
		rm -rf "$WORK"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs "$@" in the background, logging to $LOG_TO; sets LAST_PID.
start() {
	"$@" >"$LOG_TO" 2>&1 &
	LAST_PID=$!
	STARTED+=("$LAST_PID")
}

# ---- test data -----------------------------------------------------------------------

# The i-th listed address: distinct, in 10.0.0.0/8, never 127.0.0.1.
# (python3 below repeats this formula.)
write_ip_lists() { # DIR SIZE: ok.lst (127.0.0.1 last) and no.lst, one address a line
	python3 - "$1" "$2" <<'EOF'
import sys
d, n = sys.argv[1], int(sys.argv[2])
def addr(i):
    i += 1
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
with open(f"{d}/ok.lst", "w") as f:
    f.writelines(addr(i) + "\n" for i in range(n - 1))
    f.write("127.0.0.1\n")
with open(f"{d}/no.lst", "w") as f:
    f.writelines(addr(i) + "\n" for i in range(n))
EOF
}

# Fills ipgate's store with SIZE ACTIVE credentials (IPS_PER_CREDENTIAL addresses each)
# by writing the SQLite file directly: a million CLI calls would take hours. The schema
# is the one `ipgate admin init` created (src/store/sqlite/schema.rs); key_hash is SHA-256 of the
# key's bytes; the change version is bumped so a poller would notice.
fill_store() { # DB SIZE KEY_OK KEY_NOIP USER_ID
	python3 - "$@" "$IPS_PER_CREDENTIAL" <<'EOF'
import hashlib, sqlite3, sys, time
db, n, key_ok, key_noip, user_id, per = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
ok_at, noip_at = n // 2, n // 2 + 1
now = int(time.time() * 1_000_000)
def key_hash(i):
    if i == ok_at:
        return hashlib.sha256(key_ok.encode()).digest()
    if i == noip_at:
        return hashlib.sha256(key_noip.encode()).digest()
    return hashlib.sha256(b"ipg_load_bench_%d" % i).digest()
def addr(k):
    k += 1
    return f"10.{(k >> 16) & 255}.{(k >> 8) & 255}.{k & 255}"
def ips():
    for i in range(n):
        for j in range(per):
            ip = "127.0.0.1" if (i == ok_at and j == 0) else addr(i * per + j)
            yield (i + 1, ip, "ACTIVE", now, now)
con = sqlite3.connect(db)
con.execute("PRAGMA journal_mode=DELETE")
con.execute("PRAGMA synchronous=OFF")
con.execute("PRAGMA cache_size=-262144")
with con:
    con.executemany(
        "INSERT INTO credentials (id, user_id, key_hash, status, created, updated) "
        "VALUES (?, ?, ?, 'ACTIVE', ?, ?)",
        ((i + 1, user_id, key_hash(i), now, now) for i in range(n)))
    con.executemany(
        "INSERT INTO permitted_ips (credential_id, ip, status, created, updated) "
        "VALUES (?, ?, ?, ?, ?)", ips())
    con.execute("UPDATE meta SET value = value + 1 WHERE name = 'change_version'")
con.execute("PRAGMA journal_mode=WAL")
con.close()
EOF
}

# Shaped like the keys ipgate prints: ipg_ and 43 base62 characters.
new_key() { echo "ipg_$(tr -dc 'A-Za-z0-9' </dev/urandom | head -c 43)"; }

# ---- targets: each start_* sets its URLs and PIDs ---------------------------------------

start_upstream() {
	local dir=$WORK/upstream port
	mkdir -p "$dir"
	port=$(free_ports 1)
	UPSTREAM_ADDR="127.0.0.1:$port"
	UPSTREAM_URL="http://$UPSTREAM_ADDR/"
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
		note "nginx not found: the upstream is a small python3 server (slower than nginx)"
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
	UPSTREAM_PID=$LAST_PID
	wait_status "$UPSTREAM_URL" 200
}

start_nginx() { # SIZE
	local size=$1 dir=$WORK/nginx-$1 ok no
	mkdir -p "$dir"
	write_ip_lists "$dir" "$size"
	sed 's/.*/allow &;/' "$dir/ok.lst" >"$dir/allow-ok.conf"
	sed 's/.*/allow &;/' "$dir/no.lst" >"$dir/allow-no.conf"
	read -r ok no <<<"$(free_ports 2)"
	# error_log crit: nginx logs every refused request at "error" level, a disk write per
	# request that neither haproxy nor ipgate (at warn) does.
	cat >"$dir/nginx.conf" <<-EOF
		worker_processes $WORKERS;
		daemon off;
		pid $dir/nginx.pid;
		error_log $dir/error.log crit;
		events { worker_connections 4096; }
		http {
		    access_log off;
		    client_body_temp_path $dir/tmp;
		    proxy_temp_path $dir/tmp;
		    fastcgi_temp_path $dir/tmp;
		    uwsgi_temp_path $dir/tmp;
		    scgi_temp_path $dir/tmp;
		    upstream up {
		        server $UPSTREAM_ADDR;
		        keepalive 64;
		    }
		    server {
		        listen 127.0.0.1:$ok;
		        location / {
		            include $dir/allow-ok.conf;
		            deny all;
		            proxy_pass http://up;
		            proxy_http_version 1.1;
		            proxy_set_header Connection "";
		        }
		    }
		    server {
		        listen 127.0.0.1:$no;
		        location / {
		            include $dir/allow-no.conf;
		            deny all;
		            proxy_pass http://up;
		            proxy_http_version 1.1;
		            proxy_set_header Connection "";
		        }
		    }
		}
	EOF
	LOG_TO=$dir/log
	start nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
	NGINX_PID=$LAST_PID
	NGINX_OK="http://127.0.0.1:$ok/"
	NGINX_NO="http://127.0.0.1:$no/"
	wait_status "$NGINX_OK" 200
	wait_status "$NGINX_NO" 403
}

start_haproxy() { # SIZE
	local size=$1 dir=$WORK/haproxy-$1 ok no
	mkdir -p "$dir"
	write_ip_lists "$dir" "$size"
	read -r ok no <<<"$(free_ports 2)"
	cat >"$dir/haproxy.cfg" <<-EOF
		global
		    nbthread $WORKERS
		    maxconn 4096
		defaults
		    mode http
		    timeout connect 5s
		    timeout client 30s
		    timeout server 30s
		    http-reuse always
		frontend ok
		    bind 127.0.0.1:$ok
		    acl listed src -f $dir/ok.lst
		    http-request deny unless listed
		    default_backend up
		frontend no
		    bind 127.0.0.1:$no
		    acl listed src -f $dir/no.lst
		    http-request deny unless listed
		    default_backend up
		backend up
		    server upstream $UPSTREAM_ADDR
	EOF
	LOG_TO=$dir/log
	start haproxy -f "$dir/haproxy.cfg" -db
	HAPROXY_PID=$LAST_PID
	HAPROXY_OK="http://127.0.0.1:$ok/"
	HAPROXY_NO="http://127.0.0.1:$no/"
	wait_status "$HAPROXY_OK" 200
	wait_status "$HAPROXY_NO" 403
}

start_ipgate() { # SIZE
	local size=$1 dir=$WORK/ipgate-$1 port admin user
	mkdir -p "$dir"
	read -r port admin <<<"$(free_ports 2)"
	cat >"$dir/config.toml" <<-EOF
		[server]
		listen = "127.0.0.1:$port"
		admin_listen = "127.0.0.1:$admin"
		workers = $WORKERS

		[upstream]
		url = "http://$UPSTREAM_ADDR"

		[store]
		url = "sqlite://ipgate.db"

		[limits]
		refusals_per_second = $IPGATE_REFUSALS_PER_SECOND

		[insight]
		record_usage = $IPGATE_RECORD_USAGE

		[log]
		level = "$IPGATE_LOG_LEVEL"
	EOF
	"$IPGATE_BIN" check-config "$dir/config.toml" >/dev/null
	# Only serve and `admin init` create a store; the users and keys come before serve.
	env -u RUST_LOG "$IPGATE_BIN" admin --config "$dir/config.toml" init >/dev/null 2>&1
	user=$(env -u RUST_LOG "$IPGATE_BIN" admin --config "$dir/config.toml" user add --name load-bench)
	IPGATE_KEY_OK=$(new_key)
	IPGATE_KEY_NOIP=$(new_key)
	IPGATE_KEY_UNKNOWN=$(new_key)
	fill_store "$dir/ipgate.db" "$size" "$IPGATE_KEY_OK" "$IPGATE_KEY_NOIP" "$user"
	LOG_TO=$dir/log
	start env -u RUST_LOG "$IPGATE_BIN" serve --config "$dir/config.toml"
	IPGATE_PID=$LAST_PID
	IPGATE_URL="http://127.0.0.1:$port/"
	wait_status "http://127.0.0.1:$admin/readyz" 200
	wait_status "$IPGATE_URL" 200 -H "$KEY_HEADER: $IPGATE_KEY_OK"
	wait_status "$IPGATE_URL" 403 -H "$KEY_HEADER: $IPGATE_KEY_NOIP"
	wait_status "$IPGATE_URL" 403 -H "$KEY_HEADER: $IPGATE_KEY_UNKNOWN"
	# The entry accepted_swapping flips: one of the accepted key's, not 127.0.0.1.
	local cred=$((size / 2 + 1)) item
	item=$(curl -fsS -H "$KEY_HEADER: $IPGATE_KEY_OK" \
		"${IPGATE_URL}v1/user/$user/credential-password-ip/$cred/ip" |
		python3 -c 'import json, sys
print(next(e["PermittedIp"]["id"] for e in json.load(sys.stdin)["Response"]
           if e["PermittedIp"]["ip"] != "127.0.0.1"))') || die "cannot find an entry to flip"
	IPGATE_FLIP_URL="${IPGATE_URL}v1/user/$user/credential-password-ip/$cred/ip/$item"
}

# The floor's executable: cargo prints where it put it.
build_bare() {
	note "building the floor (cargo bench --bench bare_hyper --no-run)"
	BARE_BIN=$(cd "$ROOT" && cargo bench --bench bare_hyper --no-run --message-format=json |
		python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "bare_hyper":
        print(m["executable"])')
	[[ -x $BARE_BIN ]] || die "no bare_hyper executable from cargo"
}

start_bare() { # SIZE
	local size=$1 dir=$WORK/bare-$1 port
	mkdir -p "$dir"
	port=$(free_ports 1)
	BARE_KEY_OK=$(new_key)
	BARE_KEY_NOIP=$(new_key)
	BARE_KEY_UNKNOWN=$(new_key)
	LOG_TO=$dir/log
	start "$BARE_BIN" "127.0.0.1:$port" "$UPSTREAM_ADDR" "$size" "$BARE_KEY_OK" "$BARE_KEY_NOIP"
	BARE_PID=$LAST_PID
	BARE_URL="http://127.0.0.1:$port/"
	wait_status "$BARE_URL" 200 -H "$KEY_HEADER: $BARE_KEY_OK"
	wait_status "$BARE_URL" 403 -H "$KEY_HEADER: $BARE_KEY_NOIP"
	wait_status "$BARE_URL" 403 -H "$KEY_HEADER: $BARE_KEY_UNKNOWN"
}

# Flips the entry behind IPGATE_FLIP_URL INACTIVE and ACTIVE again, SWAP_EVERY apart,
# until stopped; each answered write means a new snapshot was published. One kept-alive
# connection, so the driver itself costs the 2 cores as little as possible (a curl per
# write would fork and exec twenty times a second beside the load).
flip_entry() {
	python3 - "$IPGATE_FLIP_URL" "$KEY_HEADER" "$IPGATE_KEY_OK" "$SWAP_EVERY" <<'PY'
import http.client, sys, time, urllib.parse
url, header, key, every = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
u = urllib.parse.urlsplit(url)
conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
writes = 0
while True:
    for status in ("INACTIVE", "ACTIVE"):
        conn.request("PUT", u.path, body='{"status":"%s"}' % status, headers={header: key, "Content-Type": "application/json"})
        answer = conn.getresponse()
        answer.read()
        if answer.status != 200:
            sys.exit(f"write {writes}: HTTP {answer.status}")
        writes += 1
        time.sleep(every)
PY
}

# ---- measuring -------------------------------------------------------------------------

# One wrk run: appends size, target, path, round, expected status class, requests,
# duration (us), p50 (us), p99 (us), >=400 responses, socket errors, CPU ticks.
measure() { # SIZE TARGET PATH ROUND EXPECT(ok|refused) URL KEY PID...
	local size=$1 target=$2 path=$3 round=$4 expect=$5 url=$6 key=$7
	shift 7
	local args=(-t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$WORK/report.lua")
	if [[ -n $key ]]; then args+=(-H "$KEY_HEADER: $key"); fi
	local before after out line
	before=$(cpu_ticks "$@")
	out=$(timeout $((DURATION + 30)) wrk "${args[@]}" "$url") || die "wrk failed on $target $path"
	after=$(cpu_ticks "$@")
	line=$(grep '^WRK ' <<<"$out") || die "no result from wrk on $target $path"
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$size" "$target" "$path" "$round" "$expect" \
		"$(tr ' ' '\t' <<<"${line#WRK }")" "$((after - before))" >>"$RESULTS"
	note "  $target $size $path: $(awk '{printf "%.0f req/s", $1 / ($2 / 1e6)}' <<<"${line#WRK }")"
}

# One round over every target running for SIZE, in a fixed order (A B C A B C ...).
round() { # SIZE ROUND
	local size=$1 r=$2
	measure "$size" direct accepted "$r" ok "$UPSTREAM_URL" "" "$UPSTREAM_PID"
	if [[ -n ${NGINX_PID:-} ]]; then
		measure "$size" nginx accepted "$r" ok "$NGINX_OK" "" "$NGINX_PID"
		measure "$size" nginx refused_ip "$r" refused "$NGINX_NO" "" "$NGINX_PID"
	fi
	if [[ -n ${HAPROXY_PID:-} ]]; then
		measure "$size" haproxy accepted "$r" ok "$HAPROXY_OK" "" "$HAPROXY_PID"
		measure "$size" haproxy refused_ip "$r" refused "$HAPROXY_NO" "" "$HAPROXY_PID"
	fi
	if [[ -n ${BARE_PID:-} ]]; then
		measure "$size" bare-hyper accepted "$r" ok "$BARE_URL" "$BARE_KEY_OK" "$BARE_PID"
		measure "$size" bare-hyper refused_ip "$r" refused "$BARE_URL" "$BARE_KEY_NOIP" "$BARE_PID"
		measure "$size" bare-hyper unknown_key "$r" refused "$BARE_URL" "$BARE_KEY_UNKNOWN" "$BARE_PID"
	fi
	measure "$size" ipgate accepted "$r" ok "$IPGATE_URL" "$IPGATE_KEY_OK" "$IPGATE_PID"
	measure "$size" ipgate refused_ip "$r" refused "$IPGATE_URL" "$IPGATE_KEY_NOIP" "$IPGATE_PID"
	measure "$size" ipgate unknown_key "$r" refused "$IPGATE_URL" "$IPGATE_KEY_UNKNOWN" "$IPGATE_PID"
	LOG_TO=$WORK/flip-$size.log
	start flip_entry
	local flipper=$LAST_PID
	measure "$size" ipgate accepted_swapping "$r" ok "$IPGATE_URL" "$IPGATE_KEY_OK" "$IPGATE_PID"
	stop_pid "$flipper"
}

# The one table: medians over rounds, ratios of req/s within the same list size.
report() {
	python3 - "$RESULTS" "$CLK_TCK" <<'EOF'
import statistics, sys
from collections import defaultdict
rows = defaultdict(list)
for line in open(sys.argv[1]):
    size, target, path, _round, expect, req, dur, p50, p99, bad_status, sock, ticks = line.split("\t")
    rows[(int(size), target, path)].append(dict(
        expect=expect, req=int(req), rps=int(req) / (int(dur) / 1e6), p50=float(p50),
        p99=float(p99), status=int(bad_status), sock=int(sock), ticks=int(ticks)))
tick_us = 1e6 / int(sys.argv[2])
med = {k: statistics.median(r["rps"] for r in v) for k, v in rows.items()}
def ratio(size, path, other):
    # unknown_key has no nginx/haproxy counterpart: compare with their refused path
    if other != "direct" and (size, other, path) in med:
        return (size, other, path)
    same = {"unknown_key": "refused_ip", "accepted_swapping": "accepted"}.get(path, path)
    key = (size, other, "accepted" if other == "direct" else same)
    return key if key in med else None
head = ("target", "list", "path", "req/s", "±%", "p50 ms", "p99 ms", "cpu us/req",
        "vs direct", "vs nginx", "vs haproxy", "vs bare-hyper", "check")
out = [head]
order = {"direct": 0, "nginx": 1, "haproxy": 2, "bare-hyper": 3, "ipgate": 4}
for (size, target, path) in sorted(rows, key=lambda k: (k[0], order[k[1]], k[2])):
    runs = rows[(size, target, path)]
    rps = med[(size, target, path)]
    spread = (max(r["rps"] for r in runs) - min(r["rps"] for r in runs)) / rps * 100
    total = sum(r["req"] for r in runs)
    # "ok": no answer >= 400 for an accepted path, only such answers for a refused one
    wrong = sum(r["status"] if r["expect"] == "ok" else r["req"] - r["status"] for r in runs)
    sock = sum(r["sock"] for r in runs)
    check = "ok" if wrong == 0 and sock == 0 else f"{wrong} wrong, {sock} socket errors"
    cells = []
    for other in ("direct", "nginx", "haproxy", "bare-hyper"):
        k = ratio(size, path, other)
        cells.append(f"{rps / med[k]:.2f}" if k else "-")
    out.append((target, f"{size:,}" if target != "direct" else f"({size:,})", path, f"{rps:,.0f}",
                f"{spread:.0f}", f"{statistics.median(r['p50'] for r in runs) / 1000:.2f}",
                f"{statistics.median(r['p99'] for r in runs) / 1000:.2f}",
                f"{sum(r['ticks'] for r in runs) * tick_us / total:.1f}", *cells, check))
widths = [max(len(str(row[i])) for row in out) for i in range(len(head))]
for n, row in enumerate(out):
    print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")
    if n == 0:
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
EOF
}

# ---- main ------------------------------------------------------------------------------

main() {
	have wrk || die "wrk not found (Debian: apt-get install wrk); nothing to measure with"
	have python3 || die "python3 not found: it writes the lists and the store"
	have curl || die "curl not found: it checks that each target is up"
	local size r pid per_round=5 n_sizes=0
	for size in $SIZES; do
		[[ $size =~ ^[0-9]+$ && $size -ge 2 ]] || die "SIZES: $size is not a count >= 2"
		n_sizes=$((n_sizes + 1))
	done
	if have nginx; then per_round=$((per_round + 2)); else note "nginx not found: nginx skipped"; fi
	if have haproxy; then per_round=$((per_round + 2)); else note "haproxy not found: haproxy skipped"; fi
	if [[ ! -x $IPGATE_BIN ]]; then
		note "building $IPGATE_BIN (cargo build --release)"
		(cd "$ROOT" && cargo build --release)
	fi
	if [[ ${BARE_BIN:-} == none ]]; then
		BARE_BIN=""
		note "BARE_BIN=none: bare-hyper skipped"
	else
		[[ -n ${BARE_BIN:-} ]] || build_bare
		per_round=$((per_round + 3))
	fi

	local measuring=$((n_sizes * ROUNDS * per_round * DURATION))
	note "load.sh: $n_sizes list sizes x $ROUNDS rounds x $per_round runs x ${DURATION}s" \
		"= ${measuring}s of measurement, plus setup (about a minute per 1M-entry size);" \
		"bounded by $((measuring + n_sizes * ROUNDS * per_round * 30 + (n_sizes * 3 + 1) * READY_TIMEOUT))s"

	cat >"$WORK/report.lua" <<-'EOF'
		-- One machine-readable line per run: requests, duration (us), p50 (us), p99 (us),
		-- responses >= 400, socket errors. The key header comes from wrk -H.
		done = function(summary, latency, requests)
		  local e = summary.errors
		  io.write(string.format("WRK %d %d %d %d %d %d\n", summary.requests,
		    summary.duration, math.floor(latency:percentile(50)),
		    math.floor(latency:percentile(99)), e.status,
		    e.connect + e.read + e.write + e.timeout))
		end
	EOF

	start_upstream
	note "upstream: $UPSTREAM_KIND at $UPSTREAM_URL"
	for size in $SIZES; do
		note "list size $size: starting targets"
		NGINX_PID="" HAPROXY_PID="" BARE_PID=""
		if have nginx; then start_nginx "$size"; fi
		if have haproxy; then start_haproxy "$size"; fi
		if [[ -n $BARE_BIN ]]; then start_bare "$size"; fi
		start_ipgate "$size"
		for r in $(seq "$ROUNDS"); do
			note "list size $size: round $r/$ROUNDS"
			round "$size" "$r"
		done
		for pid in ${NGINX_PID:-} ${HAPROXY_PID:-} ${BARE_PID:-} "$IPGATE_PID"; do stop_pid "$pid"; done
	done

	printf '\nload.sh: wrk -t1 -c%s, %s s per run, %s rounds, %s worker(s) per target, ' \
		"$CONNECTIONS" "$DURATION" "$ROUNDS" "$WORKERS"
	printf 'upstream %s; %s cores (%s)\n' "$UPSTREAM_KIND" "$(nproc)" \
		"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
	printf 'req/s, p50, p99: medians over rounds; ±%%: spread of req/s over rounds; ratios of req/s;\n'
	printf 'direct (N): the upstream alone, measured in the rounds of list size N.\n\n'
	report
	if [[ $KEEP == 1 ]]; then cp "$RESULTS" "$WORK/results-final.tsv"; fi
}

main "$@"
