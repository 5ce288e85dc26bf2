#!/usr/bin/env bash
# Runs every benchmark (criterion micro-benchmarks, callgrind instruction counts, the wrk
# end-to-end comparison with nginx) and rewrites the result sections of docs/benchmarks.md.
#
# Usage: benches/run-all.sh     (about 25 minutes on 2 cores; run it on an otherwise idle machine)
# The parts alone: cargo bench --bench decision | benches/callgrind.sh | benches/proxy_callgrind.sh |
# benches/e2e.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
DOC=docs/benchmarks.md
WORK=$(mktemp -d /tmp/apiward-bench.XXXXXX)
# Kept when something fails, so twenty minutes of results are not lost: the section files are there.
trap 'status=$?; if ((status == 0)); then rm -rf "$WORK"; else echo "run-all: results kept in $WORK" >&2; fi' EXIT

{
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src benches Cargo.toml || echo ' (with uncommitted changes)')"
    echo "- CPU: $(nproc) × $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo) ($(awk -F': ' '/^cpu MHz/ { printf "%.0f MHz", $2; exit }' /proc/cpuinfo), $(grep -q sha_ni /proc/cpuinfo && echo 'SHA extensions' || echo 'no SHA extensions'))"
    echo "- Memory: $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo); kernel $(uname -r); $(. /etc/os-release && echo "$PRETTY_NAME")"
    echo "- $(rustc --version); $(nginx -v 2>&1 | sed 's/^nginx version: //' || echo 'nginx: installed by e2e.sh'); $(wrk -v 2>&1 | head -n 1 | awk '{ print $1, $2 }' || true); $(PATH=$PATH:/usr/sbin haproxy -v 2>/dev/null | awk 'NR == 1 { print "HAProxy", $3 }' || echo 'HAProxy: installed by e2e.sh')"
} >"$WORK/machine.md"

echo "run-all: criterion micro-benchmarks" >&2
cargo bench --bench decision 2>&1 | tee "$WORK/criterion.log" >&2
python3 - "$ROOT/target/criterion" >"$WORK/micro.md" <<'PY'
import json, os, sys
base = sys.argv[1]
def est(path):
    with open(os.path.join(base, path, "new", "estimates.json")) as f:
        e = json.load(f)
    return e["median"]["point_estimate"], e["median"]["confidence_interval"]
def fmt(ns):
    if ns >= 1e9: return f"{ns / 1e9:.2f} s"
    if ns >= 1e6: return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3: return f"{ns / 1e3:.2f} µs"
    return f"{ns:.1f} ns"
rows = [
    ("decide, one key", "decide/one_key/10"), ("", "decide/one_key/10000"), ("", "decide/one_key/1000000"),
    ("decide, 1,024 keys spread over all users", "decide/spread_keys/10"), ("", "decide/spread_keys/10000"),
    ("", "decide/spread_keys/1000000"),
    ("source whitelist, match in last entry", "source_whitelist/last_entry_matches/1"),
    ("", "source_whitelist/last_entry_matches/50"),
    ("compile a file", "compile/users/100000"),
]
print("| benchmark | size | median | 95 % interval of the median |")
print("|---|---:|---:|---|")
for label, path in rows:
    try:
        m, ci = est(path)
    except OSError:
        continue
    size = path.rsplit("/", 1)[1]
    unit = (" entry" if size == "1" else " entries") if "whitelist" in path else " users"
    print(f"| {label} | {int(size):,}{unit} | {fmt(m)} | {fmt(ci['lower_bound'])} – {fmt(ci['upper_bound'])} |")
try:
    small, _ = est("decide/one_key/10")
    big, _ = est("decide/one_key/1000000")
    ok = "met" if big <= 1.5 * small and big < 300 else "NOT met"
    print()
    print(f"Decision at 1,000,000 users / at 10 users: **{big / small:.2f} ×** (goal ≤ 1.5), median {fmt(big)} (goal < 300 ns): {ok}.")
except OSError:
    pass
PY

echo "run-all: callgrind" >&2
OUT="$WORK/callgrind.md" benches/callgrind.sh >&2

echo "run-all: instructions per proxied request" >&2
ACCESS_LOG="off file" OUT="$WORK/proxy-callgrind.md" benches/proxy_callgrind.sh >&2

echo "run-all: end to end" >&2
OUT="$WORK/e2e.md" benches/e2e.sh >&2

python3 - "$DOC" "$WORK" <<'PY'
import re, sys
doc, work = sys.argv[1], sys.argv[2]
text = open(doc).read()
for name in ["machine", "micro", "callgrind", "proxy-callgrind", "e2e"]:
    body = open(f"{work}/{name}.md").read().strip()
    pattern = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)", re.S)
    if not pattern.search(text):
        sys.exit(f"{doc} has no <!-- BEGIN {name} --> ... <!-- END {name} --> section")
    text = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
open(doc, "w").write(text)
PY
echo "run-all: $DOC updated" >&2
