#!/usr/bin/env bash
# Snapshot benchmark: the same busybox httpd microVM brought to its first
# HTTP answer by a cold boot (`firebuild run --from`) and by a fork of a
# snapshot of it (`firebuild run --from-snapshot`), medians and their ratio
# (goal: fork <= 0.25x of cold boot), for the plain server and for the
# server behind a warm-up of BENCH_WARMUP seconds (default 5: a service
# that loads before it serves, which forks skip); then the host memory (PSS, from
# /proc/PID/smaps_rollup) of 1 fork and of 5 forks of a 256 MiB VM, which
# share the snapshot's memory file until they write its pages.
#
# Usage: bench/snapshot.sh [ITERATIONS]      (default 5; run as root)
#
# Everything runs in a network namespace of its own playing the host (the
# CNI bridge, taps and VM namespaces live there), with all firebuild state
# in a temporary directory; both removed at the end. QEMU runs under TCG
# (the only accelerator that boots normal kernels on our nested-KVM
# machines); the source VM is stopped by `snapshot create --stop` so only
# the VM being timed runs.
#
# Environment: FIREBUILD_BIN, FIREBUILD_TEST_KERNEL, FIREBUILD_VMINIT as
# for bench/boot.sh. Needs qemu-system-x86, busybox-static, e2fsprogs,
# containernetworking-plugins, iproute2, iptables and curl.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
N=${1:-5}
TAG=bench/httpd:1
SNAP=bench/httpd:warm
NET=bench
SUBNET=10.231.0.0/24
NS=fbbench-snap-$$

[ "$(id -u)" = 0 ] || { echo "snapshot.sh: run as root" >&2; exit 1; }
case "$N" in '' | *[!0-9]* | 0) echo "snapshot.sh: ITERATIONS must be a positive number, not '$N'" >&2; exit 1 ;; esac
for tool in qemu-system-x86_64 mkfs.ext4 curl ip; do
    command -v "$tool" >/dev/null || { echo "snapshot.sh: $tool not found" >&2; exit 1; }
done
KERNEL=${FIREBUILD_TEST_KERNEL:-}
if [ -z "$KERNEL" ]; then
    for k in /var/cache/firebuild-ci/kernels/*/vmlinux; do
        if [ -f "$k" ] && { [ -z "$KERNEL" ] || [ "$k" -nt "$KERNEL" ]; }; then KERNEL=$k; fi
    done
fi
[ -n "$KERNEL" ] && [ -f "$KERNEL" ] || { echo "snapshot.sh: no kernel; set FIREBUILD_TEST_KERNEL" >&2; exit 1; }

WORK=$(mktemp -d /tmp/firebuild-bench-snap.XXXXXX)
cleanup() {
    local d
    for d in "$WORK"/runs/*/; do
        [ -f "$d/run.json" ] && fb kill --vmm-id "$(basename "$d")" --shutdown-timeout 1s >/dev/null 2>&1 || true
    done
    fb purge >/dev/null 2>&1 || true
    for d in $(ip netns list | awk '{print $1}' | grep "^firebuild-fbsnap" || true); do ip netns del "$d"; done
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "building firebuild and the guest init ..." >&2
if [ -z "${FIREBUILD_BIN:-}" ]; then
    cargo build -q --release -p firebuild
    FIREBUILD_BIN=$ROOT/target/release/firebuild
fi
FIREBUILD_VMINIT=${FIREBUILD_VMINIT:-$(sh scripts/build-vminit.sh)}
export FIREBUILD_VMINIT

ip netns add "$NS"
ip -n "$NS" link set lo up
mkdir -p "$WORK"/{rootfs,vmlinux,runs,cache,snapshots,conf,cni-cache}
STATE=(
    "--storage-provider-property-string=rootfs-storage-root=$WORK/rootfs"
    "--storage-provider-property-string=kernel-storage-root=$WORK/vmlinux"
    "--storage-provider-property-string=snapshot-storage-root=$WORK/snapshots"
    "--run-cache=$WORK/runs" "--cache-dir=$WORK/cache"
    "--cni-conf-dir=$WORK/conf" "--cni-cache-dir=$WORK/cni-cache" "--cni-bin-dir=/usr/lib/cni"
    "--vmm=qemu" "--qemu-accel=tcg"
)
# nsenter, not `ip netns exec`: that one runs in a mount namespace of its
# own, where the VM namespaces firebuild mounts would not outlive it.
in_ns() { nsenter --net="/run/netns/$NS" "$@"; }
fb() { in_ns "$FIREBUILD_BIN" "$@" "${STATE[@]}"; }
now_ms() { date +%s%3N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'; }
ip_of() { fb inspect --vmm-id "$1" | sed -n 's/^ *"ip": *"\(.*\)",\{0,1\}$/\1/p' | head -n1; }
# Waits (at most 120 s) until VM $1 answers HTTP on port 80.
wait_answer() {
    local ip
    ip=$(ip_of "$1")
    for _ in $(seq 1200); do
        if in_ns curl -sf -m 1 "http://$ip/" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "snapshot.sh: VM $1 ($ip) never answered" >&2
    exit 1
}
pss_kib() { awk '/^Pss:/ {s += $2} END {print s}' "/proc/$1/smaps_rollup"; }
pid_of() { cat "$WORK/runs/$1/vmm.pid"; }

# --- set-up, outside every clock -------------------------------------------
fb kernel add --file "$KERNEL" --id bench-vmlinux >/dev/null
fb network create "$NET" --subnet "$SUBNET" >/dev/null
CTX=$WORK/context
mkdir -p "$CTX/tree/bin" "$CTX/tree/www"
cp /bin/busybox "$CTX/tree/bin/busybox"
for a in $(busybox --list); do [ "$a" = busybox ] || ln -s busybox "$CTX/tree/bin/$a"; done
echo "served by a firebuild microVM" >"$CTX/tree/www/index.html"
# The plain server, and the same server after a warm-up (it sleeps
# BENCH_WARMUP seconds before it serves, standing for a service that loads
# data or compiles before its first answer: what a fork skips).
WARMUP=${BENCH_WARMUP:-5}
cat >"$CTX/Dockerfile" <<'EOF'
FROM scratch
COPY tree/ /
ENV PATH=/bin
CMD ["httpd", "-f", "-p", "80", "-h", "/www"]
EOF
cat >"$CTX/Dockerfile.warmup" <<EOF
FROM scratch
COPY tree/ /
ENV PATH=/bin
CMD ["sh", "-c", "sleep $WARMUP; exec httpd -f -p 80 -h /www"]
EOF
fb rootfs --dockerfile "$CTX/Dockerfile" --tag "$TAG" >/dev/null 2>&1
fb rootfs --dockerfile "$CTX/Dockerfile.warmup" --tag bench/httpd-warmup:1 >/dev/null 2>&1
run_cold() { fb run --from "$2" --vmlinux-id bench-vmlinux --cni-network-name "$NET" --mem 256 --daemonize --name "$1" >/dev/null; }
gone() { fb kill --vmm-id "$1" --shutdown-timeout 1s >/dev/null; fb purge >/dev/null; }

# measure IMAGE SNAPSHOT LABEL: medians of cold boot and of a fork to the
# first answer, into REPORT.
REPORT=()
measure() {
    local image=$1 snap=$2 label=$3 i t cold fork snap_ms
    local cold_ms=() fork_ms=()
    echo "$label: cold boot -> first answer ($N runs) ..." >&2
    for i in $(seq "$N"); do
        t=$(now_ms); run_cold "fbsnap-cold$i" "$image"; wait_answer "fbsnap-cold$i"; cold_ms+=($(($(now_ms) - t)))
        gone "fbsnap-cold$i"
    done
    run_cold fbsnap-src "$image"
    wait_answer fbsnap-src
    t=$(now_ms)
    fb snapshot create --vmm-id fbsnap-src --tag "$snap" --stop >/dev/null
    snap_ms=$(($(now_ms) - t))
    fb purge >/dev/null
    echo "$label: fork -> first answer ($N runs) ..." >&2
    for i in $(seq "$N"); do
        t=$(now_ms)
        fb run --from-snapshot "$snap" --daemonize --name "fbsnap-fork$i" >/dev/null
        wait_answer "fbsnap-fork$i"; fork_ms+=($(($(now_ms) - t)))
        gone "fbsnap-fork$i"
    done
    cold=$(printf '%s\n' "${cold_ms[@]}" | median)
    fork=$(printf '%s\n' "${fork_ms[@]}" | median)
    REPORT+=("$label: cold boot -> first answer median ${cold} ms (${cold_ms[*]}); fork median ${fork} ms (${fork_ms[*]}); fork/cold $(echo "scale=2; $fork / $cold" | bc); snapshot create (256 MiB) ${snap_ms} ms")
}
measure "$TAG" "$SNAP" "httpd"
measure bench/httpd-warmup:1 bench/httpd-warmup:warm "httpd after a ${WARMUP} s warm-up"

echo "memory of 1 and 5 forks ..." >&2
PIDS=()
for i in 1 2 3 4 5; do
    fb run --from-snapshot "$SNAP" --daemonize --name "fbsnap-mem$i" >/dev/null
    wait_answer "fbsnap-mem$i"
    PIDS+=("$(pid_of "fbsnap-mem$i")")
    if [ "$i" = 1 ]; then sleep 2; ONE=$(pss_kib "${PIDS[0]}"); fi
done
sleep 2
FIVE=0
for p in "${PIDS[@]}"; do FIVE=$((FIVE + $(pss_kib "$p"))); done

echo
printf '%s\n' "${REPORT[@]}"
echo "goal: fork <= 0.25x of cold boot"
echo "PSS of 1 fork: $((ONE / 1024)) MiB; of 5 forks together: $((FIVE / 1024)) MiB ($((FIVE / 5 / 1024)) MiB each, vs $((ONE / 1024)) MiB alone)"
