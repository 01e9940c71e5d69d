#!/usr/bin/env bash
# Small-file benchmark (issue 17), govcfs alone, beside the same work on the local disk. Not a
# test: it asserts nothing and prints what it measured.
#
#   scripts/bench.sh small [--quick]
#
# Rows: `tar -x` of N files of 4 KiB into one directory of a fresh mount (N = 2,000, and 20,000
# unless --quick), and into a local directory on the same disk; files/s, the requests the
# server answered per file, by route and in all (from /metrics), the bytes of tree and commit
# objects the store grew by per file, `ls -l` of the directory from a fresh mount (cold), and
# `rm -r` of it. Then `git clone` of a
# repository of GIT_FILES (3,000) files into the mount beside a local clone, `git status`
# and `git fsck` on it. Each N, and the clone, get a fresh server and mount.
#
# ext4 makes each file creation skip the inodes freed in the last minutes, one lookup each, so
# a run right after deleting many files (a previous run, a test suite) is slower: compare rows
# of one run, and repeat.
#
# Environment: GOVCFS_BIN (default: cargo build --release), BENCH_TMP (default /tmp),
# BENCH_OUT (default bench-results/).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
LOG_TAG=bench-small
# shellcheck source=bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"
COUNTS="2000 20000"
case "${1:-}" in
  --quick) COUNTS="2000" ;;
  -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
  "") ;;
  *) echo "bench-small.sh: unknown argument $1" >&2; exit 2 ;;
esac
T=900   # seconds one tar may take
GIT_FILES=${GIT_FILES:-3000}

calc() { awk "BEGIN { printf \"%.2f\", $* }"; }

govcfs_binary "$ROOT"
WORK=$(mktemp -d "${BENCH_TMP:-/tmp}/govcfs-bench-small.XXXXXX")
SERVER_PID=""; MOUNT_PID=""; MNT=""

stop_all() {
  if [ -n "$MNT" ] && grep -qs " $MNT " /proc/mounts; then
    fusermount3 -u "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null
  fi
  stop_pid "$MOUNT_PID"; stop_pid "$SERVER_PID"; MOUNT_PID=""; SERVER_PID=""
}
trap 'stop_all; rm -rf "$WORK"' EXIT

# start_pair DIR: a fresh server on DIR/store and a mount of it on DIR/mnt; sets URL and MNT
start_pair() {
  mkdir -p "$1/mnt" "$1/cache"
  "$BIN" serve --data "$1/store" --listen 127.0.0.1:0 > "$1/serve.out" 2> "$1/serve.log" &
  SERVER_PID=$!
  for _ in $(seq 1 300); do grep -q '^govcfs: listening on ' "$1/serve.out" && break; sleep 0.1; done
  URL=$(sed -n 's/^govcfs: listening on //p' "$1/serve.out" | head -1)
  [ -n "$URL" ] || die "the server did not start: $(tail -3 "$1/serve.log")"
  MNT="$1/mnt"
  "$BIN" mount "$URL/default" "$MNT" -f --cache-dir "$1/cache" > "$1/mount.log" 2>&1 &
  MOUNT_PID=$!
  for _ in $(seq 1 100); do grep -qs " $MNT " /proc/mounts && break; sleep 0.1; done
  grep -qs " $MNT " /proc/mounts || die "the mount did not come up: $(tail -3 "$1/mount.log")"
}

# remount DIR: a new mount process (cold caches) of the same server on DIR/mnt
remount() {
  fusermount3 -u "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null
  stop_pid "$MOUNT_PID"; rm -rf "$1/cache"; mkdir -p "$1/cache"
  "$BIN" mount "$URL/default" "$MNT" -f --cache-dir "$1/cache" > "$1/mount.log" 2>&1 &
  MOUNT_PID=$!
  for _ in $(seq 1 100); do grep -qs " $MNT " /proc/mounts && break; sleep 0.1; done
  grep -qs " $MNT " /proc/mounts || die "the mount did not come up again"
}

# requests ROUTE_PREFIX: requests the server answered on routes starting with it
requests() {
  curl -sf --max-time 10 "$URL/metrics" | awk -v p="govcfs_http_requests_total{route=\"$1" \
    'index($0, p) == 1 { n += $NF } END { print n + 0 }'
}

RES="$WORK/results.tsv"; : > "$RES"
for n in $COUNTS; do
  dir="$WORK/n$n"; mkdir -p "$dir/src/d" "$dir/local"
  python3 - "$dir/src/d" "$n" <<'EOF'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(f"{d}/f{i:06d}", "wb") as f:
        f.write(os.urandom(4096))
EOF
  (cd "$dir/src" && tar -cf "$dir/files.tar" d) && rm -rf "$dir/src"; sync
  t0=$(now); timeout "$T" tar -xf "$dir/files.tar" -C "$dir/local" && sync; t1=$(now)
  printf 'local_tar_x_%s_files_per_s\t%s\n' "$n" "$(calc "$n / ($t1 - $t0)")" >> "$RES"
  start_pair "$dir"
  log "tar -x of $n files into $MNT"
  t0=$(now)
  if timeout "$T" tar -xf "$dir/files.tar" -C "$MNT"; then
    t1=$(now); rate=$(calc "$n / ($t1 - $t0)")
  else
    rate=""; log "tar -x of $n files failed or passed $T s"
  fi
  printf 'mount_tar_x_%s_files_per_s\t%s\n' "$n" "$rate" >> "$RES"
  for route in uploads stream/blob/upload commits tree; do
    printf 'requests_per_file_%s_%s\t%s\n' "$n" "${route//\//_}" \
      "$(calc "$(requests "/api/v1/repos/{repo}/$route") / $n")" >> "$RES"
  done
  printf 'requests_per_file_%s_file_put\t%s\n' "$n" \
    "$(calc "$(requests "/{repo}/{*path}") / $n")" >> "$RES"
  printf 'requests_per_file_%s_all_but_metrics\t%s\n' "$n" \
    "$(calc "($(requests "") - $(requests "/metrics")) / $n")" >> "$RES"
  printf 'tree_and_commit_bytes_per_file_%s\t%s\n' "$n" \
    "$(calc "$(du -sb "$dir/store/repos/default/objects" | cut -f1) / $n")" >> "$RES"
  remount "$dir"
  t0=$(now); listed=$(timeout "$T" ls -l "$MNT/d" | wc -l); t1=$(now)
  printf 'mount_ls_l_cold_%s_s\t%s\n' "$n" "$(calc "$t1 - $t0")" >> "$RES"
  [ "$listed" -gt "$n" ] || log "ls -l listed $listed lines for $n files"
  t0=$(now)
  if timeout "$T" rm -r "$MNT/d"; then
    printf 'mount_rm_r_%s_files_per_s\t%s\n' "$n" "$(calc "$n / ($(now) - $t0)")" >> "$RES"
  fi
  stop_all
  rm -rf "$dir"
done

# git_row NAME CMD...: the seconds CMD took, as row NAME (empty if it failed)
git_row() {
  local name=$1; shift
  local t0; t0=$(now)
  if timeout "$T" "$@" > "$WORK/git.out" 2>&1; then
    printf '%s\t%s\n' "$name" "$(calc "$(now) - $t0")" >> "$RES"
  else
    printf '%s\t\n' "$name" >> "$RES"; log "$name failed: $(tail -3 "$WORK/git.out")"
  fi
}

dir="$WORK/git"; mkdir -p "$dir/origin"
python3 - "$dir/origin" "$GIT_FILES" <<'EOF'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(17)
for i in range(n):
    sub = os.path.join(root, f"pkg{i % 40:02d}", f"mod{i % 7}")
    os.makedirs(sub, exist_ok=True)
    with open(os.path.join(sub, f"file{i:05d}.txt"), "w") as f:
        f.write("".join(rng.choice("abcdefgh \n") for _ in range(rng.randint(200, 6000))))
EOF
git -C "$dir/origin" init -q && git -C "$dir/origin" add -A \
  && git -C "$dir/origin" -c user.name=bench -c user.email=bench@localhost commit -qm import
git_row local_git_clone_s git clone -q "file://$dir/origin" "$dir/local-clone"
start_pair "$dir"
log "git clone of $GIT_FILES files into $MNT"
git_row mount_git_clone_s git clone -q "file://$dir/origin" "$MNT/clone"
git_row mount_git_status_s git -C "$MNT/clone" status --porcelain
[ -s "$WORK/git.out" ] && log "git status printed: $(head -3 "$WORK/git.out")"
git_row mount_git_fsck_s git -C "$MNT/clone" fsck --no-progress
stop_all

OUT="${BENCH_OUT:-$ROOT/bench-results}"; mkdir -p "$OUT"
python3 - "$RES" "$OUT/$(date +%F)-small.json" "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)" <<'EOF'
import json, sys
tsv, out, commit = sys.argv[1:]
rows = {}
for line in open(tsv):
    name, _, value = line.rstrip("\n").partition("\t")
    rows[name] = float(value) if value else None
print("| small files | value |\n|---|---|")
for name, value in rows.items():
    print(f"| {name} | {'n/a' if value is None else value} |")
json.dump({"commit": commit, "rows": rows}, open(out, "w"), indent=1)
print(f"(JSON: {out})")
EOF
