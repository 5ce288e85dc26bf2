#!/usr/bin/env bash
# HTTPS benchmark: the same small upstream (nginx, a fixed 20-byte body, plain HTTP) behind
#   (a) apiward terminating TLS ([server.tls], 10,000 users, key in a header, source whitelist) and
#   (b) nginx terminating TLS with the same certificate and the equivalent checks (a map from key
#       to user, a map from user:address to allowed, proxy_pass with upstream keep-alive),
# one worker each, in alternating rounds with the same load:
#   - wrk over HTTPS with keep-alive (requests/s, latency, CPU time per request of the gateway
#     process from /proc/PID/stat);
#   - full handshakes: every request on a new TCP connection with a full TLS handshake, no session
#     resumed, reported as handshakes per second and CPU time per handshake (that one request
#     included). The client is `openssl s_time -new` (Debian's openssl), HANDSHAKE_CLIENTS of them
#     in parallel, each sending one keyed `GET ... HTTP/1.1` with `Connection: close` per
#     connection. Not wrk: wrk reuses one SSL object per connection slot, so a reconnect resumes the
#     previous session (nginx logged 3,541 of 3,545 reconnects as resumed), and a `-H` header is
#     dropped by a Lua script that builds its own requests (the earlier `-H "Connection: close"`
#     rows measured keep-alive). h2load resumes on reconnect too. The handshakes are counted on
#     the servers (apiward_tls_handshakes_total{session}, nginx's $ssl_session_reused in a log of
#     those requests only); the run stops if one resumed or their count is not the clients'.
#   - HTTP/2 with h2load (nghttp2-client), when it is installed or installable.
#
# Usage: benches/tls_e2e.sh
# Knobs (environment): DURATION=10s ROUNDS=3 CONNECTIONS=64 THREADS=2 USERS=10000 STREAMS=10
#   (h2load's concurrent streams per connection) H2_REQUESTS=200000 HANDSHAKE_CLIENTS=8
#   PROXY_CPUS=0 LOAD_CPUS=1 (taskset lists; empty disables pinning) BASE_PORT=18280 OUT=FILE (the
#   markdown is also written there) MODES="keepalive handshake h2" (the rows measured)
#   PROFILE=release (PROFILE=debug tries the script out quickly; its figures mean nothing). A build
#   of apiward in that profile is made first.
#
# Everything listens on 127.0.0.1 only; every process started here is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/support/keys_lua.sh
source "$ROOT/benches/support/keys_lua.sh"
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
USERS=${USERS:-10000}
STREAMS=${STREAMS:-10}
H2_REQUESTS=${H2_REQUESTS:-200000}
HANDSHAKE_CLIENTS=${HANDSHAKE_CLIENTS:-8}
MODES=${MODES:-keepalive handshake h2}
PROFILE=${PROFILE:-release}
PROXY_CPUS=${PROXY_CPUS-0}
LOAD_CPUS=${LOAD_CPUS-1}
BASE_PORT=${BASE_PORT:-18280}
OUT=${OUT:-}

UPSTREAM_PORT=$BASE_PORT
APIWARD_PORT=$((BASE_PORT + 1))
NGINX_PORT=$((BASE_PORT + 2))
ADMIN_PORT=$((BASE_PORT + 3))
GATEWAYS=(apiward nginx)
REQUEST_PATH=/api/items/42
BODY=01234567890123456789 # 20 bytes

WORK=$(mktemp -d /tmp/apiward-tls-e2e.XXXXXX)
PIDS=()

log() { printf '%s\n' "tls_e2e: $*" >&2; }

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

install_tools() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
    command -v curl >/dev/null || missing+=(curl)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v taskset >/dev/null || missing+=(util-linux)
    command -v h2load >/dev/null || missing+=(nghttp2-client)
    if ((${#missing[@]})); then
        log "installing ${missing[*]} from the distribution's packages"
        apt-get update -qq
        # nghttp2-client is optional: without it the HTTP/2 rows are left out.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null ||
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]/nghttp2-client/}" >/dev/null
    fi
}

nginx_common() {
    cat <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $WORK/$1.pid;
error_log $WORK/$1.error.log warn;
events { worker_connections 4096; multi_accept on; }
http {
    access_log off;
    client_body_temp_path $WORK/$1.body;
    proxy_temp_path $WORK/$1.proxy;
    fastcgi_temp_path $WORK/$1.fastcgi;
    uwsgi_temp_path $WORK/$1.uwsgi;
    scgi_temp_path $WORK/$1.scgi;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    default_type text/plain;
EOF
}

per_request() { # per_request BEFORE AFTER REQUESTS: "user_us sys_us" of CPU per request
    awk -v b="$1" -v a="$2" -v n="$3" -v hz="$(getconf CLK_TCK)" 'BEGIN {
        split(b, x, " "); split(a, y, " ")
        if (n <= 0) { print "0 0"; exit }
        printf "%.2f %.2f\n", (y[1] - x[1]) * 1e6 / hz / n, (y[2] - x[2]) * 1e6 / hz / n }'
}

check_target() { # check_target URL: the benchmark's request must get the upstream's body over TLS
    local body key
    key=$(sed -n "$((USERS / 2 + 1))p" "$WORK/keys.txt")
    body=$(curl -sS --max-time 5 --cacert "$WORK/ca.pem" -H "X-Api-Key: $key" "$1")
    if [[ $body != "$BODY" ]]; then
        log "$1 answered ${body:0:300} instead of the upstream's body"
        return 1
    fi
}

run_wrk() { # run_wrk MODE NAME URL ROUND PID...: MODE keepalive; appends a result line
    local mode=$1 name=$2 url=$3 round=$4 out="$WORK/wrk.$1.$2.$4.txt"
    shift 4
    local before after
    before=$(cpu_ticks "$@")
    pin "$LOAD_CPUS" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --timeout 5s --latency \
        -s "$WORK/keys.lua" "$url" >"$out"
    after=$(cpu_ticks "$@")
    if grep -q -E 'Non-2xx' "$out"; then
        log "$mode $name round $round had non-2xx answers:"
        cat "$out" >&2
        return 1
    fi
    local rps p50 p99 requests cpu
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")
    p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")
    requests=$(awk '/requests in/ { print $1 }' "$out")
    cpu=$(per_request "$before" "$after" "$requests")
    echo "$mode $name $round $rps $p50 $p99 $cpu" >>"$WORK/results.txt"
    log "$(printf '%-9s %-7s round %s: %10.0f req/s  p50 %7.3f ms  p99 %7.3f ms  CPU %s us/req (user sys)' \
        "$mode" "$name" "$round" "$rps" "$p50" "$p99" "$cpu")"
}

# handshakes_of NAME: "full resumed" handshakes the gateway NAME has counted so far (nginx: only
# the requests marked X-Bench-Handshake, which only run_handshakes sends).
handshakes_of() {
    if [[ $1 == apiward ]]; then
        curl -sS --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '
            /^apiward_tls_handshakes_total\{/ {
                if ($1 ~ /session="resumed"/) r += $2; else if ($1 ~ /session="full"/) f += $2 }
            END { print f + 0, r + 0 }'
    else
        # nginx writes its buffered log lines within flush=1s.
        sleep 1.5
        awk '{ if ($1 == "r") r++; else f++ } END { print f + 0, r + 0 }' "$WORK/handshakes.log"
    fi
}

run_handshakes() { # run_handshakes NAME HOST:PORT ROUND PID...: a new connection and full handshake per request
    local name=$1 address=$2 round=$3 out="$WORK/s_time.$1.$3"
    shift 3
    local key seconds
    key=$(sed -n "$((USERS / 2 + 1))p" "$WORK/keys.txt")
    seconds=$(awk -v d="$DURATION" 'BEGIN { sub(/s$/, "", d); print int(d) < 1 ? 1 : int(d) }')
    # s_time sends "GET <page> HTTP/1.0": the page carries the real request line's rest and the
    # headers, and the final " HTTP/1.0" lands in a header of its own.
    local page=$'/api/items/42 HTTP/1.1\r\nHost: bench.local\r\nConnection: close\r\nX-Bench-Handshake: 1\r\nX-Api-Key: '"$key"$'\r\nX-Pad: x'
    local before after counted_before counted_after started i
    counted_before=$(handshakes_of "$name")
    before=$(cpu_ticks "$@")
    started=$(date +%s.%N)
    local -a clients_pids=()
    for ((i = 0; i < HANDSHAKE_CLIENTS; i++)); do
        pin "$LOAD_CPUS" openssl s_time -connect "$address" -new -time "$seconds" -CAfile "$WORK/ca.pem" \
            -www "$page" >"$out.$i" 2>&1 &
        clients_pids+=($!)
    done
    wait "${clients_pids[@]}"
    local elapsed
    elapsed=$(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN { print e - s }')
    after=$(cpu_ticks "$@")
    counted_after=$(handshakes_of "$name")
    local clients full resumed
    clients=$(cat "$out".* | awk '/connections in [0-9.]+s;/ { n += $1 } END { print n + 0 }')
    read -r full resumed < <(awk -v b="$counted_before" -v a="$counted_after" 'BEGIN {
        split(b, x, " "); split(a, y, " "); print y[1] - x[1], y[2] - x[2] }')
    if ((resumed != 0)); then
        log "handshake $name round $round: $resumed of the handshakes resumed a session: not a full-handshake run"
        return 1
    fi
    # s_time counts a connection when its answer was read; the server counts the handshake before.
    if ((clients == 0 || full < clients || full > clients + HANDSHAKE_CLIENTS)); then
        log "handshake $name round $round: the clients made $clients connections, $name counted $full full handshakes"
        cat "$out".* >&2
        return 1
    fi
    local rps cpu
    rps=$(awk -v n="$full" -v t="$elapsed" 'BEGIN { printf "%.1f", n / t }')
    cpu=$(per_request "$before" "$after" "$full")
    echo "handshake $name $round $rps 0 0 $cpu" >>"$WORK/results.txt"
    log "$(printf 'handshake %-7s round %s: %10.0f full handshakes/s (%s counted, none resumed)  CPU %s us/handshake (user sys)' \
        "$name" "$round" "$rps" "$full" "$cpu")"
}

run_h2load() { # run_h2load NAME URL ROUND PID...
    local name=$1 url=$2 round=$3 out="$WORK/h2load.$1.$3.txt"
    shift 3
    local key before after
    key=$(sed -n "$((USERS / 2 + 1))p" "$WORK/keys.txt")
    before=$(cpu_ticks "$@")
    pin "$LOAD_CPUS" h2load -n "$H2_REQUESTS" -c "$CONNECTIONS" -m "$STREAMS" -t "$THREADS" \
        -H "x-api-key: $key" "$url" >"$out"
    after=$(cpu_ticks "$@")
    local rps ok cpu
    rps=$(awk '/^finished in/ { gsub(",", "", $4); print $4 }' "$out")
    ok=$(awk '/^status codes:/ { print $3 }' "$out")
    if [[ $ok != "$H2_REQUESTS" ]]; then
        log "h2load $name round $round: $ok of $H2_REQUESTS answered 2xx:"
        cat "$out" >&2
        return 1
    fi
    cpu=$(per_request "$before" "$after" "$H2_REQUESTS")
    echo "h2 $name $round $rps 0 0 $cpu" >>"$WORK/results.txt"
    log "$(printf 'h2        %-7s round %s: %10.0f req/s  CPU %s us/req (user sys)' "$name" "$round" "$rps" "$cpu")"
}

has_rows() { grep -q "^$1 $2 " "$WORK/results.txt"; } # has_rows MODE NAME

stat_of() { # stat_of MODE NAME COLUMN: the median over the rounds
    awk -v m="$1" -v n="$2" -v c="$3" '$1 == m && $2 == n { print $c }' "$WORK/results.txt" | median
}

main() {
    local load_before
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    install_tools
    PATH=$PATH:/usr/sbin
    local port
    for port in "$UPSTREAM_PORT" "$APIWARD_PORT" "$NGINX_PORT" "$ADMIN_PORT"; do
        port_free "$port" || { log "127.0.0.1:$port is in use: set BASE_PORT"; exit 1; }
    done
    log "building apiward and the config generator ($PROFILE)"
    local -a profile=(--release)
    [[ $PROFILE == release ]] || profile=(--profile "$PROFILE")
    [[ $PROFILE != debug ]] || profile=()
    (cd "$ROOT" && cargo build "${profile[@]}" --quiet --bin apiward --example gen_config)
    local bin="$ROOT/target/$PROFILE"
    make_certificate

    log "generating $USERS users"
    "$bin/examples/gen_config" --users "$USERS" --out "$WORK/apiward.toml" --workers 1 --access-log off \
        --listen "127.0.0.1:$APIWARD_PORT" --upstream "http://127.0.0.1:$UPSTREAM_PORT" \
        --keys "$WORK/keys.txt" --nginx-maps "$WORK/maps.conf"
    # An admin listener (its /metrics counts the handshakes) and [server.tls] right before the
    # first table after [server].
    before_first_table "$WORK/apiward.toml" "$WORK/apiward.tls.toml" \
        "admin_listen = \"127.0.0.1:$ADMIN_PORT\"\n\n$(server_tls)"
    "$bin/apiward" check --config "$WORK/apiward.tls.toml" >/dev/null
    keys_lua "$WORK/keys.txt" "$USERS" "$REQUEST_PATH" >"$WORK/keys.lua"

    { nginx_common upstream; cat <<EOF; } >"$WORK/upstream.conf"
    server {
        listen 127.0.0.1:$UPSTREAM_PORT backlog=4096;
        location / { return 200 "$BODY"; }
    }
}
EOF
    { nginx_common gateway; cat <<EOF; } >"$WORK/gateway.conf"
    include $WORK/maps.conf;
    # The handshake rows' requests only (marked by their client): whether each resumed a session.
    map \$http_x_bench_handshake \$bench_handshake { "" 0; default 1; }
    log_format handshake '\$ssl_session_reused \$ssl_protocol \$status';
    upstream bench {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive $((CONNECTIONS * 2));
        keepalive_requests 10000000;
    }
    server {
        # "listen ... http2" rather than "http2 on;", which nginx knows only from 1.25.1 (Debian 12 has 1.22).
        listen 127.0.0.1:$NGINX_PORT ssl http2 backlog=4096;
        ssl_certificate $WORK/server.pem;
        ssl_certificate_key $WORK/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        access_log $WORK/handshakes.log handshake buffer=64k flush=1s if=\$bench_handshake;
$(nginx_api_location)
    }
}
EOF
    log "starting the upstream (CPUs ${LOAD_CPUS:-any}); apiward and nginx terminating TLS (CPUs ${PROXY_CPUS:-any})"
    start_nginx upstream "$LOAD_CPUS" "$UPSTREAM_PORT"
    start_pinned "$PROXY_CPUS" "$APIWARD_PORT" 600 "$WORK/apiward.log" \
        env APIWARD_LOG=warn "$bin/apiward" run --config "$WORK/apiward.tls.toml"
    local apiward_pid=$STARTED_PID
    start_nginx gateway "$PROXY_CPUS" "$NGINX_PORT"
    local gateway_pid=$STARTED_PID
    local -A served_by=([apiward]="$apiward_pid" [nginx]="$(pgrep -P "$gateway_pid" | tr '\n' ' ')")
    local -A urls=(
        [apiward]="https://127.0.0.1:$APIWARD_PORT$REQUEST_PATH"
        [nginx]="https://127.0.0.1:$NGINX_PORT$REQUEST_PATH"
    )
    local g round
    for g in "${GATEWAYS[@]}"; do check_target "${urls[$g]}"; done
    for g in "${GATEWAYS[@]}"; do
        pin "$LOAD_CPUS" wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -s "$WORK/keys.lua" "${urls[$g]}" >/dev/null
    done
    : >"$WORK/results.txt"
    local have_h2load=0
    command -v h2load >/dev/null && have_h2load=1
    local -A addresses=([apiward]="127.0.0.1:$APIWARD_PORT" [nginx]="127.0.0.1:$NGINX_PORT")
    for round in $(seq "$ROUNDS"); do
        for g in "${GATEWAYS[@]}"; do
            if [[ " $MODES " == *" keepalive "* ]]; then
                # shellcheck disable=SC2086 # a list of pids
                run_wrk keepalive "$g" "${urls[$g]}" "$round" ${served_by[$g]}
            fi
            if [[ " $MODES " == *" handshake "* ]]; then
                # shellcheck disable=SC2086
                run_handshakes "$g" "${addresses[$g]}" "$round" ${served_by[$g]}
            fi
            if ((have_h2load)) && [[ " $MODES " == *" h2 "* ]]; then
                # shellcheck disable=SC2086
                run_h2load "$g" "${urls[$g]}" "$round" ${served_by[$g]}
            fi
        done
    done
    report "$load_before" | tee "${OUT:-/dev/null}"
}

report() {
    echo "Run on $(date -u '+%Y-%m-%d %H:%M UTC'): $ROUNDS rounds alternating ${GATEWAYS[*]}, medians over the rounds;" \
        "wrk -t$THREADS -c$CONNECTIONS -d$DURATION over HTTPS with keep-alive; full handshakes with" \
        "$HANDSHAKE_CLIENTS \`openssl s_time -new\` clients for $DURATION (a new connection, a full handshake and one" \
        "request each, none resumed, counted by the servers); h2load -c$CONNECTIONS -m$STREAMS -n$H2_REQUESTS where" \
        "installed. $USERS users; one worker each, gateways pinned to CPU ${PROXY_CPUS:-any}, load and upstream" \
        "to CPU ${LOAD_CPUS:-any}; the same P-256 certificate. Modes: $MODES. Load average before the run: $1."
    local mode g
    if grep -q -E '^(keepalive|h2) ' "$WORK/results.txt"; then
        echo
        echo "| load | gateway | req/s | p50 (ms) | p99 (ms) | CPU µs/req (user + sys) |"
        echo "|---|---|---:|---:|---:|---:|"
        for mode in keepalive h2; do
            for g in "${GATEWAYS[@]}"; do
                has_rows "$mode" "$g" || continue
                printf '| %s | %s | %.0f | %.3f | %.3f | %.2f + %.2f |\n' "$mode" "$g" "$(stat_of "$mode" "$g" 4)" \
                    "$(stat_of "$mode" "$g" 5)" "$(stat_of "$mode" "$g" 6)" "$(stat_of "$mode" "$g" 7)" "$(stat_of "$mode" "$g" 8)"
            done
        done
    fi
    if grep -q '^handshake ' "$WORK/results.txt"; then
        echo
        echo "| full handshakes | gateway | handshakes/s | CPU µs/handshake (user + sys) |"
        echo "|---|---|---:|---:|"
        for g in "${GATEWAYS[@]}"; do
            has_rows handshake "$g" || continue
            printf '| handshake | %s | %.0f | %.1f + %.1f |\n' "$g" "$(stat_of handshake "$g" 4)" \
                "$(stat_of handshake "$g" 7)" "$(stat_of handshake "$g" 8)"
        done
    fi
    echo
    local unit goal1 goal2
    for mode in keepalive handshake h2; do
        has_rows "$mode" nginx && has_rows "$mode" apiward || continue
        # The issue's goals are for requests; full handshakes are reported, with no goal.
        unit=request goal1=" (goal ≥ 1)" goal2=" (goal ≤ 0.8)"
        [[ $mode != handshake ]] || unit=handshake goal1="" goal2=""
        printf '%s: apiward / nginx %.2f × the %ss per second%s; CPU per %s apiward / nginx %.2f ×%s.\n' \
            "$mode" \
            "$(awk -v a="$(stat_of "$mode" apiward 4)" -v b="$(stat_of "$mode" nginx 4)" 'BEGIN { print a / b }')" \
            "$unit" "$goal1" "$unit" \
            "$(awk -v a="$(stat_of "$mode" apiward 7) $(stat_of "$mode" apiward 8)" -v n="$(stat_of "$mode" nginx 7) $(stat_of "$mode" nginx 8)" 'BEGIN {
                split(a, x, " "); split(n, y, " "); print (x[1] + x[2]) / (y[1] + y[2]) }')" "$goal2"
    done
}

main "$@"
