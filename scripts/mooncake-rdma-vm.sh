#!/usr/bin/env bash
# zcopy.mooncake.ZeroCopyStore over RDMA: a two-process put/get through Mooncake Store whose
# transfer engines use protocol "rdma" on a Soft-RoCE device (rxe0), in a throw-away VM.
#
# On this host: builds libzcopy.so (cargo build --release --lib), and installs the pinned
# Mooncake wheel (mooncake-transfer-engine-non-cuda, the version scripts/test.sh installs) and
# numpy for the VM's CPython 3.11 into target/mooncake-rdma-vm/site (the project venv's pip,
# scripts/venv.sh, with --target and --python-version/--platform: the VM has no network). Then
# it boots the Soft-RoCE VM
# (../shared/rdma-vm/run-in-rxe-vm.sh, or $ZCOPY_RXE_VM; root needed) with the repository
# shared in, rxe0 bound to a dummy netdev at 10.99.0.1, and runs this script there (--in-vm),
# which runs
#
#     examples/python/mooncake_store.py --protocol rdma --device rxe0 --host 10.99.0.1
#
# a mooncake_master and two client processes on 10.99.0.1: the writer puts arrays of 1 B, 4 KiB,
# 1 MiB, 16 MiB and 196,625 B (and a pickled object) with ZeroCopyStore, and the same bytes with
# Mooncake's own put; the reader gets them (ZeroCopyStore's batch get, Mooncake's own get and
# get_array), compares SHA-256 checksums, checks that the values were in the writer's segment
# and that rxe0's packet counters moved by at least the bytes got. MC_GID_INDEX is set to the
# runner's RoCE v2 GID index (1); the transfer engine of the pinned wheel also picks index 1 on its
# own when it is unset ("Find best gid index: 1 on rxe0/1").
#
#     sudo scripts/mooncake-rdma-vm.sh            # or: scripts/mooncake-rdma-vm.sh as root
#
# scripts/rdma-tests.sh (the README's test command) runs it in the same VM boot as the RDMA
# tests: `--prepare` does this host's part only, `--in-vm` is the VM's part, and `--vm-packages`
# prints the Debian packages the VM image needs for it (both scripts build the image with them, so
# they share one image cache).
#
# Prints the example's lines, then "mooncake-rdma-vm: PASS (...)" or "mooncake-rdma-vm: FAIL
# (...)"; exits 0 on PASS, 1 on FAIL (a mismatch, an error, or Mooncake not able to run over
# rxe0: the example's skip, exit 77, is a failure here), 125 when the VM cannot start.
#
# Environment (all optional):
#   ZCOPY_RXE_VM        the VM runner (default ../shared/rdma-vm/run-in-rxe-vm.sh beside the repository)
#   RXE_VM_CACHE        the VM image cache (the runner's default, shared with scripts/rdma-tests.sh)
#   MOONCAKE_VM_PROTOCOLS  protocols to run, in order (default "rdma"; "tcp rdma" runs the same
#                       example over TCP on 10.99.0.1 first, to tell RDMA failures from others)
#   MOONCAKE_VM_TIMEOUT seconds per step of the example (default 300: the VM may be emulated)
# Other RXE_VM_* variables go to the runner (its header lists them); RXE_VM_NETDEV must stay dummy.
#
# Cost: the first run builds the VM image (debootstrap; several minutes) and downloads about
# 70 MB of wheels; later runs boot the VM (about a minute under TCG emulation) and run the example.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

mooncake_version() {
    sed -n 's/.*mooncake-transfer-engine-non-cuda==\([^ "]*\).*/\1/p' scripts/test.sh | head -n 1
}
site=target/mooncake-rdma-vm/site
timeout=${MOONCAKE_VM_TIMEOUT:-300}
# Mooncake's store.so and mooncake_master link libcurl and libnuma beside libibverbs (already in
# the image); strace is there to see a failing call.
vm_packages=python3,libcurl4,libnuma1,strace

if [ "${1:-}" = --vm-packages ]; then
    echo "$vm_packages"
    exit 0
fi

# ------------------------------------------------------------------ inside the VM
if [ "${1:-}" = --in-vm ]; then
    export PYTHONPATH=$root/python:$root/$site
    export ZCOPY_LIBRARY=$root/target/release/libzcopy.so
    # run-in-rxe-vm.sh: RoCEv2 GID of rxe0's IPv4 address at index 1.
    export MC_GID_INDEX=${MC_GID_INDEX:-${RXE_GID_INDEX:-1}}
    ulimit -l unlimited
    dev=${RXE_DEV:-rxe0}
    host=${RXE_IP:-10.99.0.1}
    echo "== vm: $(uname -r), $(python3 --version), $(nproc) vCPU"
    rdma link show
    ibv_devinfo -d "$dev" | grep -E 'hca_id|transport|state|active_mtu|link_layer' || true
    echo "== vm: $dev GID $MC_GID_INDEX = $(cat "/sys/class/infiniband/$dev/ports/1/gids/$MC_GID_INDEX")" \
         "($(cat "/sys/class/infiniband/$dev/ports/1/gid_attrs/types/$MC_GID_INDEX" 2>/dev/null || echo '?'))"
    python3 -c 'import numpy, mooncake.store, zcopy.mooncake as m; print("== vm: numpy", numpy.__version__, "| mooncake_master", m.master_binary())'
    failed=0
    for protocol in ${MOONCAKE_VM_PROTOCOLS:-rdma}; do
        args=(--protocol "$protocol" --host "$host" --timeout "$timeout" --netns off)
        [ "$protocol" = rdma ] && args+=(--device "$dev")
        echo "== vm: python3 examples/python/mooncake_store.py ${args[*]}"
        t0=$SECONDS
        set +e
        python3 examples/python/mooncake_store.py "${args[@]}"
        status=$?
        set -e
        case $status in
            0) over=$host; [ "$protocol" = rdma ] && over="$dev at $host"
               echo "mooncake-rdma-vm: PASS ($protocol, $over, in $((SECONDS - t0)) s)" ;;
            77) echo "mooncake-rdma-vm: FAIL ($protocol: Mooncake could not run, see 'skipped' above)"; failed=1 ;;
            *) echo "mooncake-rdma-vm: FAIL ($protocol: exit status $status, in $((SECONDS - t0)) s)"; failed=1 ;;
        esac
    done
    exit $failed
fi

# ------------------------------------------------------------------ on the host
prepare_only=false
[ "${1:-}" = --prepare ] && prepare_only=true
vm_script=${ZCOPY_RXE_VM:-$root/../shared/rdma-vm/run-in-rxe-vm.sh}
if ! $prepare_only; then
    [ "$(id -u)" = 0 ] || { echo "mooncake-rdma-vm: the Soft-RoCE VM needs root" >&2; exit 125; }
    [ -x "$vm_script" ] || { echo "mooncake-rdma-vm: no VM runner at $vm_script (set ZCOPY_RXE_VM)" >&2; exit 125; }
fi
version=$(mooncake_version)
[ -n "$version" ] || { echo "mooncake-rdma-vm: no pinned Mooncake version in scripts/test.sh" >&2; exit 1; }

echo "== host: cargo build --release --lib"
cargo build --release --lib --quiet

want="mooncake-transfer-engine-non-cuda==$version numpy"
if [ "$(cat "$site.stamp" 2>/dev/null)" != "$want" ]; then
    echo "== host: installing $want for CPython 3.11 (the VM's) into $site"
    rm -rf "$site" "$site.stamp"
    # The VM is Debian 12 (glibc 2.36): manylinux wheels up to 2_36.
    platforms=()
    for tag in manylinux_2_36 manylinux_2_34 manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux_2_5 manylinux1; do
        platforms+=(--platform "${tag}_x86_64")
    done
    # The project venv's pip (scripts/venv.sh), installing into the folder, not the venv.
    # shellcheck source=venv.sh
    source scripts/venv.sh
    zcopy_venv --target "$site" --python-version 3.11 --implementation cp --abi cp311 "${platforms[@]}" \
        --only-binary=:all: $want
    echo "$want" > "$site.stamp"
fi
$prepare_only && exit 0

export RXE_VM_EXTRA_PKGS=$vm_packages
export RXE_VM_NETDEV=dummy RXE_VM_SHARE=$root
export RXE_VM_TIMEOUT=${RXE_VM_TIMEOUT:-2400}
export MOONCAKE_VM_PROTOCOLS=${MOONCAKE_VM_PROTOCOLS:-rdma} MOONCAKE_VM_TIMEOUT=$timeout
echo "== host: running in the Soft-RoCE VM (image cache $RXE_VM_CACHE; the first run builds it)"
t0=$SECONDS
set +e
"$vm_script" env MOONCAKE_VM_PROTOCOLS="$MOONCAKE_VM_PROTOCOLS" MOONCAKE_VM_TIMEOUT="$timeout" \
    bash scripts/mooncake-rdma-vm.sh --in-vm
status=$?
set -e
echo "== host: VM run took $((SECONDS - t0)) s, exit status $status"
case $status in
    0) exit 0 ;;
    124) echo "mooncake-rdma-vm: FAIL (the VM timed out)"; exit 1 ;;
    125) echo "mooncake-rdma-vm: the Soft-RoCE VM could not start (see the [rxe-vm] lines above)"; exit 125 ;;
    *) exit 1 ;;
esac
