#!/usr/bin/env bash
# Failover under load: wrk sends GETs through apiward to an upstream of three targets (three
# nginx processes on loopback ports); a few seconds in, one target is killed (SIGKILL: its
# connections reset), and later restarted on the same port. Counts, not speed: the run passes
# when wrk saw no failed GET (no non-2xx answer, no socket error) and the restarted target was
# back in rotation (GET /status: healthy) within two health-check intervals.
#
# Usage: benches/failover.sh            (about 25 s; OUT=FILE also writes the result)
# Knobs: DURATION=20 (seconds of load) KILL_AT=5 RESTART_AT=12 CONNECTIONS=16 THREADS=2
#   INTERVAL=1s (health_check interval) BASE_PORT=18480
#   APIWARD=path/to/apiward (default: a release build, made here)
# Everything listens on 127.0.0.1 only; every process started here is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-20}
KILL_AT=${KILL_AT:-5}
RESTART_AT=${RESTART_AT:-12}
CONNECTIONS=${CONNECTIONS:-16}
THREADS=${THREADS:-2}
INTERVAL=${INTERVAL:-1s}
BASE_PORT=${BASE_PORT:-18480}
OUT=${OUT:-}
APIWARD_PORT=$BASE_PORT
ADMIN_PORT=$((BASE_PORT + 1))
TARGET_PORTS=($((BASE_PORT + 2)) $((BASE_PORT + 3)) $((BASE_PORT + 4)))
KEY=aw_FAILOVERbenchKEYdemoONLY000000000000000000
WORK=$(mktemp -d /tmp/apiward-failover.XXXXXX)
PIDS=()
TARGET_PIDS=()

log() { printf '%s\n' "failover: $*" >&2; }
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
cleanup() {
    stop_all "${PIDS[@]}" "${TARGET_PIDS[@]}"
    [[ -n ${KEEP_WORK:-} ]] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

need wrk nginx curl python3

if [[ -z ${APIWARD:-} ]]; then
    (cd "$ROOT" && cargo build --release --quiet --bin apiward)
    APIWARD=$ROOT/target/release/apiward
fi

# One nginx process per target (no master), so that killing one is one SIGKILL.
target_conf() { # target_conf N PORT
    mkdir -p "$WORK/t$1"
    cat >"$WORK/t$1/nginx.conf" <<EOF
master_process off;
daemon off;
worker_processes 1;
pid $WORK/t$1/nginx.pid;
error_log $WORK/t$1/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $WORK/t$1/body;
    proxy_temp_path $WORK/t$1/proxy;
    fastcgi_temp_path $WORK/t$1/fastcgi;
    uwsgi_temp_path $WORK/t$1/uwsgi;
    scgi_temp_path $WORK/t$1/scgi;
    keepalive_requests 10000000;
    default_type text/plain;
    server {
        listen 127.0.0.1:$2 reuseport;
        location /healthz { return 200 "ok"; }
        location / { return 200 "target $1"; }
    }
}
EOF
}

start_target() { # start_target N: sets TARGET_PIDS[N]
    nginx -p "$WORK/t$1" -e "$WORK/t$1/error.log" -c "$WORK/t$1/nginx.conf" &
    TARGET_PIDS[$1]=$!
}

for i in 0 1 2; do
    target_conf "$i" "${TARGET_PORTS[$i]}"
    start_target "$i"
    wait_for "http://127.0.0.1:${TARGET_PORTS[$i]}/healthz" "${TARGET_PIDS[$i]}" 30
done

DIGEST=$(printf '%s' "$KEY" | sha256sum | cut -d' ' -f1)
cat >"$WORK/apiward.toml" <<EOF
[server]
listen = "127.0.0.1:$APIWARD_PORT"
admin_listen = "127.0.0.1:$ADMIN_PORT"
access_log = "off"
workers = 1

[upstreams.api]
targets = [
  { url = "http://127.0.0.1:${TARGET_PORTS[0]}" },
  { url = "http://127.0.0.1:${TARGET_PORTS[1]}" },
  { url = "http://127.0.0.1:${TARGET_PORTS[2]}" },
]
retries = 2
health_check = { path = "/healthz", interval = "$INTERVAL", timeout = "500ms", unhealthy_after = 2, healthy_after = 1 }

[[routes]]
prefix = "/api/"
upstream = "api"

[groups.bench]
allow = [{ path = "/api/**", verbs = ["view"] }]

# demo-only key, made up for this benchmark
[users."bench@example.org"]
status = "active"
group = "bench"
remote_addresses = "127.0.0.1"
keys = [{ sha256 = "$DIGEST", prefix = "aw_FAILOVER" }]
EOF

APIWARD_LOG=info "$APIWARD" run --config "$WORK/apiward.toml" >"$WORK/apiward.log" 2>&1 &
PIDS+=($!)
wait_for "http://127.0.0.1:$ADMIN_PORT/healthz" "${PIDS[-1]}" 30
URL="http://127.0.0.1:$APIWARD_PORT/api/items/42"
body=$(curl -sS -H "X-Api-Key: $KEY" "$URL")
[[ $body == target* ]] || { log "apiward answered ${body:0:200}"; exit 1; }

healthy() { # healthy PORT: whether /status shows that target in rotation
    curl -s "http://127.0.0.1:$ADMIN_PORT/status" | python3 -c '
import json, sys
port = sys.argv[1]
targets = json.load(sys.stdin)["upstream_targets"]
sys.exit(0 if any(t["url"].endswith(":" + port) and t["healthy"] for t in targets) else 1)' "$1"
}

interval_ms=$(python3 -c '
import re, sys
m = re.fullmatch(r"(\d+)(ms|s)", sys.argv[1])
print(int(m[1]) * (1 if m[2] == "ms" else 1000))' "$INTERVAL")

log "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s; target 1 killed at ${KILL_AT}s, restarted at ${RESTART_AT}s"
wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" -H "X-Api-Key: $KEY" "$URL" >"$WORK/wrk.txt" &
WRK_PID=$!
PIDS+=("$WRK_PID")
sleep "$KILL_AT"
kill -9 "${TARGET_PIDS[1]}"
wait "${TARGET_PIDS[1]}" 2>/dev/null || true
out_ms=""
start=$(date +%s%N)
for _ in $(seq 100); do
    if ! healthy "${TARGET_PORTS[1]}"; then
        out_ms=$((($(date +%s%N) - start) / 1000000))
        break
    fi
    sleep 0.05
done
sleep $((RESTART_AT - KILL_AT))
start_target 1
restarted=$(date +%s%N)
back_ms=""
for _ in $(seq 200); do
    if healthy "${TARGET_PORTS[1]}"; then
        back_ms=$((($(date +%s%N) - restarted) / 1000000))
        break
    fi
    sleep 0.05
done
wait "$WRK_PID"

requests=$(awk '/requests in/ { print $1 }' "$WORK/wrk.txt")
non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $5 }' "$WORK/wrk.txt")
socket_errors=$(awk '/Socket errors:/ { gsub(",", ""); print $4 + $6 + $8 + $10 }' "$WORK/wrk.txt")
non2xx=${non2xx:-0}
socket_errors=${socket_errors:-0}
limit_ms=$((2 * interval_ms))
verdict=pass
if ((non2xx + socket_errors > 0)) || [[ -z $back_ms ]] || ((back_ms > limit_ms)); then verdict=FAIL; fi
{
    echo "Failover ($(date -u +%Y-%m-%d), $("$APIWARD" --version 2>/dev/null || echo apiward); wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s,"
    echo "three nginx targets, retries = 2, health_check interval $INTERVAL, unhealthy_after 2, healthy_after 1):"
    echo
    echo "| GETs | failed (non-2xx) | socket errors | killed target out after | restarted target back after | limit (2 intervals) | verdict |"
    echo "|---|---|---|---|---|---|---|"
    echo "| $requests | $non2xx | $socket_errors | ${out_ms:-not seen} ms | ${back_ms:-not back} ms | $limit_ms ms | $verdict |"
} | tee "${OUT:-/dev/null}"
grep -E "out of rotation|back in rotation" "$WORK/apiward.log" | sed 's/^/failover: apiward: /' >&2 || true
[[ $verdict == pass ]]
