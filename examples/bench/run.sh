#!/usr/bin/env bash
# Measures the service under load, in one run on one machine, and prints the README's table:
# calls/s and latency for the memory and the Redis store, with 1 and 3 counters per call,
# and the Redis commands per call (from Redis' own INFO commandstats).
# Needs redis-server and redis-cli (Debian: apt-get install -y redis-server).
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-10s}
CONCURRENCY=${CONCURRENCY:-64}
cargo build --release --locked --bin ironclad-rls >&2
BIN=target/release/ironclad-rls
GRPC=127.0.0.1:19081
ADMIN=127.0.0.1:19080
REDIS_PORT=${REDIS_PORT:-16379}

# Calls of the commands matching a pattern, from INFO commandstats. Client round trips are
# fcall (plus function|load and ping; evalsha on a cluster); time/get/mget/incrby/set/del run
# inside the function, once per call however many requests it carries.
redis_calls() { # pattern
  redis-cli -p "$REDIS_PORT" INFO commandstats |
    awk -F'calls=' -v re="^cmdstat_($1):" '$0 ~ re { split($2, a, ","); s += a[1] } END { print s + 0 }'
}
ROUND_TRIPS='fcall|evalsha|eval|function\|load|script\|load|ping'
IN_SCRIPT='time|get|mget|incrby|set|del'


serve() {
  "$BIN" serve --config examples/bench --grpc-addr "$GRPC" --admin-addr "$ADMIN" "$@" >/dev/null 2>&1 &
  PID=$!
  for _ in $(seq 100); do
    curl -sf "http://$ADMIN/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "the service did not become ready" >&2
  exit 1
}

bench() { # label endpoint
  "$BIN" bench --addr "http://$GRPC" --concurrency "$CONCURRENCY" --duration "$DURATION" \
    --descriptor "endpoint=$2,path=/api/v1/items,consumer=c{n}" --markdown-row "$1"
}

row() { # the bench output's last line, plus two Redis cells
  echo "$1" | sed -n 's/^\(| .*|\)$/\1/p' | sed "s/\$/ $2 | $3 |/"
}

per_call() { # after before calls
  awk -v a="$1" -v b="$2" -v c="$3" 'BEGIN { printf "%.3f", (a - b) / c }'
}

echo "| store, counters per call | calls/s | p50 | p99 | p999 | errors | Redis round trips per call | Redis commands in the script per call |"
echo "|---|---|---|---|---|---|---|---|"
serve
row "$(bench "memory, 1" one)" "-" "-"
row "$(bench "memory, 3" three)" "-" "-"
kill "$PID"; wait "$PID" 2>/dev/null || true

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
REDIS_PID=$!
trap 'kill $REDIS_PID 2>/dev/null || true' EXIT
sleep 0.5
serve --redis-url "redis://127.0.0.1:$REDIS_PORT"
for n in 1 3; do
  endpoint=$([ "$n" = 1 ] && echo one || echo three)
  trips=$(redis_calls "$ROUND_TRIPS")
  inside=$(redis_calls "$IN_SCRIPT")
  out=$(bench "Redis, $n" "$endpoint")
  calls=$(echo "$out" | head -1 | awk '{ print $1 }')
  row "$out" "$(per_call "$(redis_calls "$ROUND_TRIPS")" "$trips" "$calls")" \
    "$(per_call "$(redis_calls "$IN_SCRIPT")" "$inside" "$calls")"
done
kill "$PID"; wait "$PID" 2>/dev/null || true
