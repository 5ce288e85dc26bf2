#!/usr/bin/env bash
# End-to-end benchmark: the same small upstream (nginx, a fixed 20-byte body) measured with wrk
#   (a) directly, (b) through apiward (10,000 users, key in a header, source whitelist), and
#   (c) through nginx doing the equivalent checks (a map from key to user, a map from
#       user:address to allowed, proxy_pass with upstream keep-alive), and
#   (d) through HAProxy in TCP mode, which forwards bytes without parsing or checking anything:
#       the cheapest proxy there is, so its req/s is about the most that wrk and the upstream on
#       their CPU can take through any proxy on this machine (the "ceiling" row),
#   (e) through HAProxy in HTTP mode doing nginx's checks (maps from key to user and from
#       user:address to allowed, the same headers set): the "haproxy" row,
# in alternating rounds with the same connection count and duration, one worker thread or
# process per server. Then apiward's peak resident memory with 10,000 and 1,000,000 users.
#
# LOGGED=1 adds two rows: apiward with its JSON request log to a file (apiward_log), and nginx
# with an equivalent JSON access_log to a file (nginx_log: `escape=json`, buffered 64k and
# flushed every 100 ms, the promise apiward's log makes), so that each gateway's log cost and
# the two logged gateways are compared in one run.
# LIMITED=1 adds one row: apiward with a local rate_limit, quota and max_concurrent on every
# user, generous enough that nothing is refused (apiward_limits), so that the limit step's cost
# per request is apiward_limits against apiward in one run (#15: within 5 %). With REDIS=URL as
# well (a running Redis, e.g. redis://127.0.0.1:6390/0), one more row: the same limits kept in
# that shared store (apiward_redis), for its req/s and p99 against the local store.
# BASELINE=/path/to/apiward adds one row: that apiward binary (an older build, say) on the same
# file (apiward_base), so that two builds are compared against nginx in one run. APIWARD=PATH runs
# that binary as `apiward` instead of target/release/apiward (nothing is built then).
# WORKERS=2 runs every gateway with two: apiward `workers = 2`, nginx `worker_processes 2`,
# HAProxy `nbthread 2`, and (unless PROXY_CPUS or LOAD_CPUS are given) nothing pinned. apiward
# then runs four times: `apiward` with its defaults, `worker_runtime = "per_worker"` (a thread, a
# current-thread runtime and an SO_REUSEPORT socket per worker) and `connection_balance =
# "exact"`; `apiward_shared` with `worker_runtime = "shared"` (one multi-thread runtime of two
# threads); `apiward_cpu`, per_worker with `connection_balance = "cpu"` (each connection to the
# worker of the CPU that received its packets, while the workers' counts stay close); and
# `apiward_kernel`, per_worker with `connection_balance = "kernel"` (each connection stays on the
# worker the SO_REUSEPORT hash chose, instead of going to the one serving the fewest), so that
# the four are compared in the same alternating run.
#
# Usage: benches/e2e.sh                (or benches/run-all.sh, which also updates docs/benchmarks.md)
#        LOGGED=1 benches/e2e.sh       LIMITED=1 benches/e2e.sh       WORKERS=2 benches/e2e.sh
# Knobs (environment): DURATION=10s ROUNDS=5 CONNECTIONS=64 THREADS=2 USERS=10000
#   BIG_USERS=1000000 (0 skips the 1M memory run) PROXY_CPUS=0 LOAD_CPUS=1 (taskset lists; empty
#   disables pinning) LOGGED=0 LIMITED=0 WORKERS=1 BASE_PORT=18180 OUT=FILE (the markdown section is also
#   written there).
#
# Everything listens on 127.0.0.1 only; every process started here is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/support/keys_lua.sh
source "$ROOT/benches/support/keys_lua.sh"
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-5}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
USERS=${USERS:-10000}
BIG_USERS=${BIG_USERS:-1000000}
LOGGED=${LOGGED:-0}
LIMITED=${LIMITED:-0}
BASELINE=${BASELINE:-}
REDIS=${REDIS:-}
APIWARD=${APIWARD:-}
WORKERS=${WORKERS:-1}
if ((WORKERS > 1)); then
    # Both cores for everyone, as the scheduler decides.
    PROXY_CPUS=${PROXY_CPUS-}
    LOAD_CPUS=${LOAD_CPUS-}
fi
PROXY_CPUS=${PROXY_CPUS-0}
LOAD_CPUS=${LOAD_CPUS-1}
BASE_PORT=${BASE_PORT:-18180}
OUT=${OUT:-}

UPSTREAM_PORT=$BASE_PORT
APIWARD_PORT=$((BASE_PORT + 1))
NGINX_PORT=$((BASE_PORT + 2))
BIG_PORT=$((BASE_PORT + 3))
CEILING_PORT=$((BASE_PORT + 4))
HAPROXY_PORT=$((BASE_PORT + 5))
APIWARD_LOG_PORT=$((BASE_PORT + 6))
NGINX_LOG_PORT=$((BASE_PORT + 7))
APIWARD_LIMITS_PORT=$((BASE_PORT + 8))
APIWARD_BASE_PORT=$((BASE_PORT + 9))
APIWARD_REDIS_PORT=$((BASE_PORT + 10))
APIWARD_SHARED_PORT=$((BASE_PORT + 11))
APIWARD_KERNEL_PORT=$((BASE_PORT + 12))
APIWARD_CPU_PORT=$((BASE_PORT + 13))
TARGETS=(direct apiward nginx haproxy ceiling)
if ((WORKERS > 1)); then TARGETS+=(apiward_shared apiward_kernel apiward_cpu); fi
if ((LOGGED)); then TARGETS+=(apiward_log nginx_log); fi
if ((LIMITED)); then TARGETS+=(apiward_limits); fi
if ((LIMITED)) && [[ -n $REDIS ]]; then TARGETS+=(apiward_redis); fi
if [[ -n $BASELINE ]]; then TARGETS+=(apiward_base); fi
REQUEST_PATH=/api/items/42
BODY=01234567890123456789 # 20 bytes

WORK=$(mktemp -d /tmp/apiward-e2e.XXXXXX)
PIDS=()

log() { printf '%s\n' "e2e: $*" >&2; }

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        # nginx's master stops its worker itself; wait at most 5 s for each.
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
    command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
    command -v curl >/dev/null || missing+=(curl)
    command -v taskset >/dev/null || missing+=(util-linux)
    if ((${#missing[@]})); then
        log "installing ${missing[*]} from the distribution's packages"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

nginx_common() { # nginx_common NAME [WORKERS]: the parts of every nginx configuration that are the same
    cat <<EOF
worker_processes ${2:-1};
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

start_haproxy() { # start_haproxy CONFIG PORT CPUS: runs haproxy in the foreground, sets STARTED_PID
    haproxy -c -q -f "$1"
    start_pinned "$3" "$2" 10 "$WORK/haproxy.log" haproxy -db -f "$1"
}

cpu_list() { # cpu_list LIST: the CPU numbers of a taskset list such as 0, 0,2 or 0-3 (empty: none)
    local part
    local -a parts
    IFS=, read -r -a parts <<<"$1"
    for part in "${parts[@]}"; do
        if [[ $part == *-* ]]; then seq "${part%-*}" "${part#*-}"; else echo "$part"; fi
    done
}

cpu_time() { # cpu_time LIST: "busy total" clock ticks so far of those CPUs (all of them when empty)
    local -a cpus
    mapfile -t cpus < <(cpu_list "$1")
    awk -v want=" ${cpus[*]} " '
        (want == "  " && $1 == "cpu") || (want != "  " && $1 ~ /^cpu[0-9]+$/ && index(want, " " substr($1, 4) " ")) {
            # user nice system idle iowait irq softirq steal: idle and iowait are not busy.
            busy += $2 + $3 + $4 + $7 + $8 + $9; total += $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }
        END { print busy + 0, total + 0 }' /proc/stat
}

busy_pct() { # busy_pct BEFORE AFTER: the share of the ticks between two cpu_time readings that were busy, in %
    awk -v b="$1" -v a="$2" 'BEGIN { split(b, x, " "); split(a, y, " ")
        t = y[2] - x[2]; printf "%.0f", (t > 0 ? 100 * (y[1] - x[1]) / t : 0) }'
}

start_apiward() { # start_apiward CONFIG PORT CPUS [BINARY]: sets STARTED_PID
    start_pinned "$3" "$2" 600 "$WORK/apiward.log" env APIWARD_LOG=warn "${4:-${APIWARD:-$ROOT/target/release/apiward}}" \
        run --config "$1"
}

check_target() { # check_target URL: the request the benchmark sends must get the upstream's body
    local body
    body=$(curl -sS --max-time 5 -H "X-Api-Key: $(head -n "$((USERS / 2 + 1))" "$WORK/keys.txt" | tail -n 1)" "$1")
    if [[ $body != "$BODY" ]]; then
        log "$1 answered ${body:0:300} instead of the upstream's body"
        return 1
    fi
}

run_wrk() { # run_wrk NAME URL ROUND PID...: appends "name round rps p50 p99 user_us sys_us
    # proxy_busy load_busy" to results: the CPU time per request of the server processes PID...,
    # then how busy the gateways' CPUs and the load's CPUs (wrk and the upstream) were, in %
    local name=$1 url=$2 round=$3 out="$WORK/wrk.$1.$3.txt"
    shift 3
    local before after proxy_before load_before proxy_busy load_busy
    before=$(cpu_ticks "$@")
    proxy_before=$(cpu_time "$PROXY_CPUS")
    load_before=$(cpu_time "$LOAD_CPUS")
    pin "$LOAD_CPUS" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --timeout 5s --latency \
        -s "$WORK/keys.lua" "$url" >"$out"
    after=$(cpu_ticks "$@")
    proxy_busy=$(busy_pct "$proxy_before" "$(cpu_time "$PROXY_CPUS")")
    load_busy=$(busy_pct "$load_before" "$(cpu_time "$LOAD_CPUS")")
    if grep -q -E 'Non-2xx|Socket errors' "$out"; then
        log "$name round $round had errors:"
        cat "$out" >&2
        return 1
    fi
    local rps p50 p99 requests user_us sys_us
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")
    p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")
    requests=$(awk '/requests in/ { print $1 }' "$out")
    read -r user_us sys_us < <(awk -v b="$before" -v a="$after" -v n="$requests" -v hz="$(getconf CLK_TCK)" 'BEGIN {
        split(b, x, " "); split(a, y, " ")
        printf "%.2f %.2f\n", (y[1] - x[1]) * 1e6 / hz / n, (y[2] - x[2]) * 1e6 / hz / n }')
    printf '%s %s %s %s %s %s %s %s %s\n' "$name" "$round" "$rps" "$p50" "$p99" "$user_us" "$sys_us" \
        "$proxy_busy" "$load_busy" >>"$WORK/results.txt"
    log "$(printf '%-8s round %s: %10.0f req/s  p50 %7.3f ms  p99 %7.3f ms  CPU %5.2f + %5.2f us/req  busy %s%% + %s%%' \
        "$name" "$round" "$rps" "$p50" "$p99" "$user_us" "$sys_us" "$proxy_busy" "$load_busy")"
}

stat_of() { # stat_of NAME COLUMN: the median over the rounds
    awk -v n="$1" -v c="$2" '$1 == n { print $c }' "$WORK/results.txt" | median
}

worker_copy() { # worker_copy NAME SETTING PORT: $WORK/apiward-NAME.toml, apiward.toml with SETTING under [server], on PORT
    local name=$1 setting=$2 port=$3 copy="$WORK/apiward-$1.toml"
    sed -e "s|^listen = \"127.0.0.1:$APIWARD_PORT\"|listen = \"127.0.0.1:$port\"|" \
        -e "s|^workers = $WORKERS\$|workers = $WORKERS\n$setting|" \
        "$WORK/apiward.toml" >"$copy"
    if ((WORKERS > 1)) && { ! grep -qxF "$setting" "$copy" ||
        ! grep -q "^listen = \"127.0.0.1:$port\"" "$copy"; }; then
        log "gen_config's workers or listen line changed: $copy is not the copy with $setting"
        exit 1
    fi
}

vm_kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

big_memory() { # big_memory USERS: sets BIG_HWM and BIG_RSS (KiB) of apiward serving that many users
    local users=$1 cfg="$WORK/big.toml" pid
    "$ROOT/target/release/examples/gen_config" --users "$users" --out "$cfg" --workers 1 --access-log off \
        --listen "127.0.0.1:$BIG_PORT" --upstream "http://127.0.0.1:$UPSTREAM_PORT" --keys "$WORK/big-keys.txt"
    start_apiward "$cfg" "$BIG_PORT" "$PROXY_CPUS"
    pid=$STARTED_PID
    local key
    key=$(sed -n "$((users / 2 + 1))p" "$WORK/big-keys.txt")
    for _ in 1 2 3 4 5; do
        curl -sS --max-time 5 -o /dev/null -H "X-Api-Key: $key" "http://127.0.0.1:$BIG_PORT$REQUEST_PATH"
    done
    BIG_HWM=$(vm_kib "$pid" VmHWM)
    BIG_RSS=$(vm_kib "$pid" VmRSS)
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    rm -f "$cfg" "$WORK/big-keys.txt"
}

main() {
    LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
    install_tools
    PATH=$PATH:/usr/sbin
    local port
    for port in "$UPSTREAM_PORT" "$APIWARD_PORT" "$NGINX_PORT" "$BIG_PORT" "$CEILING_PORT" \
        "$HAPROXY_PORT" "$APIWARD_LOG_PORT" "$NGINX_LOG_PORT" "$APIWARD_SHARED_PORT" "$APIWARD_KERNEL_PORT" "$APIWARD_CPU_PORT"; do
        port_free "$port" || { log "127.0.0.1:$port is in use: set BASE_PORT"; exit 1; }
    done

    log "building apiward and the config generator (release)"
    (cd "$ROOT" && cargo build --release --quiet --bin apiward --example gen_config)

    log "generating $USERS users"
    "$ROOT/target/release/examples/gen_config" --users "$USERS" --out "$WORK/apiward.toml" --workers "$WORKERS" --access-log off \
        --listen "127.0.0.1:$APIWARD_PORT" --upstream "http://127.0.0.1:$UPSTREAM_PORT" \
        --keys "$WORK/keys.txt" --nginx-maps "$WORK/maps.conf"
    # The same file, logging every request as JSON to a file, on a port of its own.
    sed -e "s|^access_log = \"off\"|access_log = \"$WORK/apiward-requests.log\"|" \
        -e "s|^listen = \"127.0.0.1:$APIWARD_PORT\"|listen = \"127.0.0.1:$APIWARD_LOG_PORT\"|" \
        "$WORK/apiward.toml" >"$WORK/apiward-log.toml"
    if ! grep -q "^access_log = \"$WORK/apiward-requests.log\"" "$WORK/apiward-log.toml" ||
        ! grep -q "^listen = \"127.0.0.1:$APIWARD_LOG_PORT\"" "$WORK/apiward-log.toml"; then
        log "gen_config's access_log or listen line changed: apiward-log.toml is not the logged copy"
        exit 1
    fi
    # The same file, its workers on one multi-thread runtime instead of a runtime each; each
    # connection kept where the kernel's SO_REUSEPORT hash put it; each connection given to the
    # worker of the CPU that received it.
    worker_copy shared 'worker_runtime = "shared"' "$APIWARD_SHARED_PORT"
    worker_copy kernel 'connection_balance = "kernel"' "$APIWARD_KERNEL_PORT"
    worker_copy cpu 'connection_balance = "cpu"' "$APIWARD_CPU_PORT"
    # The same file again, every user (all in [groups.bench]) under generous local limits.
    limited_copy "$WORK/apiward.toml" "$WORK/apiward-limits.toml" \
        "s|^listen = \"127.0.0.1:$APIWARD_PORT\"|listen = \"127.0.0.1:$APIWARD_LIMITS_PORT\"|" || exit 1
    if ! grep -q "^listen = \"127.0.0.1:$APIWARD_LIMITS_PORT\"" "$WORK/apiward-limits.toml"; then
        log "gen_config's listen line changed: apiward-limits.toml is not the limited copy"
        exit 1
    fi
    # HAProxy's maps: key -> user, and user:address -> allowed, from the keys file (user i holds
    # line i + 1) and the generator's whitelist (198.51.x.y, and the client's 127.0.0.1).
    awk '{ printf "%s u%07d@bench.example\n", $0, NR - 1 }' "$WORK/keys.txt" >"$WORK/haproxy-users.map"
    awk '{ i = NR - 1; printf "u%07d@bench.example:198.51.%d.%d 1\nu%07d@bench.example:127.0.0.1 1\n", i, int(i / 256) % 256, i % 256, i }' \
        "$WORK/keys.txt" >"$WORK/haproxy-allowed.map"

    # wrk sends 1,024 different keys spread over all users, prepared once per thread, so the
    # key lookup is not always the same cache line; the direct upstream ignores the header.
    keys_lua "$WORK/keys.txt" "$USERS" "$REQUEST_PATH" >"$WORK/keys.lua"

    { nginx_common upstream; cat <<EOF; } >"$WORK/upstream.conf"
    server {
        listen 127.0.0.1:$UPSTREAM_PORT backlog=4096;
        location / { return 200 "$BODY"; }
    }
}
EOF
    gateway_conf() { # gateway_conf NAME PORT ACCESS_LOG_DIRECTIVE: nginx as a gateway
        nginx_common "$1" "$WORKERS"
        cat <<EOF
    include $WORK/maps.conf;
    log_format apiward_json escape=json '{"timestamp":"\$time_iso8601","request_id":"\$request_id","client":"\$remote_addr","user":"\$api_user","method":"\$request_method","path":"\$uri","route":"/api/","upstream":"bench","decision":"allowed","status":\$status,"bytes_in":\$request_length,"bytes_out":\$bytes_sent,"upstream_ms":"\$upstream_response_time","total_ms":\$request_time}';
    upstream bench {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive $((CONNECTIONS * 2));
        keepalive_requests 10000000;
    }
    server {
        listen 127.0.0.1:$2 backlog=4096;
        $3
$(nginx_api_location)
    }
}
EOF
    }
    gateway_conf gateway "$NGINX_PORT" "access_log off;" >"$WORK/gateway.conf"
    gateway_conf gateway-log "$NGINX_LOG_PORT" \
        "access_log $WORK/nginx-requests.log apiward_json buffer=64k flush=100ms;" >"$WORK/gateway-log.conf"

    # The ceiling: bytes relayed both ways, one upstream connection per client connection.
    cat >"$WORK/ceiling.cfg" <<EOF
global
    nbthread $WORKERS
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend ceiling
    bind 127.0.0.1:$CEILING_PORT
    default_backend upstream
backend upstream
    server upstream 127.0.0.1:$UPSTREAM_PORT
EOF

    # HAProxy as a gateway: nginx's checks and headers, upstream connections reused.
    cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread $WORKERS
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 75s
frontend gateway
    bind 127.0.0.1:$HAPROXY_PORT
    http-request return status 404 unless { path_beg /api/ }
    http-request set-var(txn.user) req.hdr(x-api-key),map($WORK/haproxy-users.map)
    http-request return status 401 unless { var(txn.user) -m found }
    http-request set-var(txn.src) src
    http-request set-var(txn.pair) var(txn.user),concat(:,txn.src,)
    http-request return status 403 unless { var(txn.pair),map($WORK/haproxy-allowed.map) -m found }
    http-request deny deny_status 405 unless METH_GET || METH_POST
    http-request del-header x-api-key
    http-request set-header X-Forwarded-For %[src]
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Apiward-User %[var(txn.user)]
    http-request set-header X-Apiward-Group bench
    default_backend upstream
backend upstream
    http-reuse always
    server upstream 127.0.0.1:$UPSTREAM_PORT
EOF

    log "starting the upstream (nginx, CPUs ${LOAD_CPUS:-any}); apiward, nginx and HAProxy (TCP) as gateways (CPUs ${PROXY_CPUS:-any})"
    start_nginx upstream "$LOAD_CPUS" "$UPSTREAM_PORT"
    local upstream_pid=$STARTED_PID
    start_apiward "$WORK/apiward.toml" "$APIWARD_PORT" "$PROXY_CPUS"
    local apiward_pid=$STARTED_PID
    start_nginx gateway "$PROXY_CPUS" "$NGINX_PORT"
    local gateway_pid=$STARTED_PID
    start_haproxy "$WORK/ceiling.cfg" "$CEILING_PORT" "$PROXY_CPUS"
    local ceiling_pid=$STARTED_PID
    start_haproxy "$WORK/haproxy.cfg" "$HAPROXY_PORT" "$PROXY_CPUS"
    local haproxy_pid=$STARTED_PID
    local apiward_log_pid="" nginx_log_workers=""
    if ((LOGGED)); then
        start_apiward "$WORK/apiward-log.toml" "$APIWARD_LOG_PORT" "$PROXY_CPUS"
        apiward_log_pid=$STARTED_PID
        start_nginx gateway-log "$PROXY_CPUS" "$NGINX_LOG_PORT"
        nginx_log_workers=$(pgrep -P "$STARTED_PID" | tr '\n' ' ')
    fi
    local apiward_limits_pid="" apiward_redis_pid=""
    if ((LIMITED)) && [[ -n $REDIS ]]; then
        sed -e "s|^listen = \"127.0.0.1:$APIWARD_LIMITS_PORT\"|listen = \"127.0.0.1:$APIWARD_REDIS_PORT\"|" \
            "$WORK/apiward-limits.toml" >"$WORK/apiward-redis.toml"
        printf '\n[rate_limits]\nstore = "%s"\n' "$REDIS" >>"$WORK/apiward-redis.toml"
        start_apiward "$WORK/apiward-redis.toml" "$APIWARD_REDIS_PORT" "$PROXY_CPUS"
        apiward_redis_pid=$STARTED_PID
        check_limited "http://127.0.0.1:$APIWARD_REDIS_PORT$REQUEST_PATH" "$(head -n 1 "$WORK/keys.txt")" \
            apiward_redis || exit 1
    fi
    if ((LIMITED)); then
        start_apiward "$WORK/apiward-limits.toml" "$APIWARD_LIMITS_PORT" "$PROXY_CPUS"
        apiward_limits_pid=$STARTED_PID
        check_limited "http://127.0.0.1:$APIWARD_LIMITS_PORT$REQUEST_PATH" "$(head -n 1 "$WORK/keys.txt")" \
            apiward_limits || exit 1
    fi
    local apiward_shared_pid="" apiward_kernel_pid="" apiward_cpu_pid=""
    if ((WORKERS > 1)); then
        start_apiward "$WORK/apiward-shared.toml" "$APIWARD_SHARED_PORT" "$PROXY_CPUS"
        apiward_shared_pid=$STARTED_PID
        start_apiward "$WORK/apiward-kernel.toml" "$APIWARD_KERNEL_PORT" "$PROXY_CPUS"
        apiward_kernel_pid=$STARTED_PID
        start_apiward "$WORK/apiward-cpu.toml" "$APIWARD_CPU_PORT" "$PROXY_CPUS"
        apiward_cpu_pid=$STARTED_PID
    fi
    local apiward_base_pid=""
    if [[ -n $BASELINE ]]; then
        sed "s|^listen = \"127.0.0.1:$APIWARD_PORT\"|listen = \"127.0.0.1:$APIWARD_BASE_PORT\"|" \
            "$WORK/apiward.toml" >"$WORK/apiward-base.toml"
        start_apiward "$WORK/apiward-base.toml" "$APIWARD_BASE_PORT" "$PROXY_CPUS" "$BASELINE"
        apiward_base_pid=$STARTED_PID
    fi
    # Whose CPU time each target's row reports: the server answering wrk (nginx's worker).
    local -A served_by=(
        [direct]="$(pgrep -P "$upstream_pid" | tr '\n' ' ')"
        [apiward]="$apiward_pid"
        [nginx]="$(pgrep -P "$gateway_pid" | tr '\n' ' ')"
        [ceiling]="$ceiling_pid"
        [haproxy]="$haproxy_pid"
        [apiward_log]="$apiward_log_pid"
        [nginx_log]="$nginx_log_workers"
        [apiward_limits]="$apiward_limits_pid"
        [apiward_base]="$apiward_base_pid"
        [apiward_redis]="$apiward_redis_pid"
        [apiward_shared]="$apiward_shared_pid"
        [apiward_kernel]="$apiward_kernel_pid"
        [apiward_cpu]="$apiward_cpu_pid"
    )

    local -A urls=(
        [direct]="http://127.0.0.1:$UPSTREAM_PORT$REQUEST_PATH"
        [apiward]="http://127.0.0.1:$APIWARD_PORT$REQUEST_PATH"
        [nginx]="http://127.0.0.1:$NGINX_PORT$REQUEST_PATH"
        [ceiling]="http://127.0.0.1:$CEILING_PORT$REQUEST_PATH"
        [haproxy]="http://127.0.0.1:$HAPROXY_PORT$REQUEST_PATH"
        [apiward_log]="http://127.0.0.1:$APIWARD_LOG_PORT$REQUEST_PATH"
        [nginx_log]="http://127.0.0.1:$NGINX_LOG_PORT$REQUEST_PATH"
        [apiward_limits]="http://127.0.0.1:$APIWARD_LIMITS_PORT$REQUEST_PATH"
        [apiward_base]="http://127.0.0.1:$APIWARD_BASE_PORT$REQUEST_PATH"
        [apiward_redis]="http://127.0.0.1:$APIWARD_REDIS_PORT$REQUEST_PATH"
        [apiward_shared]="http://127.0.0.1:$APIWARD_SHARED_PORT$REQUEST_PATH"
        [apiward_kernel]="http://127.0.0.1:$APIWARD_KERNEL_PORT$REQUEST_PATH"
        [apiward_cpu]="http://127.0.0.1:$APIWARD_CPU_PORT$REQUEST_PATH"
    )
    local target round
    for target in "${TARGETS[@]}"; do check_target "${urls[$target]}"; done
    # Warm-up: connection pools, page faults, CPU frequency.
    for target in "${TARGETS[@]}"; do
        pin "$LOAD_CPUS" wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -s "$WORK/keys.lua" "${urls[$target]}" >/dev/null
    done
    : >"$WORK/results.txt"
    for round in $(seq "$ROUNDS"); do
        for target in "${TARGETS[@]}"; do
            # shellcheck disable=SC2086 # a list of pids
            run_wrk "$target" "${urls[$target]}" "$round" ${served_by[$target]}
        done
    done
    if ((LOGGED)); then
        # Every logged request is one line of JSON (the check's and the warm-up's included).
        local file lines
        sleep 0.3
        for file in apiward-requests.log nginx-requests.log; do
            lines=$(wc -l <"$WORK/$file")
            ((lines > 0)) || { log "$file is empty"; exit 1; }
            if command -v python3 >/dev/null; then
                python3 -c 'import json,sys; [json.loads(l) for l in open(sys.argv[1])]' "$WORK/$file" ||
                    { log "$file has a line that is not one JSON object"; exit 1; }
            fi
            log "$file: $lines lines"
        done
    fi
    local hwm10k rss10k
    hwm10k=$(vm_kib "$apiward_pid" VmHWM)
    rss10k=$(vm_kib "$apiward_pid" VmRSS)

    BIG_HWM="" BIG_RSS=""
    if ((BIG_USERS > 0)); then
        log "apiward's memory with $BIG_USERS users (generating and compiling takes a while)"
        big_memory "$BIG_USERS"
    fi

    report "$hwm10k" "$rss10k" "$BIG_HWM" "$BIG_RSS" | tee "${OUT:-/dev/null}"
}

report() {
    local hwm10k=$1 rss10k=$2 big_hwm=$3 big_rss=$4
    local d_rps a_rps n_rps c_rps
    d_rps=$(stat_of direct 3)
    a_rps=$(stat_of apiward 3)
    n_rps=$(stat_of nginx 3)
    c_rps=$(stat_of ceiling 3)
    echo "Run on $(date -u '+%Y-%m-%d %H:%M UTC'): wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency," \
        "$ROUNDS rounds alternating ${TARGETS[*]}; medians over the rounds." \
        "$USERS users; $WORKERS worker(s) per gateway; wrk rotates over 1,024 of their keys (X-Api-Key); each user has two whitelist" \
        "entries and the client matches the second. Gateways pinned to CPU ${PROXY_CPUS:-any}," \
        "wrk and the upstream to CPU ${LOAD_CPUS:-any}. Load average before the run: $LOAD_BEFORE" \
        "(anything above ~0.3 means another process shared the machine)." \
        "\`ceiling\` is HAProxy in TCP mode: it relays bytes without parsing or checking anything."
    echo
    echo "| target | req/s | p50 (ms) | p99 (ms) | req/s vs direct | req/s vs nginx | CPU µs/req (user + sys) | gateway CPU busy | load CPU busy |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    local t rps
    for t in "${TARGETS[@]}"; do
        rps=$(stat_of "$t" 3)
        printf '| %s | %.0f | %.3f | %.3f | %.2f | %.2f | %.2f + %.2f | %s %% | %s %% |\n' "$t" "$rps" "$(stat_of "$t" 4)" "$(stat_of "$t" 5)" \
            "$(awk -v a="$rps" -v b="$d_rps" 'BEGIN { print a / b }')" \
            "$(awk -v a="$rps" -v b="$n_rps" 'BEGIN { print a / b }')" "$(stat_of "$t" 6)" "$(stat_of "$t" 7)" \
            "$(stat_of "$t" 8)" "$(stat_of "$t" 9)"
    done
    echo
    printf 'apiward / nginx: **%.2f ×** the requests per second (goal ≥ 1.25), p99 %.3f ms vs %.3f ms (goal: not higher).\n' \
        "$(awk -v a="$a_rps" -v b="$n_rps" 'BEGIN { print a / b }')" "$(stat_of apiward 5)" "$(stat_of nginx 5)"
    printf 'ceiling / nginx: %.2f ×; apiward / ceiling: %.2f ×. The ceiling is what wrk and the upstream, sharing their CPU, can take through a proxy that does nothing: when the load CPU is busy near 100 %%, they, not the gateway, set the req/s.\n' \
        "$(awk -v a="$c_rps" -v b="$n_rps" 'BEGIN { print a / b }')" "$(awk -v a="$a_rps" -v b="$c_rps" 'BEGIN { print a / b }')"
    printf 'CPU per request, nginx / apiward: %.2f ×: the req/s ratio to expect per core where the gateway, not the load, is what runs out.\n' \
        "$(awk -v n="$(stat_of nginx 6) $(stat_of nginx 7)" -v a="$(stat_of apiward 6) $(stat_of apiward 7)" 'BEGIN {
            split(n, x, " "); split(a, y, " "); print (x[1] + x[2]) / (y[1] + y[2]) }')"
    cpu_of() { awk -v u="$(stat_of "$1" 6)" -v s="$(stat_of "$1" 7)" 'BEGIN { print u + s }'; }
    printf 'CPU per request, apiward / nginx: **%.2f ×** (goal ≤ 0.75); apiward / HAProxy (HTTP, the same checks): **%.2f ×** (goal ≤ 0.70).\n' \
        "$(awk -v a="$(cpu_of apiward)" -v b="$(cpu_of nginx)" 'BEGIN { print a / b }')" \
        "$(awk -v a="$(cpu_of apiward)" -v b="$(cpu_of haproxy)" 'BEGIN { print a / b }')"
    if ((LOGGED)); then
        printf 'With the JSON request log to a file: apiward / nginx CPU per request **%.2f ×** (goal ≤ 0.70), req/s **%.2f ×** (goal ≥ 1.1), p99 %.3f ms vs %.3f ms. The log costs apiward **%.2f ×** its CPU per request without it (goal ≤ 1.15), nginx %.2f ×.\n' \
            "$(awk -v a="$(cpu_of apiward_log)" -v b="$(cpu_of nginx_log)" 'BEGIN { print a / b }')" \
            "$(awk -v a="$(stat_of apiward_log 3)" -v b="$(stat_of nginx_log 3)" 'BEGIN { print a / b }')" \
            "$(stat_of apiward_log 5)" "$(stat_of nginx_log 5)" \
            "$(awk -v a="$(cpu_of apiward_log)" -v b="$(cpu_of apiward)" 'BEGIN { print a / b }')" \
            "$(awk -v a="$(cpu_of nginx_log)" -v b="$(cpu_of nginx)" 'BEGIN { print a / b }')"
    fi
    if ((LIMITED)); then
        printf 'With a local rate_limit, quota and max_concurrent on every user: **%.3f ×** the CPU per request without limits (goal ≤ 1.05), req/s %.2f ×, p99 %.3f ms vs %.3f ms.\n' \
            "$(awk -v a="$(cpu_of apiward_limits)" -v b="$(cpu_of apiward)" 'BEGIN { print a / b }')" \
            "$(awk -v a="$(stat_of apiward_limits 3)" -v b="$(stat_of apiward 3)" 'BEGIN { print a / b }')" \
            "$(stat_of apiward_limits 5)" "$(stat_of apiward 5)"
    fi
    if ((LIMITED)) && [[ -n $REDIS ]]; then
        printf 'The same limits in Redis (%s): req/s **%.2f ×** the local store'"'"'s, p99 %.3f ms vs %.3f ms, CPU per request %.3f × (the gateway'"'"'s own; Redis'"'"' is not counted).\n' \
            "$REDIS" \
            "$(awk -v a="$(stat_of apiward_redis 3)" -v b="$(stat_of apiward_limits 3)" 'BEGIN { print a / b }')" \
            "$(stat_of apiward_redis 5)" "$(stat_of apiward_limits 5)" \
            "$(awk -v a="$(cpu_of apiward_redis)" -v b="$(cpu_of apiward_limits)" 'BEGIN { print a / b }')"
    fi
    if ((WORKERS > 1)); then
        printf 'apiward with %s workers on one shared multi-thread runtime (apiward_shared) against a runtime and socket per worker (apiward, the default): req/s **%.2f ×**, CPU per request %.2f ×, p99 %.3f ms vs %.3f ms; apiward_shared / nginx: req/s %.2f ×, CPU per request %.2f ×.\n' \
            "$WORKERS" \
            "$(awk -v a="$(stat_of apiward_shared 3)" -v b="$(stat_of apiward 3)" 'BEGIN { print a / b }')" \
            "$(awk -v a="$(cpu_of apiward_shared)" -v b="$(cpu_of apiward)" 'BEGIN { print a / b }')" \
            "$(stat_of apiward_shared 5)" "$(stat_of apiward 5)" \
            "$(awk -v a="$(stat_of apiward_shared 3)" -v b="$(stat_of nginx 3)" 'BEGIN { print a / b }')" \
            "$(awk -v a="$(cpu_of apiward_shared)" -v b="$(cpu_of nginx)" 'BEGIN { print a / b }')"
        printf 'The same per-worker runtimes with `connection_balance = "kernel"` (apiward_kernel: each connection stays where the SO_REUSEPORT hash put it) against the default `"exact"` (apiward): req/s **%.2f ×**, CPU per request %.2f ×, p99 %.3f ms vs %.3f ms; apiward_kernel / nginx: req/s %.2f ×.\n' \
            "$(awk -v a="$(stat_of apiward_kernel 3)" -v b="$(stat_of apiward 3)" 'BEGIN { print a / b }')" \
            "$(awk -v a="$(cpu_of apiward_kernel)" -v b="$(cpu_of apiward)" 'BEGIN { print a / b }')" \
            "$(stat_of apiward_kernel 5)" "$(stat_of apiward 5)" \
            "$(awk -v a="$(stat_of apiward_kernel 3)" -v b="$(stat_of nginx 3)" 'BEGIN { print a / b }')"
        printf 'With `connection_balance = "cpu"` (apiward_cpu: each connection to the worker of the CPU that received it, while the counts stay close) against `"exact"` (apiward): req/s **%.2f ×**, CPU per request %.2f ×, p99 %.3f ms vs %.3f ms; apiward_cpu / nginx: req/s %.2f ×, CPU per request %.2f ×.\n' \
            "$(awk -v a="$(stat_of apiward_cpu 3)" -v b="$(stat_of apiward 3)" 'BEGIN { print a / b }')" \
            "$(awk -v a="$(cpu_of apiward_cpu)" -v b="$(cpu_of apiward)" 'BEGIN { print a / b }')" \
            "$(stat_of apiward_cpu 5)" "$(stat_of apiward 5)" \
            "$(awk -v a="$(stat_of apiward_cpu 3)" -v b="$(stat_of nginx 3)" 'BEGIN { print a / b }')" \
            "$(awk -v a="$(cpu_of apiward_cpu)" -v b="$(cpu_of nginx)" 'BEGIN { print a / b }')"
    fi
    if [[ -n $BASELINE ]]; then
        printf 'The baseline build (%s): req/s vs nginx **%.2f ×** (this build: %.2f ×), CPU per request vs nginx %.2f × (this build: %.2f ×), p99 %.3f ms.\n' \
            "$BASELINE" \
            "$(awk -v a="$(stat_of apiward_base 3)" -v b="$(stat_of nginx 3)" 'BEGIN { print a / b }')" \
            "$(awk -v a="$(stat_of apiward 3)" -v b="$(stat_of nginx 3)" 'BEGIN { print a / b }')" \
            "$(awk -v a="$(cpu_of apiward_base)" -v b="$(cpu_of nginx)" 'BEGIN { print a / b }')" \
            "$(awk -v a="$(cpu_of apiward)" -v b="$(cpu_of nginx)" 'BEGIN { print a / b }')" \
            "$(stat_of apiward_base 5)"
    fi
    echo "CPU time per request (the gateway process, or nginx's workers; \`direct\` is the upstream's worker, which"
    echo "shares its CPU with wrk) moves much less than req/s when another process or VM shares the machine."
    echo "Busy is the share of the CPUs' time, from \`/proc/stat\`, not idle during the round."
    echo
    echo "Every round:"
    echo
    echo "| round | target | req/s | p50 (ms) | p99 (ms) | CPU µs/req (user + sys) | gateway CPU busy | load CPU busy |"
    echo "|---:|---|---:|---:|---:|---:|---:|---:|"
    awk '{ printf "| %s | %s | %.0f | %.3f | %.3f | %.2f + %.2f | %s %% | %s %% |\n", $2, $1, $3, $4, $5, $6, $7, $8, $9 }' "$WORK/results.txt"
    echo
    echo "apiward's resident memory (\`VmHWM\` is the peak, including compiling the file; \`VmRSS\` is after serving):"
    echo
    echo "| users | VmHWM (MiB) | VmRSS (MiB) | peak bytes per user |"
    echo "|---:|---:|---:|---:|"
    printf '| %s | %.1f | %.1f | %.0f |\n' "$USERS" "$(awk -v k="$hwm10k" 'BEGIN { print k / 1024 }')" \
        "$(awk -v k="$rss10k" 'BEGIN { print k / 1024 }')" "$(awk -v k="$hwm10k" -v u="$USERS" 'BEGIN { print k * 1024 / u }')"
    if [[ -n $big_hwm ]]; then
        printf '| %s | %.1f | %.1f | %.0f |\n' "$BIG_USERS" "$(awk -v k="$big_hwm" 'BEGIN { print k / 1024 }')" \
            "$(awk -v k="$big_rss" 'BEGIN { print k / 1024 }')" \
            "$(awk -v k="$big_hwm" -v u="$BIG_USERS" 'BEGIN { print k * 1024 / u }')"
        printf '\nAt %s users: %.0f bytes per user resident after serving (VmRSS), %.0f at the peak (goal < 400).\n' \
            "$BIG_USERS" "$(awk -v k="$big_rss" -v u="$BIG_USERS" 'BEGIN { print k * 1024 / u }')" \
            "$(awk -v k="$big_hwm" -v u="$BIG_USERS" 'BEGIN { print k * 1024 / u }')"
    fi
}

main "$@"
