#!/usr/bin/env bash
# The per-shard part of docs/capacity.md, measured: one service and the load tool, first on
# one Redis (whose store coalesces concurrent requests), then on a local 3-master Redis
# Cluster, each twice:
#   spread  10 000 clients in the envoyproxy/ratelimit format: their counters hash over all
#           three masters, so each should see about a third of the calls
#   hot     one endpoint of the endpoint format: every counter carries the endpoint's hash tag,
#           so one master takes every call
# For each run and each Redis it prints script calls (in all and per decision), Redis CPU and
# bytes in and out per decision of the run, and that Redis' CPU use (cores), from INFO
# commandstats, cpu and stats before and after.
# SERVE_ARGS adds serve flags (e.g. SERVE_ARGS="--redis-timeout 1s"); IRONCLAD_BIN picks the binary.
# Needs redis-server and redis-cli (Debian: apt-get install -y redis-server).
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-10s}
CONCURRENCY=${CONCURRENCY:-128}
BIN=${IRONCLAD_BIN:-target/release/ironclad-rls}
command -v redis-server >/dev/null && command -v redis-cli >/dev/null ||
  { echo "cluster.sh needs redis-server and redis-cli: apt-get install -y redis-server" >&2; exit 1; }
[ -x "$BIN" ] || cargo build --release --locked --bin ironclad-rls >&2
BASE=${BASE_PORT:-17100}
PORTS=($BASE $((BASE + 1)) $((BASE + 2)))
GRPC=127.0.0.1:$((BASE + 81))
ADMIN=127.0.0.1:$((BASE + 80))
WORK=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$WORK"' EXIT

serve() { # store flags...
  "$BIN" serve --config examples/bench/cluster --grpc-addr "$GRPC" --admin-addr "$ADMIN" \
    "$@" ${SERVE_ARGS:-} >"$WORK/service.log" 2>&1 &
  SERVICE=$!
  PIDS+=($SERVICE)
  for _ in $(seq 100); do curl -sf "http://$ADMIN/readyz" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "the service did not become ready" >&2; cat "$WORK/service.log" >&2; exit 1
}

# Script calls (EVALSHA, EVAL or FCALL, whichever the store uses), CPU seconds, and bytes
# in and out of one Redis.
snapshot() { # port
  local stats cpu net
  stats=$(redis-cli -p "$1" INFO commandstats)
  cpu=$(redis-cli -p "$1" INFO cpu)
  net=$(redis-cli -p "$1" INFO stats)
  echo "$stats" | awk -F'calls=' '/^cmdstat_(evalsha|eval|fcall|fcall_ro):/ { split($2, a, ","); s += a[1] } END { printf "%d ", s }'
  echo "$cpu" | awk -F: '/^used_cpu_(sys|user):/ { s += $2 } END { printf "%.6f ", s }'
  echo "$net" | tr -d '\r' | awk -F: '/^total_net_(input|output)_bytes:/ { printf "%d ", $2 } END { print "" }'
}

# One run of the load tool, and what each Redis in `ports` did for it, per decision.
measure() { # label ports bench-args...
  local label=$1 ports=$2; shift 2
  declare -A before
  for p in $ports; do before[$p]=$(snapshot "$p"); done
  local started out calls secs
  started=$(date +%s.%N)
  out=$("$BIN" bench --addr "http://$GRPC" --concurrency "$CONCURRENCY" --duration "$DURATION" "$@")
  secs=$(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN { print e - s }')
  calls=$(echo "$out" | awk 'NR == 1 { print $1 }')
  echo "## $label"
  echo "$out" | sed 's/^/    /'
  echo "| Redis | script calls | per decision | Redis CPU per decision | cores | bytes in / out per decision |"
  echo "|---|---|---|---|---|---|"
  for p in $ports; do
    read -r c0 t0 i0 o0 <<<"${before[$p]}"
    read -r c1 t1 i1 o1 <<<"$(snapshot "$p")"
    awk -v p="$p" -v c="$((c1 - c0))" -v t0="$t0" -v t1="$t1" -v n="$calls" -v s="$secs" \
        -v bi="$((i1 - i0))" -v bo="$((o1 - o0))" 'BEGIN {
      printf "| %s | %d | %.3f | %.2f µs | %.2f | %.0f / %.0f |\n", p, c, c / n, (t1 - t0) * 1e6 / n, (t1 - t0) / s, bi / n, bo / n }'
  done
  echo
}

# One Redis first: the single-node store, which coalesces concurrent requests.
SINGLE=$((BASE + 10))
redis-server --port "$SINGLE" --bind 127.0.0.1 --save "" --appendonly no >"$WORK/single.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do redis-cli -p "$SINGLE" PING >/dev/null 2>&1 && break; sleep 0.1; done
serve --redis-url "redis://127.0.0.1:$SINGLE"
measure "one Redis, spread: 10 000 clients, envoyproxy/ratelimit format" "$SINGLE" --domain spread --descriptor 'client=c{n}'
measure "one Redis, one endpoint, 10 000 consumers" "$SINGLE" --domain kcse --descriptor 'endpoint=hot,path=/api/x,consumer=c{n}'
kill "$SERVICE"; wait "$SERVICE" 2>/dev/null || true

for p in "${PORTS[@]}"; do
  mkdir -p "$WORK/$p"
  (cd "$WORK/$p" && exec redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes \
    --cluster-config-file nodes.conf --save "" --appendonly no) >"$WORK/$p.log" 2>&1 &
  PIDS+=($!)
done
for p in "${PORTS[@]}"; do
  for _ in $(seq 50); do redis-cli -p "$p" PING >/dev/null 2>&1 && break; sleep 0.1; done
done
redis-cli --cluster create "${PORTS[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >/dev/null
for _ in $(seq 100); do
  redis-cli -p "${PORTS[0]}" CLUSTER INFO | grep -q 'cluster_state:ok' && break; sleep 0.1
done

serve --redis-cluster-url "$(printf 'redis://127.0.0.1:%s,' "${PORTS[@]}" | sed 's/,$//')"
CLUSTER="${PORTS[*]}"
measure "cluster, spread: 10 000 clients, envoyproxy/ratelimit format" "$CLUSTER" --domain spread --descriptor 'client=c{n}'
measure "cluster, hot: one endpoint, 10 000 consumers" "$CLUSTER" --domain kcse --descriptor 'endpoint=hot,path=/api/x,consumer=c{n}'
