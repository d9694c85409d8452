#!/usr/bin/env bash
# Runs every README.md section that has commands the way a newcomer pastes them: each
# section's ```sh blocks, in order, in one fresh `bash` with a clean environment, in a
# fresh copy of the repository, one section after the other.
#
#   tests/readme/run.sh            every section
#   tests/readme/run.sh TEXT       only the sections whose heading contains TEXT
#
# What counts as passing:
# - every command succeeds (a failing command is reported with its README line);
# - every line of expected output the README shows is printed: a line of a block that
#   starts with `# ` is output of the commands above it (since the previous such line);
#   one that starts with `#` and two or more spaces continues the line before (joined
#   without the spaces). Compared in order, each against a whole output line, after
#   collapsing runs of blanks; `...` and `…` match anything, and a timestamp
#   (2026-11-30 03:12:41.000000) matches any; other output lines in between are
#   allowed;
# - the section stops what it starts: anything still running at its end is a failure
#   (and is then stopped, by PID), and its ports are free again afterwards; and it
#   removes its scratch folders ($PGDATA, $DEMO).
#
# The README's first block is not a section: its first command (the gateway) runs as
# the "first terminal" beside the sections named in FIRST_TERMINAL, and is stopped as
# Ctrl-C stops it; `cargo test` is CI's own step. The copy lives at a fixed path under
# target/ with its `target` linked to this repository's, so the release build is made
# once before the first section and every section's `cargo build --release` finds it
# fresh.
# Needs: cargo, python3, curl, openssl, git; PostgreSQL (Debian's postgresql) for
# "Many gateways". Uses the README's fixed ports (PORTS below): nothing else on this
# machine may listen on them.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"
ONLY=${1:-}
# The README's own ports: the sections' gateways, test APIs and PostgreSQL.
PORTS=(3000 5433 8080 8081 8082 8083 9090 9091 9092 9093)
# Sections that continue from the README's first command running in another terminal.
FIRST_TERMINAL=("Walkthrough")
SECTION_TIMEOUT=300
COPY=$REPO/target/readme/work
WORK=$(mktemp -d)
terminal_one=
section=
# Interrupted: stops the running section's and the first terminal's process groups (by
# their PIDs; a section's PostgreSQL, in a session of its own, is stopped by the
# section's epilogue, which a TERM runs).
cleanup() {
    local pgid
    for pgid in $section $terminal_one; do
        kill -TERM -- "-$pgid" 2>/dev/null || true
    done
    if [[ -n $section ]]; then wait "$section" 2>/dev/null || true; fi
    for pgid in $section $terminal_one; do
        kill -KILL -- "-$pgid" 2>/dev/null || true
    done
    rm -rf "$WORK" "$COPY"
}
trap cleanup EXIT

# A clean environment: what a new terminal has (HOME, USER, the system PATH with cargo
# on it), nothing this shell or CI exported (no CARGO_TARGET_DIR, no RUST_LOG).
cargo_bin=$(dirname "$(command -v cargo)")
clean_env=(env -i "HOME=$HOME" "USER=${USER:-$(id -un)}" "LANG=C.UTF-8" "TERM=dumb"
    "PATH=$cargo_bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
for var in RUSTUP_HOME CARGO_HOME RUSTUP_TOOLCHAIN; do
    if [[ -n ${!var:-} ]]; then clean_env+=("$var=${!var}"); fi
done

# --- the README, cut into sections ---------------------------------------------------
# For each section with commands: N.sh (its blocks, with the output of each stretch
# of commands sent to its own file) and N.json (title, expected output per stretch,
# the README line of each script line).
python3 - README.md "$WORK" >"$WORK/sections.tsv" <<'EOF'
import json, re, sys
readme, work = sys.argv[1:3]
lines = open(readme).read().split("\n")
sections, title, start, block, fence = [], None, 0, None, False
for n, line in enumerate(lines, 1):
    if line.startswith("```"):
        if fence:
            fence = False
            block = None
        else:
            fence = True
            block = [] if line.strip() == "```sh" else None
            if block is not None:
                sections[-1]["blocks"].append((n + 1, block))
        continue
    if fence:
        if block is not None:
            block.append(line)
        continue
    m = re.match(r"#{2,3} (.*)", line)
    if m or n == 1:
        sections.append({"title": m.group(1) if m else "(top)", "line": n, "blocks": []})
runnable = [s for s in sections if s["blocks"]]
if not runnable or runnable[0]["title"] != "(top)":
    sys.exit("README.md: the first block must come before the first section")
top = runnable.pop(0)
first = [l for l in top["blocks"][0][1] if l.strip()]
want = ["cargo run --release -- serve --config config.toml", "cargo test"]
if [l.split("#")[0].strip() for l in first] != want:
    sys.exit(f"README.md: the first block must be exactly {want}, is {first}")
open(f"{work}/first-command", "w").write(want[0])
for i, s in enumerate(runnable, 1):
    script, stretches, lineno = [], [], []
    def emit(text, readme_line):
        script.append(text)
        lineno.append(readme_line)
    def new_stretch(readme_line):
        stretches.append({"line": readme_line, "expect": []})
        emit(f'exec >"$README_OUT/{len(stretches)}.out"', readme_line)
    new_stretch(s["line"])
    for first_line, body in s["blocks"]:
        for k, line in enumerate(body):
            n = first_line + k
            if re.match(r"#( |$)", line):
                expect = stretches[-1]["expect"]
                text = line[2:]
                if re.match(r"\s{1,}\S", text) and expect:
                    expect[-1]["text"] += text.strip()
                else:
                    expect.append({"line": n, "text": text})
                continue
            if stretches[-1]["expect"]:
                new_stretch(n)
            emit(line, n)
    json.dump({"title": s["title"], "line": s["line"], "stretches": stretches,
               "lineno": lineno}, open(f"{work}/{i}.json", "w"))
    open(f"{work}/{i}.sh", "w").write("\n".join(script) + "\n")
    print(f"{i}\t{s['title']}")
EOF

# --- helpers ---------------------------------------------------------------------------
# A fresh copy of the repository (tracked and new files, modification times kept) at
# the fixed path, its target/ this repository's.
fresh_copy() {
    rm -rf "$COPY"
    mkdir -p "$COPY"
    if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git ls-files -z --cached --others --exclude-standard |
            while IFS= read -r -d '' f; do
                if [[ -e $f ]]; then printf '%s\0' "$f"; fi
            done |
            xargs -0 cp -a --parents -t "$COPY"
    else
        tar --exclude=./target -cf - . | tar -xf - -C "$COPY"
    fi
    ln -s "$REPO/target" "$COPY/target"
}

# Prints the README's ports that something listens on (a bind with SO_REUSEADDR, as
# the servers do, fails).
busy_ports() {
    python3 - "${PORTS[@]}" <<'EOF'
import socket, sys
for port in sys.argv[1:]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", int(port)))
    except OSError:
        print(port)
    finally:
        s.close()
EOF
}

# Waits up to $1 seconds for every port to be free; prints the busy ones if not.
ports_freed() {
    local deadline=$((SECONDS + $1)) busy
    while busy=$(busy_ports) && [[ -n $busy ]]; do
        if ((SECONDS >= deadline)); then
            echo "$busy" | tr '\n' ' '
            return 1
        fi
        sleep 0.2
    done
}

# Stops a process group: SIGINT or SIGTERM first, SIGKILL after 15 s. By its PID.
stop_group() {
    local pgid=$1 sig=$2 deadline=$((SECONDS + 15))
    kill "-$sig" -- "-$pgid" 2>/dev/null || return 0
    while kill -0 -- "-$pgid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            kill -KILL -- "-$pgid" 2>/dev/null || true
            return 0
        fi
        sleep 0.2
    done
}

# Starts the README's first command as the first terminal does, in its own process
# group, and waits until the gateway is ready.
start_first_terminal() {
    local log=$1 deadline=$((SECONDS + 120))
    (cd "$COPY" && exec setsid "${clean_env[@]}" bash --noprofile --norc -c \
        "$(cat "$WORK/first-command")" </dev/null >"$log" 2>&1) &
    terminal_one=$!
    until curl -sf -o /dev/null http://127.0.0.1:9090/readyz; do
        if ((SECONDS >= deadline)) || ! kill -0 "$terminal_one" 2>/dev/null; then
            echo "the README's first command did not become ready:" >&2
            tail -n 20 "$log" >&2
            return 1
        fi
        sleep 0.2
    done
}

# The section's script: a prelude (failed commands are recorded with their line), the
# README's commands, and an epilogue that reports and stops what is left running.
cat >"$WORK/prelude.sh" <<'EOF'
trap 'echo "$LINENO $? $BASH_COMMAND" >>"$README_OUT/failed"' ERR
trap 'echo "$LINENO timed out" >>"$README_OUT/failed"; README_END' TERM
README_END() {
    trap - ERR TERM
    exec >>"$README_OUT/epilogue.out" 2>&1
    local pids=() pid t
    for ((t = 0; t < 50; t++)); do
        pids=()
        for pid in $(jobs -p); do
            if kill -0 "$pid" 2>/dev/null; then pids+=("$pid"); fi
        done
        ((${#pids[@]})) || break
        sleep 0.1
    done
    if ((${#pids[@]})); then
        echo "left running: $(ps -o pid=,args= -p "$(IFS=,; echo "${pids[*]}")" | tr '\n' ';')"
        kill "${pids[@]}" 2>/dev/null
        sleep 2
        kill -KILL "${pids[@]}" 2>/dev/null
    fi
    if [[ -n ${PGDATA:-} && -e $PGDATA/postmaster.pid ]]; then
        echo "left running: PostgreSQL in $PGDATA"
        "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$PGDATA" stop -m fast >/dev/null
    fi
    # The scratch folders the sections make: each must remove its own.
    local dir
    for dir in "${PGDATA:-}" "${DEMO:-}"; do
        if [[ -n $dir && -d $dir ]]; then
            echo "left behind: $dir"
            rm -rf "$dir"
        fi
    done
    exit 0
}
EOF
section_script() {
    cat "$WORK/prelude.sh" "$WORK/$1.sh"
    echo "README_END"
}

# Compares what ran with what the README shows; prints the differences.
verify() {
    python3 - "$WORK/$1.json" "$2" "$(wc -l <"$WORK/prelude.sh")" <<'EOF'
import json, os, re, sys
spec, out, prelude = json.load(open(sys.argv[1])), sys.argv[2], int(sys.argv[3])
problems = []
def readme_line(script_line):
    i = script_line - prelude - 1
    return spec["lineno"][i] if 0 <= i < len(spec["lineno"]) else "?"
if os.path.exists(f"{out}/failed"):
    for entry in open(f"{out}/failed").read().splitlines():
        where, rest = entry.split(" ", 1)
        problems.append(f"README.md:{readme_line(int(where))}: failed (exit status, command): {rest}")
epilogue = f"{out}/epilogue.out"
if os.path.exists(epilogue):
    for line in open(epilogue).read().splitlines():
        if line.startswith("left running:"):
            problems.append(f"{spec['title']}: {line} (a section must stop what it starts)")
        if line.startswith("left behind:"):
            problems.append(f"{spec['title']}: {line} (a section must remove its scratch folder)")
norm = lambda s: " ".join(s.split())
STAMP = r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:\.\d+)?"
def pattern(text):
    p = re.escape(norm(text))
    p = re.sub(r"\\\.\\\.\\\.|…", lambda _: ".*", p)
    p = re.sub(r"\d{4}\\-\d\d\\-\d\d(?:\\ |T)\d\d:\d\d:\d\d(?:\\\.\d+)?", lambda _: STAMP, p)
    return re.compile(p)
for k, stretch in enumerate(spec["stretches"], 1):
    path = f"{out}/{k}.out"
    got = [norm(l) for l in open(path).read().splitlines()] if os.path.exists(path) else []
    at = 0
    for e in stretch["expect"]:
        p = pattern(e["text"])
        while at < len(got) and not p.fullmatch(got[at]):
            at += 1
        if at == len(got):
            shown = "\n      ".join(got) or "(nothing)"
            problems.append(f"README.md:{e['line']}: expected\n      {norm(e['text'])}\n"
                            f"    in the output of the commands above it:\n      {shown}")
            break
        at += 1
for p in problems:
    print("  " + p)
print(sum(len(s["expect"]) for s in spec["stretches"]), file=open(f"{out}/checked", "w"))
sys.exit(1 if problems else 0)
EOF
}

# --- run -----------------------------------------------------------------------------
# The README's own build, once, before the clock of any section starts: every
# section's `cargo build --release` then finds it fresh.
started=$SECONDS
echo "== cargo build --release (in the copy at $COPY)"
fresh_copy
(cd "$COPY" && "${clean_env[@]}" cargo build --release --quiet)
echo "  built in $((SECONDS - started)) s"
failed=()
passed=0
while IFS=$'\t' read -r -u 3 n title; do
    if [[ -n $ONLY && $title != *"$ONLY"* ]]; then continue; fi
    echo "== $title"
    t0=$SECONDS
    out=$WORK/out.$n
    mkdir -p "$out"
    if busy=$(busy_ports) && [[ -n $busy ]]; then
        echo "  ports in use before the section: $(echo "$busy" | tr '\n' ' ')(something else listens there)"
        failed+=("$title")
        continue
    fi
    fresh_copy
    section_script "$n" >"$WORK/section.$n.sh"
    terminal_one=
    for t in "${FIRST_TERMINAL[@]}"; do
        if [[ $title == "$t" ]]; then
            start_first_terminal "$out/first-terminal.log" || {
                stop_group "$terminal_one" KILL
                terminal_one=
                failed+=("$title")
                continue 2
            }
        fi
    done
    (cd "$COPY" && exec setsid "${clean_env[@]}" "README_OUT=$out" \
        bash --noprofile --norc "$WORK/section.$n.sh" </dev/null 2>"$out/stderr") &
    section=$!
    deadline=$((SECONDS + SECTION_TIMEOUT))
    while kill -0 "$section" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            echo "  timed out after ${SECTION_TIMEOUT}s"
            # The whole group, so that a command the shell waits for ends too and the
            # shell runs its epilogue.
            kill -TERM -- "-$section" 2>/dev/null || true
            sleep 5
            break
        fi
        sleep 0.2
    done
    wait "$section" || true
    # Whatever is left in the section's process group (the epilogue stopped its jobs).
    stop_group "$section" TERM
    section=
    if [[ -n $terminal_one ]]; then
        stop_group "$terminal_one" INT # Ctrl-C in the first terminal
        wait "$terminal_one" 2>/dev/null || true
        terminal_one=
    fi
    ok=1
    verify "$n" "$out" || ok=
    if ! busy=$(ports_freed 10); then
        echo "  ports still in use after the section: $busy"
        ok=
    fi
    if [[ -n $ok ]]; then
        passed=$((passed + 1))
        echo "  ok ($((SECONDS - t0)) s; $(cat "$out/checked") lines of output as shown)"
    else
        echo "  FAILED ($((SECONDS - t0)) s); its stderr:"
        sed 's/^/    | /' "$out/stderr" | tail -n 30
        failed+=("$title")
    fi
done 3<"$WORK/sections.tsv"

echo
echo "README: $passed sections passed, ${#failed[@]} failed in $((SECONDS - started)) s"
if ((passed + ${#failed[@]} == 0)); then
    echo "no section's heading contains '$ONLY'"
    exit 1
fi
if ((${#failed[@]})); then
    printf '  failed: %s\n' "${failed[@]}"
    exit 1
fi
