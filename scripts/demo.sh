#!/usr/bin/env bash
# The main job, on a fresh Debian 12 machine (as root): install what firebuild
# needs, build it, build a guest kernel (once), build examples/hello into a
# tagged root filesystem and boot it as a microVM, printing what its
# entrypoint prints.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

echo "==> installing firebuild and its static guest init into /usr/local"
scripts/install.sh --prefix /usr/local
firebuild=/usr/local/bin/firebuild

kernel_id=vmlinux-6.1
if ! $firebuild kernel inspect "$kernel_id" >/dev/null 2>&1; then
  # Built once per machine into the kernel cache scripts/test.sh boots too
  # (keyed by source version and config digest), then added to the store.
  echo "==> building the guest kernel $kernel_id from Debian's linux-source-6.1 (once; 8-20 minutes on 2 cores)"
  kernel_file="$(cargo run -q --release -p firebuild-kernel --example ci-kernel)"
  $firebuild kernel add --file "$kernel_file" --id "$kernel_id"
fi

echo "==> building examples/hello into the root filesystem examples/hello:1"
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
cp examples/hello/Dockerfile examples/hello/hello.sh "$context/"
cp /bin/busybox "$context/busybox"   # Debian's busybox-static: no registry needed
$firebuild rootfs --dockerfile "$context/Dockerfile" --tag examples/hello:1

echo "==> booting examples/hello:1 as a microVM"
$firebuild run --rm --from examples/hello:1 --vmlinux-id "$kernel_id" --mem 256
