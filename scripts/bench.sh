#!/usr/bin/env bash
# Measures govcfs on loopback with the release build and prints one table.
# Rows: put/get of 1 GiB against curl of the same file, sequential read through the mount,
# tail -c 64K of a 4 GiB file (bytes the server sent), cp into the mount, tar -x of small files.
# Peers (rclone, httpdirfs) are not measured yet. Not a test: nothing here asserts anything.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v fusermount3 >/dev/null || { apt-get update -qq && apt-get install -y -qq fuse3; }
cargo build --release --quiet
BIN="$PWD/target/release/govcfs"
WORK=$(mktemp -d /tmp/govcfs-bench.XXXXXX)
MNT="$WORK/mnt"; mkdir -p "$MNT"
SERVER_PID=""; MOUNT_PID=""
cleanup() {
  grep -qs " $MNT " /proc/mounts && { fusermount3 -u "$MNT" 2>/dev/null || umount -l "$MNT"; }
  [ -n "$MOUNT_PID" ] && kill "$MOUNT_PID" 2>/dev/null || true
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
now() { date +%s.%N; }
mbps() { python3 -c "print(f'{$1/1e6/($3-$2):.0f}')"; }
metric() { curl -s "$URL/metrics" | awk -v n="$1" '$1==n {print $2}'; }
peak_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }

echo "generating data in $WORK"
python3 - "$WORK" <<'PY'
import os, sys
w = sys.argv[1]
block = os.urandom(1 << 20)
with open(f"{w}/r1g", "wb") as f:
    for i in range(1024):
        f.write(i.to_bytes(8, "little") + block[8:])
with open(f"{w}/r4g", "wb") as f:
    for i in range(4096):
        f.write(i.to_bytes(8, "little") + block[8:])
os.makedirs(f"{w}/small", exist_ok=True)
for i in range(2000):
    with open(f"{w}/small/f{i:05d}.txt", "w") as f:
        f.write(f"file {i}\n" * (1 + i % 50))
PY
tar -C "$WORK" -cf "$WORK/small.tar" small

"$BIN" serve --data "$WORK/data" --listen 127.0.0.1:0 > "$WORK/serve.out" &
SERVER_PID=$!
for _ in $(seq 1 100); do grep -q listening "$WORK/serve.out" && break; sleep 0.1; done
URL=$(sed -n 's/^govcfs: listening on //p' "$WORK/serve.out")

row() { printf '%-46s %12s %s\n' "$1" "$2" "$3"; }
echo; row "measurement" "value" "unit"

drop_caches; t0=$(now); "$BIN" put "$WORK/r1g" "$URL/default/r1g" >/dev/null; t1=$(now)
row "govcfs put 1 GiB" "$(mbps 1073741824 $t0 $t1)" "MB/s"
"$BIN" put "$WORK/r4g" "$URL/default/r4g" >/dev/null
drop_caches; t0=$(now); "$BIN" get "$URL/default/r1g" > /dev/null; t1=$(now)
row "govcfs get 1 GiB (to /dev/null)" "$(mbps 1073741824 $t0 $t1)" "MB/s"
drop_caches; t0=$(now); curl -s -o /dev/null "$URL/default/r1g"; t1=$(now)
row "curl of the same file" "$(mbps 1073741824 $t0 $t1)" "MB/s"
row "server peak RSS so far" "$(( $(peak_kib $SERVER_PID) / 1024 ))" "MiB"

"$BIN" mount "$URL/default" "$MNT" -f 2> "$WORK/mount.log" &
MOUNT_PID=$!
for _ in $(seq 1 100); do grep -qs " $MNT " /proc/mounts && break; sleep 0.1; done
drop_caches; t0=$(now); cat "$MNT/r1g" > /dev/null; t1=$(now)
row "cat 1 GiB through the mount (cold)" "$(mbps 1073741824 $t0 $t1)" "MB/s"
before=$(metric govcfs_blob_bytes_sent_total)
t0=$(now); tail -c 65536 "$MNT/r4g" > /dev/null; t1=$(now)
after=$(metric govcfs_blob_bytes_sent_total)
row "tail -c 65536 of 4 GiB: time" "$(python3 -c "print(f'{($t1-$t0)*1000:.1f}')")" "ms"
row "tail -c 65536 of 4 GiB: blob bytes sent" "$(python3 -c "print(int($after-$before))")" "bytes"
drop_caches; t0=$(now); cat "$MNT/r4g" > /dev/null; t1=$(now)
row "cat 4 GiB through the mount" "$(mbps 4294967296 $t0 $t1)" "MB/s"
row "mount peak RSS (cache 256M)" "$(( $(peak_kib $MOUNT_PID) / 1024 ))" "MiB"
t0=$(now); cp "$WORK/r1g" "$MNT/copied"; t1=$(now)
row "cp 1 GiB into the mount" "$(mbps 1073741824 $t0 $t1)" "MB/s"
t0=$(now); tar -C "$MNT" -xf "$WORK/small.tar"; t1=$(now)
row "tar -x of 2,000 small files" "$(python3 -c "print(f'{2000/($t1-$t0):.0f}')")" "files/s"
row "mount peak RSS" "$(( $(peak_kib $MOUNT_PID) / 1024 ))" "MiB"
row "server peak RSS" "$(( $(peak_kib $SERVER_PID) / 1024 ))" "MiB"
