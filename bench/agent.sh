#!/usr/bin/env bash
# Benchmark: the guest agent. Boots a busybox microVM with `firebuild run`
# (QEMU; TCG unless BENCH_ACCEL=kvm) and prints
#   - the median `firebuild exec -- true` round trip (the whole command, as a
#     user runs it) next to the median round trip of a shell command over
#     the serial console of the same kernel and image under a hand-written
#     QEMU line (what driving a VM without an agent costs);
#     and what the round trip is made of (the protocol alone; the guest's own
#     fork+exec, which dominates under TCG);
#   - `firebuild cp` throughput in and out for a 100 MB file, next to
#     streaming the same bytes through `firebuild exec -i` stdin.
# Needs root, the packages of scripts/install-deps.sh, a release firebuild
# and the static guest init (both built here), and the CI kernel
# (FIREBUILD_TEST_KERNEL, else /var/cache/firebuild-ci/kernels/*/vmlinux).
#
#   bench/agent.sh            # 30 round trips
#   BENCH_RUNS=100 bench/agent.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "bench/agent.sh: run as root" >&2; exit 1; }
RUNS=${BENCH_RUNS:-30}
ACCEL=${BENCH_ACCEL:-tcg}
KERNEL=${FIREBUILD_TEST_KERNEL:-$(ls -t /var/cache/firebuild-ci/kernels/*/vmlinux 2>/dev/null | head -n1)}
[ -f "$KERNEL" ] || { echo "bench/agent.sh: no kernel; set FIREBUILD_TEST_KERNEL" >&2; exit 1; }

echo "building firebuild and the guest init (release)..." >&2
(cd "$ROOT" && cargo build -q --release -p firebuild)
VMINIT=$("$ROOT/scripts/build-vminit.sh")
FB="$ROOT/target/release/firebuild"

W=$(mktemp -d /var/tmp/firebuild-agent-bench.XXXXXX)
QEMU_PID=
cleanup() {
    "$FB" kill "${SETTINGS[@]}" --vmm-id fbbench --shutdown-timeout 1 >/dev/null 2>&1 || true
    "$FB" purge "${SETTINGS[@]}" >/dev/null 2>&1 || true
    [ -n "$QEMU_PID" ] && kill "$QEMU_PID" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
mkdir -p "$W"/{runs,rootfs,vmlinux,cache,profiles}
SETTINGS=(--profile-conf-dir "$W/profiles" --run-cache "$W/runs" --cache-dir "$W/cache"
    --storage-provider-property-string "rootfs-storage-root=$W/rootfs"
    --storage-provider-property-string "kernel-storage-root=$W/vmlinux"
    --vmm qemu --qemu-accel "$ACCEL")

# --- a busybox image in the store -------------------------------------------
tree=$W/tree
mkdir -p "$tree"/{bin,etc,proc,sys,dev,run,tmp,root,.firebuild}
chmod 1777 "$tree/tmp"
cp /bin/busybox "$tree/bin/busybox"
for a in $(busybox --list); do [ "$a" = busybox ] || ln -s busybox "$tree/bin/$a"; done
install -m 0755 "$VMINIT" "$tree/.firebuild/init"
echo 'root:x:0:0:root:/root:/bin/sh' > "$tree/etc/passwd"
echo 'root:x:0:' > "$tree/etc/group"
img=$W/rootfs/bench/agent/1
mkdir -p "$img"
mkfs.ext4 -q -F -d "$tree" "$img/rootfs" 256M
cat > "$img/metadata.json" <<EOF
{"created-at-utc": 0, "image": {"org": "bench", "image": "agent", "version": "1"},
 "type": "rootfs", "tag": "bench/agent:1",
 "entrypoint-info": {"entrypoint": [], "cmd": ["sleep", "1000000"], "env": {"PATH": "/bin"},
   "shell": ["/bin/sh", "-c"], "user": "", "workdir": ""},
 "rootfs-size": $(stat -c %s "$img/rootfs")}
EOF
"$FB" kernel add "${SETTINGS[@]}" --file "$KERNEL" --id bench-vmlinux >/dev/null

median_ms() { sort -n | awk '{ a[NR] = $1 } END { printf "%.1f", a[int((NR + 1) / 2)] * 1000 }'; }
now() { date +%s.%N; }

# --- firebuild exec ----------------------------------------------------------
"$FB" run "${SETTINGS[@]}" --from bench/agent:1 --vmlinux-id bench-vmlinux --name fbbench \
    --daemonize --mem 256 >/dev/null
for _ in $(seq 1 180); do
    "$FB" exec "${SETTINGS[@]}" --vmm-id fbbench -- true 2>/dev/null && break
    sleep 0.5
done
exec_ms=$(for _ in $(seq 1 "$RUNS"); do
    t=$(now); "$FB" exec "${SETTINGS[@]}" --vmm-id fbbench -- true; echo "$(now) - $t" | bc
done | median_ms)

# What the round trip is made of: the protocol alone (a ping over the
# same port), and the guest's own fork+exec (20 /bin/true from its shell).
ping_ms=$(python3 - "$W/runs/fbbench/agent-0.sock" "$RUNS" <<'EOF'
import json, socket, struct, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
def exact(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c: raise EOFError
        b += c
    return b
req = json.dumps({"version": 1, "request": {"type": "ping"}}).encode()
times = []
for _ in range(int(sys.argv[2])):
    t = time.time()
    s.sendall(struct.pack(">IIB", 5 + len(req), 7, 1) + req)
    while True:
        n, ch, kind = struct.unpack(">IIB", exact(9)); exact(n - 5)
        if ch == 7 and kind == 13: break
    times.append(time.time() - t)
times.sort(); print("%.1f" % (times[len(times) // 2] * 1000))
EOF
)
t=$(now); "$FB" exec "${SETTINGS[@]}" --vmm-id fbbench -- sh -c 'i=0; while [ $i -lt 20 ]; do /bin/true; i=$((i+1)); done'
fork_ms=$(echo "($(now) - $t) * 1000 / 20" | bc -l)

head -c 100M /dev/urandom > "$W/big"
t=$(now); "$FB" cp "${SETTINGS[@]}" "$W/big" fbbench:/tmp/big; cp_in=$(echo "$(now) - $t" | bc)
t=$(now); "$FB" cp "${SETTINGS[@]}" fbbench:/tmp/big "$W/back"; cp_out=$(echo "$(now) - $t" | bc)
cmp -s "$W/big" "$W/back" || { echo "bench/agent.sh: cp out returned other bytes" >&2; exit 1; }
"$FB" exec "${SETTINGS[@]}" --vmm-id fbbench -- rm /tmp/big
t=$(now); "$FB" exec "${SETTINGS[@]}" --vmm-id fbbench -i -- sh -c 'cat > /tmp/streamed' < "$W/big"
stream_in=$(echo "$(now) - $t" | bc)

# --- the serial console of a hand-written QEMU line -------------------------
cp --sparse=always "$img/rootfs" "$W/console.ext4"
qaccel=$ACCEL; [ "$ACCEL" = kvm ] && qaccel=kvm
qemu-system-x86_64 -machine "q35,accel=$qaccel" -m 256 -nodefaults -no-user-config -display none \
    -kernel "$KERNEL" -append "console=ttyS0 root=/dev/vda rw quiet init=/bin/sh" \
    -drive "id=root,file=$W/console.ext4,format=raw,if=none" -device virtio-blk-pci,drive=root \
    -chardev "socket,id=con,path=$W/console.sock,server=on,wait=off" -serial chardev:con &
QEMU_PID=$!
for _ in $(seq 1 100); do [ -S "$W/console.sock" ] && break; sleep 0.1; done
console_ms=$(python3 - "$W/console.sock" "$RUNS" <<'EOF'
import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.settimeout(120)
def until(marker):
    buf = b""
    while marker not in buf:
        buf += s.recv(65536)
# Wait for the shell, then time `true` plus a marker echo, as exec does.
deadline = time.time() + 120
while time.time() < deadline:
    s.sendall(b"echo RE''ADY\n")
    try:
        s.settimeout(2); until(b"READY"); break
    except socket.timeout:
        continue
s.settimeout(120)
times = []
for i in range(int(sys.argv[2])):
    t = time.time()
    s.sendall(b"true; echo M''%d\n" % i)
    until(b"M%d" % i)
    times.append(time.time() - t)
times.sort()
print("%.1f" % (times[len(times) // 2] * 1000))
EOF
)

mbs() { echo "scale=1; 100 / $1" | bc; }
echo "accel $ACCEL, $RUNS round trips each"
printf 'exec -- true round trip   firebuild exec %8.1f ms   serial console %8.1f ms   ratio %.2f\n' \
    "$exec_ms" "$console_ms" "$(echo "$exec_ms / $console_ms" | bc -l)"
printf '  of which: agent protocol (ping) %.1f ms; the guest'"'"'s own fork+exec of /bin/true %.1f ms\n' "$ping_ms" "$fork_ms"
printf 'cp 100 MB                 in %6.1f MB/s   out %6.1f MB/s   exec -i stdin %6.1f MB/s\n' \
    "$(mbs "$cp_in")" "$(mbs "$cp_out")" "$(mbs "$stream_in")"
