#!/usr/bin/env bash
# The C tests (c_tests/test_*.c) and the C examples (examples/c/*.c) under the sanitizers and
# valgrind, against a fresh debug libzcopy.so and the checked-in header:
#   - built with clang -fsanitize=address,undefined (LeakSanitizer included), after checking that
#     the ASan and UBSan runtimes really got linked into each program, and run with every report
#     fatal;
#   - built with gcc -g -O1 and run under valgrind memcheck, where any error or definitely lost
#     block fails the run (test_fork: any error; see run_one).
# test_rdma_local also runs a second time as on a host without rdma-core (as tests/c_api.rs does).
# test_shared forks children that attach its shared pools by name; its pool files in /dev/shm
# (zcopy.zc-ctest-<pid>-*) must all be unlinked when it ends: any such file made during this run
# whose process is gone (a test that leaked it, a run killed by its timeout) fails the run and is
# removed.
# Prints one ok/FAIL line per program and tool, then `sanitizers: N passed, M failed`; exits
# non-zero if anything failed. Logs: target/sanitize/logs/. Installs clang, its sanitizer runtime
# and valgrind with apt-get when they are missing and this runs as root.
#
# Environment: SANITIZE_JOBS (parallel runs, default: number of CPUs), SANITIZE_TIMEOUT (seconds
# per run, default 240).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
start=$SECONDS

# ---- tools -------------------------------------------------------------------------------------
apt_install() {
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "sanitize.sh: missing $*: install them (Debian/Ubuntu: apt-get install -y $*) or run as root" >&2
        exit 1
    fi
    echo "== sanitize: installing $*"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq "$@" >/dev/null; then
        apt-get update -qq
        apt-get install -y -qq "$@" >/dev/null || {
            echo "sanitize.sh: apt-get install $* failed" >&2
            exit 1
        }
    fi
}

asan_rt_present() {
    local f
    f=$(clang -print-file-name="libclang_rt.asan-$(uname -m).a" 2>/dev/null) && [ -f "$f" ]
}

need=()
command -v clang >/dev/null || need+=(clang libclang-rt-14-dev)
command -v valgrind >/dev/null || need+=(valgrind)
command -v gcc >/dev/null || need+=(gcc libc6-dev)
command -v nm >/dev/null || need+=(binutils)
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
if ! asan_rt_present; then
    # The runtime package matches clang's major version (libclang-rt-14-dev on Debian 12).
    apt_install "libclang-rt-$(clang -dumpversion | cut -d. -f1)-dev"
    asan_rt_present || { echo "sanitize.sh: clang finds no ASan runtime (libclang_rt.asan-$(uname -m).a)" >&2; exit 1; }
fi

# ---- the library -------------------------------------------------------------------------------
out=target/sanitize
lib=$root/$out/lib
rm -rf "$out"
mkdir -p "$lib" "$out/asan" "$out/valgrind" "$out/logs"
touch "$out/logs/started" # pool files older than this run are not its own
echo "== sanitize: building libzcopy.so (debug)"
cargo build --lib --quiet
# A copy, so that a concurrent cargo build cannot swap the library in the middle of the runs.
cp "${CARGO_TARGET_DIR:-target}/debug/libzcopy.so" "$lib/libzcopy.so"
ln -s libzcopy.so "$lib/libzcopy.so.0"

# ---- the programs ------------------------------------------------------------------------------
common=(-std=c11 -D_GNU_SOURCE -g -O1 -Wall -Wextra -Wpedantic -Werror -pthread -Iinclude -Ic_tests)
sanflags=(-fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all)
link=(-L"$lib" -lzcopy -Wl,-rpath,"$lib")

names=() sources=()
for src in c_tests/test_*.c examples/c/*.c; do
    case $src in
        examples/*) name=example_$(basename "$src" .c) ;;
        *) name=$(basename "$src" .c) ;;
    esac
    names+=("$name")
    sources+=("$src")
done

passed=0 failed=0
report() { # report ok|FAIL what [detail-file]
    printf '%-4s %s\n' "$1" "$2"
    if [ "$1" = ok ]; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        if [ -n "${3:-}" ] && [ -s "$3" ]; then
            tail -n 40 "$3" | sed 's/^/    | /'
        fi
    fi
}

echo "== sanitize: building ${#names[@]} programs with clang (ASan+UBSan) and gcc (valgrind)"
built_asan=() built_vg=()
for i in "${!names[@]}"; do
    name=${names[$i]} src=${sources[$i]}
    log=$out/logs/$name.build.log
    if clang "${common[@]}" "${sanflags[@]}" "$src" -o "$out/asan/$name" "${link[@]}" >"$log" 2>&1; then
        # The sanitizer runtimes must really be in the program (clang links them statically), or
        # in a shared runtime it loads.
        defined=$(nm --defined-only "$out/asan/$name")
        if grep -q ' __asan_init$' <<<"$defined" && grep -q ' __ubsan_handle_' <<<"$defined"; then
            built_asan+=("$i")
        elif ldd "$out/asan/$name" | grep -Eq 'libclang_rt\.asan|libasan\.so' \
            && ldd "$out/asan/$name" | grep -Eq 'libclang_rt\.(asan|ubsan)|libubsan\.so'; then
            built_asan+=("$i")
        else
            echo "no ASan/UBSan runtime (__asan_init, __ubsan_handle_*) in $out/asan/$name" >>"$log"
            report FAIL "$name asan+ubsan (runtime not linked)" "$log"
        fi
    else
        report FAIL "$name asan+ubsan (build)" "$log"
    fi
    log=$out/logs/$name.build-gcc.log
    if gcc "${common[@]}" "$src" -o "$out/valgrind/$name" "${link[@]}" >"$log" 2>&1; then
        built_vg+=("$i")
    else
        report FAIL "$name valgrind (build)" "$log"
    fi
done

# ---- the runs ----------------------------------------------------------------------------------
# A run: "<label>|<tool>|<program index>|<extra environment>".
runs=()
for tool in valgrind asan; do # the slow ones first
    if [ $tool = asan ]; then set -- "${built_asan[@]}"; else set -- "${built_vg[@]}"; fi
    for i in "$@"; do
        runs+=("${names[$i]}|$tool|$i|")
        if [ "${names[$i]}" = test_rdma_local ]; then
            runs+=("${names[$i]}[no libibverbs]|$tool|$i|ZCOPY_IBVERBS=libibverbs-hidden-by-test.so.1 ZCOPY_TEST_NO_LIBIBVERBS=1")
        fi
    done
done

timeout_s=${SANITIZE_TIMEOUT:-240}
asan_env=(
    "ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:halt_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1"
    "UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1"
    "LSAN_OPTIONS=suppressions=$root/scripts/lsan.supp:print_suppressions=0"
)
valgrind_cmd=(
    valgrind --tool=memcheck --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite
    --suppressions="$root/scripts/valgrind.supp" --fair-sched=yes --num-callers=40 -q
)

# Runs one run; writes its log and, last, its result line to $out/logs/<n>.result.
run_one() {
    local n=$1 label tool i extra
    IFS='|' read -r label tool i extra <<<"${runs[$n]}"
    local name=${names[$i]} src=${sources[$i]}
    local log=$out/logs/run$n.$name.$tool.log
    local cmd=()
    if [ "$tool" = asan ]; then
        cmd=(env "${asan_env[@]}" $extra "$out/asan/$name")
    else
        local vg=("${valgrind_cmd[@]}")
        if [ "$name" = test_fork ]; then
            # test_fork forks while another thread is inside the library: whatever that thread
            # had allocated and not stored yet is unreachable in the children, which have no such
            # thread, so whether valgrind finds a leak in a child (and fails its exit status)
            # depends on where the fork lands. Here valgrind checks memory errors only; the
            # parent's leaks are LeakSanitizer's, in the ASan run.
            vg=("${vg[@]/--errors-for-leak-kinds=definite/--errors-for-leak-kinds=none}")
        fi
        cmd=(env $extra "${vg[@]}" "$out/valgrind/$name")
    fi
    local t0=$SECONDS rc=0
    { echo "+ ${cmd[*]}"; } >"$log"
    timeout -k 10 "$timeout_s" "${cmd[@]}" >>"$log" 2>&1 </dev/null || rc=$?
    local why=""
    if [ $rc = 124 ] || [ $rc = 137 ]; then
        why="timed out after ${timeout_s}s"
    elif [ $rc != 0 ]; then
        why="exit status $rc"
    elif [[ $src == c_tests/* ]] && ! grep -q ' passed, 0 failed$' "$log"; then
        why="no \"N passed, 0 failed\" summary"
    fi
    local tname=$tool
    [ "$tool" = asan ] && tname=asan+ubsan
    if [ -z "$why" ]; then
        echo "ok|$label $tname ($((SECONDS - t0))s)|$log" >"$out/logs/$n.result"
    else
        echo "FAIL|$label $tname ($why, $((SECONDS - t0))s; log: $log)|$log" >"$out/logs/$n.result"
    fi
}

jobs_max=${SANITIZE_JOBS:-$(nproc)}
echo "== sanitize: ${#runs[@]} runs, $jobs_max at a time"
collect() { # prints the results of the finished runs not yet printed
    local n r what lg
    for n in "${!pending[@]}"; do
        if [ -f "$out/logs/$n.result" ]; then
            IFS='|' read -r r what lg <"$out/logs/$n.result"
            report "$r" "$what" "$lg"
            unset "pending[$n]"
        fi
    done
}
declare -A pending=()
for n in "${!runs[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do
        wait -n || true
        collect
    done
    pending[$n]=1
    run_one "$n" &
done
wait || true
collect
for n in "${!pending[@]}"; do
    report FAIL "${runs[$n]%%|*} (the run left no result)"
done

# Shared pool files of C tests that ended (the pid in the name is gone) since this run started.
left=()
while IFS= read -r f; do
    pid=${f#/dev/shm/zcopy.zc-ctest-}
    pid=${pid%%-*}
    if [[ $pid =~ ^[0-9]+$ ]] && ! kill -0 "$pid" 2>/dev/null; then
        left+=("$f")
    fi
done < <(find /dev/shm -maxdepth 1 -name 'zcopy.zc-ctest-*' -newer "$out/logs/started" 2>/dev/null)
if [ ${#left[@]} -eq 0 ]; then
    report ok "no shared pool files left in /dev/shm"
else
    printf '%s\n' "${left[@]}" >"$out/logs/left-pool-files.log"
    rm -f -- "${left[@]}"
    report FAIL "shared pool files left in /dev/shm (removed): ${left[*]}" "$out/logs/left-pool-files.log"
fi

echo "== sanitize: done in $((SECONDS - start))s"
echo "sanitizers: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
