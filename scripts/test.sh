#!/usr/bin/env bash
# The whole test suite:
#   1. Rust unit and integration tests, the C tests and C examples (built against a fresh
#      libzcopy.so and the checked-in header), the install + pkg-config check, the verbs
#      struct-layout check and local-mode RDMA (no device);
#      Then the C tests and examples under ASan+UBSan and valgrind (scripts/sanitize.sh), and the
#      stress run (examples/stress.rs);
#   2. the Python package's pytest suite, against a fresh release build of libzcopy.so, in the
#      project venv .venv/ (scripts/venv.sh: made from $PYTHON, by default the distribution's
#      /usr/bin/python3; numpy, pytest, cffi, wheel, setuptools and the Mooncake Transfer Engine
#      wheel are installed into it with pip; torch tests skip when torch is absent);
#   3. the tests that need an RDMA device, on this host's device or in the Soft-RoCE VM
#      (scripts/rdma-tests.sh; reported as NOT RUN, never as passed, where neither exists).
# Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

# <infiniband/verbs.h> is needed to check the verbs struct layout and build the RDMA tests.
if [ ! -f /usr/include/infiniband/verbs.h ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "== installing libibverbs-dev"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libibverbs-dev >/dev/null
    else
        echo "test.sh: <infiniband/verbs.h> is missing: install libibverbs-dev (Debian/Ubuntu) or rdma-core-devel" >&2
        exit 1
    fi
fi

cargo test "$@"
bash scripts/sanitize.sh

echo "== stress (10 million checked operations, then one million live objects)"
cargo run --release --quiet --example stress

echo "== python"
# In the project venv (scripts/venv.sh: .venv/, made from $PYTHON, by default /usr/bin/python3).
# wheel and setuptools: tests/test_install.py builds the package without build isolation.
. scripts/venv.sh
zcopy_venv numpy pytest cffi wheel setuptools
# Mooncake Transfer Engine, for the interop test (which skips, saying why, if it cannot run).
if ! "$python" -c "import mooncake.engine" 2>/dev/null; then
    zcopy_venv mooncake-transfer-engine-non-cuda==0.3.13.post1 ||
        echo "test.sh: the Mooncake Transfer Engine wheel did not install; its interop test will skip"
fi
# torch, for the tensor paths (test_torch.py, the tensor cases of test_hostile.py, test_too_large.py
# and test_mooncake_store.py; they skip without it). The registry's default wheel brings CUDA
# libraries: about 3 GB to download once (5 to 6 minutes on a fresh machine), 5.3 GB in the venv.
if ! "$python" -c "import torch" 2>/dev/null; then
    zcopy_venv torch || echo "test.sh: torch did not install; the tensor tests will skip"
fi
# TransferQueue, for test_transferqueue.py (it skips, saying why, without it). Brings Ray and its
# dependencies: about 70 s and 420 MB in the venv.
if ! "$python" -c "import importlib.metadata as m; assert m.version('transferqueue') == '0.1.11'" 2>/dev/null; then
    zcopy_venv transferqueue==0.1.11 || echo "test.sh: transferqueue did not install; its tests will skip"
fi
# NIXL, for its interop test (which skips, saying why, if it cannot run). --no-deps: the wheel
# declares torch, which moving host memory does not need.
if ! "$python" -c "import importlib.metadata as m; assert m.version('nixl-cu12') == '1.5.1'" 2>/dev/null; then
    zcopy_venv --no-deps nixl-cu12==1.5.1 ||
        echo "test.sh: the NIXL wheel did not install; its interop test will skip"
fi
cargo build --release --lib --quiet
(cd python && "$python" -m pytest -q -rs tests)

bash scripts/rdma-tests.sh
