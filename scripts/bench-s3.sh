#!/usr/bin/env bash
# Read and write MB/s of a govcfs mount through the S3 backend (a single-node Ceph radosgw on
# loopback, started here) against the local-directory backend, with the release build.
#   scripts/bench-s3.sh [SIZE_MIB]      (default 1024; GOVCFS_BIN=PATH skips the build)
# Not a test: it prints a table and asserts nothing. Every mount, server and Ceph daemon it
# starts is stopped on exit, by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
if [ -n "${GOVCFS_BIN:-}" ]; then
  bin=$GOVCFS_BIN
else
  cargo build --release --quiet --bin govcfs
  bin=$PWD/target/release/govcfs
fi
work=$(mktemp -d /tmp/govcfs-bench-s3.XXXXXX)
pids=()
mounts=()
cleanup() {
  for m in "${mounts[@]}"; do timeout 20 fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/ceph/pids" ] && bash scripts/ceph-down.sh "$work/ceph" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
mbps() { python3 -c "print(f'{$1 / 1e6 / ($3 - $2):.0f}')"; }

s3_port=$(free_port)
# Chunks are final objects written once (and `put` of the same input stores no new chunk),
# so the store needs about the file's size, plus room for Ceph itself.
export CEPH_MEMSTORE_BYTES=${CEPH_MEMSTORE_BYTES:-$(( (size_mib * 2 + 1024) << 20 ))}
bash scripts/ceph-up.sh "$work/ceph" "$s3_port" >/dev/null
curl -sf --aws-sigv4 "aws:amz:us-east-1:s3" -u govcfs:govcfs-secret \
  -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
  -X PUT "http://127.0.0.1:$s3_port/bench" >/dev/null
export AWS_ENDPOINT_URL="http://127.0.0.1:$s3_port" AWS_ALLOW_HTTP=true AWS_REGION=us-east-1 \
  AWS_ACCESS_KEY_ID=govcfs AWS_SECRET_ACCESS_KEY=govcfs-secret

# start_server NAME ARGS…: starts `govcfs serve`, sets $url.
start_server() {
  local name=$1; shift
  "$bin" serve "$@" --listen 127.0.0.1:0 >"$work/$name.out" 2>"$work/$name.log" &
  pids+=($!)
  for _ in $(seq 200); do
    url=$(sed -n 's/^govcfs: listening on //p' "$work/$name.out")
    [ -n "$url" ] && return 0
    sleep 0.1
  done
  echo "server $name did not start: $(cat "$work/$name.log")" >&2
  exit 1
}

# mount_at URL DIR: a foreground mount in the background, waited for.
mount_at() {
  mkdir -p "$2"
  "$bin" mount "$1/default" "$2" -f --cache-dir "$2.cache" 2>"$2.log" &
  pids+=($!)
  mounts+=("$2")
  for _ in $(seq 200); do mountpoint -q "$2" && return 0; sleep 0.1; done
  echo "mount $2 did not come up: $(cat "$2.log")" >&2
  exit 1
}

unmount() { timeout 20 fusermount3 -u "$1"; }

head -c "$((size_mib << 20))" /dev/urandom >"$work/input"
printf '| backend | cp in (MB/s) | cat cold (MB/s) | put (MB/s) | get (MB/s) |\n|---|---:|---:|---:|---:|\n'
for backend in local s3; do
  if [ "$backend" = local ]; then start_server local --data "$work/data"; else start_server s3 --store s3://bench/govcfs; fi
  mnt=$work/mnt-$backend
  mount_at "$url" "$mnt"
  t0=$(now); cp "$work/input" "$mnt/big"; t1=$(now)
  write=$(mbps $((size_mib << 20)) "$t0" "$t1")
  unmount "$mnt"
  sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  mount_at "$url" "$mnt-2"
  t0=$(now); cat "$mnt-2/big" >/dev/null; t1=$(now)
  read=$(mbps $((size_mib << 20)) "$t0" "$t1")
  unmount "$mnt-2"
  t0=$(now); "$bin" put "$work/input" "$url/default/put-big" >/dev/null; t1=$(now)
  put=$(mbps $((size_mib << 20)) "$t0" "$t1")
  t0=$(now); "$bin" get "$url/default/put-big" -o "$work/back"; t1=$(now)
  get=$(mbps $((size_mib << 20)) "$t0" "$t1")
  cmp -s "$work/input" "$work/back" || { echo "the $backend round trip differs" >&2; exit 1; }
  rm -f "$work/back"
  printf '| %s | %s | %s | %s | %s |\n' "$backend" "$write" "$read" "$put" "$get"
done
