#!/usr/bin/env bash
# Start a throw-away single-node Ceph cluster (1 mon, 1 memstore OSD, radosgw)
# with an S3 endpoint on 127.0.0.1:PORT. All state lives under DIR.
#
#   scripts/ceph-up.sh DIR PORT
#
# Needs root (for apt-get when the packages are missing). No systemd, no
# cephadm, no docker: daemons are started by hand in the background.
# The PIDs it starts are written to DIR/pids; scripts/ceph-down.sh DIR stops
# exactly those and removes DIR.
#
# S3 credentials: access key "govcfs", secret "govcfs-secret".
# Env overrides: CEPH_MON_PORT (default 3300 + (PORT % 1000)), CEPH_MEMSTORE_BYTES
# (default 4 GiB, memory is only used as data is written).
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 DIR PORT" >&2
    exit 2
fi
DIR=$1
PORT=$2
MON_PORT=${CEPH_MON_PORT:-$((3300 + PORT % 1000))}
MEMSTORE_BYTES=${CEPH_MEMSTORE_BYTES:-$((4 * 1024 * 1024 * 1024))}
ACCESS_KEY=govcfs
SECRET_KEY=govcfs-secret

T0=$(date +%s.%N)
TP=$T0
phase() { # phase NAME: print time spent since the previous phase
    local now
    now=$(date +%s.%N)
    awk -v n="$1" -v a="$now" -v b="$TP" -v c="$T0" \
        'BEGIN { printf "[ceph-up] %-16s %7.2fs (total %7.2fs)\n", n, a - b, a - c }'
    TP=$now
}
die() {
    echo "[ceph-up] ERROR: $*" >&2
    # stop whatever we started; DIR (with logs) is kept for inspection
    if [ -f "${DIR:-}/pids" ]; then
        while read -r p; do
            [ -n "$p" ] && kill "$p" 2>/dev/null || true
        done <"$DIR/pids"
    fi
    if [ -d "${DIR:-}/log" ]; then
        for f in "$DIR"/log/*.log; do
            [ -s "$f" ] || continue
            echo "----- tail $f" >&2
            tail -n 25 "$f" >&2
        done
    fi
    exit 1
}

# ---------------------------------------------------------------- packages
need=()
command -v ceph-mon >/dev/null 2>&1 || need+=(ceph-mon)
command -v ceph-osd >/dev/null 2>&1 || need+=(ceph-osd)
command -v radosgw >/dev/null 2>&1 || need+=(radosgw)
command -v ceph >/dev/null 2>&1 || need+=(ceph-common)
command -v monmaptool >/dev/null 2>&1 || need+=(ceph-common)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "[ceph-up] missing packages (${need[*]}) and not root" >&2
        exit 1
    fi
    echo "[ceph-up] installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # radosgw etc. pull in ceph-base/librados; recommends are not needed.
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
phase "packages"

# ---------------------------------------------------------------- layout
if [ -e "$DIR" ] && [ -n "$(ls -A "$DIR" 2>/dev/null)" ]; then
    echo "[ceph-up] $DIR exists and is not empty; run ceph-down.sh first" >&2
    exit 1
fi
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$PORT" "$MON_PORT"; do
    if port_busy "$p"; then
        echo "[ceph-up] 127.0.0.1:$p is already in use (another cluster? set CEPH_MON_PORT / PORT)" >&2
        exit 1
    fi
done
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
mkdir -p "$DIR/log" "$DIR/run" "$DIR/mon/ceph-a" "$DIR/osd/ceph-0" "$DIR/rgw"
: >"$DIR/pids"
CONF=$DIR/ceph.conf
FSID=$(cat /proc/sys/kernel/random/uuid)
OSD_UUID=$(cat /proc/sys/kernel/random/uuid)

cat >"$CONF" <<EOF
[global]
fsid = $FSID
mon host = v2:127.0.0.1:$MON_PORT
mon initial members = a
public network = 127.0.0.0/8
ms bind msgr1 = false
ms bind ipv6 = false

# no cephx: everything is on loopback and thrown away afterwards
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = true

run dir = $DIR/run
admin socket = $DIR/run/\$name.asok
pid file = $DIR/run/\$name.pid
log file = $DIR/log/\$name.log
keyring = $DIR/keyring
log to stderr = false
err to stderr = true
mon cluster log file = $DIR/log/cluster.log
crash dir = $DIR/crash

# single node, single replica, few PGs
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim = false
mon warn on insecure global id reclaim allowed = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
# the mon batches map changes for paxos_propose_interval (1 s by default);
# every pool rgw creates at start-up and the OSD boot each wait for a few of
# those, so shortening it cuts start-up from ~13 s to ~2.5 s.
paxos propose interval = 0.05
paxos min wait = 0.01
osd crush chooseleaf type = 0

[mon]
mon data = $DIR/mon/\$cluster-\$id
mon data avail crit = 1
mon data avail warn = 2

[osd]
osd data = $DIR/osd/\$cluster-\$id
osd objectstore = memstore
memstore device bytes = $MEMSTORE_BYTES
osd crush update on start = true
osd op num shards = 1
osd op num threads per shard = 2

[client.rgw.a]
# radosgw's built-in defaults are auth_client_required=cephx and
# ms_mon_client_mode=secure; with auth none that fails with
# "get_initial_auth_request returned -13", so override both here.
auth client required = none
ms mon client mode = crc
rgw frontends = beast endpoint=127.0.0.1:$PORT
rgw data = $DIR/rgw
rgw thread pool size = 64
rgw enable usage log = false
rgw dns name = localhost
EOF

export CEPH_CONF=$CONF
CEPH=(ceph --conf "$CONF" --connect-timeout 10)
phase "config"

# ---------------------------------------------------------------- mon
monmaptool --create --fsid "$FSID" --addv a "[v2:127.0.0.1:$MON_PORT]" \
    "$DIR/monmap" >/dev/null
ceph-mon --conf "$CONF" --mkfs -i a --monmap "$DIR/monmap" \
    >"$DIR/log/mon-mkfs.out" 2>&1 || die "ceph-mon --mkfs failed: $(cat "$DIR/log/mon-mkfs.out")"
ceph-mon --conf "$CONF" -i a -f >>"$DIR/log/mon.a.out" 2>&1 &
echo $! >>"$DIR/pids"
for _ in $(seq 1 60); do
    "${CEPH[@]}" mon stat >/dev/null 2>&1 && break
    sleep 0.5
done
"${CEPH[@]}" mon stat >/dev/null 2>&1 || die "mon did not come up"
phase "mon"

# ---------------------------------------------------------------- osd
OSD_ID=$("${CEPH[@]}" osd new "$OSD_UUID")
[ "$OSD_ID" = 0 ] || die "unexpected osd id '$OSD_ID'"
ceph-osd --conf "$CONF" -i 0 --mkfs --osd-uuid "$OSD_UUID" \
    >"$DIR/log/osd-mkfs.out" 2>&1 || die "ceph-osd --mkfs failed: $(cat "$DIR/log/osd-mkfs.out")"
ceph-osd --conf "$CONF" -i 0 -f >>"$DIR/log/osd.0.out" 2>&1 &
echo $! >>"$DIR/pids"
up=
for _ in $(seq 1 120); do
    if "${CEPH[@]}" osd dump 2>/dev/null | grep -q '^osd\.0 up'; then up=1; break; fi
    sleep 0.5
done
[ -n "$up" ] || die "osd.0 did not come up"
phase "osd"

# ---------------------------------------------------------------- rgw
radosgw --conf "$CONF" -n client.rgw.a -f >>"$DIR/log/rgw.a.out" 2>&1 &
RGW_PID=$!
echo $RGW_PID >>"$DIR/pids"
ok=
for _ in $(seq 1 240); do # 240 * 0.5 s = 120 s
    kill -0 "$RGW_PID" 2>/dev/null || die "radosgw exited"
    if grep -q 'failed initializing frontend' "$DIR/log/client.rgw.a.log" 2>/dev/null; then
        die "radosgw could not start its beast frontend on 127.0.0.1:$PORT"
    fi
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$PORT/" || true)
    if [ -n "$code" ] && [ "$code" != 000 ]; then ok=1; break; fi
    sleep 0.5
done
[ -n "$ok" ] || die "radosgw did not answer on 127.0.0.1:$PORT within 120 s"
phase "rgw answering"

# ---------------------------------------------------------------- s3 user
radosgw-admin --conf "$CONF" user create --uid govcfs \
    --display-name govcfs --access-key "$ACCESS_KEY" --secret "$SECRET_KEY" \
    >"$DIR/log/user-create.out" 2>&1 || die "user create failed: $(cat "$DIR/log/user-create.out")"
phase "s3 user"

echo "[ceph-up] S3 endpoint http://127.0.0.1:$PORT access=$ACCESS_KEY secret=$SECRET_KEY"
echo "[ceph-up] pids: $(tr '\n' ' ' <"$DIR/pids")(in $DIR/pids)"
