#!/usr/bin/env bash
# Boot benchmark: time from `firebuild run` to the entrypoint's first output
# line, against a hand-written qemu-system-x86_64 command line booting the
# same kernel, root filesystem and guest metadata. Prints both medians and
# the ratio (aim: under 1.1).
#
# Usage: bench/boot.sh [ITERATIONS]           (default 3; run as root)
#
# The firebuild side:
#   - with FIREBUILD_BENCH_TAG=org/name:ver and FIREBUILD_BENCH_VMLINUX_ID=ID
#     set, the real CLI: `firebuild run --from TAG --vmlinux-id ID --rm`
#     (FIREBUILD_BIN, default target/release/firebuild; the image's
#     entrypoint must print a line and exit);
#   - otherwise the runtime library through its `vm-run` example, on a
#     busybox root filesystem made here whose entrypoint echoes one line.
# Both boot with QEMU/TCG. Environment: FIREBUILD_TEST_KERNEL (else the CI
# kernel cache), FIREBUILD_VMINIT (else scripts/build-vminit.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
N=${1:-3}
MARK=bench-first-line

WORK=$(mktemp -d /tmp/firebuild-bench.XXXXXX)
cleanup() {
    # Any VM still running from an interrupted iteration.
    for pidfile in "$WORK"/qemu.pid "$WORK"/vms/*/vmm.pid; do
        [ -f "$pidfile" ] && kill -9 "$(cat "$pidfile")" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

now_ms() { date +%s%3N; }

# Runs "$@", prints the milliseconds until a line containing $MARK appears
# on its stdout (or "fail"), and waits for the command to end.
time_to_first_line() {
    local start first=""
    start=$(now_ms)
    while IFS= read -r line; do
        if [ -z "$first" ] && [[ "$line" == *"$MARK"* ]]; then
            first=$(now_ms)
        fi
    done < <("$@" 2>>"$WORK/stderr.log")
    if [ -z "$first" ]; then echo fail; else echo $((first - start)); fi
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'; }

KERNEL=${FIREBUILD_TEST_KERNEL:-$(ls /var/cache/firebuild-ci/kernels/*/vmlinux 2>/dev/null | head -n1)}
[ -f "$KERNEL" ] || { echo "boot.sh: no kernel; set FIREBUILD_TEST_KERNEL or build the CI kernel (cargo test -p firebuild-kernel)" >&2; exit 1; }

if [ -n "${FIREBUILD_BENCH_TAG:-}" ]; then
    FIREBUILD_BIN=${FIREBUILD_BIN:-$ROOT/target/release/firebuild}
    label="firebuild run"
    fb_run() { "$FIREBUILD_BIN" run --from "$FIREBUILD_BENCH_TAG" --vmlinux-id "$FIREBUILD_BENCH_VMLINUX_ID" "$@"; }
    fb_run_dir() { "$FIREBUILD_BIN" inspect --vmm-id "$1" | sed -n 's/.*"run_dir": *"\([^"]*\)".*/\1/p'; }
    fb_purge() { "$FIREBUILD_BIN" purge >/dev/null; }
else
    label="firebuild runtime (vm-run)"
    VMINIT=${FIREBUILD_VMINIT:-$(sh scripts/build-vminit.sh)}
    cargo build -q --release -p firebuild-vm --example vm-run
    VMRUN=$ROOT/target/release/examples/vm-run
    # A busybox root filesystem, as in the crate's tests.
    R=$WORK/rootfs
    mkdir -p "$R"/{bin,etc,proc,sys,dev,run,tmp,root,.firebuild}
    cp /bin/busybox "$R/bin/busybox"
    for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$R/bin/$a"; done
    install -m 0755 "$VMINIT" "$R/.firebuild/init"
    echo 'root:x:0:0:root:/root:/bin/sh' > "$R/etc/passwd"
    echo 'root:x:0:' > "$R/etc/group"
    mkfs.ext4 -q -F -d "$R" "$WORK/root.ext4" 64M
    cat > "$WORK/metadata.json" <<EOF
{"created-at-utc": 0, "image": {"org": "bench", "image": "busybox", "version": "1"},
 "type": "rootfs", "tag": "bench/busybox:1",
 "entrypoint-info": {"entrypoint": [], "cmd": ["/bin/echo", "$MARK"], "env": {"PATH": "/bin"}}}
EOF
    fb_run() {
        "$VMRUN" --rootfs "$WORK/root.ext4" --image-metadata "$WORK/metadata.json" \
            --kernel "$KERNEL" --run-cache "$WORK/vms" "$@"
    }
    fb_run_dir() { echo "$WORK/vms/$1"; }
    fb_purge() { rm -rf "$WORK/vms"; }
fi

# Warm-up run, kept: its config drive, kernel command line and root
# filesystem copy feed the hand-written QEMU command line.
fb_run --name fb-bench-warmup >/dev/null 2>>"$WORK/stderr.log" || true
RUN_DIR=$(fb_run_dir fb-bench-warmup)
[ -f "$RUN_DIR/config.drive" ] || { echo "boot.sh: the warm-up run failed:" >&2; cat "$WORK/stderr.log" >&2; exit 1; }
APPEND=$(sed -n 's/.*"kernel_args": *"\([^"]*\)".*/\1/p' "$RUN_DIR/run.json")
cp "$RUN_DIR/config.drive" "$WORK/config.drive"
cp --sparse=always "$RUN_DIR/rootfs.ext4" "$WORK/base.ext4"
fb_purge

qemu_run() {
    qemu-system-x86_64 -machine q35,accel=tcg -smp 1 -m 128 \
        -nodefaults -no-user-config -display none -no-reboot \
        -kernel "$KERNEL" -append "$APPEND" \
        -drive id=rootfs,file="$WORK/disk.ext4",format=raw,if=none -device virtio-blk-pci,drive=rootfs \
        -drive id=config,file="$WORK/config.drive",format=raw,if=none,readonly=on -device virtio-blk-pci,drive=config \
        -serial stdio -pidfile "$WORK/qemu.pid" </dev/null
}

fb_times=()
qemu_times=()
for i in $(seq 1 "$N"); do
    t=$(time_to_first_line fb_run --rm)
    fb_times+=("$t")
    # The disk copy is set-up, outside the hand-written run's clock.
    cp --sparse=always "$WORK/base.ext4" "$WORK/disk.ext4"
    q=$(time_to_first_line qemu_run)
    qemu_times+=("$q")
    echo "run $i: $label ${t} ms, hand-written qemu ${q} ms"
done
fb_purge

if printf '%s\n' "${fb_times[@]}" "${qemu_times[@]}" | grep -q fail; then
    echo "boot.sh: a run never printed $MARK; stderr:" >&2
    cat "$WORK/stderr.log" >&2
    exit 1
fi
fb=$(printf '%s\n' "${fb_times[@]}" | median)
qm=$(printf '%s\n' "${qemu_times[@]}" | median)
echo "median time to the entrypoint's first line over $N runs (QEMU TCG):"
echo "  $label: ${fb} ms"
echo "  hand-written qemu-system-x86_64: ${qm} ms"
awk -v a="$fb" -v b="$qm" 'BEGIN {printf "  ratio: %.3f (aim: under 1.1)\n", a / b}'
