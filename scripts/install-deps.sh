#!/usr/bin/env bash
# Installs what firebuild and its tests need on Debian 12 (run as root).
set -euo pipefail

packages=(
  # building firebuild
  build-essential pkg-config git curl ca-certificates file
  # guest kernels (firebuild kernel build)
  linux-source-6.1 flex bison bc libelf-dev libssl-dev cpio xz-utils
  # root filesystems, archives and VMs
  e2fsprogs qemu-system-x86 busybox-static zstd xz-utils bzip2
  # OCI registry, images and benchmarks
  docker-registry skopeo umoci debootstrap buildah bc
  # networking
  containernetworking-plugins iproute2 iptables nftables
)

export DEBIAN_FRONTEND=noninteractive
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The registry package starts a system service on :5000; tests start their
# own registries on free ports, so keep the system one out of the way.
if systemctl is-active --quiet docker-registry 2>/dev/null; then
  systemctl stop docker-registry || true
fi

if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust (https://rustup.rs) first" >&2
  exit 1
fi
