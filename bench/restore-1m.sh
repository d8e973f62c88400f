#!/usr/bin/env bash
# Measures a restore from object storage: loads KEYS keys into a release-build node
# (local-directory object store), stops it, wipes its data directory, starts it again
# and reports the time until /readyz is 200, the peak RSS and the key count.
# Needs release builds of both binaries: cargo build --release --bin netsy --bin netsy-bench
#   bench/restore-1m.sh            # default snapshot policy
#   SNAPSHOTS=off bench/restore-1m.sh   # worst case: replay every segment
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
NETSY=$ROOT/target/release/netsy
NETSY_BENCH=$ROOT/target/release/netsy-bench
ETCDCTL=$ROOT/.venv/bin/etcdctl
KEYS=${KEYS:-1000000}
DIR=$(mktemp -d)
trap 'pkill -TERM -f "serve --config $DIR" || true; rm -rf "$DIR"' EXIT
ARCHIVE=""
if [ "${SNAPSHOTS:-on}" = off ]; then
  ARCHIVE='archive: {snapshot_entries: 100000000, snapshot_bytes: 100000000000, snapshot_max_age: "100h"},'
fi
echo "{cluster_id: \"restore\", storage: {provider: \"file\", path: \"$DIR/objects\"}, $ARCHIVE}" > "$DIR/c.jsonc"
export NETSY_DATA_DIR=$DIR/data NETSY_BIND_CLIENT=127.0.0.1:24791 NETSY_BIND_PEER=127.0.0.1:24801 NETSY_BIND_HEALTH=127.0.0.1:24811
wait_ready() { for _ in $(seq 1 2400); do curl -sf 127.0.0.1:24811/readyz >/dev/null && return 0; sleep 0.25; done; return 1; }
"$NETSY" serve --config "$DIR/c.jsonc" 2> "$DIR/load.log" &
wait_ready
"$NETSY_BENCH" put --endpoints 127.0.0.1:24791 --clients 100 --conns 10 --total "$KEYS" --key-size 32 --val-size 256 --key-space-size "$KEYS" --sequential-keys
pkill -TERM -f "serve --config $DIR/c.jsonc"; while pgrep -f "serve --config $DIR/c.jsonc" >/dev/null; do sleep 0.2; done
echo "object storage: $(du -sh "$DIR/objects" | cut -f1)"
rm -rf "$DIR/data"
"$NETSY" serve --config "$DIR/c.jsonc" 2> "$DIR/restore.log" &
PID=$!
START=$(date +%s.%N)
wait_ready
echo "ready after $(echo "$(date +%s.%N) - $START" | bc) s; $(grep VmHWM /proc/$PID/status)"
grep -o 'restore: complete.*' "$DIR/restore.log" | sed 's/\x1b\[[0-9;]*m//g'
"$ETCDCTL" --endpoints=127.0.0.1:24791 get "" --prefix --count-only -w fields | grep Count
