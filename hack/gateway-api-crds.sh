#!/usr/bin/env bash
# The Gateway API's standard-channel CRDs (HTTPRoute, Gateway, GatewayClass, ReferenceGrant and the other
# standard kinds), taken from the Go module sigs.k8s.io/gateway-api (config/crd/standard/) at
# GATEWAY_API_VERSION and cached as $CACHE/gateway-api-crds-<version>/; prints that directory. Nothing but the
# module proxy is needed, once per version. The module's ValidatingAdmissionPolicy (it refuses experimental CRDs
# over standard ones) is left out: it is not a CRD, and the tests install only what the routes need.
#
# Usage: hack/gateway-api-crds.sh    (then: kubectl apply --server-side -f "$(hack/gateway-api-crds.sh)")
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

CACHE="${MODELLOOP_CACHE:-$HOME/.cache/modelloop}"
v="$GATEWAY_API_VERSION"
dest="$CACHE/gateway-api-crds-$v"
export GOTOOLCHAIN=local

if [[ ! -d "$dest" ]]; then
  printf '[gateway-api] %s: taking the standard CRDs from the module\n' "$v" >&2
  mkdir -p "$CACHE"
  dir="$(go mod download -json "sigs.k8s.io/gateway-api@$v" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  [[ -n "$dir" ]] || { echo "hack/gateway-api-crds.sh: go mod download sigs.k8s.io/gateway-api@$v gave no Dir" >&2; exit 1; }
  tmp="$(mktemp -d "$CACHE/.gateway-api-crds-$v.XXXXXX")"
  cp "$dir"/config/crd/standard/gateway.networking.k8s.io_*.yaml "$tmp/"
  rm -f "$tmp"/gateway.networking.k8s.io_vap_*.yaml
  chmod -R u+w "$tmp"  # the module cache is read-only
  # Whole or not at all: a concurrent run that got there first wins, this one's copy is dropped.
  mv -T "$tmp" "$dest" 2>/dev/null || rm -rf "$tmp"
fi
echo "$dest"
