#!/usr/bin/env bash
# The per-shard part of docs/capacity.md, measured: a local 3-master Redis Cluster, one
# service, and the load tool, twice:
#   spread  10 000 clients in the envoyproxy/ratelimit format: their counters hash over all
#           three masters, so each should see about a third of the calls
#   hot     one endpoint of the endpoint format: every counter carries the endpoint's hash tag,
#           so one master takes every call
# For each run and each master it prints the share of script calls, Redis CPU per call on that
# master and that master's CPU use (cores), from INFO commandstats and INFO cpu before and after.
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

"$BIN" serve --config examples/bench/cluster --grpc-addr "$GRPC" --admin-addr "$ADMIN" \
  --redis-cluster-url "$(printf 'redis://127.0.0.1:%s,' "${PORTS[@]}" | sed 's/,$//')" \
  ${SERVE_ARGS:-} >"$WORK/service.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -sf "http://$ADMIN/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -sf "http://$ADMIN/readyz" >/dev/null || { echo "the service did not become ready" >&2; cat "$WORK/service.log" >&2; exit 1; }

# Script calls (EVALSHA, EVAL or FCALL, whichever the store uses) and CPU seconds of one master.
snapshot() { # port
  local stats cpu
  stats=$(redis-cli -p "$1" INFO commandstats)
  cpu=$(redis-cli -p "$1" INFO cpu)
  echo "$stats" | awk -F'calls=' '/^cmdstat_(evalsha|eval|fcall|fcall_ro):/ { split($2, a, ","); s += a[1] } END { printf "%d ", s }'
  echo "$cpu" | awk -F: '/^used_cpu_(sys|user):/ { s += $2 } END { printf "%.6f\n", s }'
}

measure() { # label bench-args...
  local label=$1; shift
  declare -A before
  for p in "${PORTS[@]}"; do before[$p]=$(snapshot "$p"); done
  local started out calls secs
  started=$(date +%s.%N)
  out=$("$BIN" bench --addr "http://$GRPC" --concurrency "$CONCURRENCY" --duration "$DURATION" "$@")
  secs=$(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN { print e - s }')
  calls=$(echo "$out" | awk 'NR == 1 { print $1 }')
  echo "## $label"
  echo "$out" | sed 's/^/    /'
  echo "| master | script calls | share | Redis CPU per script call | cores |"
  echo "|---|---|---|---|---|"
  for p in "${PORTS[@]}"; do
    read -r c0 t0 <<<"${before[$p]}"
    read -r c1 t1 <<<"$(snapshot "$p")"
    awk -v p="$p" -v c="$((c1 - c0))" -v t0="$t0" -v t1="$t1" -v n="$calls" -v s="$secs" 'BEGIN {
      per = c > 0 ? (t1 - t0) * 1e6 / c : 0
      printf "| %s | %d | %.1f %% | %.1f µs | %.2f |\n", p, c, 100 * c / n, per, (t1 - t0) / s }'
  done
  echo
}

measure "spread: 10 000 clients, envoyproxy/ratelimit format" --domain spread --descriptor 'client=c{n}'
measure "hot: one endpoint, 10 000 consumers" --domain kcse --descriptor 'endpoint=hot,path=/api/x,consumer=c{n}'
