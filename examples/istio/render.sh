#!/usr/bin/env bash
# Prints the Istio manifests of this directory's README for the seed's full example
# (examples/limits/full-example.yaml). ironclad-rls-istio.yaml is its output, and a test
# checks that it still is: after changing the flags below, run
#   examples/istio/render.sh > examples/istio/ironclad-rls-istio.yaml
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
if [ -z "${IRONCLAD_RLS_BIN:-}" ]; then
  (cd "$root" && cargo build --quiet --bin ironclad-rls)
  IRONCLAD_RLS_BIN=$root/target/debug/ironclad-rls
fi
cd "$root"
# The gateway serves Keycloak.SE as kcse.example.com; its tokens come from the API-TEST realm.
exec "$IRONCLAD_RLS_BIN" render istio \
  --config examples/limits/full-example.yaml \
  --host kcserl=kcse.example.com \
  --jwks-uri https://kcse.example.com/auth/realms/API-TEST/protocol/openid-connect/certs \
  --jwt-issuer https://kcse.example.com/auth/realms/API-TEST \
  --namespace istio-system \
  --gateway-selector istio=ingressgateway \
  --rls-addr rate-limiter-headless-service.ironclad-rls.svc.cluster.local:8081 \
  --timeout 50ms
