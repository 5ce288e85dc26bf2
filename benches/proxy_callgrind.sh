#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: apiward (10,000 users,
# workers = 1) runs under valgrind in front of an nginx upstream; wrk sends the e2e benchmark's
# requests (1,024 keys rotating) with keep-alive. After a warm-up, two runs are counted, of
# DURATION and of twice that, each with new connections: the difference of their totals divided
# by the difference of their requests is the cost of a request, and what each run does once
# (opening its CONNECTIONS connections, and their TLS handshakes with TLS=1) cancels out; the
# longer run's own total per request is reported too. Unlike req/s on a shared VM, this barely
# moves between runs (±1 %), so it shows what a hot-path change did to apiward's own code. Kernel
# time (the syscalls) is not counted: see docs/benchmarks.md for that part. With objdump and
# python3 present it also counts the atomic read-modify-write instructions
# (benches/support/atomics.py), and the heap allocations and reallocations per request with the
# functions that ask for them (benches/support/allocs.py: callgrind's call counts of the
# allocator's entry points; apiward's global allocator is mimalloc).
#
# TLS=1: apiward terminates TLS (a P-256 certificate made here with openssl, for 127.0.0.1) and
# wrk speaks HTTPS to it, keep-alive; the upstream stays plain HTTP. Everything else as without.
#
# MODES says which variants are measured, one apiward run each, in one invocation (so their
# ratios come from one build and one machine state):
#   off     no request log (`access_log = "off"`), no limits: the baseline (the default)
#   file    the JSON request log to a file, every request logged, as operators run it (#20)
#   limits  no request log, and every user under a local rate_limit, quota and max_concurrent,
#           all generous enough that nothing is refused (what the limit step costs, #15)
# e.g. MODES="off file limits"; each variant after the first is also given as a ratio to the first.
#
# Usage: benches/proxy_callgrind.sh     (about 1 minute a mode; OUT=FILE also writes the table)
# Knobs: USERS=10000 DURATION=5s (whole seconds) CONNECTIONS=16 BASE_PORT=18380 MODES=off TLS=
#   TARGETS=1 (3: the upstream is three targets on three nginx ports, balanced round robin, to
#   measure what balancing costs against one target)
# Everything listens on 127.0.0.1 only; every process started here is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/support/keys_lua.sh
source "$ROOT/benches/support/keys_lua.sh"
USERS=${USERS:-10000}
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-16}
BASE_PORT=${BASE_PORT:-18380}
OUT=${OUT:-}
TARGETS=${TARGETS:-1}
MODES=${MODES:-off}
TLS=${TLS:-}
[[ $DURATION =~ ^[1-9][0-9]*s$ ]] || { echo "DURATION: $DURATION is not whole seconds (5s)" >&2; exit 2; }
for mode in $MODES; do
    [[ $mode == off || $mode == file || $mode == limits ]] \
        || { echo "MODES: $mode is none of off, file, limits" >&2; exit 2; }
done
UPSTREAM_PORT=$BASE_PORT
APIWARD_PORT=$((BASE_PORT + 1))
# With TARGETS > 1, the further targets listen on the ports after apiward's.
TARGET_PORTS=("$UPSTREAM_PORT")
for ((i = 1; i < TARGETS; i++)); do TARGET_PORTS+=($((APIWARD_PORT + i))); done
WORK=$(mktemp -d /tmp/apiward-proxy-callgrind.XXXXXX)
PIDS=()

log() { printf '%s\n' "proxy_callgrind: $*" >&2; }
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
cleanup() {
    stop_all "${PIDS[@]}"
    [[ -n ${KEEP_WORK:-} ]] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

need wrk nginx valgrind curl
[[ -z $TLS ]] || need openssl

(cd "$ROOT" && cargo build --release --quiet --bin apiward --example gen_config)
"$ROOT/target/release/examples/gen_config" --users "$USERS" --out "$WORK/apiward.toml" --workers 1 \
    --access-log off --listen "127.0.0.1:$APIWARD_PORT" --upstream "http://127.0.0.1:$UPSTREAM_PORT" \
    --keys "$WORK/keys.txt" >/dev/null
if ((TARGETS > 1)); then
    entries=$(printf '{ url = "http://127.0.0.1:%s" }, ' "${TARGET_PORTS[@]}")
    sed -i "s|^url = \"http://127.0.0.1:$UPSTREAM_PORT\"\$|targets = [${entries%, }]|" "$WORK/apiward.toml"
    grep -q '^targets = ' "$WORK/apiward.toml" || { log "could not write the targets"; exit 1; }
fi
SCHEME=http
if [[ -n $TLS ]]; then
    SCHEME=https
    make_certificate
    # [server.tls] right before the first table after [server]; curl (here and in lib.sh) trusts the CA.
    before_first_table "$WORK/apiward.toml" "$WORK/apiward.tls.toml" "$(server_tls)"
    mv "$WORK/apiward.tls.toml" "$WORK/apiward.toml"
    grep -q '^\[server.tls\]$' "$WORK/apiward.toml" || { log "could not write [server.tls]"; exit 1; }
    export CURL_CA_BUNDLE="$WORK/ca.pem"
fi
keys_lua "$WORK/keys.txt" "$USERS" /api/items/42 >"$WORK/keys.lua"
cat >"$WORK/upstream.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/upstream.pid;
error_log $WORK/upstream.error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $WORK/body;
    proxy_temp_path $WORK/proxy;
    fastcgi_temp_path $WORK/fastcgi;
    uwsgi_temp_path $WORK/uwsgi;
    scgi_temp_path $WORK/scgi;
    keepalive_requests 10000000;
    default_type text/plain;
    server {
$(printf '        listen 127.0.0.1:%s;\n' "${TARGET_PORTS[@]}")
        location / { return 200 "01234567890123456789"; }
    }
}
EOF

nginx -p "$WORK" -e "$WORK/upstream.error.log" -c "$WORK/upstream.conf" &
PIDS+=($!)
wait_for "http://127.0.0.1:$UPSTREAM_PORT/" "${PIDS[-1]}"

# measure MODE: one apiward under callgrind in variant MODE; sets INSTRUCTIONS (per request) and
# writes the variant's part of the report to $WORK/report.MODE.
measure() {
    local mode=$1 config="$WORK/apiward.$1.toml" log="$WORK/requests.$1.log" out="$WORK/callgrind.$1.out"
    case $mode in
    file)
        sed "s|^access_log = \"off\"|access_log = \"$log\"|" "$WORK/apiward.toml" >"$config"
        grep -q "^access_log = \"$log\"" "$config" || { log "gen_config wrote no access_log line to replace"; exit 1; }
        ;;
    limits)
        # Generous limits on the one group every user is in: the limit step runs on every request
        # (a GCRA cell, a quota count and an in-flight count per user) and refuses none.
        limited_copy "$WORK/apiward.toml" "$config" || exit 1
        ;;
    *) cp "$WORK/apiward.toml" "$config" ;;
    esac
    APIWARD_LOG=warn valgrind --tool=callgrind --dump-instr=yes --callgrind-out-file="$out" \
        "$ROOT/target/release/apiward" run --config "$config" >"$WORK/apiward.$mode.log" 2>&1 &
    local valgrind_pid=$!
    PIDS+=("$valgrind_pid")
    wait_for "$SCHEME://127.0.0.1:$APIWARD_PORT/" "$valgrind_pid"
    local url="$SCHEME://127.0.0.1:$APIWARD_PORT/api/items/42" body
    body=$(curl -sS -H "X-Api-Key: $(head -n 1 "$WORK/keys.txt")" "$url")
    [[ $body == 01234567890123456789 ]] || { log "apiward ($mode) answered ${body:0:200}"; exit 1; }
    if [[ $mode == limits ]]; then
        check_limited "$url" "$(head -n 1 "$WORK/keys.txt")" "apiward (limits)" || exit 1
    fi

    local seconds=${DURATION%s}
    log "$mode: warming up, then counting a run of ${seconds}s and one of $((2 * seconds))s"
    wrk -t1 -c"$CONNECTIONS" -d2s -s "$WORK/keys.lua" "$url" >/dev/null
    local run requests=() totals=()
    for run in 1 2; do
        callgrind_control -z "$valgrind_pid" >/dev/null
        wrk -t1 -c"$CONNECTIONS" -d"$((run * seconds))s" -s "$WORK/keys.lua" "$url" >"$WORK/wrk.$mode.$run.txt"
        callgrind_control -d "$valgrind_pid" >/dev/null
        if grep -q -E 'Non-2xx|Socket errors' "$WORK/wrk.$mode.$run.txt"; then cat "$WORK/wrk.$mode.$run.txt" >&2; exit 1; fi
        requests+=("$(awk '/requests in/ { print $1 }' "$WORK/wrk.$mode.$run.txt")")
        for _ in $(seq 50); do [[ -s $out.$run ]] && break; sleep 0.1; done
        sleep 1
        totals+=("$(awk '/^(summary|totals):/ { print $2; exit }' "$out.$run")")
    done
    INSTRUCTIONS=$(awk -v a="${totals[0]}" -v b="${totals[1]}" -v m="${requests[0]}" -v n="${requests[1]}" \
        'BEGIN { printf "%.0f", (b - a) / (n - m) }')
    local whole_run
    whole_run=$(awk -v t="${totals[1]}" -v n="${requests[1]}" 'BEGIN { printf "%.0f", t / n }')
    kill "$valgrind_pid" 2>/dev/null || true
    wait "$valgrind_pid" 2>/dev/null || true
    local requests_total=$((requests[0] + requests[1]))
    if [[ $mode == file ]]; then
        # Every request of both wrk runs and the checks has its line, each a JSON object.
        local lines
        lines=$(wc -l <"$log")
        python3 -c 'import json,sys; [json.loads(l) for l in open(sys.argv[1])]' "$log" \
            || { log "the request log has a line that is not JSON"; exit 1; }
        ((lines > requests_total)) || { log "only $lines log lines for $requests_total counted requests"; exit 1; }
    fi
    {
        case $mode in
        file) echo "With the JSON request log to a file (\`access_log = \"/tmp/...\"\`, every request logged):" ;;
        limits) echo "With a local \`rate_limit\`, \`quota\` and \`max_concurrent\` on every user (none reached), no request log:" ;;
        *) echo "With no request log (\`access_log = \"off\"\`) and no limits:" ;;
        esac
        local over=HTTP
        [[ -z $TLS ]] || over="HTTPS (apiward terminating TLS, keep-alive)"
        echo "Over $over; $TARGETS upstream target(s), $USERS users, wrk -t1 -c$CONNECTIONS after a 2 s warm-up, then"
        echo "runs of ${seconds}s and $((2 * seconds))s (${requests[0]} and ${requests[1]} requests), new connections each:"
        printf '**%s** instructions per request, everything the apiward process ran (the runs'"'"' difference;\n' "$INSTRUCTIONS"
        printf 'the longer run alone, its %s connections opened included: %s).\n' "$CONNECTIONS" "$whole_run"
        if command -v python3 >/dev/null; then
            echo
            python3 "$ROOT/benches/support/allocs.py" "$out.2" "${requests[1]}" 10 "$out.1" "${requests[0]}"
        fi
        if command -v objdump >/dev/null; then
            echo
            echo "Atomic read-modify-write instructions among them (\`benches/support/atomics.py\`): each counts"
            echo "as one instruction above but costs about 20 cycles, even uncontended:"
            python3 "$ROOT/benches/support/atomics.py" "$ROOT/target/release/apiward" \
                "$out.2" "${requests[1]}" 8 "$out.1" "${requests[0]}"
        fi
    } >"$WORK/report.$mode"
}

declare -A PER_REQUEST
FIRST=
for mode in $MODES; do
    measure "$mode"
    PER_REQUEST[$mode]=$INSTRUCTIONS
    FIRST=${FIRST:-$mode}
done

{
    echo "User-space instructions per proxied request (callgrind, valgrind $(valgrind --version | sed 's/valgrind-//')),"
    echo "apiward with \`workers = 1\`, one run per variant (MODES=\"$MODES\"):"
    for mode in $MODES; do
        echo
        cat "$WORK/report.$mode"
    done
    for mode in $MODES; do
        [[ $mode == "$FIRST" ]] && continue
        echo
        printf '%s against %s: **%+d** instructions per request, **%.3f ×**.\n' "$mode" "$FIRST" \
            "$((PER_REQUEST[$mode] - PER_REQUEST[$FIRST]))" \
            "$(awk -v a="${PER_REQUEST[$mode]}" -v b="${PER_REQUEST[$FIRST]}" 'BEGIN { print a / b }')"
    done
    echo
    echo "valgrind hides the CPU's SHA extensions, so about 3,400 of them are the portable SHA-256 of"
    echo "the key (a few hundred natively; see the decision's instruction counts). The request log's"
    echo "write(2) calls are kernel time, which callgrind does not count: see the end-to-end CPU columns."
} | tee "${OUT:-/dev/null}"
