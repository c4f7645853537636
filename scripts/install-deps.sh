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
  # containerd and ctr (the shim's tests start a daemon of their own), and
  # protoc for the tests' CRI client
  containerd protobuf-compiler
  # networking
  containernetworking-plugins iproute2 iptables nftables
  # the RUN sandbox: its user-mode NAT and Docker's seccomp profile
  slirp4netns libseccomp-dev
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

# The RUN sandbox maps its root to an unprivileged range of host ids: give
# the user "firebuild" one (65536 ids from 2147483648, or after the highest
# range already handed out) in /etc/subuid and /etc/subgid.
touch /etc/subuid /etc/subgid
start=$(awk -F: 'BEGIN { s = 2147483648 }
  $1 != "firebuild" { e = $2 + $3; if ($2 < s + 65536 && e > s) s = e }
  END { printf "%.0f", s }' /etc/subuid /etc/subgid)
for f in /etc/subuid /etc/subgid; do
  if ! grep -q '^firebuild:' "$f"; then
    echo "firebuild:$start:65536" >> "$f"
    echo "added firebuild:$start:65536 to $f"
  fi
done

if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust (https://rustup.rs) first" >&2
  exit 1
fi
