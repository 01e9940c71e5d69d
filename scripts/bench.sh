#!/usr/bin/env bash
# Benchmarks `govcfs mount` side by side with the tools a user would pick instead (issue #6):
# rclone mount (http backend, default flags and a tuned row), httpdirfs (with and without its
# cache), plus curl of the govcfs server and nginx serving the same files as references.
# Everything runs on 127.0.0.1; every mount is unmounted and every started process is killed
# on exit. Not a test: it asserts nothing, a peer that fails is reported as n/a.
#
#   scripts/bench.sh [--quick] [--runs N]
#   scripts/bench.sh stream [--quick]     the streaming API alone (scripts/bench-stream.sh)
#   scripts/bench.sh write [--quick]      writes of the chunked store (scripts/bench-write.sh)
#   scripts/bench.sh small [--quick]      tar -x of many small files (scripts/bench-small.sh)
#
# Environment:
#   GOVCFS_BIN=PATH      use this binary instead of `cargo build --release`
#   GOVCFS_COMMIT=ID     the commit that binary was built from (for the JSON)
#   BENCH_TOOLS="..."    mounts to measure (default: govcfs rclone rclone-tuned
#                        httpdirfs-cache httpdirfs)
#   RCLONE_TUNED_STREAM  flags of the tuned rclone column in rows 1 and 3 (streaming reads)
#   RCLONE_TUNED_RANDOM  flags of the tuned rclone column in the other rows (small random reads)
#   BENCH_TMP=DIR        where the data goes (default /tmp; needs ~3x the data size free)
#   BENCH_KEEP=1         keep the work directory (data, logs, raw results)
#   BENCH_OUT=DIR        where the JSON goes (default bench-results/)
#
# Output: Markdown tables on stdout; JSON in bench-results/<date>-<quick|full>.json.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ "${1:-}" = stream ]; then shift; exec "$ROOT/scripts/bench-stream.sh" "$@"; fi
if [ "${1:-}" = write ]; then shift; exec "$ROOT/scripts/bench-write.sh" "$@"; fi
if [ "${1:-}" = small ]; then shift; exec "$ROOT/scripts/bench-small.sh" "$@"; fi
HELPER="$ROOT/scripts/bench_helper.py"
MODE=full
RUNS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) MODE=quick ;;
    --runs) RUNS=$2; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

KIB=1024; MIB=$((1024 * KIB)); GIB=$((1024 * MIB))
if [ "$MODE" = quick ]; then
  F1=$((256 * MIB)); F4=$((512 * MIB)); FT=$((128 * MIB)); NSMALL=1000
  FW=$((128 * MIB)); NW=200; NPUT=20; FIO_RT=3; RUNS=${RUNS:-1}
  T_LONG=5; T_SHORT=10; T_LS=15; T_WRITE=30
else
  F1=$((1 * GIB)); F4=$((4 * GIB)); FT=$((1 * GIB)); NSMALL=10000
  FW=$((1 * GIB)); NW=2000; NPUT=200; FIO_RT=10; RUNS=${RUNS:-3}
  T_LONG=60; T_SHORT=30; T_LS=60; T_WRITE=120
fi
TOOLS=${BENCH_TOOLS:-govcfs rclone rclone-tuned httpdirfs-cache httpdirfs}
# The tuned rclone column takes the best of a few flag sets tried on this machine for each
# kind of access (no single set is good at both): big chunks and a big buffer for streaming,
# small chunks that do not grow and no buffer for random reads.
RCLONE_TUNED_STREAM=${RCLONE_TUNED_STREAM:---vfs-read-chunk-size 64M --vfs-read-chunk-size-limit off --buffer-size 128M}
RCLONE_TUNED_RANDOM=${RCLONE_TUNED_RANDOM:---vfs-read-chunk-size 1M --vfs-read-chunk-size-limit 0 --buffer-size 0}
GOVCFS_CACHE=256M
PATTERN='ERR-42'   # '-' is outside the base64 alphabet of the text file: no chance matches
SEED=20240606

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }
[ "$(id -u)" -eq 0 ] && SUDO="" || SUDO="sudo"

# ---------------------------------------------------------------- tools, only if absent
need=()
for pair in rclone:rclone httpdirfs:httpdirfs fio:fio hyperfine:hyperfine nginx:nginx-light \
            wrk:wrk fusermount3:fuse3 curl:curl python3:python3; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  $SUDO apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >&2 \
    || log "apt-get install failed; tools that are missing will be reported as n/a"
fi
have() { command -v "$1" >/dev/null 2>&1; }

# ---------------------------------------------------------------- binary
if [ -n "${GOVCFS_BIN:-}" ]; then
  BIN=$GOVCFS_BIN
else
  log "cargo build --release"
  (cd "$ROOT" && cargo build --release --quiet) || die "cargo build failed"
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/govcfs"
fi
[ -x "$BIN" ] || die "no govcfs binary at $BIN"

# ---------------------------------------------------------------- cleanup on every exit
WORK=$(mktemp -d "${BENCH_TMP:-/tmp}/govcfs-bench.XXXXXX") || die "mktemp"
DATA="$WORK/files"; LOGS="$WORK/logs"; RES="$WORK/results.tsv"; FIND="$WORK/findings.txt"
mkdir -p "$DATA" "$LOGS" "$WORK/mnt"; : > "$RES"; : > "$FIND"
PIDS=()        # every background process this script started
MOUNTS=()      # every mountpoint it used
SERVER_PID=""; NGINX_PID=""

stop_pid() {   # stop_pid PID: TERM, wait (bounded), KILL
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
  kill -TERM "$pid" 2>/dev/null
  for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 0
}
is_mounted() { grep -qs " $1 " /proc/mounts; }
force_unmount() {
  local m=$1
  is_mounted "$m" || return 0
  timeout 20 fusermount3 -u "$m" 2>/dev/null || timeout 20 umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
}
cleanup() {
  local m p
  trap - EXIT INT TERM
  for m in "${MOUNTS[@]}"; do force_unmount "$m"; done
  for p in "${PIDS[@]}"; do stop_pid "$p"; done
  if [ "${BENCH_KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ---------------------------------------------------------------- small utilities
rec() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5:-}" >> "$RES"; }   # row tool status value note
calc() { awk "BEGIN { printf \"%.6f\", $* }"; }
# Dropping the page cache before each read measurement: our own files are written back once
# after the setup (sync_all), so a plain drop suffices there and other work on the machine
# that keeps writing does not stall every measurement in sync(2). Write rows sync first.
drop_caches() { echo 3 | $SUDO tee /proc/sys/vm/drop_caches >/dev/null 2>&1 || true; }
sync_all() { timeout 120 sync; }
metric() { curl -sf --max-time 10 "$URL/metrics" | awk -v n="$1" '$1 == n { print $2; exit }'; }
vmhwm_mib() { local k; k=$(python3 "$HELPER" vmhwm "$1"); [ -n "$k" ] && calc "$k / 1024"; }
oneline() { tr '\n\t' '  ' < "$1" | tail -c 300; }

# timed LIMIT CMD...: runs CMD under `timeout`; sets EL (seconds) and RC (124 = timed out);
# stderr goes to $WORK/err.
timed() {
  local limit=$1; shift
  local t0 t1
  t0=$(date +%s%N)
  timeout -k 5 "$limit" "$@" 2> "$WORK/err"
  RC=$?
  t1=$(date +%s%N)
  EL=$(calc "($t1 - $t0) / 1e9")
}
# result ROW TOOL KIND AMOUNT LIMIT [CHECK_NOTE]: records the last `timed` as a rate (KIND=rate,
# AMOUNT units per second, scaled by 1e-6 when AMOUNT is bytes: MB/s) or a time (KIND=s|ms).
result() {
  local row=$1 tool=$2 kind=$3 amount=$4 limit=$5 bad=${6:-}
  if [ "$RC" -eq 124 ] || [ "$RC" -eq 137 ]; then
    case $kind in
      mbps) rec "$row" "$tool" timeout "$(calc "$amount / $limit / 1e6")" "stopped after ${limit} s" ;;
      rate) rec "$row" "$tool" timeout "$(calc "$amount / $limit")" "stopped after ${limit} s" ;;
      ms) rec "$row" "$tool" timeout "$(calc "$limit * 1000")" "stopped after ${limit} s" ;;
      s) rec "$row" "$tool" timeout "$limit" "stopped after ${limit} s" ;;
    esac
    return 1
  elif [ "$RC" -ne 0 ]; then
    rec "$row" "$tool" fail na "exit $RC: $(oneline "$WORK/err")"
    return 1
  elif [ -n "$bad" ]; then
    rec "$row" "$tool" fail na "$bad"
    return 1
  fi
  case $kind in
    mbps) rec "$row" "$tool" ok "$(calc "$amount / $EL / 1e6")" ;;
    rate) rec "$row" "$tool" ok "$(calc "$amount / $EL")" ;;
    ms) rec "$row" "$tool" ok "$(calc "$EL * 1000")" ;;
    s) rec "$row" "$tool" ok "$EL" ;;
  esac
}

# ---------------------------------------------------------------- mounts
declare -A SKIP   # "row:tool" -> reason: after a timeout or a failed mount, later runs are skipped
MPID=""; MLOG=""; CUR_ROW=""
tool_available() {
  case $1 in
    govcfs) return 0 ;;
    rclone|rclone-tuned) have rclone ;;
    httpdirfs|httpdirfs-cache) have httpdirfs ;;
    curl) have curl ;;
    nginx) [ -n "$NGINX_PID" ] ;;
  esac
}
# mount_tool TOOL TAG [rw]: mounts TOOL at $WORK/mnt/TOOL, sets MNT, MPID and MLOG; 1 on failure
# (MFAIL says why).
mount_tool() {
  local tool=$1 tag=$2 i
  MNT="$WORK/mnt/$tool"; MLOG="$LOGS/$tool-$tag.log"; MPID=""; MFAIL=""
  mkdir -p "$MNT"
  force_unmount "$MNT"
  case " ${MOUNTS[*]} " in *" $MNT "*) ;; *) MOUNTS+=("$MNT") ;; esac
  if ! tool_available "$tool"; then MFAIL="$tool is not installed"; return 1; fi
  case $tool in
    govcfs)
      rm -rf "$WORK/gcache"
      RUST_LOG=${RUST_LOG:-info} "$BIN" mount "$URL/default" "$MNT" -f --cache-size "$GOVCFS_CACHE" \
        --cache-dir "$WORK/gcache" > "$MLOG" 2>&1 & ;;
    rclone)
      rclone mount :http: "$MNT" --http-url "$URL/default/" --read-only --config "$WORK/rclone.conf" \
        --cache-dir "$WORK/rclone-cache" > "$MLOG" 2>&1 & ;;
    rclone-tuned)
      local flags=$RCLONE_TUNED_RANDOM
      case $CUR_ROW in seq|grep) flags=$RCLONE_TUNED_STREAM ;; esac
      # shellcheck disable=SC2086
      rclone mount :http: "$MNT" --http-url "$URL/default/" --read-only --config "$WORK/rclone.conf" \
        --cache-dir "$WORK/rclone-cache" $flags > "$MLOG" 2>&1 & ;;
    httpdirfs-cache)
      rm -rf "$WORK/hcache"; mkdir -p "$WORK/hcache"
      httpdirfs -f --no-range-check --cache --cache-location "$WORK/hcache" "$URL/default/" "$MNT" > "$MLOG" 2>&1 & ;;
    httpdirfs)
      httpdirfs -f --no-range-check "$URL/default/" "$MNT" > "$MLOG" 2>&1 & ;;
  esac
  MPID=$!; PIDS+=("$MPID")
  for i in $(seq 1 300); do
    is_mounted "$MNT" && break
    kill -0 "$MPID" 2>/dev/null || break
    sleep 0.1
  done
  if ! is_mounted "$MNT"; then
    MFAIL="did not mount: $(oneline "$MLOG")"; unmount_tool; return 1
  fi
  if ! timeout 30 ls "$MNT" > "$WORK/ls-root" 2> "$WORK/err" || ! grep -qx big1 "$WORK/ls-root"; then
    MFAIL="mounted but the listing failed: $(oneline "$WORK/err")"; unmount_tool; return 1
  fi
  return 0
}
unmount_tool() {
  local i
  force_unmount "$MNT"
  if [ -n "$MPID" ]; then
    for i in $(seq 1 150); do kill -0 "$MPID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$MPID" 2>/dev/null && log "$(basename "$MNT") did not exit after unmount; killing it"
    stop_pid "$MPID"
  fi
  MPID=""
}
# died_note: a note when the mount process is gone (it crashed during the operation)
died_note() {
  kill -0 "$MPID" 2>/dev/null && return 0
  local why; why=$(grep -m1 -iE 'fatal|panic|crash' "$MLOG" | cut -c1-200)
  echo "mount process died: ${why:-$(oneline "$MLOG")}"
}

is_mount_tool() { case $1 in curl|nginx) return 1 ;; *) return 0 ;; esac; }
skipped() { [ -n "${SKIP[$1:$2]:-}" ]; }
# prepare ROW TOOL TAG: cache drop and (for a mount tool) a fresh mount; 1 if it cannot run
prepare() {
  local row=$1 tool=$2 tag=$3 r
  skipped "$row" "$tool" && return 1
  if ! tool_available "$tool"; then
    for r in ${ROWS_OF[$row]:-$row}; do rec "$r" "$tool" na na "not available"; SKIP[$r:$tool]=1; done
    SKIP[$row:$tool]=1; return 1
  fi
  CUR_ROW=$row
  is_mount_tool "$tool" || { drop_caches; return 0; }
  if ! mount_tool "$tool" "$tag"; then
    for r in ${ROWS_OF[$row]:-$row}; do rec "$r" "$tool" na na "$MFAIL"; SKIP[$r:$tool]=1; done
    SKIP[$row:$tool]=1
    log "$tool: $MFAIL"
    return 1
  fi
  drop_caches
  return 0
}
declare -A ROWS_OF=([seq]="seq rss_seq" [ttfb]="ttfb ttfb_bytes" [tail]="tail tail_bytes" \
                    [iops]="iops p99 rss_iops" [ls]="ls_cold ls_warm")
# after_timeout ROW TOOL: later runs of this row skip the tool (it would only time out again)
after_fail() { [ "$RC" -eq 124 ] || [ "$RC" -eq 137 ] && SKIP[$1:$2]=1; return 0; }
src_url() { case $1 in nginx) echo "$NGINX_URL/$2" ;; *) echo "$URL/default/$2" ;; esac; }

# ---------------------------------------------------------------- server, data, nginx
log "work dir $WORK, mode $MODE, $RUNS run(s) per row, tools: $TOOLS"
"$BIN" serve --data "$WORK/store" --listen 127.0.0.1:0 > "$WORK/serve.out" 2> "$LOGS/serve.log" &
SERVER_PID=$!; PIDS+=("$SERVER_PID")
for _ in $(seq 1 300); do grep -q '^govcfs: listening on ' "$WORK/serve.out" && break; kill -0 "$SERVER_PID" || break; sleep 0.1; done
URL=$(sed -n 's/^govcfs: listening on //p' "$WORK/serve.out" | head -1)
[ -n "$URL" ] || die "govcfs serve did not start: $(oneline "$LOGS/serve.log")"
log "govcfs serve at $URL"

log "generating data ($((F1 / MIB)) MiB, $((F4 / MIB)) MiB, $((FT / MIB)) MiB text, $NSMALL small files)"
python3 "$HELPER" gen-random "$DATA/big1" "$F1" 1 || die "gen big1"
python3 "$HELPER" gen-random "$DATA/big4" "$F4" 4 || die "gen big4"
MATCHES=$(python3 "$HELPER" gen-text "$DATA/text" "$FT" "$PATTERN") || die "gen text"
python3 "$HELPER" gen-small "$DATA/many" "$NSMALL" 100 4000 || die "gen many"
python3 "$HELPER" gen-random "$WORK/wsrc" "$FW" 9 || die "gen wsrc"
python3 "$HELPER" gen-small "$WORK/wsmall" "$NW" 4096 4096 || die "gen wsmall"
FT_REAL=$(stat -c %s "$DATA/text")
head -c 1 "$DATA/big4" > "$WORK/exp.head"; tail -c 65536 "$DATA/big4" > "$WORK/exp.tail"
EXP_SEEK=$(python3 "$HELPER" seek "$DATA/big4" "$F4" "$SEED" 20 $((2 * MIB)) | cut -d' ' -f2)

log "putting the files into the repository"
for f in big1 big4 text; do
  timed 600 "$BIN" put "$DATA/$f" "$URL/default/$f" -m "bench: $f"
  [ "$RC" -eq 0 ] || die "govcfs put $f failed: $(oneline "$WORK/err")"
  log "  put $f: $(calc "$(stat -c %s "$DATA/$f") / $EL / 1e6") MB/s"
done
timed 600 python3 "$HELPER" upload-tree "$URL" default "$DATA/many" many > /dev/null
[ "$RC" -eq 0 ] || die "uploading the small files failed: $(oneline "$WORK/err")"
log "  $NSMALL small files: $EL s"
sync_all
: > "$WORK/rclone.conf"

if have nginx; then
  NGINX_PORT=$(python3 "$HELPER" free-port)
  mkdir -p "$WORK/nginx/logs"
  cat > "$WORK/nginx/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
user root;
error_log $WORK/nginx/logs/error.log;
pid $WORK/nginx/nginx.pid;
events { worker_connections 64; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  default_type application/octet-stream;
  client_body_temp_path $WORK/nginx/tmp;
  proxy_temp_path $WORK/nginx/tmp;
  fastcgi_temp_path $WORK/nginx/tmp;
  uwsgi_temp_path $WORK/nginx/tmp;
  scgi_temp_path $WORK/nginx/tmp;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    root $DATA;
    autoindex on;
  }
}
EOF
  nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" > "$LOGS/nginx.out" 2>&1 &
  NGINX_PID=$!; PIDS+=("$NGINX_PID")
  NGINX_URL="http://127.0.0.1:$NGINX_PORT"
  for _ in $(seq 1 100); do curl -sf -o /dev/null -r 0-0 "$NGINX_URL/big1" && break; sleep 0.1; done
  if ! curl -sf -o /dev/null -r 0-0 "$NGINX_URL/big1"; then
    log "nginx did not start: $(oneline "$LOGS/nginx.out") $(oneline "$WORK/nginx/logs/error.log")"
    stop_pid "$NGINX_PID"; NGINX_PID=""
  fi
fi

# ---------------------------------------------------------------- the rows
READ_TOOLS="$TOOLS curl nginx"
T_START=$(date +%s)

row_seq() {  # 1. cat of F1, MB/s; 7. peak RSS of the mount during it
  local tool=$1 run=$2
  prepare seq "$tool" "seq$run" || return 0
  if is_mount_tool "$tool"; then
    timed "$T_LONG" cat "$MNT/big1" > /dev/null
    result seq "$tool" mbps "$F1" "$T_LONG" "$(died_note)"
    rec rss_seq "$tool" ok "$(vmhwm_mib "$MPID")"
    unmount_tool
  else
    timed "$T_LONG" curl -sfS -o /dev/null "$(src_url "$tool" big1)"
    result seq "$tool" mbps "$F1" "$T_LONG"
  fi
  after_fail seq "$tool"
}

row_ends() {  # 2. head -c 1 and tail -c 65536 of F4, ms, and the blob bytes the server sent
  local tool=$1 run=$2 which b0 b1 bad
  for which in ttfb tail; do
    prepare "$which" "$tool" "$which$run" || continue
    b0=$(metric govcfs_blob_bytes_sent_total)
    if is_mount_tool "$tool"; then
      if [ "$which" = ttfb ]; then
        timed "$T_SHORT" head -c 1 "$MNT/big4" > "$WORK/out"
      else
        timed "$T_SHORT" tail -c 65536 "$MNT/big4" > "$WORK/out"
      fi
      bad=$(died_note)
    else
      if [ "$which" = ttfb ]; then
        timed "$T_SHORT" curl -sfS -r 0-0 -o "$WORK/out" "$(src_url "$tool" big4)"
      else
        timed "$T_SHORT" curl -sfS -r "$((F4 - 65536))-$((F4 - 1))" -o "$WORK/out" "$(src_url "$tool" big4)"
      fi
      bad=""
    fi
    [ -z "$bad" ] && [ "$RC" -eq 0 ] && ! cmp -s "$WORK/out" "$WORK/exp.$([ "$which" = ttfb ] && echo head || echo tail)" \
      && bad="wrong bytes"
    result "$which" "$tool" ms 0 "$T_SHORT" "$bad"
    after_fail "$which" "$tool"
    is_mount_tool "$tool" && unmount_tool
    b1=$(metric govcfs_blob_bytes_sent_total)
    if [ "$tool" != nginx ] && [ -n "$b0" ] && [ -n "$b1" ]; then
      rec "${which}_bytes" "$tool" ok "$(calc "($b1 - $b0) / 1024")"
    fi
  done
}

row_grep() {  # 3. grep -c over the text file, s (the count is checked)
  local tool=$1 run=$2 n
  prepare grep "$tool" "grep$run" || return 0
  if is_mount_tool "$tool"; then
    timed "$T_LONG" env LC_ALL=C grep -c -F "$PATTERN" "$MNT/text" > "$WORK/out"
  else
    timed "$T_LONG" bash -c 'set -o pipefail; curl -sfS "$1" | LC_ALL=C grep -c -F "$2"' _ "$(src_url "$tool" text)" "$PATTERN" > "$WORK/out"
  fi
  n=$(cat "$WORK/out" 2>/dev/null)
  local bad=""
  is_mount_tool "$tool" && bad=$(died_note)
  [ -z "$bad" ] && [ "$RC" -eq 0 ] && [ "$n" != "$MATCHES" ] && bad="grep counted '$n' lines, expected $MATCHES"
  result grep "$tool" s 0 "$T_LONG" "$bad"
  after_fail grep "$tool"
  is_mount_tool "$tool" && unmount_tool
}

row_iops() {  # 4. fio random 4 KiB reads (IOPS, p99); wrk Range GETs as the ceiling; 7. RSS
  local tool=$1 run=$2 out
  prepare iops "$tool" "iops$run" || return 0
  if is_mount_tool "$tool"; then
    timed $((FIO_RT + 60)) fio --name=randread --rw=randread --bs=4k --size="$F1" --runtime="$FIO_RT" \
      --time_based --filename="$MNT/big1" --ioengine=psync --readonly --randrepeat=1 --randseed="$SEED" \
      --output-format=json --output="$WORK/fio.json"
    local bad; bad=$(died_note)
    if [ "$RC" -eq 0 ] && [ -z "$bad" ] && out=$(python3 "$HELPER" fio-parse "$WORK/fio.json" 2> "$WORK/err"); then
      rec iops "$tool" ok "${out% *}"; rec p99 "$tool" ok "${out#* }"
    else
      [ -z "$bad" ] && bad="fio exit $RC: $(oneline "$WORK/err")"
      rec iops "$tool" fail na "$bad"; rec p99 "$tool" fail na "$bad"
    fi
    rec rss_iops "$tool" ok "$(vmhwm_mib "$MPID")"
    unmount_tool
  else
    local path; [ "$tool" = nginx ] && path=/big1 || path=/default/big1
    python3 "$HELPER" wrk-lua "$WORK/wrk.lua" "$F1" "$path" "$SEED"
    timed $((FIO_RT + 30)) wrk -t1 -c1 -d"${FIO_RT}s" --latency -s "$WORK/wrk.lua" "$(src_url "$tool" "")" > "$WORK/wrk.out"
    if [ "$RC" -eq 0 ] && out=$(python3 "$HELPER" wrk-parse "$WORK/wrk.out" 2> "$WORK/err"); then
      grep -q 'Non-2xx' "$WORK/wrk.out" && { rec iops "$tool" fail na "wrk: non-2xx answers"; rec p99 "$tool" fail na "wrk: non-2xx answers"; return 0; }
      rec iops "$tool" ok "${out% *}"; rec p99 "$tool" ok "${out#* }"
    else
      rec iops "$tool" fail na "wrk exit $RC: $(oneline "$WORK/err")"; rec p99 "$tool" fail na "wrk failed"
    fi
  fi
}

row_seek() {  # 5. 20 jumps to random offsets of F4 (fixed seed), 2 MiB at each, total s
  local tool=$1 run=$2 bad=""
  prepare seek "$tool" "seek$run" || return 0
  if is_mount_tool "$tool"; then
    timed "$T_LONG" python3 "$HELPER" seek "$MNT/big4" "$F4" "$SEED" 20 $((2 * MIB)) > "$WORK/out"
    bad=$(died_note)
  else
    timed "$T_LONG" python3 "$HELPER" seek-http "$(src_url "$tool" big4)" "$F4" "$SEED" 20 $((2 * MIB)) > "$WORK/out"
  fi
  read -r secs digest < "$WORK/out" 2>/dev/null || { secs=""; digest=""; }
  [ -z "$bad" ] && [ "$RC" -eq 0 ] && [ "$digest" != "$EXP_SEEK" ] && bad="wrong bytes (digest $digest)"
  if [ "$RC" -eq 0 ] && [ -z "$bad" ]; then
    rec seek "$tool" ok "$secs"
  else
    result seek "$tool" s 0 "$T_LONG" "$bad"
  fi
  after_fail seek "$tool"
  is_mount_tool "$tool" && unmount_tool
}

row_ls() {  # 6. ls -l of the NSMALL-file directory, cold (fresh mount) then warm, s
  local tool=$1 run=$2 which n bad
  prepare ls "$tool" "ls$run" || return 0
  for which in ls_cold ls_warm; do
    bad=""
    if is_mount_tool "$tool"; then
      timed "$T_LS" ls -l "$MNT/many" > "$WORK/out"
      n=$(grep -c '^-' "$WORK/out")
      bad=$(died_note)
    else
      timed "$T_LS" curl -sfS -o "$WORK/out" "$(src_url "$tool" many/)"
      n=$(grep -o 'href="f[0-9]*\.txt"' "$WORK/out" | sort -u | wc -l)
    fi
    [ -z "$bad" ] && [ "$RC" -eq 0 ] && [ "$n" != "$NSMALL" ] && bad="listed $n files, expected $NSMALL"
    result "$which" "$tool" s 0 "$T_LS" "$bad" || { after_fail ls "$tool"; break; }
  done
  is_mount_tool "$tool" && unmount_tool
}

row_writes() {  # 8. govcfs alone: cp of FW into the mount vs govcfs put vs curl -T; small files
  local run=$1 size n i args=()
  # every write stores new content (the blob ids differ), so nothing is deduplicated
  python3 "$HELPER" perturb "$WORK/wsrc" "$((run * 10 + 1))"
  sync_all
  if ! skipped w_big govcfs && prepare w_big govcfs "wbig$run"; then
    timed "$T_WRITE" cp "$WORK/wsrc" "$MNT/cp-$run.bin"
    size=$(stat -c %s "$MNT/cp-$run.bin" 2>/dev/null)
    result w_big govcfs mbps "$FW" "$T_WRITE" "$(died_note)$([ "$RC" -eq 0 ] && [ "$size" != "$FW" ] && echo "size after cp: $size")"
    after_fail w_big govcfs
    unmount_tool
  fi
  python3 "$HELPER" perturb "$WORK/wsrc" "$((run * 10 + 2))"
  sync_all; drop_caches
  timed "$T_WRITE" "$BIN" put "$WORK/wsrc" "$URL/default/put-$run.bin" -m "bench put $run"
  result w_big put mbps "$FW" "$T_WRITE"
  python3 "$HELPER" perturb "$WORK/wsrc" "$((run * 10 + 3))"
  sync_all; drop_caches
  timed "$T_WRITE" curl -sfS -X POST -T "$WORK/wsrc" -H 'Expect:' -H 'Content-Type: application/octet-stream' \
    -o "$WORK/out" "$URL/api/v1/repos/default/stream/blob/upload"
  result w_big curl mbps "$FW" "$T_WRITE" "$([ "$RC" -eq 0 ] && ! grep -q "\"size\":$FW" "$WORK/out" && echo "answer: $(oneline "$WORK/out")")"

  sync_all
  if ! skipped w_small govcfs && prepare w_small govcfs "wsmall$run"; then
    timed "$T_WRITE" cp -r "$WORK/wsmall" "$MNT/small-$run"
    n=$(ls "$MNT/small-$run" 2>/dev/null | wc -l)
    result w_small govcfs rate "$NW" "$T_WRITE" "$(died_note)$([ "$RC" -eq 0 ] && [ "$n" != "$NW" ] && echo "$n files after cp -r, expected $NW")"
    after_fail w_small govcfs
    unmount_tool
  fi
  # govcfs put: one process and one commit per file (bounded to NPUT files)
  sync_all; drop_caches
  local files; files=$(ls "$WORK/wsmall" | head -n "$NPUT")
  timed "$T_WRITE" bash -c 'for f in $3; do "$1" put "$2/$f" "$4/$f" -m x >/dev/null || exit 1; done' \
    _ "$BIN" "$WORK/wsmall" "$files" "$URL/default/put-small-$run"
  result w_small put rate "$NPUT" "$T_WRITE"
  # curl: one process, one keep-alive connection, one raw blob upload per file (no commit)
  for f in "$WORK"/wsmall/*; do
    [ ${#args[@]} -gt 0 ] && args+=(--next)
    args+=(-sfS -X POST -H 'Expect:' -H 'Content-Type: application/octet-stream' -T "$f" -o /dev/null
           "$URL/api/v1/repos/default/stream/blob/upload")
  done
  sync_all; drop_caches
  timed "$T_WRITE" curl "${args[@]}"
  result w_small curl rate "$NW" "$T_WRITE"
}

progress() { log "$1 (elapsed $(( $(date +%s) - T_START )) s)"; }
for run in $(seq 1 "$RUNS"); do
  progress "run $run/$RUNS: 1. sequential read"
  for t in $READ_TOOLS; do row_seq "$t" "$run"; done
done
for run in $(seq 1 "$RUNS"); do
  progress "run $run/$RUNS: 2. head/tail"
  for t in $READ_TOOLS; do row_ends "$t" "$run"; done
done
for run in $(seq 1 "$RUNS"); do
  progress "run $run/$RUNS: 3. grep"
  for t in $READ_TOOLS; do row_grep "$t" "$run"; done
done
for run in $(seq 1 "$RUNS"); do
  progress "run $run/$RUNS: 4. random 4 KiB reads"
  for t in $READ_TOOLS; do row_iops "$t" "$run"; done
done
for run in $(seq 1 "$RUNS"); do
  progress "run $run/$RUNS: 5. seek pattern"
  for t in $READ_TOOLS; do row_seek "$t" "$run"; done
done
for run in $(seq 1 "$RUNS"); do
  progress "run $run/$RUNS: 6. ls -l"
  for t in $READ_TOOLS; do row_ls "$t" "$run"; done
done
if [[ " $TOOLS " == *" govcfs "* ]]; then
  for run in $(seq 1 "$RUNS"); do
    progress "run $run/$RUNS: 8. writes"
    row_writes "$run"
  done
fi
progress "done measuring"

# ---------------------------------------------------------------- findings, report
SERVER_RSS=$(vmhwm_mib "$SERVER_PID")
# mount logs: warnings and errors, counted by message (timestamps stripped)
for f in "$LOGS"/govcfs-*.log "$LOGS"/serve.log; do
  [ -f "$f" ] || continue
  grep -hiE 'error|warn|panic' "$f" | grep -v 'govcfs stats:' | sed -E 's/^\[[^]]*\] ?//; s/^[0-9T:.Z-]+ +//' | cut -c1-240 \
    | sed "s|$WORK|WORK|g" | sed "s|^|$(basename "$f" .log | sed 's/-[a-z_]*[0-9]*$//'): |"
done | sort | uniq -c | sort -rn | head -30 > "$FIND"
STATS=$(for r in seq ttfb tail grep iops seek; do
  [ -f "$LOGS/govcfs-${r}1.log" ] && echo "row $r, run 1: $(grep -h 'govcfs stats:' "$LOGS/govcfs-${r}1.log" | tail -1 | sed 's/.*govcfs stats: //')"
done)

DATE=$(date +%Y-%m-%d)
OUTDIR=${BENCH_OUT:-$ROOT/bench-results}
mkdir -p "$OUTDIR"
OUT="$OUTDIR/$DATE-$MODE.json"
export MODE RUNS F1 F4 FT_REAL FW NSMALL NW NPUT FIO_RT MATCHES URL BIN SERVER_RSS FIND STATS \
  RCLONE_TUNED_STREAM RCLONE_TUNED_RANDOM GOVCFS_CACHE TOOLS T_LONG T_SHORT T_LS T_WRITE
if [ -z "${GOVCFS_COMMIT:-}" ]; then
  if [ -n "${GOVCFS_BIN:-}" ]; then GOVCFS_COMMIT="unknown (GOVCFS_BIN)"
  else GOVCFS_COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown); fi
fi
GOVCFS_VERSION=$("$BIN" --version 2>/dev/null || echo unknown)
RCLONE_VERSION=$(rclone version 2>/dev/null | head -1)
HTTPDIRFS_VERSION=$(httpdirfs --version 2>&1 | head -1)
NGINX_VERSION=$(nginx -v 2>&1)
export GOVCFS_COMMIT GOVCFS_VERSION RCLONE_VERSION HTTPDIRFS_VERSION NGINX_VERSION
python3 - "$WORK/meta.json" <<'PY'
import json, os, platform, sys, time
e = os.environ
def size(n):
    n = int(n)
    return f"{n >> 30} GiB" if n >= 1 << 30 and n % (1 << 30) == 0 else f"{n >> 20} MiB"
meta = {
    "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "mode": e["MODE"], "runs": int(e["RUNS"]),
    "host": {"cpus": os.cpu_count(), "kernel": platform.release()},
    "govcfs": {"commit": e["GOVCFS_COMMIT"], "version": e["GOVCFS_VERSION"], "bin": e["BIN"],
               "mount_flags": f"-f --cache-size {e['GOVCFS_CACHE']} --cache-dir DIR"},
    "peers": {"rclone": e["RCLONE_VERSION"], "httpdirfs": e["HTTPDIRFS_VERSION"], "nginx": e["NGINX_VERSION"],
              "rclone_flags": "mount :http: --http-url URL/default/ --read-only",
              "rclone_tuned_flags_rows_1_3": e["RCLONE_TUNED_STREAM"],
              "rclone_tuned_flags_other_rows": e["RCLONE_TUNED_RANDOM"],
              "httpdirfs_flags": "-f --no-range-check [--cache --cache-location DIR]"},
    "sizes": {"file1": int(e["F1"]), "file4": int(e["F4"]), "text": int(e["FT_REAL"]), "write": int(e["FW"]),
              "small_files": int(e["NSMALL"]), "write_small_files": int(e["NW"]), "put_loop_files": int(e["NPUT"]),
              "fio_runtime_s": int(e["FIO_RT"]), "grep_matches": int(e["MATCHES"])},
    "timeouts_s": {"long": int(e["T_LONG"]), "short": int(e["T_SHORT"]), "ls": int(e["T_LS"]), "write": int(e["T_WRITE"])},
    "method": "each run: page cache dropped, a fresh mount per tool per row (so every read is cold and "
              "httpdirfs's disk cache is empty); values are medians over the runs",
    "labels": {"f1": size(e["F1"]), "f4": size(e["F4"]), "ft": size(e["FT_REAL"]), "n": f"{int(e['NSMALL']):,}",
               "fw": size(e["FW"]), "nw": f"{int(e['NW']):,}"},
    "server_peak_rss_mib": float(e["SERVER_RSS"] or 0),
    "mount_log_findings": [l.strip() for l in open(e["FIND"]) if l.strip()],
    "govcfs_mount_stats": [l for l in e.get("STATS", "").splitlines() if l],
}
json.dump(meta, open(sys.argv[1], "w"), indent=1)
PY
cp "$RES" "$WORK/results-copy.tsv"
echo
echo "## govcfs benchmark ($MODE, $RUNS run(s) per row, $(date '+%Y-%m-%d %H:%M'), govcfs $GOVCFS_COMMIT)"
echo
python3 "$HELPER" report "$RES" "$WORK/meta.json" "$OUT" || die "report failed"
echo
echo "govcfs serve peak RSS: ${SERVER_RSS:-?} MiB. Data: $((F1 / MIB)) MiB and $((F4 / MIB)) MiB random files, $((FT_REAL / MIB)) MiB text ($MATCHES matches), $NSMALL small files."
if [ -s "$FIND" ]; then
  echo
  echo "Warnings and errors in the govcfs logs (count, source: message):"
  sed 's/^/    /' "$FIND"
fi
if [ -n "$STATS" ]; then
  echo
  echo "govcfs mount statistics at unmount (first run of each row):"
  echo "$STATS" | sed 's/^/    /'
fi
echo
echo "JSON: $OUT (total $(( $(date +%s) - T_START )) s of measuring)"
