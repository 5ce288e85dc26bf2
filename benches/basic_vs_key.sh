#!/usr/bin/env bash
# Basic auth vs key auth, end to end: requests per second through a release build of apiward,
# one user authenticating with an API key (X-Api-Key) and one with HTTP Basic (an Argon2id
# password hash in the file), measured with wrk in alternating rounds once the password cache is
# warm. Both users, their key and password are made with the CLI itself (`users add`,
# `users set-password --generate`). The upstream is the built-in echo, so the two runs differ
# only in how the client authenticates.
#
# Usage: benches/basic_vs_key.sh
# Knobs (environment): DURATION=10s ROUNDS=3 CONNECTIONS=32 PORT=18190
#   PROXY_CPUS=0 LOAD_CPUS=1 (taskset CPU lists for apiward and wrk; empty disables pinning)
#
# Everything listens on 127.0.0.1 only; the gateway started here is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-32}
PORT=${PORT:-18190}
PROXY_CPUS=${PROXY_CPUS-0}
LOAD_CPUS=${LOAD_CPUS-1}
URL="http://127.0.0.1:$PORT/bench/items/42"

WORK=$(mktemp -d /tmp/apiward-basic-vs-key.XXXXXX)
GATEWAY_PID=
log() { printf '%s\n' "basic_vs_key: $*" >&2; }
cleanup() {
    if [[ -n $GATEWAY_PID ]]; then
        kill "$GATEWAY_PID" 2>/dev/null || true
        wait "$GATEWAY_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for tool in wrk curl; do
    if ! command -v "$tool" >/dev/null; then
        log "installing $tool from the distribution's packages"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool" >/dev/null
    fi
done
pin() { local cpus=$1; shift; if [[ -n $cpus ]] && command -v taskset >/dev/null; then taskset -c "$cpus" "$@"; else "$@"; fi; }

log "building the release binary"
(cd "$ROOT" && cargo build --release --quiet --bin apiward)
BIN=$ROOT/target/release/apiward

CONFIG=$WORK/apiward.toml
cat >"$CONFIG" <<EOF
# Benchmark configuration, made by benches/basic_vs_key.sh.
[server]
listen = "127.0.0.1:$PORT"
workers = 1

[upstreams.echo]
url = "builtin:echo"

[[routes]]
prefix = "/bench/"
upstream = "echo"

[groups.bench]
allow = [
  { path = "/bench/**", verbs = ["view"] },
]
EOF
KEY=$("$BIN" users add key-user@bench.local --group bench --remote-addresses 127.0.0.1 --config "$CONFIG" 2>/dev/null)
"$BIN" users add basic-user@bench.local --group bench --remote-addresses 127.0.0.1 --no-key --config "$CONFIG" 2>/dev/null
PASSWORD=$("$BIN" users set-password basic-user@bench.local --generate --config "$CONFIG" 2>/dev/null)
BASIC=$(printf '%s' "basic-user@bench.local:$PASSWORD" | base64 -w0)

if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    log "port $PORT is in use: stop what listens there or set PORT"; exit 1
fi
# Started directly (taskset execs it), not through a function, so that $! is the gateway itself
# and the cleanup stops it. Its access log (stdout) is discarded: it costs the same for both.
PIN=()
if [[ -n $PROXY_CPUS ]] && command -v taskset >/dev/null; then PIN=(taskset -c "$PROXY_CPUS"); fi
APIWARD_LOG=warn "${PIN[@]}" "$BIN" run --config "$CONFIG" >/dev/null 2>"$WORK/gateway.log" &
GATEWAY_PID=$!
for _ in $(seq 100); do
    curl -fsS -o /dev/null -H "X-Api-Key: $KEY" "$URL" 2>/dev/null && break
    sleep 0.1
done
curl -fsS -o /dev/null -H "X-Api-Key: $KEY" "$URL" || { log "the gateway did not come up"; cat "$WORK/gateway.log" >&2; exit 1; }
# The first Basic request runs Argon2 once and fills the cache; every later one is a cache hit.
curl -fsS -o /dev/null -H "Authorization: Basic $BASIC" "$URL" || { log "Basic auth failed"; exit 1; }

measure() { # measure HEADER: prints requests/second
    pin "$LOAD_CPUS" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -H "$1" "$URL" >"$WORK/wrk.out"
    if grep -q "Non-2xx" "$WORK/wrk.out"; then
        log "refusals during the run:"; cat "$WORK/wrk.out" >&2; exit 1
    fi
    awk '/^Requests\/sec:/ { print $2 }' "$WORK/wrk.out"
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "load average before measuring: $LOAD_BEFORE (other work on the machine skews the rounds)"
log "warm-up"
DURATION=2s measure "X-Api-Key: $KEY" >/dev/null
DURATION=2s measure "Authorization: Basic $BASIC" >/dev/null

KEY_RPS=()
BASIC_RPS=()
for round in $(seq "$ROUNDS"); do
    KEY_RPS+=("$(measure "X-Api-Key: $KEY")")
    BASIC_RPS+=("$(measure "Authorization: Basic $BASIC")")
    log "round $round: key ${KEY_RPS[-1]} req/s, basic ${BASIC_RPS[-1]} req/s"
done

median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
KEY_MEDIAN=$(median "${KEY_RPS[@]}")
BASIC_MEDIAN=$(median "${BASIC_RPS[@]}")
RATIO=$(awk -v b="$BASIC_MEDIAN" -v k="$KEY_MEDIAN" 'BEGIN { printf "%.1f", 100 * b / k }')

cat <<EOF
| credential | requests/s per round | median |
|---|---|---|
| API key (\`X-Api-Key\`) | ${KEY_RPS[*]} | $KEY_MEDIAN |
| HTTP Basic (Argon2id hash, cache warm) | ${BASIC_RPS[*]} | $BASIC_MEDIAN |

Basic auth ran at **$RATIO %** of key auth's requests per second (median of $ROUNDS alternating rounds of $DURATION, $CONNECTIONS connections, wrk on CPU ${LOAD_CPUS:-any}, apiward with 1 worker on CPU ${PROXY_CPUS:-any}; load average before: $LOAD_BEFORE).
EOF
