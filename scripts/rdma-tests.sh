#!/usr/bin/env bash
# The tests and the benchmark that need an RDMA device.
#
# Builds libzcopy.so and the RDMA programs on this host, then runs them where a verbs device is:
#   - on this host, if it has one (a NIC, or Soft-RoCE: `rdma link add rxe0 type rxe netdev <if>`);
#     ZCOPY_RDMA_DEVICE and ZCOPY_RDMA_GID_INDEX pick the device and GID (defaults rxe0 and 1);
#   - else in a throw-away Soft-RoCE VM (../shared/rdma-vm/run-in-rxe-vm.sh, or $ZCOPY_RXE_VM),
#     which needs root.
# In the VM it also runs Mooncake Store over RDMA (scripts/mooncake-rdma-vm.sh: two processes put
# and get through zcopy.mooncake with the transfer engine on rxe0); ZCOPY_MOONCAKE_RDMA=0 skips it.
# With no device and no VM it prints why and exits 0, reporting the tests as NOT RUN, never as
# passed; set ZCOPY_RDMA_TESTS=required to make that a failure instead.
#
#   scripts/rdma-tests.sh [auto|host|vm]     (default auto)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
where=${1:-auto}

not_run() {
    echo "rdma: NOT RUN: $*"
    if [ "${ZCOPY_RDMA_TESTS:-}" = required ]; then exit 1; fi
    exit 0
}

if [ ! -f /usr/include/infiniband/verbs.h ]; then
    not_run "<infiniband/verbs.h> is missing (install libibverbs-dev)"
fi

echo "== rdma: building"
cargo build --release --lib --quiet
out=target/rdma
mkdir -p "$out/lib"
ln -sf ../../release/libzcopy.so "$out/lib/libzcopy.so"
ln -sf ../../release/libzcopy.so "$out/lib/libzcopy.so.0"
build() {
    cc -std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Wpedantic -Werror -pthread -Iinclude -Ic_tests -Ic_tests/rdma \
        "$1" -o "$out/$2" -L"$out/lib" -lzcopy -libverbs -Wl,-rpath,"$root/$out/lib"
}
build c_tests/rdma/test_rdma_device.c test_rdma_device
build c_tests/rdma/test_rdma_shared.c test_rdma_shared
build benches/rdma_registration.c bench_rdma_registration
# The key-value store's RDMA path (examples/store/): server, client and its end-to-end test, which
# finds the other two next to itself.
buildxx() {
    c++ -std=c++17 -O2 -g -Wall -Wextra -Wpedantic -Werror -pthread -Iinclude \
        "$1" -o "$out/$2" -L"$out/lib" -lzcopy -libverbs -Wl,-rpath,"$root/$out/lib"
}
buildxx examples/store/server.cpp zcopy-store-server
buildxx examples/store/client.cpp zcopy-store-client
buildxx examples/store/rdma_test.cpp store-rdma-test
programs="$out/test_rdma_device && $out/test_rdma_shared && $out/bench_rdma_registration && $out/store-rdma-test"

host_has_device() {
    compgen -G "/sys/class/infiniband/*" >/dev/null
}

vm_script=${ZCOPY_RXE_VM:-$root/../shared/rdma-vm/run-in-rxe-vm.sh}
case "$where" in
    auto) if host_has_device; then where=host; else where=vm; fi ;;
    host|vm) ;;
    *) echo "usage: $0 [auto|host|vm]" >&2; exit 2 ;;
esac

if [ "$where" = host ]; then
    host_has_device || not_run "this host has no RDMA device"
    echo "== rdma: running on this host"
    bash -c "$programs"
    exit $?
fi

[ -x "$vm_script" ] || not_run "no RDMA device here and no VM script at $vm_script"
[ "$(id -u)" = 0 ] || not_run "no RDMA device here, and the Soft-RoCE VM needs root"
# Mooncake Store over RDMA (scripts/mooncake-rdma-vm.sh), in the same boot: this host installs
# the wheels for the VM's Python, the VM image gets the packages Mooncake links.
export RXE_VM_EXTRA_PKGS
RXE_VM_EXTRA_PKGS=$(bash scripts/mooncake-rdma-vm.sh --vm-packages)
if [ "${ZCOPY_MOONCAKE_RDMA:-1}" = 0 ]; then
    echo "rdma: Mooncake Store over RDMA: NOT RUN (ZCOPY_MOONCAKE_RDMA=0)"
elif bash scripts/mooncake-rdma-vm.sh --prepare; then
    programs="$programs && bash scripts/mooncake-rdma-vm.sh --in-vm"
else
    echo "rdma: Mooncake Store over RDMA: NOT RUN (its wheels for the VM's Python did not install)"
fi
echo "== rdma: running in the Soft-RoCE VM (the first run builds its image, about 90 s)"
set +e
"$vm_script" bash -c "$programs"
status=$?
set -e
case $status in
    0) echo "rdma: VM tests passed" ;;
    124) echo "rdma: FAILED: the VM timed out"; exit 1 ;;
    125) not_run "the Soft-RoCE VM could not start (see the [rxe-vm] lines above)" ;;
    *) echo "rdma: FAILED (exit status $status)"; exit 1 ;;
esac
