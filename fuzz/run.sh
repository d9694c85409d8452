#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for a fixed time each, one after the
# other, and exits non-zero when any of them found a crash, a leak, a timeout or an
# out-of-memory input, naming the file that reproduces it.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, every target)
#
# Environment: FUZZ_SANITIZER (address, the default, or none), FUZZ_PROFILE (release,
# the default, or dev: no optimisation, a quicker first build for a short smoke),
# FUZZ_RSS_LIMIT_MB (default 2048), FUZZ_TIMEOUT (seconds one input may take, default
# 10). Builds other than the default go to their own folder under target/, so that
# switching does not rebuild everything.
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`); runs on the stable toolchain
# through RUSTC_BOOTSTRAP=1, since cargo-fuzz passes nightly-only flags.
set -euo pipefail

seconds=${1:-60}
if [[ $# -gt 0 ]]; then
    shift
fi
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]" >&2
    exit 64
fi
sanitizer=${FUZZ_SANITIZER:-address}
profile=${FUZZ_PROFILE:-release}
rss_limit_mb=${FUZZ_RSS_LIMIT_MB:-2048}
timeout=${FUZZ_TIMEOUT:-10}

cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1

build=(--sanitizer "$sanitizer")
case $profile in
release) ;;
dev) build+=(--dev) ;;
*)
    echo "FUZZ_PROFILE must be release or dev, not $profile" >&2
    exit 64
    ;;
esac
if [[ $sanitizer != address || $profile != release ]]; then
    build+=(--target-dir "target/$sanitizer-$profile")
fi

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

# Built once up front, so that each target's time is spent fuzzing.
if [[ ${#targets[@]} -eq 1 ]]; then
    cargo fuzz build "${build[@]}" "${targets[0]}"
else
    cargo fuzz build "${build[@]}"
fi

mkdir -p logs
failed=()
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target"
    dirs=("corpus/$target")
    if [[ -d "seeds/$target" ]]; then
        dirs+=("seeds/$target")
    fi
    options=(
        "-max_total_time=$seconds"
        "-rss_limit_mb=$rss_limit_mb"
        "-timeout=$timeout"
        "-print_final_stats=1"
    )
    if [[ -f "dicts/$target.dict" ]]; then
        options+=("-dict=dicts/$target.dict")
    fi
    log="logs/$target.log"
    echo "== $target: ${seconds}s (log: fuzz/$log)"
    if cargo fuzz run "${build[@]}" "$target" "${dirs[@]}" -- "${options[@]}" \
        >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        echo "   ok: ${runs:-?} inputs run"
    else
        failed+=("$target")
        echo "   FAILED; the input that reproduces it:" >&2
        sed -n 's/^.*Test unit written to /   /p' "$log" >&2
        grep -E "panicked at|^SUMMARY|ERROR: libFuzzer" "$log" | head -n 5 | sed 's/^/   /' >&2
    fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzzing found problems in: ${failed[*]}" >&2
    echo "reproduce with: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run ${build[*]} TARGET ARTIFACT)" >&2
    exit 1
fi
echo "fuzzing: ${#targets[@]} targets, ${seconds}s each, no crash"
