#!/usr/bin/env bash
# Pull + unpack benchmark: firebuild's OCI pull versus `skopeo copy` +
# `umoci unpack`, on the same multi-layer image served by a local
# docker-registry (started and stopped by this script).
#
#   bench/pull.sh                 # default image: 4 layers from /usr
#   RUNS=5 DIRS="/usr/include /usr/share/doc" bench/pull.sh
#   OCI=path/to/prebuilt/oci bench/pull.sh   # skip the cargo build
#
# Needs the Debian packages docker-registry, skopeo and umoci. Prints the
# median wall time of each side and their ratio (peer / firebuild).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3}
DIRS=${DIRS:-"/usr/include /usr/lib/python3.11 /usr/share/perl /usr/lib/gcc"}

for tool in /usr/bin/docker-registry skopeo umoci; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y docker-registry skopeo umoci" >&2; exit 1; }
done

WORK=$(mktemp -d /var/tmp/firebuild-bench.XXXXXX)
REGISTRY_PID=
cleanup() {
    if [ -n "$REGISTRY_PID" ]; then kill "$REGISTRY_PID" 2>/dev/null || true; wait "$REGISTRY_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# firebuild's side. Until `firebuild image pull` is wired this is the crate's
# example driver; the CLI takes its place here.
if [ -z "${OCI:-}" ]; then
    cargo build --quiet --release --manifest-path "$ROOT/Cargo.toml" -p firebuild-oci --example oci
    OCI="$ROOT/target/release/examples/oci"
fi
firebuild_pull() { # REF CACHE ROOTFS
    "$OCI" pull --cache "$2" --rootfs "$3" "$1" 2>/dev/null
}

# A free port on 127.0.0.1.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
PORT=
for _ in $(seq 50); do
    p=$((20000 + RANDOM % 20000))
    if port_free "$p"; then PORT=$p; break; fi
done
[ -n "$PORT" ] || { echo "no free port" >&2; exit 1; }

mkdir -p "$WORK/registry"
cat >"$WORK/registry.yml" <<YAML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/registry
http:
  addr: 127.0.0.1:$PORT
YAML
/usr/bin/docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
REGISTRY_PID=$!
for _ in $(seq 100); do
    port_free "$PORT" || break
    sleep 0.1
done
port_free "$PORT" && { echo "registry did not start:" >&2; cat "$WORK/registry.log" >&2; exit 1; }

REF="127.0.0.1:$PORT/bench/image:1"
echo "pushing a test image from: $DIRS"
# shellcheck disable=SC2086
"$OCI" push-dirs --cache "$WORK/push-cache" "$REF" $DIRS >/dev/null
rm -rf "$WORK/push-cache"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

FB_TIMES=()
PEER_TIMES=()
for run in $(seq "$RUNS"); do
    rm -rf "$WORK/fb" "$WORK/peer"
    mkdir -p "$WORK/fb" "$WORK/peer"
    sync
    t0=$(now)
    firebuild_pull "$REF" "$WORK/fb/cache" "$WORK/fb/rootfs"
    t1=$(now)
    FB_TIMES+=("$(elapsed "$t0" "$t1")")

    sync
    t0=$(now)
    skopeo copy --quiet --src-tls-verify=false "docker://$REF" "oci:$WORK/peer/layout:bench"
    umoci unpack --image "$WORK/peer/layout:bench" "$WORK/peer/bundle" >/dev/null
    t1=$(now)
    PEER_TIMES+=("$(elapsed "$t0" "$t1")")

    fb_files=$(find "$WORK/fb/rootfs" | wc -l)
    peer_files=$(find "$WORK/peer/bundle/rootfs" | wc -l)
    echo "run $run: firebuild ${FB_TIMES[-1]} s ($fb_files paths), skopeo+umoci ${PEER_TIMES[-1]} s ($peer_files paths)"
    if [ "$fb_files" != "$peer_files" ]; then
        echo "the two root filesystems differ in size: $fb_files vs $peer_files paths" >&2
        exit 1
    fi
done

FB=$(median "${FB_TIMES[@]}")
PEER=$(median "${PEER_TIMES[@]}")
echo "firebuild pull+unpack:      median ${FB} s over $RUNS runs"
echo "skopeo copy + umoci unpack: median ${PEER} s over $RUNS runs"
awk -v f="$FB" -v p="$PEER" 'BEGIN { printf "ratio (skopeo+umoci / firebuild): %.2fx\n", p / f }'
