#!/usr/bin/env bash
# Idle connections (issue 9, item 7): hold IDLE (default 20,000) connections that never
# send a byte, then show that a new client is still served, and how fast.
#
#   benches/connections.sh
#   IDLE=5000 benches/connections.sh
#
# Two gateways, one after the other:
#   below_cap  server.max_connections above the idle count: every idle connection is held
#   at_cap     server.max_connections = 10,000 (the default): past the cap, an idle
#              connection makes room for each new one
# server.header_read_timeout is raised to 300 s for both, so that the idle connections
# stay for the measurement (with the default 10 s the gateway would close them itself).
#
# Knobs: IDLE=20000, IPGATE_BIN=target/release/ipgate, KEEP=0.
# The clients are several python3 processes of at most 9,000 connections each (one
# process cannot hold more descriptors than its limit). The gateway below its cap holds
# every connection, so that run holds min(IDLE, open file limit - 2,000). Connections
# come from 127.0.0.2 upwards (loopback, 1,000 per address at most), so the ephemeral
# ports of one address never run out. Every process started here is stopped
# by its PID on exit, and every wait is bounded.

set -euo pipefail

IDLE=${IDLE:-20000}
KEEP=${KEEP:-0}
KEY_HEADER="X-Bunq-Client-Authentication"
READY_TIMEOUT=60
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
IPGATE_BIN=${IPGATE_BIN:-$ROOT/target/release/ipgate}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ipgate-conns.XXXXXX")
STARTED=()

note() { printf '%s\n' "$*" >&2; }
die() {
	note "connections.sh: $*"
	exit 1
}

cleanup() {
	local pid
	for pid in "${STARTED[@]}"; do stop_pid "$pid"; done
	if [[ $KEEP == 1 ]]; then note "work folder kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Holds N silent connections to PORT from 127.0.0.(FIRST..), 1,000 per address, until
# the file STOP exists (at most 600 s). Writes "ready" to READY once all are open.
hold() { # N FIRST PORT READY STOP
	python3 - "$@" <<'EOF'
import os, socket, sys, time
n, first, port, ready, stop = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
held = []
for i in range(n):
    s = socket.socket()
    s.bind((f"127.0.0.{first + i // 1000}", 0))
    s.connect(("127.0.0.1", port))
    held.append(s)
open(ready, "w").write("ready\n")
deadline = time.monotonic() + 600
while not os.path.exists(stop) and time.monotonic() < deadline:
    time.sleep(0.1)
EOF
}

# One gateway with CAP, IDLE silent connections, one new client; prints a table row.
run() { # NAME CAP IDLE
	local name=$1 cap=$2 idle=$3 dir=$WORK/$1 port admin upstream_port config user key pid
	local holders=() started opened part first=2 left i
	mkdir -p "$dir"
	read -r port admin upstream_port <<<"$(free_ports 3)"
	config=$dir/config.toml
	cat >"$config" <<-EOF
		[server]
		listen = "127.0.0.1:$port"
		admin_listen = "127.0.0.1:$admin"
		workers = 1
		header_read_timeout = "300s"
		max_connections = $cap

		[upstream]
		url = "http://127.0.0.1:$upstream_port"

		[store]
		url = "sqlite://ipgate.db"

		[log]
		level = "warn"
	EOF
	# Only serve and `admin init` create a store; the users and keys come before serve.
	env -u RUST_LOG "$IPGATE_BIN" admin --config "$config" init >/dev/null 2>&1
	user=$(env -u RUST_LOG "$IPGATE_BIN" admin --config "$config" user add --name conns)
	key=$(env -u RUST_LOG "$IPGATE_BIN" admin --config "$config" key create --user "$user")
	env -u RUST_LOG "$IPGATE_BIN" serve --config "$config" >"$dir/log" 2>&1 &
	pid=$!
	STARTED+=("$pid")
	wait_status "http://127.0.0.1:$admin/readyz" 200
	# The new client's key, for 127.0.0.1. Nothing listens at the upstream, so an
	# allowed request is a 502 from the gateway itself: all this measures is that the
	# gateway took the connection and answered it.
	curl -fsS -o /dev/null "http://127.0.0.1:$port/v1/device-server" -H 'Content-Type: application/json' \
		-d "{\"description\":\"conns\",\"secret\":\"$key\",\"permitted_ips\":[\"*\"]}" ||
		die "$name: registration failed"
	# Holders of at most PER_HOLDER connections each.
	started=$(date +%s.%N)
	left=$idle
	i=0
	while ((left > 0)); do
		part=$((left < PER_HOLDER ? left : PER_HOLDER))
		hold "$part" "$first" "$port" "$dir/ready-$i" "$dir/stop" >"$dir/holder-$i.log" 2>&1 &
		holders+=("$!")
		STARTED+=("$!")
		first=$((first + part / 1000 + 1))
		left=$((left - part))
		i=$((i + 1))
	done
	for i in $(seq 0 $((${#holders[@]} - 1))); do
		for _ in $(seq 1200); do
			[[ -e $dir/ready-$i ]] && break
			kill -0 "${holders[$i]}" 2>/dev/null || die "$name: holder $i failed: $(cat "$dir/holder-$i.log")"
			sleep 0.1
		done
		[[ -e $dir/ready-$i ]] || die "$name: holder $i not ready in 120 s"
	done
	opened=$(python3 -c "import time; print(f'{time.time() - $started:.1f}')")
	timeout 300 python3 - "$name" "$cap" "$idle" "$port" "$admin" "$pid" "$KEY_HEADER" "$key" "$opened" <<'EOF'
import socket, sys, time, urllib.request
name, cap, idle, port, admin, pid, header, key, opened = sys.argv[1:]
cap, idle, port = int(cap), int(idle), int(port)

def metric(sample):
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.split(" ")[0] == sample:
            return float(line.split(" ")[1])
    sys.exit(f"{sample} missing")

def rss_mib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

want = min(idle, cap)
deadline = time.monotonic() + 120
while metric("ipgate_open_connections") != want:
    if time.monotonic() > deadline:
        sys.exit(f"{name}: open connections stayed at {metric('ipgate_open_connections')}, wanted {want}")
    time.sleep(0.2)
open_now = metric("ipgate_open_connections")
rss = rss_mib()

# The new client: one request on a fresh connection, timed.
t = time.monotonic()
s = socket.create_connection(("127.0.0.1", port), timeout=30)
s.sendall(f"GET / HTTP/1.1\r\nhost: x\r\n{header}: {key}\r\nconnection: close\r\n\r\n".encode())
answer = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    answer += chunk
served_ms = (time.monotonic() - t) * 1000
status = answer.split(b" ")[1].decode() if answer else "closed"
print("\t".join(str(v) for v in (name, cap, idle, opened, int(open_now),
      f"{rss:.0f}", int(metric("ipgate_connections_evicted_total")),
      int(metric("ipgate_connections_refused_total")), status, f"{served_ms:.1f}")))
EOF
	touch "$dir/stop"
	for i in "${holders[@]}"; do stop_pid "$i"; done
	stop_pid "$pid"
}

main() {
	command -v python3 >/dev/null || die "python3 not found"
	command -v curl >/dev/null || die "curl not found"
	if [[ ! -x $IPGATE_BIN ]]; then
		note "building $IPGATE_BIN (cargo build --release)"
		(cd "$ROOT" && cargo build --release)
	fi
	local limit below
	limit=$(ulimit -n)
	# The gateway holds every connection below its cap: that needs as many descriptors.
	below=$((IDLE < limit - 2000 ? IDLE : limit - 2000))
	PER_HOLDER=$((limit - 500 < 9000 ? limit - 500 : 9000))
	note "connections.sh: open file limit $limit; $IDLE idle connections at the cap," \
		"$below below it"
	{
		printf 'gateway\tmax_connections\tidle held by clients\topened in s\topen at the gateway\tgateway RSS MiB\tevicted\trefused\tnew client\tnew client ms\n'
		run below_cap $((below + 1000)) "$below"
		run at_cap 10000 "$IDLE"
	} >"$WORK/results.tsv"
	printf '\nconnections.sh: %s idle connections (no byte sent), then one new client; %s cores\n\n' \
		"$IDLE" "$(nproc)"
	python3 - "$WORK/results.tsv" <<'EOF'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
for n, r in enumerate(rows):
    print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    if n == 0:
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
EOF
}

main "$@"
