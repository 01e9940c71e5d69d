# Helpers shared by the benchmark scripts (sourced, not run). The caller sets LOG_TAG.

log() { printf '[%s %s] %s\n' "$LOG_TAG" "$(date +%T)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }
now() { date +%s.%N; }

# Sets BIN: $GOVCFS_BIN, or the release build of the checkout at $1 (built if needed).
govcfs_binary() {
  if [ -n "${GOVCFS_BIN:-}" ]; then
    BIN=$GOVCFS_BIN
  else
    (cd "$1" && cargo build --release --quiet) || die "cargo build --release failed"
    BIN="$1/target/release/govcfs"
  fi
}

# Stops process $1 (if set and alive): SIGTERM, then SIGKILL after 10 s.
stop_pid() {
  [ -n "$1" ] || return 0
  kill "$1" 2>/dev/null || return 0
  for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$1" 2>/dev/null
}
