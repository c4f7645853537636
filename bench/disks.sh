#!/usr/bin/env bash
# Shared-image benchmark: `firebuild run` → the entrypoint's first line for
# an 8 MiB and a 300 MiB image (goal: the 300 MiB image within 1.15x of the
# small one, because nothing is copied), in the default overlay mode and in
# `--rootfs-mode copy`; then the host disk taken by 20 running VMs of the
# 300 MiB image in each mode.
#
# Usage: bench/disks.sh [ITERATIONS] [VMS]     (default 5 and 20; as root)
#
# All state lives in a temporary directory, removed at the end (copy mode
# needs VMS x 300 MiB of free space there). QEMU with TCG, as in
# bench/boot.sh; the same environment variables apply (FIREBUILD_BIN,
# FIREBUILD_TEST_KERNEL, FIREBUILD_VMINIT).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
N=${1:-5}
VMS=${2:-20}
MARK=bench-first-line
KERNEL_ID=bench-vmlinux

[ "$(id -u)" = 0 ] || { echo "disks.sh: run as root (firebuild rootfs and run need it)" >&2; exit 1; }
for v in "$N" "$VMS"; do
    case "$v" in '' | *[!0-9]* | 0) echo "disks.sh: ITERATIONS and VMS must be positive numbers, not '$v'" >&2; exit 1 ;; esac
done
for tool in qemu-system-x86_64 mkfs.ext4; do
    command -v "$tool" >/dev/null || { echo "disks.sh: $tool not found: apt-get install -y qemu-system-x86 e2fsprogs" >&2; exit 1; }
done
[ -x /bin/busybox ] || { echo "disks.sh: /bin/busybox not found: apt-get install -y busybox-static" >&2; exit 1; }
KERNEL=${FIREBUILD_TEST_KERNEL:-}
if [ -z "$KERNEL" ]; then
    for k in /var/cache/firebuild-ci/kernels/*/vmlinux; do
        if [ -f "$k" ] && { [ -z "$KERNEL" ] || [ "$k" -nt "$KERNEL" ]; }; then KERNEL=$k; fi
    done
fi
[ -n "$KERNEL" ] && [ -f "$KERNEL" ] || { echo "disks.sh: no kernel; set FIREBUILD_TEST_KERNEL or build the CI kernel (cargo test -p firebuild-kernel)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/firebuild-bench-disks.XXXXXX)
cleanup() {
    local f pid
    for f in "$WORK"/runs/*/vmm.pid; do
        [ -f "$f" ] || continue
        pid=$(cat "$f" 2>/dev/null) || continue
        if [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == qemu* ]]; then kill -9 "$pid" 2>/dev/null || true; fi
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "building firebuild and the guest init ..."
if [ -z "${FIREBUILD_BIN:-}" ]; then
    cargo build -q --release -p firebuild
    FIREBUILD_BIN=$ROOT/target/release/firebuild
fi
FIREBUILD_VMINIT=${FIREBUILD_VMINIT:-$(sh scripts/build-vminit.sh)}
export FIREBUILD_VMINIT

STATE=(
    "--storage-provider-property-string=rootfs-storage-root=$WORK/rootfs"
    "--storage-provider-property-string=kernel-storage-root=$WORK/vmlinux"
    "--run-cache=$WORK/runs"
    "--cache-dir=$WORK/cache"
)
mkdir -p "$WORK/rootfs" "$WORK/vmlinux" "$WORK/runs" "$WORK/cache"
fb() { "$FIREBUILD_BIN" "$@" "${STATE[@]}"; }
# The state flags go before "$@", which may end with `-- CMD`.
fb_run() { "$FIREBUILD_BIN" run "${STATE[@]}" --vmlinux-id "$KERNEL_ID" --vmm qemu --qemu-accel tcg "$@"; }
now_ms() { date +%s%3N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'; }

# Milliseconds from the start of "$@" to a line with $MARK on its stdout.
time_to_first_line() {
    local start line first=""
    start=$(now_ms)
    while IFS= read -r line; do
        if [ -z "$first" ] && [[ "$line" == *"$MARK"* ]]; then first=$(now_ms); fi
    done < <("$@" 2>>"$WORK/stderr.log")
    wait $! 2>/dev/null || true
    if [ -z "$first" ]; then ELAPSED=fail; else ELAPSED=$((first - start)); fi
}

fb kernel add --file "$KERNEL" --id "$KERNEL_ID" >/dev/null 2>>"$WORK/stderr.log"

# Two images, the same but for a blob of incompressible data.
build_image() { # TAG BLOB_MIB
    local ctx=$WORK/ctx-$2
    mkdir -p "$ctx"
    cp /bin/busybox "$ctx/busybox"
    head -c "$(($2 << 20))" /dev/urandom >"$ctx/blob"
    cat >"$ctx/Dockerfile" <<EOF
FROM scratch
COPY busybox /bin/busybox
COPY blob /data/blob
ENV PATH=/bin
CMD ["/bin/busybox", "sh", "-c", "echo $MARK; exec /bin/busybox sleep 3600"]
EOF
    fb rootfs --dockerfile "$ctx/Dockerfile" --tag "$1" >/dev/null 2>>"$WORK/stderr.log" || {
        echo "disks.sh: building $1 failed:" >&2; cat "$WORK/stderr.log" >&2; exit 1
    }
    rm -rf "$ctx"
}
echo "building an 8 MiB and a 300 MiB image ..."
build_image bench/small:1 6
build_image bench/big:1 298
for t in small big; do
    printf '  %s: ext4 file of %s (content: busybox and the blob)\n' "$t" "$(du -h --apparent-size "$WORK/rootfs/bench/$t/1/rootfs" | cut -f1)"
done

declare -A MEDIAN
for mode in overlay copy; do
    for t in small big; do
        times=()
        for i in $(seq 1 "$N"); do
            time_to_first_line fb_run --from "bench/$t:1" --rootfs-mode "$mode" --rm --shutdown-timeout 1 -- /bin/busybox sh -c "echo $MARK"
            times+=("$ELAPSED")
        done
        if printf '%s\n' "${times[@]}" | grep -q fail; then
            echo "disks.sh: a $mode run of bench/$t:1 never printed $MARK:" >&2; cat "$WORK/stderr.log" >&2; exit 1
        fi
        MEDIAN[$mode-$t]=$(printf '%s\n' "${times[@]}" | median)
        echo "  $mode, $t image: ${times[*]} ms"
    done
done
fb purge >/dev/null 2>>"$WORK/stderr.log"

# Host disk taken by VMS running VMs of the big image: allocated blocks
# of the run cache, with the store listed first so that du counts the
# shared image (hard-linked into each run directory) there, not per VM.
declare -A DISK
for mode in overlay copy; do
    start=$(now_ms)
    for i in $(seq 1 "$VMS"); do
        fb_run --from bench/big:1 --rootfs-mode "$mode" --name "bench-$mode-$i" --daemonize >/dev/null 2>>"$WORK/stderr.log"
    done
    elapsed=$(($(now_ms) - start))
    DISK[$mode]=$(du -s -B1M "$WORK/rootfs" "$WORK/runs" | sed -n 2p | cut -f1)
    echo "  $VMS VMs, $mode: run cache ${DISK[$mode]} MiB, $elapsed ms to start them all"
    for i in $(seq 1 "$VMS"); do
        fb kill --vmm-id "bench-$mode-$i" --shutdown-timeout 1 >/dev/null 2>>"$WORK/stderr.log" || true
    done
    fb purge >/dev/null 2>>"$WORK/stderr.log"
done

echo "results (QEMU TCG, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)):"
for mode in overlay copy; do
    s=${MEDIAN[$mode-small]} b=${MEDIAN[$mode-big]}
    awk -v m="$mode" -v s="$s" -v b="$b" 'BEGIN {printf "  %-7s run -> first line: 8 MiB %5d ms, 300 MiB %5d ms, ratio %.3f\n", m, s, b, b / s}'
done
echo "  (goal: overlay ratio within 1.15)"
echo "  disk for $VMS VMs of the 300 MiB image: overlay ${DISK[overlay]} MiB, copy ${DISK[copy]} MiB (the stored image itself not counted)"
