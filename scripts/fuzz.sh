#!/usr/bin/env bash
# Fuzzes the C ABI against a reference model of the lifecycle (fuzz/fuzz_targets/abi_model.rs):
#   1. the checked-in seed corpus (fuzz/corpus/abi_model) as a regression test, each input once;
#   2. a timed, coverage-guided run (default 120 s) starting from that corpus. New inputs go to
#      fuzz/scratch/abi_model (gitignored); with --update-corpus those that add coverage are
#      merged into the checked-in corpus afterwards.
# Ends with the plain line `fuzz: N passed, M failed` (the two runs) and exits non-zero if either
# found a crash, a model mismatch or a leak. A failing input is saved under fuzz/artifacts/abi_model/;
# replay it with `RUSTC_BOOTSTRAP=1 cargo fuzz run abi_model <file>` (ZC_FUZZ_TRACE=1 prints every
# call and its status).
#
# Usage: scripts/fuzz.sh [seconds] [--update-corpus]
# cargo-fuzz needs nightly flags: RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export RUSTC_BOOTSTRAP=1
# build.rs rewrites include/zcopy.h unless CI is set; a sanitizer build of the fuzz target is not
# where the header gets regenerated.
export CI=${CI:-true}

seconds=120
update=0
for arg in "$@"; do
    case "$arg" in
        --update-corpus) update=1 ;;
        ''|*[!0-9]*) echo "usage: scripts/fuzz.sh [seconds] [--update-corpus]" >&2; exit 2 ;;
        *) seconds=$arg ;;
    esac
done

target=abi_model
corpus=fuzz/corpus/$target
scratch=fuzz/scratch/$target
# Bounded: 2 GiB of RSS and 512 MiB per allocation; an input running 20 s is a hang.
limits=(-rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=20)
# Inputs up to 200 operations long from the start (the default grows the length limit slowly).
shape=(-max_len=2048 -len_control=0)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet || { echo "fuzz: 0 passed, 1 failed"; exit 1; }
fi

echo "== build ($target, address sanitizer)"
if ! cargo fuzz build "$target"; then
    echo "fuzz: 0 passed, 1 failed"
    exit 1
fi

passed=0
failed=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "== regression: $(find "$corpus" -type f | wc -l) inputs of $corpus, once each"
if cargo fuzz run "$target" "$corpus" -- -runs=0 "${limits[@]}" "${shape[@]}" 2>&1 | tee "$log" | grep -E '^#|ERROR|panicked|MISMATCH|SUMMARY'; [ "${PIPESTATUS[0]}" -eq 0 ]; then
    passed=$((passed + 1))
else
    failed=$((failed + 1))
    echo "regression: FAILED (see the input named above under fuzz/artifacts/$target/)"
fi

echo "== fuzzing for $seconds s (new inputs in $scratch)"
mkdir -p "$scratch"
start=$(date +%s)
if cargo fuzz run "$target" "$scratch" "$corpus" -- -max_total_time="$seconds" -print_final_stats=1 \
    "${limits[@]}" "${shape[@]}" >"$log" 2>&1; then
    passed=$((passed + 1))
else
    failed=$((failed + 1))
    grep -E -B2 -A12 'panicked|ERROR: libFuzzer|ERROR: AddressSanitizer|ERROR: LeakSanitizer' "$log" | head -60
    grep -E 'Test unit written to' "$log"
    echo "timed run: FAILED"
fi
elapsed=$(($(date +%s) - start))
done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1)
[ -n "$done_line" ] || done_line=$(grep -E '^#[0-9]+' "$log" | tail -1)
execs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}')
echo "timed run: ${execs:-?} executions in ${elapsed} s; last status: ${done_line:-none}"

if [ "$update" = 1 ] && [ "$failed" = 0 ]; then
    echo "== merging new coverage from $scratch into $corpus"
    before=$(find "$corpus" -type f | wc -l)
    # Set-cover merge on edges alone (no hit counts): only inputs that reach new code are added,
    # which keeps the checked-in corpus at a few dozen files.
    cargo fuzz run "$target" "$corpus" "$scratch" -- -set_cover_merge=1 -use_counters=0 \
        "${limits[@]}" "${shape[@]}" >"$log" 2>&1 \
        || { cat "$log" | tail -20; failed=$((failed + 1)); }
    echo "corpus: $before -> $(find "$corpus" -type f | wc -l) files, $(du -sk "$corpus" | cut -f1) KiB"
fi

echo "fuzz: $passed passed, $failed failed"
[ "$failed" = 0 ]
