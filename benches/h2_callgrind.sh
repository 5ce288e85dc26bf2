#!/usr/bin/env bash
# User-space instructions per HTTP/2 request, counted by callgrind: apiward (10,000 users,
# workers = 1, no request log) runs under valgrind in front of a plain-HTTP nginx upstream;
# h2load (nghttp2-client) sends a fixed number of requests with one of the benchmark's keys,
# counters are zeroed after a warm-up and dumped after the counted run, and the total is divided
# by the requests h2load had answered 2xx. The companion of benches/tls_e2e.sh's h2load rows:
# those time the whole thing, this shows where apiward's own instructions go, and barely moves
# between runs, so it can be taken on a busy machine.
#
# MODES says which variants are measured, one apiward run each:
#   h2c    HTTP/2 with prior knowledge on the plain listener (the HTTP/2 cost without TLS)
#   h2     HTTP/2 over TLS (ALPN h2; a P-256 certificate made here): what tls_e2e.sh's h2 rows run
#   h1tls  HTTP/1.1 over TLS from the same client (`h2load --h1`, one request at a time on each
#          connection), the reference the HTTP/2 figures are set against
# e.g. MODES="h2c h2 h1tls" (the default); each variant after the first is also given as a ratio.
#
# Usage: benches/h2_callgrind.sh      (about a minute a mode; OUT=FILE also writes the table)
# Knobs: USERS=10000 REQUESTS=20000 CONNECTIONS=64 STREAMS=10 BASE_PORT=18780 MODES="h2c h2 h1tls"
#   ANNOTATE=N: also print callgrind_annotate's N costliest functions (inclusive) of each mode
#   KEEP_WORK=1: keep the work directory (the callgrind profiles) and say where it is
#   BUILD=0: measure target/release as it is, without building it first
# Everything listens on 127.0.0.1 only; every process started here is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
USERS=${USERS:-10000}
REQUESTS=${REQUESTS:-20000}
CONNECTIONS=${CONNECTIONS:-64}
STREAMS=${STREAMS:-10}
BASE_PORT=${BASE_PORT:-18780}
MODES=${MODES:-h2c h2 h1tls}
ANNOTATE=${ANNOTATE:-0}
OUT=${OUT:-}
for mode in $MODES; do
    [[ $mode == h2c || $mode == h2 || $mode == h1tls ]] \
        || { echo "MODES: $mode is none of h2c, h2, h1tls" >&2; exit 2; }
done
UPSTREAM_PORT=$BASE_PORT
APIWARD_PORT=$((BASE_PORT + 1))
REQUEST_PATH=/api/items/42
BODY=01234567890123456789 # 20 bytes
WORK=$(mktemp -d /tmp/apiward-h2-callgrind.XXXXXX)
PIDS=()

log() { printf '%s\n' "h2_callgrind: $*" >&2; }
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
cleanup() {
    stop_all "${PIDS[@]}"
    if [[ -n ${KEEP_WORK:-} ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

need nginx valgrind curl openssl h2load
# h2load comes with nghttp2-client, which `need` cannot guess from the tool's name.
command -v h2load >/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client >/dev/null
}

if [[ ${BUILD:-1} == 1 ]]; then
    (cd "$ROOT" && cargo build --release --quiet --bin apiward --example gen_config)
fi
"$ROOT/target/release/examples/gen_config" --users "$USERS" --out "$WORK/apiward.toml" --workers 1 \
    --access-log off --listen "127.0.0.1:$APIWARD_PORT" --upstream "http://127.0.0.1:$UPSTREAM_PORT" \
    --keys "$WORK/keys.txt" >/dev/null
# The key of a user in the middle of the table, as tls_e2e.sh's h2load rows send it.
KEY=$(sed -n "$((USERS / 2 + 1))p" "$WORK/keys.txt")

# A CA and a certificate for 127.0.0.1, as tls_e2e.sh makes it; [server.tls] goes right before
# the first table after [server]; curl trusts the CA.
make_certificate
export CURL_CA_BUNDLE="$WORK/ca.pem"
before_first_table "$WORK/apiward.toml" "$WORK/apiward.tls.toml" "$(server_tls)"
grep -q '^\[server.tls\]$' "$WORK/apiward.tls.toml" || { log "could not add [server.tls]"; exit 1; }

cat >"$WORK/upstream.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/upstream.pid;
error_log $WORK/upstream.error.log warn;
events { worker_connections 4096; }
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
        listen 127.0.0.1:$UPSTREAM_PORT backlog=4096;
        location / { return 200 "$BODY"; }
    }
}
EOF

nginx -p "$WORK" -e "$WORK/upstream.error.log" -c "$WORK/upstream.conf" &
PIDS+=($!)
wait_for "http://127.0.0.1:$UPSTREAM_PORT/" "${PIDS[-1]}"

# h2load_run MODE N FILE: N requests of MODE's kind to apiward; fails unless all are 2xx.
h2load_run() {
    local mode=$1 n=$2 out=$3
    local -a how
    case $mode in
    h2c) how=("http://127.0.0.1:$APIWARD_PORT$REQUEST_PATH" -m "$STREAMS") ;;
    h2) how=("https://127.0.0.1:$APIWARD_PORT$REQUEST_PATH" -m "$STREAMS") ;;
    h1tls) how=("https://127.0.0.1:$APIWARD_PORT$REQUEST_PATH" --h1 -m 1) ;;
    esac
    h2load -n "$n" -c "$CONNECTIONS" -t 1 -H "x-api-key: $KEY" "${how[@]}" >"$out"
    local ok
    ok=$(awk '/^status codes:/ { print $3 }' "$out")
    if [[ $ok != "$n" ]]; then
        log "h2load ($mode): $ok of $n answered 2xx:"
        cat "$out" >&2
        return 1
    fi
    local protocol
    protocol=$(awk '/^Application protocol:/ { print $3 }' "$out")
    case $mode in
    h1tls) [[ $protocol == http/1.1 ]] ;;
    *) [[ $protocol == h2 || $protocol == h2c ]] ;;
    esac || { log "h2load ($mode) spoke ${protocol:-nothing}"; return 1; }
}

# measure MODE: one apiward under callgrind serving MODE; sets INSTRUCTIONS (per request) and
# writes the variant's part of the report to $WORK/report.MODE.
measure() {
    local mode=$1 config="$WORK/apiward.toml" out="$WORK/callgrind.$1.out" scheme=http
    if [[ $mode != h2c ]]; then config="$WORK/apiward.tls.toml" scheme=https; fi
    APIWARD_LOG=warn valgrind --tool=callgrind --dump-instr=yes --callgrind-out-file="$out" \
        "$ROOT/target/release/apiward" run --config "$config" >"$WORK/apiward.$mode.log" 2>&1 &
    local valgrind_pid=$!
    PIDS+=("$valgrind_pid")
    wait_for "$scheme://127.0.0.1:$APIWARD_PORT/" "$valgrind_pid"
    local body
    body=$(curl -sS --cacert "$WORK/ca.pem" -H "X-Api-Key: $KEY" "$scheme://127.0.0.1:$APIWARD_PORT$REQUEST_PATH")
    [[ $body == "$BODY" ]] || { log "apiward ($mode) answered ${body:0:200}"; exit 1; }

    log "$mode: warming up, then counting $REQUESTS requests"
    h2load_run "$mode" $((REQUESTS / 4)) "$WORK/h2load.$mode.warm.txt"
    callgrind_control -z "$valgrind_pid" >/dev/null
    h2load_run "$mode" "$REQUESTS" "$WORK/h2load.$mode.txt"
    callgrind_control -d "$valgrind_pid" >/dev/null
    for _ in $(seq 50); do [[ -s $out.1 ]] && break; sleep 0.1; done
    sleep 1
    local total
    total=$(awk '/^(summary|totals):/ { print $2; exit }' "$out.1")
    INSTRUCTIONS=$(awk -v t="$total" -v n="$REQUESTS" 'BEGIN { printf "%.0f", t / n }')
    kill "$valgrind_pid" 2>/dev/null || true
    wait "$valgrind_pid" 2>/dev/null || true
    {
        case $mode in
        h2c) echo "HTTP/2 with prior knowledge on the plain listener (h2c), h2load -c$CONNECTIONS -m$STREAMS:" ;;
        h2) echo "HTTP/2 over TLS (ALPN h2), h2load -c$CONNECTIONS -m$STREAMS:" ;;
        h1tls) echo "HTTP/1.1 over TLS, h2load --h1 -c$CONNECTIONS -m1 (one request at a time per connection):" ;;
        esac
        echo "$USERS users, no request log, $REQUESTS requests counted after $((REQUESTS / 4)) of warm-up:"
        printf '**%s** instructions per request, everything the apiward process ran.\n' "$INSTRUCTIONS"
        if command -v objdump >/dev/null; then
            echo
            echo "Atomic read-modify-write instructions among them (\`benches/support/atomics.py\`):"
            python3 "$ROOT/benches/support/atomics.py" "$ROOT/target/release/apiward" \
                "$out.1" "$REQUESTS" 8
        fi
        if ((ANNOTATE > 0)); then
            echo
            echo '```'
            callgrind_annotate --inclusive=yes "$out.1" 2>/dev/null | sed -n "1,$((ANNOTATE + 25))p"
            echo '```'
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
    echo "User-space instructions per request (callgrind, valgrind $(valgrind --version | sed 's/valgrind-//')),"
    echo "apiward with \`workers = 1\` at $(cd "$ROOT" && git rev-parse --short HEAD), one run per variant (MODES=\"$MODES\"):"
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
} | tee "${OUT:-/dev/null}"
