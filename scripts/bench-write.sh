#!/usr/bin/env bash
# Write benchmarks of the chunked store (issue 16), govcfs alone, side by side with what the
# same disk does locally. Not a test: it asserts nothing and prints what it measured.
#
#   scripts/bench.sh write [--quick] [--runs N]
#
# Rows (each run: fresh random data, so nothing is deduplicated unless the row is about that):
#   cp        local `cp` + `sync` of the file on the same disk, local `dd oflag=direct` (the
#             disk without the page cache: on a VM whose fresh page-cache pages are slow to
#             fault in, cp + sync swings from 0.3 to 1.5 GB/s with the page cache's state),
#             and `cp` into the mount (the time includes close, which commits); the ratios
#   recp      `cp` of the same file again, to another path: its speed, and the blob bytes the
#             server received (the mount names chunks the repository holds)
#   put       `govcfs put` of the file
#   raw       one `curl -T` of the file to POST …/stream/blob/upload
#   append    `echo line >> big.log` through the mount on a file of APPEND_SIZE: wall time of
#             the redirect (open, write, close + commit), and the blob bytes the server
#             received for it (govcfs_blob_bytes_received_total)
#   reput     `govcfs put` again of the file with 1 MiB changed in the middle: bytes received
#   rss       peak RSS (VmHWM) of the mount and the server over all of the above
#
# Environment: GOVCFS_BIN (binary; default: cargo build --release), BENCH_TMP (default /tmp),
# BENCH_OUT (default bench-results/), BENCH_KEEP=1 keeps the work directory.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
LOG_TAG=bench-write
# shellcheck source=bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"
MODE=full
RUNS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) MODE=quick ;;
    --runs) RUNS=$2; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "bench-write.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
MIB=$((1 << 20))
if [ "$MODE" = quick ]; then
  SIZE=$((256 * MIB)); APPEND_SIZE=$((512 * MIB)); RUNS=${RUNS:-1}
else
  SIZE=$((1024 * MIB)); APPEND_SIZE=$((2048 * MIB)); RUNS=${RUNS:-3}
fi
T=300   # seconds any one command may take

calc() { awk "BEGIN { printf \"%.3f\", $* }"; }

govcfs_binary "$ROOT"
WORK=$(mktemp -d "${BENCH_TMP:-/tmp}/govcfs-bench-write.XXXXXX")
MNT="$WORK/mnt"; mkdir -p "$MNT" "$WORK/store" "$WORK/local"
SERVER_PID=""; MOUNT_PID=""

cleanup() {
  if grep -qs " $MNT " /proc/mounts; then fusermount3 -u "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null; fi
  stop_pid "$MOUNT_PID"; stop_pid "$SERVER_PID"
  [ "${BENCH_KEEP:-}" = 1 ] || rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN" serve --data "$WORK/store" --listen 127.0.0.1:0 > "$WORK/serve.out" 2> "$WORK/serve.log" &
SERVER_PID=$!
for _ in $(seq 1 300); do grep -q '^govcfs: listening on ' "$WORK/serve.out" && break; sleep 0.1; done
URL=$(sed -n 's/^govcfs: listening on //p' "$WORK/serve.out" | head -1)
[ -n "$URL" ] || die "the server did not start: $(tail -3 "$WORK/serve.log")"
received() { curl -sf --max-time 10 "$URL/metrics" | awk '$1 == "govcfs_blob_bytes_received_total" { print $2; exit }'; }
vmhwm_mib() { awk '/^VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null; }

"$BIN" mount "$URL/default" "$MNT" -f > "$WORK/mount.log" 2>&1 &
MOUNT_PID=$!
for _ in $(seq 1 100); do grep -qs " $MNT " /proc/mounts && break; sleep 0.1; done
grep -qs " $MNT " /proc/mounts || die "the mount did not come up: $(tail -3 "$WORK/mount.log")"

# timed CMD...: runs CMD under a time limit; EL = seconds (empty on failure)
timed() {
  local t0; t0=$(now)
  if timeout "$T" "$@" > /dev/null 2> "$WORK/err"; then EL=$(calc "$(now) - $t0"); else EL=""; log "failed: $* ($(tail -c 200 "$WORK/err"))"; fi
}
RES="$WORK/results.tsv"; : > "$RES"
rec() { printf '%s\t%s\n' "$1" "$2" >> "$RES"; }   # name value
rate() { [ -n "$EL" ] && calc "$SIZE / $EL / 1e6"; }

log "server $URL, mount $MNT, $((SIZE / MIB)) MiB files, $RUNS run(s)"
head -c "$APPEND_SIZE" /dev/urandom > "$WORK/biglog"
timed "$BIN" put "$WORK/biglog" "$URL/default/big.log" -m "bench: the file appended to"
rm -f "$WORK/biglog"
for run in $(seq 1 "$RUNS"); do
  log "run $run/$RUNS"
  head -c "$SIZE" /dev/urandom > "$WORK/src"
  sync
  timed bash -c "cp '$WORK/src' '$WORK/local/copy' && sync"; rec local_cp_sync_mbps "$(rate)"
  rm -f "$WORK/local/copy"; sync
  timed dd if="$WORK/src" of="$WORK/local/copy" bs=4M oflag=direct conv=fsync; rec local_dd_direct_mbps "$(rate)"
  rm -f "$WORK/local/copy"; sync
  timed cp "$WORK/src" "$MNT/cp-$run.bin"; rec mount_cp_mbps "$(rate)"
  before=$(received)
  timed cp "$WORK/src" "$MNT/cp-$run-again.bin"; rec recp_mbps "$(rate)"
  rec recp_received_bytes "$(calc "$(received) - $before")"
  head -c "$SIZE" /dev/urandom > "$WORK/src"
  timed "$BIN" put "$WORK/src" "$URL/default/put-$run.bin" -m "bench put"; rec put_mbps "$(rate)"
  head -c "$SIZE" /dev/urandom > "$WORK/src"
  timed curl -sfS -X POST -T "$WORK/src" -H 'Expect:' -H 'Content-Type: application/octet-stream' \
    -o /dev/null "$URL/api/v1/repos/default/stream/blob/upload"; rec raw_upload_mbps "$(rate)"

  before=$(received)
  timed bash -c "echo 'bench line $run' >> '$MNT/big.log'"; rec append_close_ms "$([ -n "$EL" ] && calc "$EL * 1000")"
  rec append_received_bytes "$(calc "$(received) - $before")"

  # re-put of the file put above, with 1 MiB in the middle changed
  python3 - "$WORK/src" <<'EOF'
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
size = os.fstat(fd).st_size
os.pwrite(fd, os.urandom(1 << 20), size // 2)
os.close(fd)
EOF
  timed "$BIN" put "$WORK/src" "$URL/default/put-$run.bin" -m "bench put"
  before=$(received)
  python3 - "$WORK/src" <<'EOF'
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
size = os.fstat(fd).st_size
os.pwrite(fd, os.urandom(1 << 20), size // 2 + (1 << 19))
os.close(fd)
EOF
  timed "$BIN" put "$WORK/src" "$URL/default/put-$run.bin" -m "bench re-put"; rec reput_seconds "$EL"
  rec reput_received_bytes "$(calc "$(received) - $before")"
done
rec mount_peak_rss_mib "$(vmhwm_mib "$MOUNT_PID")"
rec server_peak_rss_mib "$(vmhwm_mib "$SERVER_PID")"

OUT="${BENCH_OUT:-$ROOT/bench-results}"; mkdir -p "$OUT"
python3 - "$RES" "$OUT/$(date +%F)-write-$MODE.json" "$SIZE" "$APPEND_SIZE" "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)" <<'EOF'
import json, statistics, sys
tsv, out, size, append_size, commit = sys.argv[1:]
rows = {}
for line in open(tsv):
    name, _, value = line.rstrip("\n").partition("\t")
    rows.setdefault(name, []).append(float(value) if value else None)
def med(name):
    vals = [v for v in rows.get(name, []) if v is not None]
    return statistics.median(vals) if vals else None
def span(name):
    vals = [v for v in rows.get(name, []) if v is not None]
    return f"{min(vals):.1f}–{max(vals):.1f}" if vals else "n/a"
print(f"| write ({int(size) >> 20} MiB, append on {int(append_size) >> 20} MiB) | median | runs (min–max) |")
print("|---|---|---|")
for name in rows:
    m = med(name)
    print(f"| {name} | {'n/a' if m is None else f'{m:.1f}'} | {span(name)} |")
cp, local, direct = med("mount_cp_mbps"), med("local_cp_sync_mbps"), med("local_dd_direct_mbps")
ratio = cp / local if cp and local else None
direct_ratio = cp / direct if cp and direct else None
print(f"\nmount cp / local cp+sync: {'n/a' if ratio is None else f'{ratio:.2f}x'}")
print(f"mount cp / local dd oflag=direct: {'n/a' if direct_ratio is None else f'{direct_ratio:.2f}x'}")
json.dump({"commit": commit, "size": int(size), "append_size": int(append_size),
           "samples": rows, "median": {k: med(k) for k in rows}, "cp_ratio": ratio, "cp_direct_ratio": direct_ratio},
          open(out, "w"), indent=1)
print(f"(JSON: {out})")
EOF
