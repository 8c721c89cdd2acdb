#!/usr/bin/env bash
# Latency at a fixed offered rate (open loop), ironclad-rls and Kuadrant/limitador side by side
# on one Redis: h2load sends on schedule (--rps per connection), so a slow answer does not slow
# the sender down and queueing shows in the percentiles. Prints, per service and round: the
# rate achieved, p50/p99/p99.9/max from h2load's per-request log, CPU per call from /proc, and
# the backend errors ironclad-rls counted.
#
#   examples/bench/open-loop.sh                 # 10 000 calls/s for 10 s, 2 rounds each
#   RATE=20000 SECONDS_PER_ROUND=5 examples/bench/open-loop.sh
#
# Needs h2load and redis-server (Debian: apt-get install -y nghttp2-client redis-server) and a
# release build; limitador from LIMITADOR_BIN (default ../shared/anchors/limitador-server) is
# skipped, with a line saying so, when that file does not exist.
set -euo pipefail
cd "$(dirname "$0")/../.."
RATE=${RATE:-10000}
CONNECTIONS=${CONNECTIONS:-10}
SECONDS_PER_ROUND=${SECONDS_PER_ROUND:-10}
ROUNDS=${ROUNDS:-2}
BIN=${IRONCLAD_BIN:-target/release/ironclad-rls}
LIMITADOR=${LIMITADOR_BIN:-../shared/anchors/limitador-server}
for tool in h2load redis-server redis-cli curl python3; do
  command -v "$tool" >/dev/null || { echo "open-loop: $tool is missing (apt-get install -y nghttp2-client redis-server curl python3)" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "open-loop: $BIN is missing: run cargo build --release" >&2; exit 1; }
W=$(mktemp -d "${TMPDIR:-/tmp}/open-loop.XXXXXX")
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ready() { # url
  for _ in $(seq 100); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "open-loop: $1 never answered" >&2; exit 1
}

# One descriptor [(mode, loadtest), (client, c1)] in domain bench, 10^9 per minute: every call
# is admitted and counted (the slowest path), as in compare.sh's envoy workload.
cat >"$W/ironclad.yaml" <<'YAML'
domain: bench
descriptors:
  - key: mode
    value: loadtest
    descriptors:
      - key: client
        rate_limit: { unit: minute, requests_per_unit: 1000000000 }
YAML
cat >"$W/limitador.yaml" <<'YAML'
- namespace: bench
  max_value: 1000000000
  seconds: 60
  conditions:
    - "descriptors[0].mode == 'loadtest'"
  variables:
    - descriptors[0].client
YAML
# The gRPC-framed RateLimitRequest, encoded by hand (protobuf): domain "bench", one descriptor
# of two entries, hits_addend 0.
python3 - "$W/body.bin" <<'PY'
import struct, sys
def ld(field, payload): return bytes([field << 3 | 2, len(payload)]) + payload
entry = lambda k, v: ld(1, ld(1, k) + ld(2, v))
descriptor = ld(2, entry(b"mode", b"loadtest") + entry(b"client", b"c1"))
message = ld(1, b"bench") + descriptor
open(sys.argv[1], "wb").write(b"\0" + struct.pack(">I", len(message)) + message)
PY

RP=$(port)
redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no >"$W/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do redis-cli -p "$RP" ping >/dev/null 2>&1 && break; sleep 0.1; done

IG=$(port); IA=$(port)
RUST_LOG=warn "$BIN" serve --config "$W/ironclad.yaml" --grpc-addr "127.0.0.1:$IG" --admin-addr "127.0.0.1:$IA" \
  --redis-url "redis://127.0.0.1:$RP" --redis-key-prefix open-loop >"$W/ironclad.log" 2>&1 &
IPID=$!; PIDS+=($IPID)
ready "http://127.0.0.1:$IA/readyz"
SERVICES=("ironclad $IPID $IG")
if [ -x "$LIMITADOR" ]; then
  LG=$(port); LH=$(port)
  "$LIMITADOR" -b 127.0.0.1 -p "$LG" -B 127.0.0.1 -P "$LH" "$W/limitador.yaml" redis "redis://127.0.0.1:$RP/1" \
    >"$W/limitador.log" 2>&1 &
  LPID=$!; PIDS+=($LPID)
  ready "http://127.0.0.1:$LH/status"
  SERVICES+=("limitador $LPID $LG")
else
  echo "open-loop: $LIMITADOR not found: measuring ironclad-rls alone" >&2
fi

per_conn=$(( RATE / CONNECTIONS ))
n=$(( RATE * SECONDS_PER_ROUND ))
errors() { curl -s "http://127.0.0.1:$IA/metrics" | awk '/^ratelimit_backend_errors_total/ { s += $2 } END { print s + 0 }'; }
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
echo "open-loop: $RATE calls/s offered ($CONNECTIONS connections x $per_conn/s), $SECONDS_PER_ROUND s per round; files in $W"
for round in $(seq "$ROUNDS"); do
  for s in "${SERVICES[@]}"; do
    read -r name pid gport <<<"$s"
    url="http://127.0.0.1:$gport/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
    h2() { h2load "$@" -d "$W/body.bin" -H 'content-type: application/grpc' -H 'te: trailers' "$url"; }
    h2 -n 5000 -c "$CONNECTIONS" -m 8 >/dev/null  # warm-up, closed loop
    e0=$(errors); c0=$(ticks "$pid"); rm -f "$W/$name.log"
    # -m 256: room for every call the schedule sends while earlier ones are in flight.
    h2 -n "$n" -c "$CONNECTIONS" -m 256 --rps "$per_conn" --log-file "$W/$name.log" >"$W/$name-$round.out"
    c1=$(ticks "$pid"); e1=$(errors)
    grep -q " 0 failed, 0 errored" "$W/$name-$round.out" || { echo "open-loop: $name round $round: h2load saw failures" >&2; tail -5 "$W/$name-$round.out" >&2; exit 1; }
    rate=$(grep -o '[0-9.]* req/s' "$W/$name-$round.out" | head -1)
    hz=$(getconf CLK_TCK)
    cpu=$(awk -v t=$((c1 - c0)) -v n="$n" -v hz="$hz" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
    lat=$(awk '{ print $3 }' "$W/$name.log" | sort -n | awk '{ a[NR] = $1 } END {
      printf "p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms, max %.2f ms", a[int(NR * 0.5)] / 1000,
        a[int(NR * 0.99)] / 1000, a[int(NR * 0.999)] / 1000, a[NR] / 1000 }')
    extra=""
    [ "$name" = ironclad ] && extra=", backend errors $((e1 - e0))"
    echo "round $round $name: $rate, $lat, $cpu µs CPU/call$extra"
  done
done
