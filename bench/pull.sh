#!/usr/bin/env bash
# Image-to-root-filesystem benchmark, the work a user sees: an OCI image in a
# registry becomes a bootable ext4 root filesystem.
#
#   firebuild:  firebuild rootfs --docker-image REF --tag bench/pull:1
#               (pull + verify + unpack + guest init + mkfs.ext4 -d + store)
#   peer:       skopeo copy docker://REF oci:LAYOUT   (pull + verify)
#               umoci unpack                          (unpack)
#               mkfs.ext4 -d ROOTFS (sized as firebuild sizes it, same options)
#
# on the same multi-layer image served by a local docker-registry (started
# and stopped by this script). Every run starts cold: empty blob caches and
# an empty image store.
#
#   bench/pull.sh                 # default image: 4 layers from /usr
#   RUNS=5 DIRS="/usr/include /usr/share/doc" bench/pull.sh
#   FIREBUILD_BIN=path/to/firebuild bench/pull.sh   # skip its cargo build
#
# The test image is pushed with the oci crate's example driver (set-up only,
# outside every clock): the CLI has no push. Needs root and the Debian
# packages docker-registry, skopeo, umoci and e2fsprogs. Prints the median
# wall time of each side and their ratio (peer / firebuild).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3}
DIRS=${DIRS:-"/usr/include /usr/lib/python3.11 /usr/share/perl /usr/lib/gcc"}
TAG=bench/pull:1

[ "$(id -u)" = 0 ] || { echo "pull.sh: run as root (firebuild rootfs needs it)" >&2; exit 1; }
case "$RUNS" in '' | *[!0-9]* | 0) echo "pull.sh: RUNS must be a positive number, not '$RUNS'" >&2; exit 1 ;; esac
for tool in /usr/bin/docker-registry skopeo umoci mkfs.ext4 dumpe2fs; do
    command -v "$tool" >/dev/null || { echo "pull.sh: missing $tool: apt-get install -y docker-registry skopeo umoci e2fsprogs" >&2; exit 1; }
done

WORK=$(mktemp -d /var/tmp/firebuild-bench-pull.XXXXXX)
REGISTRY_PID=
cleanup() {
    if [ -n "$REGISTRY_PID" ]; then
        kill "$REGISTRY_PID" 2>/dev/null || true
        wait "$REGISTRY_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "building firebuild, the guest init and the oci example (for the push) ..."
if [ -z "${FIREBUILD_BIN:-}" ]; then
    cargo build --quiet --release --manifest-path "$ROOT/Cargo.toml" -p firebuild
    FIREBUILD_BIN=$ROOT/target/release/firebuild
fi
FIREBUILD_VMINIT=${FIREBUILD_VMINIT:-$(sh "$ROOT/scripts/build-vminit.sh")}
export FIREBUILD_VMINIT
cargo build --quiet --release --manifest-path "$ROOT/Cargo.toml" -p firebuild-oci --example oci
OCI=$ROOT/target/release/examples/oci

# firebuild with all of its state under DIR (flags after the command name).
firebuild_rootfs() { # REF DIR
    # The settings check wants every state directory to exist, even those
    # `rootfs` does not use.
    mkdir -p "$2/rootfs" "$2/vmlinux" "$2/runs" "$2/cache"
    "$FIREBUILD_BIN" rootfs --docker-image "$1" --tag "$TAG" \
        "--storage-provider-property-string=rootfs-storage-root=$2/rootfs" \
        "--storage-provider-property-string=kernel-storage-root=$2/vmlinux" \
        "--run-cache=$2/runs" "--cache-dir=$2/cache" \
        >/dev/null 2>>"$WORK/firebuild.log"
}

# The peer's ext4 step: the size firebuild's default would give (content in
# 4 KiB blocks plus a quarter, at least 64 MiB, of free space, twice the
# inodes used, at least 16384, and a journal), and firebuild's mkfs options.
peer_mkfs() { # ROOTFS OUT
    local used_mib inodes headroom journal size
    used_mib=$(du -sx --block-size=1M "$1" | cut -f1)
    inodes=$(find "$1" -xdev | wc -l)
    inodes=$((inodes * 2 > 16384 ? inodes * 2 : 16384))
    headroom=$((used_mib / 4 > 64 ? used_mib / 4 : 64))
    journal=$((used_mib > 512 ? 64 : 16))
    size=$((used_mib + headroom + journal + (inodes * 256 + 1048575) / 1048576))
    truncate -s "${size}M" "$2"
    mkfs.ext4 -q -F -b 4096 -m 0 -O ^orphan_file -N "$inodes" -d "$1" "$2"
}

# Used inodes and used MiB of an ext4 image, from its superblock.
ext4_usage() { # IMAGE -> "INODES MIB"
    dumpe2fs -h "$1" 2>/dev/null | awk -F: '
        /^Inode count/ { ic = $2 } /^Free inodes/ { fi = $2 }
        /^Block count/ { bc = $2 } /^Free blocks/ { fb = $2 } /^Block size/ { bs = $2 }
        END { printf "%d %d\n", ic - fi, (bc - fb) * bs / 1048576 }'
}

# A free port on 127.0.0.1.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
PORT=
for _ in $(seq 50); do
    p=$((20000 + RANDOM % 20000))
    if port_free "$p"; then PORT=$p; break; fi
done
[ -n "$PORT" ] || { echo "pull.sh: no free port" >&2; exit 1; }

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
if port_free "$PORT"; then echo "pull.sh: registry did not start:" >&2; cat "$WORK/registry.log" >&2; exit 1; fi

REF="127.0.0.1:$PORT/bench/image:1"
echo "pushing a test image from: $DIRS"
# shellcheck disable=SC2086 # DIRS is a list of directories
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
    : >"$WORK/firebuild.log"
    if ! firebuild_rootfs "$REF" "$WORK/fb"; then
        echo "pull.sh: firebuild rootfs failed:" >&2; cat "$WORK/firebuild.log" >&2; exit 1
    fi
    t1=$(now)
    FB_TIMES+=("$(elapsed "$t0" "$t1")")
    # firebuild logs how long its ext4 step took (overlay mount, mkfs.ext4 -d
    # and the image's sha256); the rest is pull + unpack + guest init.
    fb_mkfs=$(sed -n 's/.*ext4 image written.* in \([0-9.]*\)s.*/\1/p' "$WORK/firebuild.log" | tail -n1)
    FB_IMAGE=$WORK/fb/rootfs/bench/pull/1/rootfs
    [ -f "$FB_IMAGE" ] || { echo "pull.sh: firebuild stored no image at $FB_IMAGE" >&2; exit 1; }
    # Free the space before the peer runs: both sides write to the same disk.
    read -r fb_inodes fb_mib < <(ext4_usage "$FB_IMAGE")
    rm -rf "$WORK/fb"

    sync
    t0=$(now)
    skopeo copy --quiet --src-tls-verify=false "docker://$REF" "oci:$WORK/peer/layout:bench"
    ta=$(now)
    umoci unpack --image "$WORK/peer/layout:bench" "$WORK/peer/bundle" >/dev/null
    tb=$(now)
    peer_mkfs "$WORK/peer/bundle/rootfs" "$WORK/peer/rootfs.ext4"
    t1=$(now)
    PEER_TIMES+=("$(elapsed "$t0" "$t1")")
    peer_steps="skopeo $(elapsed "$t0" "$ta") s, umoci $(elapsed "$ta" "$tb") s, mkfs $(elapsed "$tb" "$t1") s"
    read -r peer_inodes peer_mib < <(ext4_usage "$WORK/peer/rootfs.ext4")
    rm -rf "$WORK/peer"

    echo "run $run: firebuild ${FB_TIMES[-1]} s ($fb_inodes inodes, $fb_mib MiB used; ext4+sha256 ${fb_mkfs:-?} s), skopeo+umoci+mkfs ${PEER_TIMES[-1]} s ($peer_inodes inodes, $peer_mib MiB used; $peer_steps)"
    # firebuild adds its guest init (/.firebuild/init and a few directories
    # for the guest's mounts): a handful of inodes and ~2 MiB, no more.
    if [ $((fb_inodes - peer_inodes)) -lt 0 ] || [ $((fb_inodes - peer_inodes)) -gt 16 ]; then
        echo "pull.sh: the two root filesystems differ: $fb_inodes vs $peer_inodes used inodes" >&2
        exit 1
    fi
    if [ $((fb_mib - peer_mib)) -lt -8 ] || [ $((fb_mib - peer_mib)) -gt 8 ]; then
        echo "pull.sh: the two root filesystems differ in size: $fb_mib vs $peer_mib MiB used" >&2
        exit 1
    fi
done

FB=$(median "${FB_TIMES[@]}")
PEER=$(median "${PEER_TIMES[@]}")
echo "image to ext4 root filesystem, cold, median over $RUNS runs ($(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)):"
echo "  firebuild rootfs --docker-image:                 ${FB} s"
echo "  skopeo copy + umoci unpack + mkfs.ext4 -d:       ${PEER} s"
awk -v f="$FB" -v p="$PEER" 'BEGIN { printf "  ratio (skopeo+umoci+mkfs / firebuild): %.2fx\n", p / f }'
