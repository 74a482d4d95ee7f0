#!/usr/bin/env bash
# demo.sh: the store's zero-copy GET against the copy-on-read baseline, under the same load.
#
# Builds the server and client, starts two servers on ephemeral loopback ports (one zero-copy,
# one with --copy-on-read), runs the same bench against each, alternating, ROUNDS times, and
# prints the median of each figure with the ratio. Stops the servers it started (by PID) on
# every exit path. About 35 s with the defaults.
#
#   bash examples/store/demo.sh            # ROUNDS=3 CONNS=4 SECONDS_PER_GET=2 to change the load
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
rounds="${ROUNDS:-3}"
conns="${CONNS:-4}"
get_seconds="${SECONDS_PER_GET:-2}"
bench_args=(--conns "$conns" --seconds "$get_seconds" --small-count 2000 --large-count 24)

bash "$root/examples/store/build.sh"
server="$root/target/store/zcopy-store-server"
client="$root/target/store/zcopy-store-client"

work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

# start_server NAME ARGS...: starts a server and sets $port to the port it printed.
start_server() {
    local name="$1"
    shift
    "$server" --listen 127.0.0.1 --port 0 --pool-size 512M "$@" >"$work/$name.out" 2>"$work/$name.err" &
    local pid=$!
    pids+=("$pid")
    port=""
    for _ in $(seq 100); do  # at most 10 s
        port="$(sed -n 's/^listening 127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p' "$work/$name.out")"
        [ -n "$port" ] && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "server $name exited:" >&2
            cat "$work/$name.err" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "server $name printed no port within 10 s" >&2
    exit 1
}

start_server zero-copy
zc_port="$port"
start_server copy-on-read --copy-on-read
cor_port="$port"
echo "zero-copy server on 127.0.0.1:$zc_port, copy-on-read server on 127.0.0.1:$cor_port"
echo "bench: ${bench_args[*]}, $rounds rounds, alternating"

for round in $(seq "$rounds"); do
    for mode in zero-copy copy-on-read; do
        p="$zc_port"
        [ "$mode" = copy-on-read ] && p="$cor_port"
        printf 'round %s, %-12s ... ' "$round" "$mode"
        "$client" --port "$p" bench "${bench_args[@]}" >"$work/bench.out"
        sed -n "s/^RESULT /$mode /p" "$work/bench.out" >>"$work/results"
        awk '/^RESULT op=get/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
                                printf "get %s B: %s GB/s  ", f["size"], f["gb_per_s"] } END { print "" }' "$work/bench.out"
    done
done

"$client" --port "$zc_port" stats | sed -n 's/^\(bytes_out\|bytes_copied\) /zero-copy server    \1 /p'
"$client" --port "$cor_port" stats | sed -n 's/^\(bytes_out\|bytes_copied\) /copy-on-read server \1 /p'

echo
echo "Medians of $rounds rounds; $conns connections; loopback TCP; ratio = zero-copy / copy-on-read."
echo
awk '
    {
        mode = $1
        for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
        id = f["op"] " " f["size"]
        n = ++count[mode, id]
        ops[mode, id, n] = f["ops_per_s"]
        gbs[mode, id, n] = f["gb_per_s"]
    }
    function median(arr, mode, id, n,    i, j, t, v) {
        for (i = 1; i <= n; i++) v[i] = arr[mode, id, i] + 0
        for (i = 2; i <= n; i++) for (j = i; j > 1 && v[j - 1] > v[j]; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
        return v[int((n + 1) / 2)]
    }
    function human(bytes) { return bytes >= 1048576 ? bytes / 1048576 " MiB" : bytes / 1024 " KiB" }
    END {
        printf "| %-4s | %-7s | %15s | %14s | %18s | %17s | %13s |\n", "op", "size", "zero-copy ops/s", "zero-copy GB/s",
               "copy-on-read ops/s", "copy-on-read GB/s", "ratio (ops/s)"
        printf "|------|---------|-----------------|----------------|--------------------|-------------------|---------------|\n"
        split("get 4096,get 4194304,put 4096,put 4194304", rows, ",")
        for (r = 1; r <= 4; r++) {
            id = rows[r]
            split(id, p, " ")
            zo = median(ops, "zero-copy", id, count["zero-copy", id])
            zg = median(gbs, "zero-copy", id, count["zero-copy", id])
            co = median(ops, "copy-on-read", id, count["copy-on-read", id])
            cg = median(gbs, "copy-on-read", id, count["copy-on-read", id])
            ratio = (co > 0) ? zo / co : 0  # computed apart: a ">" in a printf list redirects
            printf "| %-4s | %-7s | %15.0f | %14.2f | %18.0f | %17.2f | %12.2fx |\n", p[1], human(p[2]), zo, zg, co, cg, ratio
        }
    }
' "$work/results"
echo
echo "PUT does the same work on both servers (recv straight into the pool); its rows show the noise."
