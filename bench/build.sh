#!/usr/bin/env bash
# Benchmark: firebuild's build engine against what a user would pick on a
# daemonless host — `buildah bud --isolation chroot` plus `mkfs.ext4 -d` of
# the exported root — on the same Dockerfiles, cold (empty caches) and warm
# (an unchanged rebuild). Prints times and ratios. Needs root and the Debian
# packages buildah, e2fsprogs and busybox-static; the Debian case also needs
# debootstrap and the Debian mirror (skipped when unreachable, or when
# BENCH_DEBIAN=0). RUN steps run in firebuild's hardened sandbox (user
# namespace, seccomp, its own network behind slirp4netns); with
# BENCH_BASELINE=REV the engine of git revision REV is timed too (e.g. the
# last one before the hardened sandbox, ad01f76), for the cost of the
# hardening. With a guest kernel (BENCH_KERNEL=vmlinux, default: the tests'
# cached one when present) the busybox case is also built by the firebuild
# CLI with `--isolation microvm` (QEMU; TCG unless KVM boots the kernel),
# beside the CLI's own sandbox build of it.
#
#   bench/build.sh            # both cases
#   BENCH_DEBIAN=0 BENCH_BASELINE=ad01f76 bench/build.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "bench/build.sh: run as root" >&2; exit 1; }
for tool in buildah mkfs.ext4 busybox; do
    command -v "$tool" >/dev/null || { echo "bench/build.sh: $tool missing (apt-get install buildah e2fsprogs busybox-static)" >&2; exit 1; }
done

W=$(mktemp -d /var/tmp/firebuild-bench.XXXXXX)
BUILDAH=(buildah --root "$W/buildah-root" --runroot "$W/buildah-run" --storage-driver overlay)
cleanup() {
    [ -d "$W/baseline" ] && git -C "$ROOT" worktree remove --force "$W/baseline" 2>/dev/null
    "${BUILDAH[@]}" rm --all >/dev/null 2>&1 || true
    "${BUILDAH[@]}" rmi --all --force >/dev/null 2>&1 || true
    umount -R "$W/buildah-root" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT

echo "building the firebuild build engine (release)..." >&2
(cd "$ROOT" && cargo build -q --release -p firebuild-builder --example build)
FB="$ROOT/target/release/examples/build"
FB_BASE=
if [ -n "${BENCH_BASELINE:-}" ]; then
    echo "building the engine of $BENCH_BASELINE (release)..." >&2
    git -C "$ROOT" worktree add -q --detach "$W/baseline" "$BENCH_BASELINE"
    # The engine's crate was named firebuild-build before it became firebuild-builder.
    engine=firebuild-builder
    [ -d "$W/baseline/crates/builder" ] || engine=firebuild-build
    (cd "$W/baseline" && CARGO_TARGET_DIR="$ROOT/target/bench-baseline" cargo build -q --release -p "$engine" --example build)
    FB_BASE="$ROOT/target/bench-baseline/release/examples/build"
fi
VMINIT=${FIREBUILD_VMINIT:-$ROOT/target/x86_64-unknown-linux-gnu/release/vminit}
[ -x "$VMINIT" ] || VMINIT=/bin/busybox   # any static binary stands in for the guest init

now() { date +%s.%N; }
elapsed() { echo "$(now) - $1" | bc; }

# --- contexts -----------------------------------------------------------------
make_busybox_ctx() {
    local c=$W/ctx-busybox
    mkdir -p "$c/rootfs/bin" "$c/rootfs/etc" "$c/rootfs/tmp" "$c/app"
    chmod 1777 "$c/rootfs/tmp"
    cp /bin/busybox "$c/rootfs/bin/busybox"
    for a in $(busybox --list); do [ "$a" = busybox ] || ln -s busybox "$c/rootfs/bin/$a"; done
    printf 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n' > "$c/rootfs/etc/passwd"
    printf 'root:x:0:\napp:x:1000:\n' > "$c/rootfs/etc/group"
    for i in $(seq 1 300); do head -c 4096 /dev/urandom | base64 > "$c/app/file$i.txt"; done
    cat > "$c/Dockerfile" <<'EOF'
FROM scratch
COPY rootfs/ /
RUN mkdir -p /data && for i in $(seq 1 500); do echo "line $i" > /data/f$i; done
COPY app/ /srv/app/
WORKDIR /srv/app
RUN cat *.txt | wc -c > /srv/size && tar -cf /srv/app.tar .
USER app
RUN id -u > /tmp/uid
ENV MODE=bench
CMD ["/bin/sh"]
EOF
    echo "$c"
}

make_debian_ctx() {
    local c=$W/ctx-debian cache=${FIREBUILD_CI_CACHE:-/var/cache/firebuild-ci}
    local tar=$cache/debootstrap-bookworm-minbase.tar
    if [ ! -f "$tar" ]; then
        command -v debootstrap >/dev/null || return 1
        mkdir -p "$cache"
        local tree; tree=$(mktemp -d "$cache/tree.XXXXXX")
        debootstrap --variant=minbase bookworm "$tree" http://deb.debian.org/debian >&2 || { rm -rf "$tree"; return 1; }
        tar --numeric-owner --xattrs -cf "$tar.partial" -C "$tree" . && mv "$tar.partial" "$tar"
        rm -rf "$tree"
    fi
    mkdir -p "$c"
    ln "$tar" "$c/bookworm.tar" 2>/dev/null || cp "$tar" "$c/bookworm.tar"
    cat > "$c/Dockerfile" <<'EOF'
FROM scratch
ADD bookworm.tar /
RUN apt-get update && apt-get install -y --no-install-recommends hello && rm -rf /var/lib/apt/lists/*
CMD ["hello"]
EOF
    echo "$c"
}

# --- the two tools --------------------------------------------------------------
fb_build() { # ctx tag [engine]
    "${3:-$FB}" --dockerfile "$1/Dockerfile" --tag "$2" --store "$W/fb-store" --cache "$W/fb-cache" \
        --vminit "$VMINIT" >/dev/null 2>"$W/fb.log" || { cat "$W/fb.log" >&2; return 1; }
}

buildah_build() { # ctx tag
    "${BUILDAH[@]}" bud --layers --isolation chroot -q -t "$2" -f "$1/Dockerfile" "$1" >/dev/null
    local ctr mnt used img=$W/buildah.ext4
    ctr=$("${BUILDAH[@]}" from -q "$2")
    mnt=$("${BUILDAH[@]}" mount "$ctr")
    used=$(du -sm "$mnt" | cut -f1)
    rm -f "$img"
    truncate -s "$(( used + used / 4 + 64 ))M" "$img"
    mkfs.ext4 -q -F -d "$mnt" "$img"
    "${BUILDAH[@]}" umount "$ctr" >/dev/null
    "${BUILDAH[@]}" rm "$ctr" >/dev/null
}

run_case() { # name ctx
    local name=$1 ctx=$2 t fb_cold fb_warm bu_cold bu_warm base_cold base_warm
    rm -rf "$W/fb-store" "$W/fb-cache"
    t=$(now); fb_build "$ctx" "bench/$name:1"; fb_cold=$(elapsed "$t")
    t=$(now); fb_build "$ctx" "bench/$name:1"; fb_warm=$(elapsed "$t")
    t=$(now); buildah_build "$ctx" "localhost/bench-$name:1"; bu_cold=$(elapsed "$t")
    t=$(now); buildah_build "$ctx" "localhost/bench-$name:1"; bu_warm=$(elapsed "$t")
    printf '%-8s %-6s firebuild %8.2fs   buildah+mkfs %8.2fs   ratio %.2f\n' "$name" cold "$fb_cold" "$bu_cold" "$(echo "$fb_cold / $bu_cold" | bc -l)"
    printf '%-8s %-6s firebuild %8.2fs   buildah+mkfs %8.2fs   ratio %.2f\n' "$name" warm "$fb_warm" "$bu_warm" "$(echo "$fb_warm / $bu_warm" | bc -l)"
    if [ -n "$FB_BASE" ]; then
        rm -rf "$W/fb-store" "$W/fb-cache"
        t=$(now); fb_build "$ctx" "bench/$name:1" "$FB_BASE"; base_cold=$(elapsed "$t")
        t=$(now); fb_build "$ctx" "bench/$name:1" "$FB_BASE"; base_warm=$(elapsed "$t")
        printf '%-8s %-6s firebuild %8.2fs   %-12s %8.2fs   hardened/baseline %.2f\n' "$name" cold "$fb_cold" "$BENCH_BASELINE" "$base_cold" "$(echo "$fb_cold / $base_cold" | bc -l)"
        printf '%-8s %-6s firebuild %8.2fs   %-12s %8.2fs   hardened/baseline %.2f\n' "$name" warm "$fb_warm" "$BENCH_BASELINE" "$base_warm" "$(echo "$fb_warm / $base_warm" | bc -l)"
    fi
}

# --- RUN steps in microVMs (the firebuild CLI) -----------------------------------
cli_build() { # ctx tag isolation
    "$CLI" rootfs --dockerfile "$1/Dockerfile" --tag "$2" --isolation "$3" --network none \
        "${CLI_DIRS[@]}" >/dev/null 2>"$W/cli.log" || { cat "$W/cli.log" >&2; return 1; }
}

run_microvm_case() { # name ctx
    local name=$1 ctx=$2 t cold warm sb_cold
    rm -rf "$W/cli"
    mkdir -p "$W/cli/cache" "$W/cli/rootfs" "$W/cli/vmlinux" "$W/cli/runs" "$W/cli/profiles"
    "$CLI" kernel add --file "$KERNEL" --id bench "${CLI_DIRS[@]}" >/dev/null 2>"$W/cli.log" || { cat "$W/cli.log" >&2; return 1; }
    t=$(now); cli_build "$ctx" "bench/$name-sb:1" sandbox; sb_cold=$(elapsed "$t")
    rm -rf "$W/cli/cache"; mkdir -p "$W/cli/cache"
    t=$(now); cli_build "$ctx" "bench/$name-vm:1" microvm; cold=$(elapsed "$t")
    t=$(now); cli_build "$ctx" "bench/$name-vm:2" microvm; warm=$(elapsed "$t")
    printf '%-8s %-6s microvm   %8.2fs   sandbox (CLI)  %8.2fs   microvm/sandbox %.2f\n' "$name" cold "$cold" "$sb_cold" "$(echo "$cold / $sb_cold" | bc -l)"
    printf '%-8s %-6s microvm   %8.2fs   (every step cached)\n' "$name" warm "$warm"
}

echo "case     cache  times (ratio = firebuild / buildah; below 1 is faster)"
run_case busybox "$(make_busybox_ctx)"
KERNEL=${BENCH_KERNEL:-${FIREBUILD_TEST_KERNEL:-$(ls /var/cache/firebuild-ci/kernels/*/vmlinux 2>/dev/null | head -n1)}}
if [ -n "$KERNEL" ] && [ -f "$KERNEL" ] && [ "$VMINIT" != /bin/busybox ]; then
    echo "building the firebuild CLI (release)..." >&2
    (cd "$ROOT" && cargo build -q --release -p firebuild)
    CLI="$ROOT/target/release/firebuild"
    CLI_DIRS=(--profile-conf-dir="$W/cli/profiles" --run-cache="$W/cli/runs" --cache-dir="$W/cli/cache"
        --storage-provider-property-string=rootfs-storage-root="$W/cli/rootfs"
        --storage-provider-property-string=kernel-storage-root="$W/cli/vmlinux"
        --vmm=qemu)
    FIREBUILD_VMINIT=$VMINIT run_microvm_case busybox "$W/ctx-busybox"
else
    echo "microvm  skipped (no guest kernel: set BENCH_KERNEL; and the guest init: scripts/build-vminit.sh)"
fi
if [ "${BENCH_DEBIAN:-1}" != 0 ]; then
    if ctx=$(make_debian_ctx); then
        run_case debian "$ctx"
    else
        echo "debian   skipped (no debootstrap tree and the Debian mirror is unreachable)"
    fi
fi
