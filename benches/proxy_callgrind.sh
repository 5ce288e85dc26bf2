#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: apiward (10,000 users,
# workers = 1) runs under valgrind in front of an nginx upstream; wrk sends the e2e benchmark's
# requests (1,024 keys rotating); counters are zeroed after a warm-up and dumped after a fixed
# run, and the total is divided by the requests wrk completed. Unlike req/s on a shared VM, this
# barely moves between runs (±1 %), so it shows what a hot-path change did to apiward's own code.
# Kernel time (the syscalls) is not counted: see docs/benchmarks.md for that part. With objdump and
# python3 present it also counts the atomic read-modify-write instructions (benches/support/atomics.py).
#
# Usage: benches/proxy_callgrind.sh     (about 1 minute; OUT=FILE also writes the table)
# Knobs: USERS=10000 DURATION=5s CONNECTIONS=16 BASE_PORT=18380
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
UPSTREAM_PORT=$BASE_PORT
APIWARD_PORT=$((BASE_PORT + 1))
# With TARGETS > 1, the further targets listen on the ports after apiward's.
TARGET_PORTS=("$UPSTREAM_PORT")
for ((i = 1; i < TARGETS; i++)); do TARGET_PORTS+=($((APIWARD_PORT + i))); done
WORK=$(mktemp -d /tmp/apiward-proxy-callgrind.XXXXXX)
PIDS=()

log() { printf '%s\n' "proxy_callgrind: $*" >&2; }
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    [[ -n ${KEEP_WORK:-} ]] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
command -v valgrind >/dev/null || missing+=(valgrind)
command -v curl >/dev/null || missing+=(curl)
if ((${#missing[@]})); then
    log "installing ${missing[*]} from the distribution's packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
PATH=$PATH:/usr/sbin

(cd "$ROOT" && cargo build --release --quiet --bin apiward --example gen_config)
"$ROOT/target/release/examples/gen_config" --users "$USERS" --out "$WORK/apiward.toml" --workers 1 \
    --access-log off --listen "127.0.0.1:$APIWARD_PORT" --upstream "http://127.0.0.1:$UPSTREAM_PORT" \
    --keys "$WORK/keys.txt" >/dev/null
if ((TARGETS > 1)); then
    entries=$(printf '{ url = "http://127.0.0.1:%s" }, ' "${TARGET_PORTS[@]}")
    sed -i "s|^url = \"http://127.0.0.1:$UPSTREAM_PORT\"\$|targets = [${entries%, }]|" "$WORK/apiward.toml"
    grep -q '^targets = ' "$WORK/apiward.toml" || { log "could not write the targets"; exit 1; }
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

wait_for() { # wait_for URL PID
    for _ in $(seq 600); do
        curl -s -o /dev/null "$1" && return 0
        kill -0 "$2" 2>/dev/null || { log "the process meant to serve $1 exited"; return 1; }
        sleep 0.1
    done
    log "nothing answers at $1"
    return 1
}

nginx -p "$WORK" -e "$WORK/upstream.error.log" -c "$WORK/upstream.conf" &
PIDS+=($!)
wait_for "http://127.0.0.1:$UPSTREAM_PORT/" "${PIDS[-1]}"

APIWARD_LOG=warn valgrind --tool=callgrind --dump-instr=yes --callgrind-out-file="$WORK/callgrind.out" \
    "$ROOT/target/release/apiward" run --config "$WORK/apiward.toml" >"$WORK/apiward.log" 2>&1 &
VALGRIND_PID=$!
PIDS+=("$VALGRIND_PID")
wait_for "http://127.0.0.1:$APIWARD_PORT/" "$VALGRIND_PID"
URL="http://127.0.0.1:$APIWARD_PORT/api/items/42"
body=$(curl -sS -H "X-Api-Key: $(head -n 1 "$WORK/keys.txt")" "$URL")
[[ $body == 01234567890123456789 ]] || { log "apiward answered ${body:0:200}"; exit 1; }

log "warming up, then counting for $DURATION"
wrk -t1 -c"$CONNECTIONS" -d2s -s "$WORK/keys.lua" "$URL" >/dev/null
callgrind_control -z "$VALGRIND_PID" >/dev/null
wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -s "$WORK/keys.lua" "$URL" >"$WORK/wrk.txt"
callgrind_control -d "$VALGRIND_PID" >/dev/null
if grep -q -E 'Non-2xx|Socket errors' "$WORK/wrk.txt"; then cat "$WORK/wrk.txt" >&2; exit 1; fi
REQUESTS=$(awk '/requests in/ { print $1 }' "$WORK/wrk.txt")
for _ in $(seq 50); do [[ -s $WORK/callgrind.out.1 ]] && break; sleep 0.1; done
sleep 1

TOTAL=$(awk '/^(summary|totals):/ { print $2; exit }' "$WORK/callgrind.out.1")
{
    echo "User-space instructions per proxied request (callgrind, valgrind $(valgrind --version | sed 's/valgrind-//');"
    echo "$TARGETS upstream target(s), $USERS users, wrk -t1 -c$CONNECTIONS -d$DURATION after a 2 s warm-up, $REQUESTS requests counted):"
    printf '**%.0f** instructions per request, everything the apiward process ran.\n' \
        "$(awk -v t="$TOTAL" -v n="$REQUESTS" 'BEGIN { print t / n }')"
    echo "valgrind hides the CPU's SHA extensions, so about 3,400 of them are the portable SHA-256 of"
    echo "the key (a few hundred natively; see the decision's instruction counts)."
    if command -v objdump >/dev/null && command -v python3 >/dev/null; then
        echo
        echo "Atomic read-modify-write instructions among them (\`benches/support/atomics.py\`): each counts"
        echo "as one instruction above but costs about 20 cycles, even uncontended:"
        python3 "$ROOT/benches/support/atomics.py" "$ROOT/target/release/apiward" \
            "$WORK/callgrind.out.1" "$REQUESTS" 8
    fi
} | tee "${OUT:-/dev/null}"
