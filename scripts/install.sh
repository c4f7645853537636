#!/usr/bin/env bash
# Installs a release firebuild, its containerd shim and its static guest
# init where both find it:
#   <prefix>/bin/firebuild
#   <prefix>/bin/containerd-shim-firebuild-v2
#   <prefix>/lib/firebuild/vminit
# All are stripped (the workspace's release profile keeps line tables for
# backtraces; an installed binary does not need them). Run as root.
#
#   scripts/install.sh [--prefix /usr/local]
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=/usr/local
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
        --prefix=*) prefix=${1#--prefix=}; shift ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

echo "==> building firebuild and its shim (release) and the static guest init" >&2
cargo build --release -q -p firebuild -p firebuild-shim
vminit="$(scripts/build-vminit.sh)"

install -D -m 0755 -s target/release/firebuild "$prefix/bin/firebuild"
install -D -m 0755 -s target/release/containerd-shim-firebuild-v2 "$prefix/bin/containerd-shim-firebuild-v2"
install -D -m 0755 -s "$vminit" "$prefix/lib/firebuild/vminit"
echo "==> installed: $("$prefix/bin/firebuild" --version | tr '\n' ' ')" >&2
