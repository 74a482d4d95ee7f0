#!/usr/bin/env bash
# demo.sh: the store's zero-copy GET against the copy-on-read baseline, under the same load.
#
# Builds the server and client, starts two servers on ephemeral loopback ports (one zero-copy,
# one with --copy-on-read), and runs the same bench against each, interleaved: every round runs
# both, the order swapped from one round to the next (zero-copy first in odd rounds), so drift
# on a shared machine hits both alike. For each figure it prints the median over the rounds,
# and for each ratio the median of the per-round ratios with their interquartile range and
# their range (min-max). A ratio counts as outside the noise when every round's ratio is on
# the same side of 1.00, with 5 rounds or more (a sign test: by chance alone, 5 of 5 happens
# 1 time in 16, 7 of 7 1 time in 64). PUT does the same work on both servers, so its rows show
# what the noise is, and check the criterion. Stops the servers it
# started (by PID) on every exit path. About 45 s with the defaults.
#
#   bash examples/store/demo.sh    # ROUNDS=7 CONNS=4 SECONDS_PER_GET=1 to change the load
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
rounds="${ROUNDS:-7}"
conns="${CONNS:-4}"
get_seconds="${SECONDS_PER_GET:-1}"
bench_args=(--conns "$conns" --seconds "$get_seconds" --small-count 8000 --large-count 24)

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
echo "bench: ${bench_args[*]}, $rounds rounds, interleaved"

for round in $(seq "$rounds"); do
    order=(zero-copy copy-on-read)
    [ $((round % 2)) = 0 ] && order=(copy-on-read zero-copy)
    for mode in "${order[@]}"; do
        p="$zc_port"
        [ "$mode" = copy-on-read ] && p="$cor_port"
        printf 'round %s, %-12s ... ' "$round" "$mode"
        "$client" --port "$p" bench "${bench_args[@]}" >"$work/bench.out"
        sed -n "s/^RESULT /$mode $round /p" "$work/bench.out" >>"$work/results"
        awk '/^RESULT op=get/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
                                printf "get %s B: %s GB/s  ", f["size"], f["gb_per_s"] } END { print "" }' "$work/bench.out"
    done
done

"$client" --port "$zc_port" stats | sed -n 's/^\(bytes_out\|bytes_copied\) /zero-copy server    \1 /p'
"$client" --port "$cor_port" stats | sed -n 's/^\(bytes_out\|bytes_copied\) /copy-on-read server \1 /p'

echo
echo "$rounds rounds, interleaved; $conns connections; loopback TCP. Figures are medians over the rounds;"
echo "ratio = zero-copy / copy-on-read ops/s: the median of the per-round ratios, their interquartile range, their min-max."
echo
awk -v rounds="$rounds" '
    {
        mode = $1
        round = $2
        for (i = 3; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
        id = f["op"] " " f["size"]
        ops[mode, id, round] = f["ops_per_s"]
        gbs[mode, id, round] = f["gb_per_s"]
    }
    function sort(v, n,    i, j, t) {
        for (i = 2; i <= n; i++) for (j = i; j > 1 && v[j - 1] > v[j]; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
    }
    # The q-quantile of sorted v[1..n], interpolated between neighbours.
    function quantile(v, n, q,    pos, i) {
        pos = 1 + (n - 1) * q
        i = int(pos)
        return (i >= n) ? v[n] : v[i] + (pos - i) * (v[i + 1] - v[i])
    }
    function median(v, n) { sort(v, n); return quantile(v, n, 0.5) }
    function median_of(arr, mode, id,    r, v) {
        for (r = 1; r <= rounds; r++) v[r] = arr[mode, id, r] + 0
        return median(v, rounds)
    }
    function human(bytes) { return bytes >= 1048576 ? bytes / 1048576 " MiB" : bytes / 1024 " KiB" }
    END {
        printf "| %-4s | %-7s | %15s | %14s | %18s | %17s | %5s | %10s | %10s | %14s |\n", "op", "size", "zero-copy ops/s", "zero-copy GB/s",
               "copy-on-read ops/s", "copy-on-read GB/s", "ratio", "ratio IQR", "min-max", "outside noise?"
        printf "|------|---------|-----------------|----------------|--------------------|-------------------|-------|------------|------------|----------------|\n"
        split("get 4096,get 4194304,put 4096,put 4194304", rows, ",")
        for (r = 1; r <= 4; r++) {
            id = rows[r]
            split(id, p, " ")
            delete ratios
            for (k = 1; k <= rounds; k++) {
                c = ops["copy-on-read", id, k] + 0
                ratios[k] = (c > 0) ? (ops["zero-copy", id, k] + 0) / c : 0  # apart: a ">" in a printf list redirects
            }
            sort(ratios, rounds)
            ratio = quantile(ratios, rounds, 0.5)
            q1 = quantile(ratios, rounds, 0.25)
            q3 = quantile(ratios, rounds, 0.75)
            if (rounds < 5) verdict = "n/a, " rounds " round" (rounds > 1 ? "s" : "")
            else if (ratios[1] > 1) verdict = "yes, faster"
            else if (ratios[rounds] < 1) verdict = "yes, slower"
            else verdict = "no"
            printf "| %-4s | %-7s | %15.0f | %14.2f | %18.0f | %17.2f | %4.2fx | %4.2f-%4.2fx | %4.2f-%4.2fx | %-14s |\n", p[1], human(p[2]),
                   median_of(ops, "zero-copy", id), median_of(gbs, "zero-copy", id),
                   median_of(ops, "copy-on-read", id), median_of(gbs, "copy-on-read", id), ratio, q1, q3, ratios[1], ratios[rounds], verdict
        }
    }
' "$work/results"
echo
echo "Outside the noise: every round's ratio on the same side of 1.00 (needs 5 rounds or more)."
echo "PUT does the same work on both servers (recv straight into the pool); its rows show the noise."
