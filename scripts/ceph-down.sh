#!/usr/bin/env bash
# Stop the cluster started by scripts/ceph-up.sh DIR PORT and remove DIR.
# Kills exactly the PIDs listed in DIR/pids (never by name).
#
#   scripts/ceph-down.sh DIR
set -uo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
DIR=$1
if [ ! -d "$DIR" ]; then
    echo "[ceph-down] $DIR does not exist; nothing to do"
    exit 0
fi

pids=()
if [ -f "$DIR/pids" ]; then
    while read -r p; do
        case $p in
            '' | *[!0-9]*) continue ;;
        esac
        pids+=("$p")
    done <"$DIR/pids"
fi

# stop in reverse start order (rgw, osd, mon)
for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
done
for _ in $(seq 1 50); do # at most 10 s
    alive=0
    for p in "${pids[@]}"; do
        kill -0 "$p" 2>/dev/null && alive=1
    done
    [ $alive = 0 ] && break
    sleep 0.2
done
for p in "${pids[@]}"; do
    if kill -0 "$p" 2>/dev/null; then
        echo "[ceph-down] pid $p still alive, sending KILL"
        kill -KILL "$p" 2>/dev/null || true
    fi
done

rm -rf -- "$DIR"
echo "[ceph-down] stopped ${#pids[@]} pid(s), removed $DIR"
