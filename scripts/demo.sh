#!/usr/bin/env bash
# The demo: the lifecycle through the C ABI with the zero-copy proof and the benchmark ratios
# (examples/demo.rs), then the store end to end: a zcopy-backed key-value server and clients on
# loopback, small and large values, against the same server copying on read
# (examples/store/demo.sh), then the Python package's numpy paths against pickle and copies
# (python/bench.py, run in the project venv .venv/ with numpy installed into it: scripts/venv.sh;
# $PYTHON chooses the interpreter it is made from, by default the distribution's /usr/bin/python3),
# then shared pools read by other processes against private pools, a hash map and plain shared
# memory (benches/shared.rs, python/bench_shared.py), then Mooncake Store through a zcopy pool
# against Mooncake's own calls (python/bench_mooncake.py) and NIXL transfers with the pool
# registered once against per-buffer registration (python/bench_nixl.py), then TransferQueue on
# zcopy's Mooncake backend against its own backends (examples/python/transferqueue_backend.py,
# python/bench_transferqueue.py); their packages are installed into the venv, and each says why
# where it cannot run.
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

echo
echo "Shared pools: objects read by other processes, against private pools, a hash map and plain shared memory"
echo
cargo bench --quiet --bench shared "${quick[@]}"
echo
PYTHONPATH=python "$python" python/bench_shared.py "${quick[@]:1}"

echo
echo "Mooncake Store: values got into and put from a zcopy pool registered once, against Mooncake's own calls"
echo
# The wheel ships the store and its master; exit 77 means it cannot run here (the reason is printed).
"$python" -c "import mooncake.store" 2>/dev/null ||
    zcopy_venv mooncake-transfer-engine-non-cuda==0.3.13.post1 ||
    echo "demo.sh: the Mooncake wheel did not install; its benchmark will say it cannot run"
# Tensors are what Mooncake's get_tensor returns; without torch the benchmark compares arrays.
"$python" -c "import torch" 2>/dev/null || zcopy_venv torch ||
    echo "demo.sh: torch did not install; the benchmark compares arrays instead of tensors"
PYTHONPATH=python "$python" python/bench_mooncake.py "${quick[@]:1}" || [ $? = 77 ]

echo
echo "NIXL: two processes' pools registered once, against registering each buffer per transfer"
echo
"$python" -c "import importlib.metadata as m; assert m.version('nixl-cu12') == '1.5.1'" 2>/dev/null ||
    zcopy_venv --no-deps nixl-cu12==1.5.1 ||
    echo "demo.sh: the NIXL wheel did not install; its benchmark will say it cannot run"
PYTHONPATH=python "$python" python/bench_nixl.py "${quick[@]:1}" || [ $? = 77 ]

echo
echo "TransferQueue: KV put/get on zcopy's Mooncake backend against its MooncakeStore and SimpleStorage backends"
echo
"$python" -c "import importlib.metadata as m; assert m.version('transferqueue') == '0.1.11'" 2>/dev/null ||
    zcopy_venv transferqueue==0.1.11 ||
    echo "demo.sh: transferqueue did not install; its example and benchmark will say they cannot run"
PYTHONPATH=python "$python" examples/python/transferqueue_backend.py || [ $? = 77 ]
PYTHONPATH=python "$python" python/bench_transferqueue.py "${quick[@]:1}" || [ $? = 77 ]
