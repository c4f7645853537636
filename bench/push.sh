#!/usr/bin/env bash
# Registry transfer benchmark: a stored root filesystem pushed to and pulled
# from local docker-registry instances (started and stopped by this script).
#
#   push, cold:  firebuild image push (tar + gzip of the build's layer,
#                upload) of a fresh build, nothing cached
#   push, upload: firebuild image push of the same image to a second, empty
#                registry (layer blobs already made: upload only)
#       vs       skopeo copy oci:LAYOUT docker://REF of the same image to
#                that registry (upload only)
#   push, mount: firebuild image push to another repository of the first
#                registry (a cross-repository mount: nothing uploaded)
#   pull:        firebuild image pull REF (download + verify into the blob
#                cache) vs skopeo copy docker://REF oci:LAYOUT
#   pull to ext4: firebuild image pull REF --tag (also unpack + ext4)
#   first boot:  firebuild run --from REF on a clean store (pull, ext4, QEMU
#                TCG boot until the entrypoint printed and exited)
#
# The image is a FROM-scratch build whose one COPY layer holds DIRS
# (~300 MiB by default) and busybox, its CMD an echo.
#
#   bench/push.sh
#   RUNS=5 DIRS="/usr/include" bench/push.sh
#   FIREBUILD_BIN=path/to/firebuild bench/push.sh   # skip its cargo build
#
# Needs root, the guest kernel (FIREBUILD_TEST_KERNEL, default the newest CI
# kernel) and the Debian packages docker-registry, skopeo, e2fsprogs,
# busybox-static and qemu-system-x86.
# Prints the median of each side and the ratios (firebuild / skopeo).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3}
DIRS=${DIRS:-"/usr/include /usr/lib/python3.11 /usr/share/perl /usr/lib/gcc"}
TAG=bench/push:1
MARK=bench-first-line
KERNEL=${FIREBUILD_TEST_KERNEL:-}
if [ -z "$KERNEL" ]; then
    for k in /var/cache/firebuild-ci/kernels/*/vmlinux; do
        [ -f "$k" ] && KERNEL=$k
    done
fi
[ -n "$KERNEL" ] || { echo "push.sh: no kernel; set FIREBUILD_TEST_KERNEL or build the CI kernel (cargo test -p firebuild-kernel)" >&2; exit 1; }
[ -x /bin/busybox ] || { echo "push.sh: /bin/busybox not found: apt-get install -y busybox-static" >&2; exit 1; }

[ "$(id -u)" = 0 ] || { echo "push.sh: run as root (firebuild rootfs needs it)" >&2; exit 1; }
case "$RUNS" in '' | *[!0-9]* | 0) echo "push.sh: RUNS must be a positive number, not '$RUNS'" >&2; exit 1 ;; esac
for tool in /usr/bin/docker-registry skopeo mkfs.ext4; do
    command -v "$tool" >/dev/null || { echo "push.sh: missing $tool: apt-get install -y docker-registry skopeo e2fsprogs" >&2; exit 1; }
done

WORK=$(mktemp -d /var/tmp/firebuild-bench-push.XXXXXX)
BENCH=push.sh
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
cleanup() {
    stop_registries
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "building firebuild and the guest init ..."
if [ -z "${FIREBUILD_BIN:-}" ]; then
    cargo build --quiet --release --manifest-path "$ROOT/Cargo.toml" -p firebuild
    FIREBUILD_BIN=$ROOT/target/release/firebuild
fi
FIREBUILD_VMINIT=${FIREBUILD_VMINIT:-$(sh "$ROOT/scripts/build-vminit.sh")}
export FIREBUILD_VMINIT

# firebuild with all of its state under DIR: fb DIR COMMAND...
fb() {
    local dir=$1
    shift
    mkdir -p "$dir/rootfs" "$dir/vmlinux" "$dir/runs" "$dir/cache" "$dir/profiles"
    "$FIREBUILD_BIN" "$@" \
        "--storage-provider-property-string=rootfs-storage-root=$dir/rootfs" \
        "--storage-provider-property-string=kernel-storage-root=$dir/vmlinux" \
        "--run-cache=$dir/runs" "--cache-dir=$dir/cache" "--profile-conf-dir=$dir/profiles" \
        >/dev/null 2>>"$WORK/firebuild.log" || { echo "push.sh: firebuild $* failed:" >&2; tail -20 "$WORK/firebuild.log" >&2; exit 1; }
}

# As fb, printing what the command prints.
fb_out() {
    local dir=$1
    shift
    "$FIREBUILD_BIN" "$@" \
        "--storage-provider-property-string=rootfs-storage-root=$dir/rootfs" \
        "--storage-provider-property-string=kernel-storage-root=$dir/vmlinux" \
        "--run-cache=$dir/runs" "--cache-dir=$dir/cache" "--profile-conf-dir=$dir/profiles" \
        2>>"$WORK/firebuild.log" </dev/null || { echo "push.sh: firebuild $* failed:" >&2; tail -20 "$WORK/firebuild.log" >&2; exit 1; }
}

# A: where builds are pushed first (and mounted from); B: an empty registry
# for the upload-only comparison (nothing there to mount from).
read -r pid HOST < <(start_registry registry-a)
REGISTRY_PIDS+=("$pid")
read -r pid UPLOAD_HOST < <(start_registry registry-b)
REGISTRY_PIDS+=("$pid")
wait_registry "$HOST" registry-a
wait_registry "$UPLOAD_HOST" registry-b

echo "making the context from: $DIRS"
mkdir -p "$WORK/context/tree"
for d in $DIRS; do
    mkdir -p "$WORK/context/tree$(dirname "$d")"
    cp -a "$d" "$WORK/context/tree$(dirname "$d")/"
done
mkdir -p "$WORK/context/tree/bin"
cp /bin/busybox "$WORK/context/tree/bin/busybox"
printf 'FROM scratch\nCOPY tree/ /\nCMD ["/bin/busybox", "echo", "%s"]\n' "$MARK" >"$WORK/context/Dockerfile"
SIZE=$(du -sm "$WORK/context/tree" | cut -f1)

COLD=() WARM=() MOUNT=() FIRST_BOOT=() SKOPEO_PUSH=() PULL=() SKOPEO_PULL=() PULL_EXT4=()
for run in $(seq "$RUNS"); do
    rm -rf "$WORK/a" "$WORK/b" "$WORK/c" "$WORK/layout" "$WORK/layout-pull"
    fb "$WORK/a" rootfs --dockerfile "$WORK/context/Dockerfile" --tag "$TAG"
    sync
    COLD+=("$(timed fb "$WORK/a" image push "$TAG" "$HOST/cold$run/image:1")")
    sync
    WARM+=("$(timed fb "$WORK/a" image push "$TAG" "$UPLOAD_HOST/fb$run/image:1")")
    sync
    MOUNT+=("$(timed fb "$WORK/a" image push "$TAG" "$HOST/mount$run/image:1")")
    # The same image as an OCI layout, for skopeo to upload (outside the clock).
    skopeo copy --quiet --src-tls-verify=false "docker://$HOST/cold$run/image:1" "oci:$WORK/layout:image"
    sync
    SKOPEO_PUSH+=("$(timed skopeo copy --quiet --dest-tls-verify=false "oci:$WORK/layout:image" "docker://$UPLOAD_HOST/skopeo$run/image:1")")
    sync
    PULL+=("$(timed fb "$WORK/b" image pull "$HOST/cold$run/image:1")")
    sync
    SKOPEO_PULL+=("$(timed skopeo copy --quiet --src-tls-verify=false "docker://$HOST/cold$run/image:1" "oci:$WORK/layout-pull:image")")
    sync
    PULL_EXT4+=("$(timed fb "$WORK/c" image pull "$HOST/cold$run/image:1" --tag "$TAG")")
    # A clean store with only a kernel: `run --from REF` pulls, writes the
    # ext4 and boots (QEMU, TCG) until the entrypoint has printed and exited.
    rm -rf "$WORK/d"
    fb "$WORK/d" kernel add --file "$KERNEL" --id bench-vmlinux
    sync
    t0=$(now)
    out=$(fb_out "$WORK/d" run --from "$HOST/cold$run/image:1" --vmlinux-id bench-vmlinux \
        --vmm=qemu --qemu-accel=tcg --rm)
    t1=$(now)
    [[ "$out" == *"$MARK"* ]] || { echo "push.sh: the pulled image did not print $MARK: $out" >&2; tail -20 "$WORK/firebuild.log" >&2; exit 1; }
    FIRST_BOOT+=("$(elapsed "$t0" "$t1")")
    rm -rf "$WORK/d"
    echo "run $run: push cold ${COLD[-1]} s, upload ${WARM[-1]} s, mount ${MOUNT[-1]} s, skopeo ${SKOPEO_PUSH[-1]} s; pull ${PULL[-1]} s, skopeo ${SKOPEO_PULL[-1]} s; pull to ext4 ${PULL_EXT4[-1]} s; run --from REF ${FIRST_BOOT[-1]} s"
done

echo "a ${SIZE} MiB root filesystem through a local registry, median over $RUNS runs ($(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)):"
printf '  %-52s %s s\n' "firebuild image push, cold (tar + gzip + upload):" "$(median "${COLD[@]}")"
printf '  %-52s %s s\n' "firebuild image push, layers made (upload):" "$(median "${WARM[@]}")"
printf '  %-52s %s s\n' "skopeo copy oci: -> docker:// (upload):" "$(median "${SKOPEO_PUSH[@]}")"
printf '  %-52s %s s\n' "firebuild image push, another repo (mount):" "$(median "${MOUNT[@]}")"
printf '  %-52s %s s\n' "firebuild image pull (download + verify):" "$(median "${PULL[@]}")"
printf '  %-52s %s s\n' "skopeo copy docker:// -> oci: (download + verify):" "$(median "${SKOPEO_PULL[@]}")"
printf '  %-52s %s s\n' "firebuild image pull --tag (to a stored ext4):" "$(median "${PULL_EXT4[@]}")"
printf '  %-52s %s s\n' "firebuild run --from REF, clean store (pull+ext4+boot):" "$(median "${FIRST_BOOT[@]}")"
awk -v f="$(median "${WARM[@]}")" -v p="$(median "${SKOPEO_PUSH[@]}")" 'BEGIN { printf "  push ratio (firebuild / skopeo): %.2fx (goal <= 1.1)\n", f / p }'
awk -v f="$(median "${PULL[@]}")" -v p="$(median "${SKOPEO_PULL[@]}")" 'BEGIN { printf "  pull ratio (firebuild / skopeo): %.2fx (goal <= 1.1)\n", f / p }'
