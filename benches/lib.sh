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
