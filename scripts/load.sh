#!/usr/bin/env bash
# Load test (not part of scripts/test.sh): 64 concurrent clients mixing ranged reads, uploads
# and commits against one release-build server for 60 s, then 8 processes reading the same
# file through one mount at once. Prints requests/s, p99 latency, the server's peak RSS, and
# whether every answer and every byte was right.
# Usage: scripts/load.sh [CLIENTS] [SECONDS]      GOVCFS_BIN=… skips the build.
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${1:-64}; SECONDS_=${2:-60}
command -v fusermount3 >/dev/null || { apt-get update -qq && apt-get install -y -qq fuse3; }
if [ -z "${GOVCFS_BIN:-}" ]; then cargo build --release --quiet; GOVCFS_BIN="$PWD/target/release/govcfs"; fi
BIN="$GOVCFS_BIN"
WORK=$(mktemp -d /tmp/govcfs-load.XXXXXX); MNT="$WORK/mnt"; mkdir -p "$MNT"
SERVER_PID=""
cleanup() {
  grep -qs " $MNT " /proc/mounts && { fusermount3 -u "$MNT" 2>/dev/null || umount -l "$MNT"; }
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
"$BIN" serve --data "$WORK/data" --listen 127.0.0.1:0 > "$WORK/serve.out" 2> "$WORK/serve.log" &
SERVER_PID=$!
for _ in $(seq 1 100); do grep -q listening "$WORK/serve.out" && break; sleep 0.1; done
URL=$(sed -n 's/^govcfs: listening on //p' "$WORK/serve.out"); ADDR=${URL#http://}
head -c $((64 << 20)) /dev/urandom > "$WORK/blob"
"$BIN" put "$WORK/blob" "$URL/default/blob" > /dev/null
HASH=$(curl -s "$URL/api/v1/repos/default/stat/blob" | python3 -c 'import json,sys; print(json.load(sys.stdin)["hash"])')
status=0
python3 scripts/load.py "$ADDR" "$CLIENTS" "$SECONDS_" "$HASH" "$WORK/blob" || status=1
echo "server peak RSS: $(( $(awk '/VmHWM/ {print $2}' /proc/$SERVER_PID/status) / 1024 )) MiB"
grep -c panicked "$WORK/serve.log" | sed 's/^/server panics: /' || true

"$BIN" mount "$URL/default" "$MNT"
want=$(md5sum < "$WORK/blob")
pids=()
for i in $(seq 1 8); do ( [ "$(md5sum < "$MNT/blob")" = "$want" ] ) & pids+=($!); done
bad=0; for p in "${pids[@]}"; do wait "$p" || bad=$((bad + 1)); done
echo "8 concurrent readers through one mount: $((8 - bad)) of 8 got the right bytes"
[ "$bad" = 0 ] || status=1
exit $status
