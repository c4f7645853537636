#!/usr/bin/env bash
# containerd shim benchmark: containers in microVMs through a containerd of
# its own (root, state and socket under a scratch dir) and the
# containerd-shim-firebuild-v2 built here, QEMU under TCG.
#
#   ctr run --rm:       ctr run --rm --runtime io.containerd.firebuild.v2 of
#                       a busybox image printing a line, to exit (the image
#                       already converted)
#       vs              firebuild run --rm of the same image, same machine
#   first start:        the same ctr run with the converted-image cache
#                       emptied first (snapshot -> ext4 paid once)
#   five at once:       five ctr run --rm started together, wall time
#
#   bench/containerd.sh
#   RUNS=5 bench/containerd.sh
#
# Needs root, the guest kernel (FIREBUILD_TEST_KERNEL, default the newest CI
# kernel) and the Debian packages containerd, docker-registry, e2fsprogs,
# busybox-static and qemu-system-x86.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3}
MARK=bench-first-line
RUNTIME=io.containerd.firebuild.v2
KERNEL=${FIREBUILD_TEST_KERNEL:-}
if [ -z "$KERNEL" ]; then
    for k in /var/cache/firebuild-ci/kernels/*/vmlinux; do
        [ -f "$k" ] && KERNEL=$k
    done
fi
[ -n "$KERNEL" ] || { echo "containerd.sh: no kernel; set FIREBUILD_TEST_KERNEL or build the CI kernel (cargo test -p firebuild-kernel)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "containerd.sh: run as root" >&2; exit 1; }
case "$RUNS" in '' | *[!0-9]* | 0) echo "containerd.sh: RUNS must be a positive number, not '$RUNS'" >&2; exit 1 ;; esac
for tool in containerd ctr /usr/bin/docker-registry mkfs.ext4 /bin/busybox; do
    command -v "$tool" >/dev/null || { echo "containerd.sh: missing $tool: apt-get install -y containerd docker-registry e2fsprogs busybox-static" >&2; exit 1; }
done

WORK=$(mktemp -d /var/tmp/firebuild-bench-ctr.XXXXXX)
BENCH=containerd.sh
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
CONTAINERD_PID=
cleanup() {
    if [ -n "$CONTAINERD_PID" ]; then
        for id in $(ctr --address "$WORK/containerd.sock" task ls -q 2>/dev/null); do
            ctr --address "$WORK/containerd.sock" task kill -s SIGKILL "$id" >/dev/null 2>&1 || true
        done
        kill "$CONTAINERD_PID" 2>/dev/null || true
        wait "$CONTAINERD_PID" 2>/dev/null || true
    fi
    pkill -KILL -f "containerd-shim-firebuild-v2 .*$WORK/containerd.sock" 2>/dev/null || true
    # VMs outlive their shim (as they outlive containerd): stop them too.
    pkill -KILL -f "qemu-system-x86_64 .*$WORK/" 2>/dev/null || true
    sleep 0.5
    stop_registries
    { grep -o " $WORK[^ ]*" /proc/self/mountinfo || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "building firebuild, the shim and the guest init ..."
cargo build --quiet --release --manifest-path "$ROOT/Cargo.toml" -p firebuild -p firebuild-shim
FIREBUILD_BIN=$ROOT/target/release/firebuild
FIREBUILD_VMINIT=${FIREBUILD_VMINIT:-$(sh "$ROOT/scripts/build-vminit.sh")}
export FIREBUILD_VMINIT

FB=$WORK/fb
mkdir -p "$FB/rootfs" "$FB/vmlinux" "$FB/runs" "$FB/cache" "$FB/profiles"
SETTINGS=("--storage-provider-property-string=rootfs-storage-root=$FB/rootfs"
    "--storage-provider-property-string=kernel-storage-root=$FB/vmlinux"
    "--run-cache=$FB/runs" "--cache-dir=$FB/cache" "--vmm=qemu" "--qemu-accel=tcg")
fb() {
    "$FIREBUILD_BIN" "$@" "--profile-conf-dir=$FB/profiles" "${SETTINGS[@]}" \
        2>>"$WORK/firebuild.log" </dev/null || { echo "containerd.sh: firebuild $* failed:" >&2; tail -20 "$WORK/firebuild.log" >&2; exit 1; }
}
fb kernel add --file "$KERNEL" --id bench-vmlinux >/dev/null
"$FIREBUILD_BIN" profile-create --profile bench "--profile-conf-dir=$FB/profiles" "${SETTINGS[@]}" \
    --default-vmlinux-id bench-vmlinux 2>>"$WORK/firebuild.log"

# The image: busybox and a CMD printing MARK, built and pushed by firebuild,
# pulled by containerd from the registry.
mkdir -p "$WORK/context/tree/bin"
cp /bin/busybox "$WORK/context/tree/bin/busybox"
for tool in sh echo; do ln -s busybox "$WORK/context/tree/bin/$tool"; done
printf 'FROM scratch\nCOPY tree/ /\nENV PATH=/bin\nCMD ["echo", "%s"]\n' "$MARK" >"$WORK/context/Dockerfile"
fb rootfs --dockerfile "$WORK/context/Dockerfile" --tag bench/ctr:1 >/dev/null
read -r pid HOST < <(start_registry registry)
REGISTRY_PIDS+=("$pid")
wait_registry "$HOST" registry
REF=$HOST/bench/ctr:1
fb image push bench/ctr:1 "$REF" >/dev/null

printf 'profile = "bench"\nprofile-conf-dir = "%s"\n' "$FB/profiles" >"$WORK/shim.toml"
cat >"$WORK/containerd.toml" <<TOML
version = 2
root = "$WORK/containerd-root"
state = "$WORK/containerd-state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$WORK/containerd.sock"
TOML
PATH="$ROOT/target/release:$PATH" FIREBUILD_SHIM_CONFIG="$WORK/shim.toml" \
    containerd --config "$WORK/containerd.toml" >/dev/null 2>"$WORK/containerd.log" &
CONTAINERD_PID=$!
for _ in $(seq 100); do
    ctr --address "$WORK/containerd.sock" version >/dev/null 2>&1 && break
    sleep 0.1
done
c() { ctr --address "$WORK/containerd.sock" "$@"; }
c image pull --plain-http "$REF" >/dev/null

ctr_run() { # ID
    local out
    out=$(c run --rm --runtime "$RUNTIME" "$REF" "$1" </dev/null 2>&1) || { echo "containerd.sh: ctr run $1 failed: $out" >&2; tail -20 "$WORK/containerd.log" >&2; exit 1; }
    [[ "$out" == *"$MARK"* ]] || { echo "containerd.sh: ctr run $1 printed: $out" >&2; exit 1; }
}
fb_run() {
    local out
    out=$(fb run --rm --from bench/ctr:1)
    [[ "$out" == *"$MARK"* ]] || { echo "containerd.sh: firebuild run printed: $out" >&2; exit 1; }
}

FIRST=() CTR=() FB_RUN=() FIVE=()
for run in $(seq "$RUNS"); do
    rm -rf "$FB/cache/shim-rootfs"
    FIRST+=("$(timed ctr_run "first$run")")
    CTR+=("$(timed ctr_run "warm$run")")
    FB_RUN+=("$(timed fb_run)")
    t0=$(now)
    pids=()
    for i in 1 2 3 4 5; do
        ctr_run "five$run-$i" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || { echo "containerd.sh: one of five failed" >&2; exit 1; }; done
    FIVE+=("$(elapsed "$t0" "$(now)")")
    echo "run $run: first ${FIRST[-1]} s, ctr run ${CTR[-1]} s, firebuild run ${FB_RUN[-1]} s, five at once ${FIVE[-1]} s"
done

echo "busybox in a microVM (QEMU TCG), median over $RUNS runs ($(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)):"
printf '  %-56s %s s\n' "ctr run --rm, first start (snapshot -> ext4 + boot):" "$(median "${FIRST[@]}")"
printf '  %-56s %s s\n' "ctr run --rm, image converted:" "$(median "${CTR[@]}")"
printf '  %-56s %s s\n' "firebuild run --rm, same image:" "$(median "${FB_RUN[@]}")"
printf '  %-56s %s s\n' "five ctr run --rm at once (wall):" "$(median "${FIVE[@]}")"
awk -v c="$(median "${CTR[@]}")" -v f="$(median "${FB_RUN[@]}")" 'BEGIN { printf "  ratio ctr run / firebuild run: %.2fx (goal <= 1.2)\n", c / f }'
awk -v a="$(median "${FIRST[@]}")" -v b="$(median "${CTR[@]}")" 'BEGIN { printf "  first start / converted: %.2fx\n", a / b }'
