#!/bin/sh
# Builds the statically linked guest init and prints its path.
#
# The explicit --target keeps +crt-static off proc-macros and build scripts
# and puts the binary at target/x86_64-unknown-linux-gnu/release/vminit.
# The symbols are stripped (the workspace's release profile keeps debug
# info, which would multiply the size of a binary copied into every image),
# and panics abort (the init's panic hook still reports them and powers off).
set -eu

cd "$(dirname "$0")/.."
TARGET=x86_64-unknown-linux-gnu

RUSTFLAGS="-C target-feature=+crt-static -C panic=abort -C strip=symbols -C debuginfo=0" \
    cargo build --release -q -p firebuild-vminit --bin vminit --target "$TARGET" >&2

BIN="$(pwd)/target/$TARGET/release/vminit"
# Refuse a dynamically linked result: the init must run in images with no libc.
if command -v file >/dev/null 2>&1; then
    case "$(file -b "$BIN")" in
        *"statically linked"*|*"static-pie linked"*) ;;
        *) echo "build-vminit: $BIN is not statically linked: $(file -b "$BIN")" >&2; exit 1 ;;
    esac
fi
echo "$BIN"
