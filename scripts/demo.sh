#!/usr/bin/env bash
# The README's demo: builds govcfs, puts a few sample files (one of 300 MiB) into a fresh
# data directory, mounts it with the embedded server, and shows ls, tail and grep on it.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v fusermount3 >/dev/null 2>&1; then
  echo "installing fuse3"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq fuse3
fi
cargo build --release --quiet
BIN="$PWD/target/release/govcfs"

WORK=$(mktemp -d /tmp/govcfs-demo.XXXXXX)
export XDG_DATA_HOME="$WORK/data"   # the embedded server's default data dir lives here
MNT="$WORK/mnt"
mkdir -p "$MNT" "$XDG_DATA_HOME"
SERVER_PID=""
cleanup() {
  if grep -qs " $MNT " /proc/mounts; then "$BIN" unmount "$MNT" 2>/dev/null || fusermount3 -u "$MNT" || umount -l "$MNT"; fi
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== generating sample files"
python3 - "$WORK" <<'PY'
import os, sys, random
work = sys.argv[1]
random.seed(7)
words = "alpha beta gamma delta error warning info debug request response cache chunk".split()
with open(os.path.join(work, "app.log"), "w") as f:
    written, n = 0, 0
    while written < 300 * 1024 * 1024:
        n += 1
        level = "ERROR" if n % 1000 == 0 else "INFO"
        line = f"2026-11-23T00:00:{n % 60:02d}Z {level} line {n} " + " ".join(random.choice(words) for _ in range(12)) + "\n"
        f.write(line)
        written += len(line)
open(os.path.join(work, "hello.txt"), "w").write("Hello from govcfs!\n")
PY

echo "== putting them into the repository (a server on the same data dir)"
"$BIN" serve --listen 127.0.0.1:0 > "$WORK/serve.out" &
SERVER_PID=$!
for _ in $(seq 1 100); do grep -q listening "$WORK/serve.out" && break; sleep 0.1; done
URL=$(sed -n 's/^govcfs: listening on //p' "$WORK/serve.out")
"$BIN" put "$WORK/hello.txt" "$URL/default/hello.txt"
"$BIN" put "$WORK/app.log" "$URL/default/logs/app.log"
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""

echo "== govcfs mount $MNT   (no URL: embedded server, repository 'default')"
"$BIN" mount "$MNT"
echo "\$ ls -l $MNT $MNT/logs"; ls -l "$MNT" "$MNT/logs"
echo "\$ cat $MNT/hello.txt"; cat "$MNT/hello.txt"
echo "\$ tail -n 3 $MNT/logs/app.log"; tail -n 3 "$MNT/logs/app.log"
echo "\$ grep -c ERROR $MNT/logs/app.log"; time grep -c ERROR "$MNT/logs/app.log"
echo "== govcfs unmount $MNT"
"$BIN" unmount "$MNT"
echo "demo done"
