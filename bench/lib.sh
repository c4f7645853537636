# Shared by the bench scripts (sourced): timing, medians and local
# docker-registry instances. Expects WORK (a scratch dir) and BENCH (the
# script's name, for messages) to be set.

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# Prints how long COMMAND... took, in seconds.
timed() { local t0 t1; t0=$(now); "$@"; t1=$(now); elapsed "$t0" "$t1"; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
REGISTRY_PIDS=()
# Starts a docker-registry with storage under $WORK/NAME; prints its pid
# and HOST:PORT.
start_registry() { # NAME
    local port="" p
    for _ in $(seq 50); do
        p=$((20000 + RANDOM % 20000))
        if port_free "$p"; then port=$p; break; fi
    done
    [ -n "$port" ] || { echo "$BENCH: no free port" >&2; exit 1; }
    mkdir -p "$WORK/$1"
    cat >"$WORK/$1.yml" <<YAML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/$1
http:
  addr: 127.0.0.1:$port
YAML
    /usr/bin/docker-registry serve "$WORK/$1.yml" >"$WORK/$1.log" 2>&1 &
    echo "$! 127.0.0.1:$port"
}
wait_registry() { # HOST:PORT NAME
    for _ in $(seq 100); do
        port_free "${1#*:}" || return 0
        sleep 0.1
    done
    echo "$BENCH: registry $2 did not start:" >&2
    cat "$WORK/$2.log" >&2
    exit 1
}
stop_registries() {
    for pid in "${REGISTRY_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
