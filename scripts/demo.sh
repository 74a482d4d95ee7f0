#!/usr/bin/env bash
# The demo: the lifecycle through the C ABI with the zero-copy proof and the benchmark ratios
# (examples/demo.rs), then the store end to end: a zcopy-backed key-value server and clients on
# loopback, small and large values, against the same server copying on read
# (examples/store/demo.sh).
#
#   bash scripts/demo.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
quick=()
if [ "${1:-}" = "--quick" ]; then
    quick=(-- --quick)
    export ROUNDS=${ROUNDS:-1} SECONDS_PER_GET=${SECONDS_PER_GET:-1}
fi
cargo run --release --quiet --example demo "${quick[@]}"
echo
echo "The store: PUT receives into the pool, GET sends from it; against the same server copying on read"
echo
bash examples/store/demo.sh
