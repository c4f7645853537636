#!/usr/bin/env bash
# Runs the whole test suite (as root: the tests use namespaces, mounts,
# network devices and QEMU). Run scripts/install-deps.sh once first.
set -euo pipefail
cd "$(dirname "$0")/.."

# The guest init must be a static binary: it is built for the explicit
# target so the static-CRT flag stays off proc-macros and build scripts.
FIREBUILD_VMINIT="$(scripts/build-vminit.sh)"
export FIREBUILD_VMINIT

cargo test --workspace --all-targets
