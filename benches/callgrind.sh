#!/usr/bin/env bash
# Instructions per decision, counted by callgrind (exact and repeatable, unlike a timer on a
# shared machine): runs examples/decide_once with 1,000 and with 0 decisions, collecting only
# inside its `decide_loop`, and prints the difference divided by 1,000 for each user count.
#
# Usage: benches/callgrind.sh [USERS...]     (default: 10 1000000; OUT=FILE also writes the table)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-}
ITERATIONS=1000
WORK=$(mktemp -d /tmp/apiward-callgrind.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

command -v valgrind >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
}
(cd "$ROOT" && cargo build --release --quiet --example decide_once)
BIN=$ROOT/target/release/examples/decide_once

instructions() { # instructions USERS ITERATIONS: Ir collected inside decide_loop
    valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*decide_loop*' \
        --callgrind-out-file="$WORK/out.$1.$2" "$BIN" --users "$1" --iterations "$2" >/dev/null 2>"$WORK/log.$1.$2"
    awk '/^(summary|totals):/ { print $2; exit }' "$WORK/out.$1.$2"
}

digest_share() { # digest_share USERS ITERATIONS: Ir inside KeyDigest::of (SHA-256 of the key)
    callgrind_annotate --inclusive=yes "$WORK/out.$1.$2" 2>/dev/null |
        awk '/KeyDigest::of/ { gsub(",", "", $1); if ($1 + 0 > max) max = $1 + 0 } END { print max + 0 }'
}

users_list=("$@")
((${#users_list[@]})) || users_list=(10 1000000)
{
    echo "Instructions per decision (callgrind, valgrind $(valgrind --version | sed 's/valgrind-//'); (Ir at $ITERATIONS decisions − Ir at 0) / $ITERATIONS):"
    echo
    echo "| users | instructions per decision | of which SHA-256 of the key | the rest |"
    echo "|---:|---:|---:|---:|"
    for users in "${users_list[@]}"; do
        many=$(instructions "$users" "$ITERATIONS")
        sha=$(digest_share "$users" "$ITERATIONS")
        none=$(instructions "$users" 0)
        awk -v u="$users" -v a="$many" -v b="${none:-0}" -v s="$sha" -v n="$ITERATIONS" \
            'BEGIN { printf "| %s | %.1f | %.1f | %.1f |\n", u, (a - b) / n, s / n, (a - b - s) / n }'
    done
    echo
    echo "valgrind hides the CPU's SHA extensions, so sha2 takes its portable path here; natively"
    echo "(with SHA-NI) the digest is a few hundred instructions, so the last column is the better guide."
} | tee "${OUT:-/dev/null}"
