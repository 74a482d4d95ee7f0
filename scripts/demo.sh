#!/usr/bin/env bash
# The demo: the lifecycle through the C ABI with the zero-copy proof and the benchmark ratios
# (examples/demo.rs), then the store end to end: a zcopy-backed key-value server and clients on
# loopback, small and large values, against the same server copying on read
# (examples/store/demo.sh), then the Python package's numpy paths against pickle and copies
# (python/bench.py, run in the project venv .venv/ with numpy installed into it: scripts/venv.sh;
# $PYTHON chooses the interpreter it is made from, by default the distribution's /usr/bin/python3).
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

echo
echo "Python: arrays over pool memory against pickle and copies"
echo
. scripts/venv.sh
zcopy_venv numpy
cargo build --release --lib --quiet
PYTHONPATH=python "$python" python/bench.py "${quick[@]:1}"
