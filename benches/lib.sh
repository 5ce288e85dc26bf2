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

# nginx_api_location: the locations of nginx acting as the gateway, for an nginx.conf heredoc: the
# key must name a user ($api_user, from a map) and the user:address pair be allowed ($api_allowed),
# GET and POST only, then proxied to the upstream "bench" with the headers apiward sets. The same in
# every benchmark, so nginx checks what apiward checks.
nginx_api_location() {
    cat <<EOF
        location / { return 404; }
        location /api/ {
            if (\$api_user = "") { return 401; }
            if (\$api_allowed != 1) { return 403; }
            limit_except GET POST { deny all; }
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Api-Key "";
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header X-Apiward-User \$api_user;
            proxy_set_header X-Apiward-Group bench;
        }
EOF
}

# What the end-to-end scripts share for running servers and reading wrk and /proc: each sets
# PIDS=() (stopped on exit) and WORK; start_nginx runs $WORK/NAME.conf.

pin() { # pin CPUS command...: runs the command pinned to CPUS, or unpinned when CPUS is empty
    local cpus=$1
    shift
    if [[ -n $cpus ]]; then taskset -c "$cpus" "$@"; else "$@"; fi
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for_port() { # wait_for_port PORT SECONDS PID
    local deadline=$((SECONDS + $2))
    while port_free "$1"; do
        if ((SECONDS > deadline)); then log "nothing listens on 127.0.0.1:$1 after $2 s"; return 1; fi
        if ! kill -0 "$3" 2>/dev/null; then log "the process meant to listen on $1 exited"; return 1; fi
        sleep 0.1
    done
}

start_pinned() { # start_pinned CPUS PORT SECONDS LOG command...: runs the command in the background,
    # pinned to CPUS, its output appended to LOG, stopped on exit; waits at most SECONDS for PORT to
    # listen. Sets STARTED_PID (taskset and env exec the command, so that is the command's pid).
    local cpus=$1 port=$2 seconds=$3 log=$4
    shift 4
    local -a pin=()
    if [[ -n $cpus ]]; then pin=(taskset -c "$cpus"); fi
    "${pin[@]}" "$@" >>"$log" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    wait_for_port "$port" "$seconds" "$STARTED_PID"
}

cpu_ticks() { # cpu_ticks PID...: "user system" clock ticks used so far by these processes
    local pid
    for pid in "$@"; do
        # Fields after the ")" that ends the command name: utime and stime are the 12th and 13th.
        sed 's/.*) //' "/proc/$pid/stat" | awk '{ print $12, $13 }'
    done | awk '{ u += $1; s += $2 } END { print u + 0, s + 0 }'
}

to_ms() { # wrk prints 812.00us, 1.23ms or 1.02s
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
        else if (v ~ /m$/) { sub(/m$/, "", v); printf "%.3f", v * 60000 }
        else { sub(/s$/, "", v); printf "%.3f", v * 1000 } }'
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

start_nginx() { # start_nginx NAME CPUS PORT: runs nginx with $WORK/NAME.conf in the foreground, sets STARTED_PID
    local name=$1
    nginx -t -q -p "$WORK" -e "$WORK/$name.error.log" -c "$WORK/$name.conf"
    start_pinned "$2" "$3" 10 "$WORK/$name.out" nginx -p "$WORK" -e "$WORK/$name.error.log" -c "$WORK/$name.conf"
}

# make_certificate: a CA ($WORK/ca.pem) and a certificate for bench.local and 127.0.0.1
# ($WORK/server.pem, $WORK/server.key), P-256 as rustls prefers.
make_certificate() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj "/CN=bench CA" \
        -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=bench.local" \
        -keyout "$WORK/server.key" -out "$WORK/server.csr" 2>/dev/null
    printf 'subjectAltName=DNS:bench.local,IP:127.0.0.1\n' >"$WORK/san.ext"
    openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial \
        -days 2 -extfile "$WORK/san.ext" -out "$WORK/server.pem" 2>/dev/null
}

# server_tls: the [server.tls] table of make_certificate's certificate, with awk's \n escapes.
server_tls() {
    printf '[server.tls]\\ncertificates = [ { cert = "%s", key = "%s" } ]\\n' "$WORK/server.pem" "$WORK/server.key"
}

# before_first_table IN OUT TEXT: IN with TEXT (awk's \n escapes allowed) right before the first
# table after [server], written to OUT.
before_first_table() {
    awk -v text="$3" '!done && /^\[/ && !/^\[server\]/ { print text; done = 1 } { print }' "$1" >"$2"
}

# wait_for URL PID [SECONDS]: waits up to SECONDS (60) for URL to answer (curl, so CURL_CA_BUNDLE
# applies), failing at once if PID, the process meant to serve it, exits.
wait_for() {
    for _ in $(seq $((${3:-60} * 10))); do
        curl -s -o /dev/null "$1" && return 0
        kill -0 "$2" 2>/dev/null || { log "the process meant to serve $1 exited"; return 1; }
        sleep 0.1
    done
    log "nothing answers at $1"
    return 1
}
