#!/usr/bin/env bash
# The README's test command: installs what a fresh Debian machine lacks, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v fusermount3 >/dev/null 2>&1 || need_apt+=(fuse3)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v git >/dev/null 2>&1 || need_apt+=(git)
command -v sqlite3 >/dev/null 2>&1 || need_apt+=(sqlite3)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need_apt[@]}"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install Rust (https://rustup.rs) first" >&2
  exit 1
fi

# The S3 suites run against a real S3 server: radosgw of a single-node Ceph cluster (memstore,
# on loopback, about 25 s to install and 3 s to start). If Ceph cannot start, the tests fall
# back to moto (an S3 emulator from PyPI), which they start themselves.
s3_dir=$(mktemp -d /tmp/govcfs-ceph.XXXXXX)
rmdir "$s3_dir"
s3_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cleanup() { [ -f "$s3_dir/pids" ] && bash scripts/ceph-down.sh "$s3_dir" >/dev/null 2>&1 || true; }
trap cleanup EXIT
if CEPH_MEMSTORE_BYTES=$((12 << 30)) bash scripts/ceph-up.sh "$s3_dir" "$s3_port"; then
  empty_sha256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
  curl -sf --aws-sigv4 "aws:amz:us-east-1:s3" -u govcfs:govcfs-secret -H "x-amz-content-sha256: $empty_sha256" \
    -X PUT "http://127.0.0.1:$s3_port/govcfs-test" >/dev/null
  export GOVCFS_TEST_S3_ENDPOINT="http://127.0.0.1:$s3_port" GOVCFS_TEST_S3_KIND=radosgw
  echo "S3 tests use radosgw at $GOVCFS_TEST_S3_ENDPOINT"
else
  echo "WARNING: Ceph did not start; the S3 tests use moto instead" >&2
  command -v moto_server >/dev/null 2>&1 || python3 -m pip install -q 'moto[server]'
fi

# Style gates: formatting and lints fail the run before any test does.
cargo fmt --check
cargo clippy --quiet --all-targets -- -D warnings

# Tests that mount start one FUSE session each; run test binaries with a bounded thread count
# so a 2-core machine is not oversubscribed.
cargo build --quiet --bins
cargo test -- --test-threads="${GOVCFS_TEST_THREADS:-2}" "$@"
