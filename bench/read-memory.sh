#!/usr/bin/env bash
# Measures the memory of big unary reads against the read budget (limits.read_memory_bytes):
# loads KEYS keys of VAL bytes under /m/ (default 100,000 x 10 KiB, about 1 GiB) into a
# release-build node, limits its address space to what it maps idle plus HEADROOM bytes
# (prlimit --as: no cgroup can be made here without systemd), then
#   1. one unary Range over all of /m/ (a ~1 GiB reply),
#   2. CLIENTS clients at once, each a unary Range of the first LIST keys (~200 MiB each),
# sampling VmRSS from /proc/PID/status every 50 ms (VmHWM is reset after loading, with
# clear_refs). Reports idle RSS, the peak of each phase, what the clients got, and
# whether the server survived.
# Needs release builds of both binaries: cargo build --release --bin netsy --bin netsy-bench
#   bench/read-memory.sh                         # default budget (512 MiB)
#   BUDGET=4294967296 bench/read-memory.sh       # a budget above the limit: no protection
#   BUDGET=3758096384 HEADROOM=0 bench/read-memory.sh   # no limit: what the reads really cost
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
NETSY=$ROOT/target/release/netsy
NETSY_BENCH=$ROOT/target/release/netsy-bench
KEYS=${KEYS:-100000}
VAL=${VAL:-10240}
LIST=${LIST:-20000}
CLIENTS=${CLIENTS:-10}
HEADROOM=${HEADROOM:-1610612736}
LIMITS="quota_backend_bytes: 17179869184"
if [ -n "${BUDGET:-}" ]; then LIMITS="$LIMITS, read_memory_bytes: $BUDGET"; fi
DIR=$(mktemp -d)
PID=""
SAMPLER=""
cleanup() {
  [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null || true
  [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT
cat > "$DIR/c.jsonc" <<EOF
{cluster_id: "readmem", storage: {provider: "file", path: "$DIR/objects"},
 limits: {$LIMITS},
 raft: {snapshot_log_entries: 100000000, snapshot_log_bytes: 1000000000000},
 archive: {snapshot_entries: 100000000, snapshot_bytes: 1000000000000, snapshot_max_age: "100h"}}
EOF
export NETSY_DATA_DIR=$DIR/data NETSY_BIND_CLIENT=127.0.0.1:24891 NETSY_BIND_PEER=127.0.0.1:24901 NETSY_BIND_HEALTH=127.0.0.1:24911
EP=127.0.0.1:24891
wait_ready() { for _ in $(seq 1 2400); do curl -sf 127.0.0.1:24911/readyz >/dev/null && return 0; sleep 0.25; done; return 1; }
kib() { awk -v k="$1" '/^'"$1"':/ {print $2}' "/proc/$PID/status"; }
mib() { echo $(( $1 / 1024 )); }

"$NETSY" serve --config "$DIR/c.jsonc" 2> "$DIR/netsy.log" &
PID=$!
wait_ready
echo "loading $KEYS keys of $VAL bytes..."
"$NETSY_BENCH" range /m/ --prefix --populate "$KEYS" --val-size "$VAL" --limit 1 --total 1 --endpoints "$EP" > /dev/null
sleep 2
echo 5 > "/proc/$PID/clear_refs" # VmHWM := VmRSS
IDLE=$(kib VmRSS)
VMSIZE=$(kib VmSize)
if [ "$HEADROOM" != 0 ]; then
  prlimit --pid "$PID" --as=$(( VMSIZE * 1024 + HEADROOM ))
  LIMIT="address space limited to VmSize $(mib "$VMSIZE") MiB + $(( HEADROOM >> 20 )) MiB"
else
  LIMIT="no address space limit (HEADROOM=0)"
fi
echo "budget: $(curl -s 127.0.0.1:24911/metrics | awk '/^netsy_read_memory_budget_bytes/ {print $2}') bytes; $LIMIT"
echo "idle: VmRSS $(mib "$IDLE") MiB"

# Samples VmRSS every 50 ms into $DIR/rss (one line per sample, KiB).
: > "$DIR/rss"
( while kill -0 "$PID" 2>/dev/null; do awk '/^VmRSS:/ {print $2}' "/proc/$PID/status" 2>/dev/null || true; sleep 0.05; done >> "$DIR/rss" ) &
SAMPLER=$!
phase() {
  local name=$1; shift
  local from; from=$(wc -l < "$DIR/rss")
  local start; start=$(date +%s.%N)
  "$NETSY_BENCH" "$@" --endpoints "$EP" > "$DIR/$name.out" 2> "$DIR/$name.err" || true
  local secs; secs=$(echo "$(date +%s.%N) - $start" | bc)
  sleep 0.3
  local peak; peak=$(tail -n +"$((from + 1))" "$DIR/rss" | sort -n | tail -1)
  echo "== $name ($secs s): peak VmRSS $(mib "${peak:-0}") MiB (+$(mib $(( ${peak:-0} - IDLE ))) MiB over idle)"
  grep -h "requests" "$DIR/$name.out" || true
  sed -n 's/\x1b\[[0-9;]*m//g; s/.*netsy_bench::workloads: //p' "$DIR/$name.err" | sort | uniq -c || true
  if ! kill -0 "$PID" 2>/dev/null; then echo "SERVER DIED"; tail -5 "$DIR/netsy.log"; exit 1; fi
}
phase unary range /m/ --prefix --total 1 --clients 1
phase lists range /m/ --prefix --limit "$LIST" --total "$CLIENTS" --clients "$CLIENTS" --conns "$CLIENTS"
echo "VmHWM since loading: $(mib "$(kib VmHWM)") MiB; server alive: $(kill -0 "$PID" 2>/dev/null && echo yes || echo no)"
curl -s 127.0.0.1:24911/metrics | grep -E '^netsy_read_memory_(refused_total|waits_total|in_use)' || true
