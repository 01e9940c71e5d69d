#!/usr/bin/env bash
# The seed's headline claims, measured (not a test: nothing here asserts anything).
# Whole-blob download (ranged GETs, and curl) against chunked streaming through a stream
# session at 64 KiB, 1 MiB and 4 MiB chunks, and over the WebSocket, for 1 MiB, 100 MiB and
# 1 GiB blobs: MB/s (median of 3 runs) and the client's peak RSS, plus the server's peak RSS.
# Usage: scripts/bench-stream.sh [--quick]     (or: scripts/bench.sh stream [--quick])
# GOVCFS_BIN=/path/to/govcfs skips the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=0; [ "${1:-}" = "--quick" ] && QUICK=1
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl; }
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time; }
if [ -z "${GOVCFS_BIN:-}" ]; then cargo build --release --quiet; GOVCFS_BIN="$PWD/target/release/govcfs"; fi
BIN="$GOVCFS_BIN"
WORK=$(mktemp -d /tmp/govcfs-bench-stream.XXXXXX)
SERVER_PID=""
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

"$BIN" serve --data "$WORK/data" --listen 127.0.0.1:0 > "$WORK/serve.out" 2> "$WORK/serve.log" &
SERVER_PID=$!
for _ in $(seq 1 100); do grep -q listening "$WORK/serve.out" && break; sleep 0.1; done
URL=$(sed -n 's/^govcfs: listening on //p' "$WORK/serve.out")

if [ "$QUICK" = 1 ]; then SIZES="1M 100M"; RUNS=1; else SIZES="1M 100M 1G"; RUNS=3; fi
bytes_of() { case "$1" in 1M) echo 1048576;; 100M) echo 104857600;; 1G) echo 1073741824;; esac; }
for s in $SIZES; do
  head -c "$(bytes_of "$s")" /dev/urandom > "$WORK/blob-$s"
  "$BIN" put "$WORK/blob-$s" "$URL/default/blob-$s" > /dev/null
  rm "$WORK/blob-$s"
done

# One measurement: runs "$@" RUNS times with stdout to /dev/null; prints "MB/s peak-KiB".
measure() {
  local bytes=$1; shift
  local times=() peak=0
  for _ in $(seq 1 "$RUNS"); do
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    /usr/bin/time -f "%e %M" -o "$WORK/time" "$@" > /dev/null 2> "$WORK/err" || { echo "failed: $(tail -1 "$WORK/err")" >&2; echo "n/a n/a"; return; }
    read -r secs kib < "$WORK/time"
    times+=("$secs"); [ "$kib" -gt "$peak" ] && peak=$kib
  done
  python3 -c "import statistics,sys; t=statistics.median([float(x) for x in sys.argv[2:]]); print(f'{int(sys.argv[1])/1e6/max(t,1e-3):.0f}')" "$bytes" "${times[@]}" | tr '\n' ' '
  echo "$((peak / 1024))"
}

printf '\n| blob | method | MB/s | client peak RSS (MiB) |\n|---|---|---|---|\n'
for s in $SIZES; do
  b=$(bytes_of "$s")
  while IFS='|' read -r name cmd; do
    read -r rate peak <<< "$(measure "$b" $cmd)"
    printf '| %s | %s | %s | %s |\n' "$s" "$name" "$rate" "$peak"
  done <<EOT
whole blob, curl (one GET)|curl -s $URL/default/blob-$s
whole blob, govcfs get (ranged GETs)|$BIN get $URL/default/blob-$s
stream session, 64 KiB chunks|$BIN get $URL/default/blob-$s --stream --chunk-size 64K
stream session, 1 MiB chunks|$BIN get $URL/default/blob-$s --stream --chunk-size 1M
stream session, 4 MiB chunks|$BIN get $URL/default/blob-$s --stream --chunk-size 4M
WebSocket, 1 MiB chunks (base64 JSON)|$BIN get $URL/default/blob-$s --ws --chunk-size 1M
EOT
done
printf '\nserver peak RSS: %s MiB\n' "$(( $(awk '/VmHWM/ {print $2}' "/proc/$SERVER_PID/status") / 1024 ))"
