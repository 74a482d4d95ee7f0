#!/usr/bin/env bash
# Builds the store's server and client against a fresh release libzcopy.so:
#   bash examples/store/build.sh        -> target/store/zcopy-store-server, target/store/zcopy-store-client
#                                          and target/store/store-rdma-test (RDMA builds only)
# The binaries find the library through an rpath to target/store/lib, which links libzcopy.so and
# the libzcopy.so.0 its SONAME asks for to target/release/libzcopy.so.
# With <infiniband/verbs.h> (libibverbs-dev) the programs get the RDMA path and link -libverbs
# (libzcopy itself never does); without it they are TCP-only. ZCS_RDMA=0 forces TCP-only.
# The library is built in $CARGO_TARGET_DIR when that is set (tests/store.rs sets it: the target
# folder of a running `cargo test` is locked); the programs always go to target/store/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
lib_target="${CARGO_TARGET_DIR:-target}"
case "$lib_target" in /*) ;; *) lib_target="$root/$lib_target" ;; esac
cargo build --release --lib --quiet
out="$root/target/store"
mkdir -p "$out/lib"
ln -sf "$lib_target/release/libzcopy.so" "$out/lib/libzcopy.so"
ln -sf "$lib_target/release/libzcopy.so" "$out/lib/libzcopy.so.0"
CXX="${CXX:-g++}"
flags=(-std=c++17 -O2 -g -Wall -Wextra -Wpedantic -Werror -pthread -I "$root/include")
link=(-L "$out/lib" -lzcopy "-Wl,-rpath,$out/lib")
rdma=0
if [ "${ZCS_RDMA:-1}" != 0 ] && [ -f /usr/include/infiniband/verbs.h ]; then
    rdma=1
    link+=(-libverbs)
else
    flags+=(-DZCS_NO_RDMA)
fi
# They compile in parallel; `wait` on each PID so a failure of any fails the build.
"$CXX" "${flags[@]}" examples/store/server.cpp -o "$out/zcopy-store-server" "${link[@]}" & server=$!
"$CXX" "${flags[@]}" examples/store/client.cpp -o "$out/zcopy-store-client" "${link[@]}" & client=$!
if [ "$rdma" = 1 ]; then
    "$CXX" "${flags[@]}" examples/store/rdma_test.cpp -o "$out/store-rdma-test" "${link[@]}" & test=$!
    wait "$test"
fi
wait "$server"
wait "$client"
echo "built $out/zcopy-store-server and $out/zcopy-store-client ($([ "$rdma" = 1 ] && echo "with RDMA, and store-rdma-test" || echo "TCP only"))"
