#!/usr/bin/env bash
# The service's latency at a fixed offered rate (open loop), with `ironclad-rls bench --rate`,
# on the memory store and then on a local Redis. Calls leave on schedule, evenly spaced,
# whatever the answers; latency counts from each call's scheduled time, and a send more than
# 1 ms behind it is counted late, so a tool that could not keep up shows in its own figures.
# Prints bench's report for each store: calls/s, answers, late sends, p50 to max, and the CPU
# per call of the load tool, the service and Redis (all three share this machine).
#
#   examples/bench/rate.sh                          # 10 000 calls/s for 10 s on each store
#   RATE=20000 DURATION=5s examples/bench/rate.sh
#   ENDPOINT=three examples/bench/rate.sh           # 3 counters per call (limits.yaml)
#
# Needs redis-server, redis-cli and curl (Debian: apt-get install -y redis-server curl).
set -euo pipefail
cd "$(dirname "$0")/../.."
RATE=${RATE:-10000}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-4}
# Enough that a send never waits for an answer at these rates: the bound would hide queueing
# in the service behind late sends.
IN_FLIGHT=${IN_FLIGHT:-1000}
ENDPOINT=${ENDPOINT:-one}
GRPC=${GRPC:-127.0.0.1:19091}
ADMIN=${ADMIN:-127.0.0.1:19090}
REDIS_PORT=${REDIS_PORT:-16389}
for tool in redis-server redis-cli curl; do
  command -v "$tool" >/dev/null || { echo "rate: $tool is missing (apt-get install -y redis-server curl)" >&2; exit 1; }
done
# IRONCLAD_BIN picks the binary; otherwise the release build, brought up to date.
BIN=${IRONCLAD_BIN:-target/release/ironclad-rls}
[ -n "${IRONCLAD_BIN:-}" ] || cargo build --release --locked --bin ironclad-rls >&2
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT

serve() { # extra serve flags
  "$BIN" serve --config examples/bench --grpc-addr "$GRPC" --admin-addr "$ADMIN" "$@" >/dev/null 2>&1 &
  SERVICE=$!
  PIDS+=("$SERVICE")
  for _ in $(seq 100); do
    curl -sf "http://$ADMIN/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "rate: the service did not become ready" >&2
  exit 1
}

offer() { # extra bench flags
  local descriptor="endpoint=$ENDPOINT,path=/api/v1/items,consumer=c{n}"
  # Warm-up, closed loop: connections, allocations and Redis's function are in place before
  # the measured run.
  "$BIN" bench --addr "http://$GRPC" --descriptor "$descriptor" --duration 1s --concurrency 8 >/dev/null
  "$BIN" bench --addr "http://$GRPC" --descriptor "$descriptor" --rate "$RATE" --duration "$DURATION" \
    --concurrency "$IN_FLIGHT" --connections "$CONNECTIONS" --admin "http://$ADMIN" "$@"
}

echo "== memory store, $RATE calls/s offered for $DURATION"
serve
offer
kill "$SERVICE"; wait "$SERVICE" 2>/dev/null || true

echo
echo "== Redis store (redis-server on 127.0.0.1:$REDIS_PORT), $RATE calls/s offered for $DURATION"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
serve --redis-url "redis://127.0.0.1:$REDIS_PORT"
offer --redis-url "redis://127.0.0.1:$REDIS_PORT"
