#!/usr/bin/env bash
# The snapshot lookup under cachegrind (issue 18, item 4): instructions, data reads and
# cache misses per lookup at 10 and 1,000,000 credentials, where wall time on this
# shared machine moves by 8x between runs minutes apart.
#
#   benches/lookup_cache.sh                       # M=1000000, every row below
#   SIZES=1000000 KEYS=spread M=200000 benches/lookup_cache.sh
#
# Each row runs `benches/decision.rs` in its IPGATE_BENCH_LOOKUP mode twice under
# `valgrind --tool=cachegrind --cache-sim=yes`, with M and 2M lookups, and divides the
# difference by M: building the snapshot, the first touches of the table and exit
# cancel out, and what is left is the steady state of one lookup. Counts repeat
# exactly on the same binary.
#
#   KEYS=spread   every credential once per SIZE lookups, in a shuffled order: a large
#                 fleet's traffic, each lookup a part of the table nobody touched lately
#   KEYS=hot      the same key every time: one busy client
#   KEYS=4096     4,096 credentials taken in turn: what `cargo bench --bench decision`
#                 rotates through, at 1M about 1 MB of table, which the 32 MB L3 holds
#
#   probe         reads the next (digest, address) pair and nothing more: the cost the
#                 rows below pay beside the lookup (the pairs are read in order, so
#                 about one cache line per lookup at 1M: cachegrind has no prefetcher)
#   sharded_get   the snapshot's own map (shard by the digest's last byte, then the
#                 shard's map) and the address check, as `decide` makes them
#   flat_get      the same entries in one flat map with the same hasher: the layout
#                 before sharding
#   decide        `acl::decide`: the lookup, state, expiry and the address check
#   unknown_key   `acl::decide` for a key no credential has (the same shard, another
#                 place in it): the refusal of an unknown key, which reads no entry
#
# The "lookup alone" columns are a row minus the probe row of the same size and keys.
# The simulated caches are this machine's, given explicitly (cachegrind's guess from
# cpuid here is a 256 MB direct-mapped LL, which would hold the whole table): 32 KB
# 8-way D1 and I1, and the 32 MB 16-way L3 as LL; cachegrind has no L2 level. Its LL
# misses are the DRAM reads a lookup waits for.
#
# Knobs: M=1000000, SIZES="10 1000000", KEYS="spread hot",
# VARIANTS="probe sharded_get flat_get decide unknown_key", CACHES (the --I1, --D1
# and --LL options), DECISION_BIN (built with `cargo bench --bench decision --no-run`
# when unset).
# Needs valgrind and python3.

set -euo pipefail

M=${M:-1000000}
M2=$((2 * M))
SIZES=${SIZES:-"10 1000000"}
KEYS=${KEYS:-"spread hot"}
VARIANTS=${VARIANTS:-"probe sharded_get flat_get decide unknown_key"}
CACHES=${CACHES:-"--I1=32768,8,64 --D1=32768,8,64 --LL=33554432,16,64"}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ipgate-lookup.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

if [[ -z ${DECISION_BIN:-} ]]; then
	echo "building the bench (cargo bench --bench decision --no-run)" >&2
	DECISION_BIN=$(cd "$ROOT" && cargo bench --bench decision --no-run --message-format=json |
		python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "decision":
        print(m["executable"])')
fi
[[ -x $DECISION_BIN ]] || { echo "no decision bench binary ($DECISION_BIN)" >&2; exit 1; }

# The totals of one run: Ir I1mr ILmr Dr D1mr DLmr Dw D1mw DLmw.
totals() {
	# shellcheck disable=SC2086 # CACHES is a list of options
	if ! IPGATE_BENCH_LOOKUP=$1 valgrind --tool=cachegrind --cache-sim=yes $CACHES \
		--cachegrind-out-file="$WORK/cachegrind.out" "$DECISION_BIN" >/dev/null 2>"$WORK/valgrind.err"; then
		cat "$WORK/valgrind.err" >&2
		exit 1
	fi
	sed -n 's/^summary: //p' "$WORK/cachegrind.out"
}

for size in $SIZES; do
	for keys in $KEYS; do
		for variant in $VARIANTS; do
			echo "$size $keys $variant: $M and $M2 lookups" >&2
			one=$(totals "$variant:$keys:$size:$M")
			two=$(totals "$variant:$keys:$size:$M2")
			echo "$size $keys $variant $one $two" >>"$WORK/runs"
		done
	done
done

python3 - "$WORK/runs" "$M" "$CACHES" <<'EOF'
import sys
runs, m, caches = sys.argv[1], int(sys.argv[2]), sys.argv[3]
EVENTS = "Ir I1mr ILmr Dr D1mr DLmr Dw D1mw DLmw".split()
rows = {}
for line in open(runs):
    size, keys, variant, *counts = line.split()
    a = dict(zip(EVENTS, map(int, counts[:9])))
    b = dict(zip(EVENTS, map(int, counts[9:])))
    d = {e: (b[e] - a[e]) / m for e in EVENTS}
    # Per lookup: instructions, data reads, D1 misses and LL misses (reads and writes).
    rows[size, keys, variant] = (d["Ir"], d["Dr"], d["D1mr"] + d["D1mw"], d["DLmr"] + d["DLmw"])
print(f"M = {m:,} lookups, caches: {caches}")
print()
print("| credentials | keys | variant | Ir | Dr | D1 misses | LL misses | lookup alone: Ir | Dr | D1 | LL |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for (size, keys, variant), r in rows.items():
    # round() + 0.0: a difference of -0.000001 is shown as 0.00, not -0.00.
    show = lambda xs: [f"{round(x, 2) + 0.0:,.{p}f}" for x, p in zip(xs, (1, 1, 2, 2))]
    cells = [f"{int(size):,}", keys, variant] + show(r)
    probe = rows.get((size, keys, "probe"))
    if probe and variant != "probe":
        cells += show([x - p for x, p in zip(r, probe)])
    else:
        cells += ["", "", "", ""]
    print("| " + " | ".join(cells) + " |")
EOF
