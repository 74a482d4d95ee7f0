#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests, the C tests and C examples (built against
# the fresh libzcopy.so and the checked-in header), and the install + pkg-config check.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test "$@"
