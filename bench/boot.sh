#!/usr/bin/env bash
# Boot benchmark: time from `firebuild run` to the entrypoint's first output
# line, against a hand-written qemu-system-x86_64 command line booting the
# same kernel, a copy of the same stored root filesystem image, an
# equivalent config drive and the same kernel command line. Prints both
# medians and the ratio (aim: under 1.1).
#
# Usage: bench/boot.sh [ITERATIONS]           (default 5; run as root)
#
# Everything firebuild stores (kernel, image, build cache, run directories)
# lives in a temporary directory, removed at the end. Both sides boot under
# QEMU with TCG (the only accelerator that boots normal kernels on our
# nested-KVM machines).
#
# Environment:
#   FIREBUILD_BIN         firebuild binary (default: cargo build --release -p
#                         firebuild, then target/release/firebuild)
#   FIREBUILD_TEST_KERNEL vmlinux to boot (default: the newest CI kernel in
#                         /var/cache/firebuild-ci/kernels/*/vmlinux)
#   FIREBUILD_VMINIT      static guest init (default: scripts/build-vminit.sh)
#   BENCH_SHOW_CONSOLE=1  print what both sides' consoles printed, at the end
# Needs: qemu-system-x86 and busybox-static (Debian packages).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
N=${1:-5}
MARK=bench-first-line
TAG=bench/boot:1
KERNEL_ID=bench-vmlinux
HOSTNAME_=fbbench

[ "$(id -u)" = 0 ] || { echo "boot.sh: run as root (firebuild rootfs and run need it)" >&2; exit 1; }
case "$N" in '' | *[!0-9]* | 0) echo "boot.sh: ITERATIONS must be a positive number, not '$N'" >&2; exit 1 ;; esac
for tool in qemu-system-x86_64 mkfs.ext4; do
    command -v "$tool" >/dev/null || { echo "boot.sh: $tool not found: apt-get install -y qemu-system-x86 e2fsprogs" >&2; exit 1; }
done
[ -x /bin/busybox ] || { echo "boot.sh: /bin/busybox not found: apt-get install -y busybox-static" >&2; exit 1; }

KERNEL=${FIREBUILD_TEST_KERNEL:-}
if [ -z "$KERNEL" ]; then
    # The newest CI kernel build.
    for k in /var/cache/firebuild-ci/kernels/*/vmlinux; do
        if [ -f "$k" ] && { [ -z "$KERNEL" ] || [ "$k" -nt "$KERNEL" ]; }; then KERNEL=$k; fi
    done
fi
if [ -z "$KERNEL" ] || [ ! -f "$KERNEL" ]; then
    echo "boot.sh: no kernel; set FIREBUILD_TEST_KERNEL or build the CI kernel (cargo test -p firebuild-kernel)" >&2
    exit 1
fi

WORK=$(mktemp -d /tmp/firebuild-bench-boot.XXXXXX)
# Kills a VMM named by a pid file, after checking the pid is still a QEMU
# (a stale pid file must not take an unrelated process down).
kill_vmm() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 0
    case "$pid" in '' | *[!0-9]*) return 0 ;; esac
    if [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == qemu* ]]; then
        kill -9 "$pid" 2>/dev/null || true
    fi
}
cleanup() {
    local pidfile
    for pidfile in "$WORK"/qemu.pid "$WORK"/runs/*/vmm.pid; do
        [ -f "$pidfile" ] && kill_vmm "$pidfile"
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "building firebuild, the guest init and make-config-drive ..."
if [ -z "${FIREBUILD_BIN:-}" ]; then
    cargo build -q --release -p firebuild
    FIREBUILD_BIN=$ROOT/target/release/firebuild
fi
FIREBUILD_VMINIT=${FIREBUILD_VMINIT:-$(sh scripts/build-vminit.sh)}
export FIREBUILD_VMINIT
cargo build -q --release -p firebuild-vminit --example make-config-drive
MAKE_CONFIG_DRIVE=$ROOT/target/release/examples/make-config-drive

# All of firebuild's state in $WORK (flags go after the command name).
STATE=(
    "--storage-provider-property-string=rootfs-storage-root=$WORK/rootfs"
    "--storage-provider-property-string=kernel-storage-root=$WORK/vmlinux"
    "--run-cache=$WORK/runs"
    "--cache-dir=$WORK/cache"
)
# The settings check wants every state directory to exist, whatever the
# command uses.
mkdir -p "$WORK/rootfs" "$WORK/vmlinux" "$WORK/runs" "$WORK/cache"
# fb COMMAND... ARGS: firebuild with the state flags appended.
fb() { "$FIREBUILD_BIN" "$@" "${STATE[@]}"; }
fb_run() {
    fb run --from "$TAG" --vmlinux-id "$KERNEL_ID" --vmm qemu --qemu-accel tcg \
        --hostname "$HOSTNAME_" "$@"
}

now_ms() { date +%s%3N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'; }

# Runs "$@", sets ELAPSED to the milliseconds until a line containing $MARK
# appears on its stdout (or "fail"), and waits for the command to end. The
# output goes to $WORK/console.log for the error report. Called in the main
# shell, not in $(...): there a Ctrl-C that the VMM handles (it exits
# normally) would not reach the INT trap, and the script would go on.
time_to_first_line() {
    local start line first="" pid
    start=$(now_ms)
    while IFS= read -r line; do
        if [ -z "$first" ] && [[ "$line" == *"$MARK"* ]]; then
            first=$(now_ms)
        fi
        printf '%s\n' "$line" >>"$WORK/console.log"
    done < <("$@" 2>>"$WORK/stderr.log")
    pid=$!
    wait "$pid" 2>/dev/null || true
    if [ -z "$first" ]; then ELAPSED=fail; else ELAPSED=$((first - start)); fi
}

# A JSON string field of `firebuild inspect` (pretty-printed, one per line).
json_field() { sed -n "s/^ *\"$1\": *\"\\(.*\\)\",\{0,1\}\$/\\1/p" | head -n1; }

# --- set-up, outside every clock -------------------------------------------
t0=$(now_ms)
fb kernel add --file "$KERNEL" --id "$KERNEL_ID" >/dev/null 2>>"$WORK/stderr.log"
t1=$(now_ms)

CTX=$WORK/context
mkdir -p "$CTX"
cp /bin/busybox "$CTX/busybox"
cat >"$CTX/Dockerfile" <<EOF
# A tiny image: Debian's static busybox and an entrypoint that prints one
# line and exits.
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/bin
ENTRYPOINT ["/bin/echo", "$MARK"]
EOF
fb rootfs --dockerfile "$CTX/Dockerfile" --tag "$TAG" >/dev/null 2>>"$WORK/stderr.log" || {
    echo "boot.sh: firebuild rootfs failed:" >&2; cat "$WORK/stderr.log" >&2; exit 1
}
t2=$(now_ms)
STORED=$WORK/rootfs/bench/boot/1/rootfs
[ -f "$STORED" ] || { echo "boot.sh: the built image is not at $STORED" >&2; exit 1; }
echo "set-up: kernel add $((t1 - t0)) ms, rootfs build (FROM scratch + busybox) $((t2 - t1)) ms"

# A daemonized warm-up run (it also warms the page cache for both sides):
# its inspect output gives the runtime's real kernel command line and the
# resolved command, so the hand-written side boots identically. It uses a
# private copy, as the hand-written side does (the timed runs share the
# image, firebuild's default; bench/disks.sh compares the two modes).
fb_run --name fb-bench-warmup --daemonize --rootfs-mode copy >/dev/null 2>>"$WORK/stderr.log" || {
    echo "boot.sh: the warm-up run failed:" >&2; cat "$WORK/stderr.log" >&2; exit 1
}
INSPECT=$(fb inspect --vmm-id fb-bench-warmup)
APPEND=$(json_field kernel_args <<<"$INSPECT")
[ -n "$APPEND" ] || { echo "boot.sh: no kernel_args in firebuild inspect:" >&2; echo "$INSPECT" >&2; exit 1; }
# The hand-written metadata below runs this same command.
tr -d ' \n' <<<"$INSPECT" | grep -qF "\"command\":[\"/bin/echo\",\"$MARK\"]" || {
    echo "boot.sh: firebuild resolved another command than /bin/echo $MARK:" >&2; echo "$INSPECT" >&2; exit 1
}
for _ in $(seq 600); do
    status=$(fb inspect --vmm-id fb-bench-warmup | json_field status)
    [ "$status" = exited ] && break
    sleep 0.1
done
[ "$status" = exited ] || { echo "boot.sh: the warm-up VM did not exit within 60 s" >&2; exit 1; }
grep -q "$MARK" "$WORK/runs/fb-bench-warmup/console.log" || {
    echo "boot.sh: the warm-up VM never printed $MARK; its console:" >&2
    cat "$WORK/runs/fb-bench-warmup/console.log" >&2; exit 1
}
fb purge >/dev/null 2>>"$WORK/stderr.log"

# The hand-written side's guest metadata: what a user would write for the
# same VM (same hostname, command, environment, machine and kernel command
# line), on a config drive made with the guest init's own tool.
cat >"$WORK/meta.json" <<EOF
{
  "vmm-id": "hand-written",
  "drives": {"1": {"drive-id": "1", "is-read-only": "false", "is-root-device": "true"}},
  "entrypoint-json": "[\"/bin/echo\",\"$MARK\"]",
  "env": {"PATH": "/bin"},
  "local-hostname": "$HOSTNAME_",
  "machine": {"cpu": "1", "mem": "128", "ht-enabled": "false", "kernel-args": "$APPEND", "vmlinux-id": "$KERNEL_ID"},
  "image-tag": "$TAG",
  "stop-timeout-seconds": 10,
  "init-mode": "entrypoint"
}
EOF
"$MAKE_CONFIG_DRIVE" "$WORK/config.drive" <"$WORK/meta.json"

# The same -machine, -smp, -m and devices as firebuild's QEMU backend
# (crates/vm/src/vmm/qemu/cmdline.rs), console on stdio instead of a file.
qemu_run() {
    qemu-system-x86_64 -machine q35,accel=tcg -smp 1 -m 128 \
        -nodefaults -no-user-config -display none -no-reboot \
        -kernel "$KERNEL" -append "$APPEND" \
        -drive id=rootfs,file="$WORK/disk.ext4",format=raw,if=none -device virtio-blk-pci,drive=rootfs \
        -drive id=config,file="$WORK/config.drive",format=raw,if=none,readonly=on -device virtio-blk-pci,drive=config \
        -serial stdio -pidfile "$WORK/qemu.pid" </dev/null
}

echo "kernel: $KERNEL"
echo "kernel command line (both sides): $APPEND"
fb_times=()
qemu_times=()
for i in $(seq 1 "$N"); do
    time_to_first_line fb_run --rm
    t=$ELAPSED
    fb_times+=("$t")
    # The hand-written side's disk copy is set-up, outside its clock
    # (firebuild shares the image read-only: no copy to wait for).
    cp --sparse=always "$STORED" "$WORK/disk.ext4"
    time_to_first_line qemu_run
    q=$ELAPSED
    qemu_times+=("$q")
    rm -f "$WORK/disk.ext4" "$WORK/qemu.pid"
    echo "run $i: firebuild run ${t} ms, hand-written qemu ${q} ms"
done
fb purge >/dev/null 2>>"$WORK/stderr.log"
if [ -n "$(ls -A "$WORK/runs" 2>/dev/null)" ]; then
    echo "boot.sh: --rm left run directories behind: $(ls "$WORK/runs")" >&2
fi

if printf '%s\n' "${fb_times[@]}" "${qemu_times[@]}" | grep -q fail; then
    echo "boot.sh: a run never printed $MARK; consoles:" >&2
    cat "$WORK/console.log" >&2
    echo "stderr:" >&2
    cat "$WORK/stderr.log" >&2
    exit 1
fi
fb=$(printf '%s\n' "${fb_times[@]}" | median)
qm=$(printf '%s\n' "${qemu_times[@]}" | median)
echo "median time to the entrypoint's first line over $N runs (QEMU TCG, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)):"
echo "  firebuild run --rm:               ${fb} ms"
echo "  hand-written qemu-system-x86_64:  ${qm} ms"
awk -v a="$fb" -v b="$qm" 'BEGIN {printf "  ratio (firebuild / qemu): %.3f (aim: under 1.1)\n", a / b}'
if [ -n "${BENCH_SHOW_CONSOLE:-}" ]; then echo "consoles:"; cat "$WORK/console.log"; fi
