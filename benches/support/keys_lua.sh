# shellcheck shell=bash
# Sourced by benches/e2e.sh and benches/proxy_callgrind.sh.

# keys_lua KEYS_FILE USERS PATH: prints a wrk script that sends GET PATH with the key of 1,024
# users spread over all USERS (one key per line in KEYS_FILE) in turn, each request prepared once
# per thread, so wrk spends no Lua per request and the key lookup is not always the same cache line.
keys_lua() {
    local keys=$1 users=$2 path=$3
    echo 'local keys = {'
    awk -v n="$users" 'BEGIN { step = int(n / 1024); if (step < 1) step = 1 }
        (NR - 1) % step == 0 && c < 1024 { printf "  \"%s\",\n", $0; c++ }' "$keys"
    echo '}'
    cat <<LUA
local requests = {}
local i = 0
function init(args)
    for n, key in ipairs(keys) do
        requests[n] = wrk.format("GET", "$path", { ["X-Api-Key"] = key })
    end
end
function request()
    i = i % #requests + 1
    return requests[i]
end
LUA
}
