# shellcheck shell=bash
# Shell helpers the load scripts share (load.sh, flood.sh, connections.sh): sourced,
# never run. The script that sources it defines STARTED=() (PIDs it started),
# READY_TIMEOUT (seconds) and die().

# Stops one process this script started (TERM, then KILL after 5 s) and forgets it.
stop_pid() {
	local pid=$1 i kept=()
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null || true
		for i in $(seq 50); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
	for i in "${STARTED[@]}"; do [[ $i == "$pid" ]] || kept+=("$i"); done
	STARTED=("${kept[@]}")
}

# N free loopback ports, space-separated (held only while asked, then released).
free_ports() {
	python3 - "$1" <<'EOF'
import socket, sys
held = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    held.append(s)
print(" ".join(str(s.getsockname()[1]) for s in held))
EOF
}

# Polls URL (curl arguments after the first two) until it answers WANT.
wait_status() {
	local url=$1 want=$2 i got
	shift 2
	for i in $(seq $((READY_TIMEOUT * 5))); do
		got=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$@" "$url" || true)
		[[ $got == "$want" ]] && return 0
		sleep 0.2
	done
	die "$url answered $got, expected $want, after ${READY_TIMEOUT}s"
}

# user+sys clock ticks of the given PIDs and their children (nginx workers).
cpu_ticks() {
	local total=0 pid child
	for pid in "$@"; do
		for child in $pid $(pgrep -P "$pid" || true); do
			[[ -r /proc/$child/stat ]] || continue
			total=$((total + $(sed 's/^.*) //' "/proc/$child/stat" | awk '{print $12 + $13}')))
		done
	done
	echo "$total"
}
