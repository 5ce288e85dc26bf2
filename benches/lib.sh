# shellcheck shell=bash
# What the benchmark scripts share: stopping the processes they started, and installing the
# tools they need. Sourced; each script defines log() first.

# stop_all PID...: asks each process to stop, waits up to 10 s for each, then kills it.
stop_all() {
    local pid
    for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
}

# need TOOL...: installs from the distribution's packages each tool that is not on the PATH
# (nginx is also looked for in /usr/sbin), then puts /usr/sbin on the PATH.
need() {
    local tool missing=()
    for tool in "$@"; do
        command -v "$tool" >/dev/null || [[ -x /usr/sbin/$tool ]] || missing+=("$tool")
    done
    if ((${#missing[@]})); then
        log "installing ${missing[*]} from the distribution's packages"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    PATH=$PATH:/usr/sbin
}

# limited_copy IN OUT [SED_EXPR...]: IN with generous local limits on its [groups.bench] (every
# benchmark user is in it): a rate_limit, quota and max_concurrent that no run reaches, so the
# limit step runs on every request and refuses none; the extra sed expressions (a listen line,
# say) are applied too. Fails if the group was not there to limit.
limited_copy() {
    local in=$1 out=$2
    shift 2
    local expr=(-e 's|^\[groups.bench\]$|[groups.bench]\nrate_limit = { requests = 1_000_000, per = "1s", burst = 1_000_000 }\nquota = { requests = 1_000_000_000, per = "30d" }\nmax_concurrent = 10_000|')
    local e
    for e in "$@"; do expr+=(-e "$e"); done
    sed "${expr[@]}" "$in" >"$out"
    grep -q '^max_concurrent = 10_000$' "$out" || { log "$in has no [groups.bench] to limit"; return 1; }
}

# check_limited URL KEY NAME: the gateway at URL must answer KEY with the RateLimit fields, or its
# limits are not in force and the run would measure nothing.
check_limited() {
    curl -sS -D - -o /dev/null -H "X-Api-Key: $2" "$1" | grep -qi '^ratelimit:' ||
        { log "$3 answered without RateLimit fields: its limits are not in force"; return 1; }
}
