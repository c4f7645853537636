#!/usr/bin/env bash
# Runs the whole test suite (as root: the tests use namespaces, mounts,
# network devices and QEMU). Run scripts/install-deps.sh once first.
set -euo pipefail
cd "$(dirname "$0")/.."

# The guest init must be a static binary: it is built for the explicit
# target so the static-CRT flag stays off proc-macros and build scripts.
FIREBUILD_VMINIT="$(scripts/build-vminit.sh)"
export FIREBUILD_VMINIT

# The guest kernel the VM tests boot: built once from Debian's
# linux-source-6.1 with the project's config, then reused from
# /var/cache/firebuild-ci (about 8 minutes on 2 cores when missing).
FIREBUILD_TEST_KERNEL="$(cargo run -q -p firebuild-kernel --example ci-kernel)"
export FIREBUILD_TEST_KERNEL

# Every test binary runs (--no-fail-fast: one failure does not hide the
# rest); keep cargo's exit status, and close with one total line over all
# test binaries (cargo prints a result line per binary; the last may be an
# example's empty harness).
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --all-targets --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { passed += $4; failed += $6 }
     END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
exit "$status"
