#!/usr/bin/env bash
# Build (or reuse) the binaries of the embedded control plane from the Go module proxy:
# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (k8s.io/kubernetes), etcd,
# kwok, helm, promtool and prometheus, the node's CoreDNS, metrics-server and kube-router (NetworkPolicy), versitygw (the S3-compatible server of the
# tests and the demo), and argocd-health (hack/argocd-health: Argo CD's Lua health checks run the way Argo CD runs them). Each binary is cached as $CACHE/bin/<name>-<version> and
# rebuilt only when missing or when it does not report the expected version. Prints the bin directory on success.
# Not a binary: gateway-api-crds puts the Gateway API's CRDs in $CACHE/gateway-api-crds-<version>/.
#
# Usage: hack/build-binaries.sh [--list] [component or set...]   (components: k8s etcd kwok helm promtool prometheus
#        coredns metrics-server kube-router versitygw argocd-health gateway-api-crds; sets below; default: test,
#        everything)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

CACHE="${MODELLOOP_CACHE:-$HOME/.cache/modelloop}"
BIN="$CACHE/bin"
WORK="$CACHE/build"
mkdir -p "$BIN" "$WORK"
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false

log() { printf '[build] %s\n' "$*" >&2; }

have() { # have <name> <version>: cached binary exists and reports its version
  local f="$BIN/$1-$2" out
  [[ -x "$f" ]] || return 1
  # Capture, then match: `... | grep -q` would fail under pipefail when grep closes the pipe early.
  case "$1" in
    kubectl) out="$("$f" version --client 2>/dev/null)" ;;
    helm) out="$("$f" version --short 2>/dev/null)" ;;
    coredns) out="$("$f" -version 2>/dev/null)" ;;
    kube-router) out="$("$f" --version 2>&1)" ;;  # it prints its version on stderr
    *) out="$("$f" --version 2>/dev/null)" ;;
  esac || return 1
  [[ "$out" == *"${2#v}"* ]]
}

link() { ln -sf "$1-$2" "$BIN/$1"; }

module_dir() { go mod download -json "$1" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p'; }  # module_dir <module>@<version>

build_k8s() {
  local v="$K8S_VERSION" names=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy) missing=()
  for n in "${names[@]}"; do have "$n" "$v" || missing+=("$n"); done
  if ((${#missing[@]})); then
    log "kubernetes $v: building ${missing[*]} (cold: tens of minutes on 2 cores)"
    local dir="$WORK/k8s-$v" minor="${v#v1.}" gomod
    mkdir -p "$dir"
    gomod="$(go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
    # The kubernetes go.mod replaces its staging modules with local paths; point each at its
    # published v0.X.Y instead. The list is derived from the go.mod because it changes per minor.
    {
      echo "module modelloop.dev/k8sbuild"
      echo
      grep -E '^go [0-9]' "$gomod"
      grep -E '^godebug' "$gomod" || true
      echo
      echo "require k8s.io/kubernetes $v"
      echo
      echo "replace ("
      sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\t\1 => \1 v0.'"$minor"'#p' "$gomod"
      echo ")"
    } >"$dir/go.mod"
    local major=1 minorn="${minor%%.*}" ld=""
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ld+=" -X $p.gitVersion=$v -X $p.gitMajor=$major -X $p.gitMinor=$minorn"
      ld+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
    done
    local pkgs=()
    for n in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$n"); done
    (cd "$dir" && GOFLAGS="-mod=mod -buildvcs=false" go build -trimpath -ldflags "-s -w$ld" -o "$dir/out/" "${pkgs[@]}")
    for n in "${missing[@]}"; do mv "$dir/out/$n" "$BIN/$n-$v"; done
  fi
  for n in "${names[@]}"; do link "$n" "$v"; done
}

build_etcd() {
  local v="$ETCD_VERSION"
  if ! have etcd "$v"; then
    log "etcd $v: building"
    local dir="$WORK/etcd-$v"
    mkdir -p "$dir"
    cat >"$dir/go.mod" <<EOF
module modelloop.dev/etcdbuild

go 1.26.0

require go.etcd.io/etcd/server/v3 $v

replace (
	go.etcd.io/etcd/api/v3 => go.etcd.io/etcd/api/v3 $v
	go.etcd.io/etcd/client/pkg/v3 => go.etcd.io/etcd/client/pkg/v3 $v
	go.etcd.io/etcd/client/v3 => go.etcd.io/etcd/client/v3 $v
	go.etcd.io/etcd/pkg/v3 => go.etcd.io/etcd/pkg/v3 $v
)
EOF
    (cd "$dir" && GOFLAGS="-mod=mod -buildvcs=false" go build -trimpath -ldflags "-s -w" -o "$BIN/etcd-$v" go.etcd.io/etcd/server/v3)
  fi
  link etcd "$v"
}

build_kwok() {
  local v="$KWOK_VERSION"
  if ! have kwok "$v"; then
    log "kwok $v: building"
    GOBIN="$WORK/kwok-$v" go install -trimpath -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$v" "sigs.k8s.io/kwok/cmd/kwok@$v"
    mv "$WORK/kwok-$v/kwok" "$BIN/kwok-$v"
  fi
  link kwok "$v"
  # kwok refuses to start without stage files; they ship in the module source.
  local dir
  dir="$(module_dir "sigs.k8s.io/kwok@$v")"
  mkdir -p "$CACHE/kwok-stages-$v"
  cp -r "$dir/kustomize/stage/." "$CACHE/kwok-stages-$v/"
  chmod -R u+w "$CACHE/kwok-stages-$v"
}

build_helm() {
  local v="$HELM_VERSION"
  if ! have helm "$v"; then
    log "helm $v: building"
    GOBIN="$WORK/helm-$v" go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$v" "helm.sh/helm/v3/cmd/helm@$v"
    mv "$WORK/helm-$v/helm" "$BIN/helm-$v"
  fi
  link helm "$v"
}

build_promtool() {
  local v="$PROMETHEUS_VERSION"
  if ! have promtool "$v"; then
    log "promtool $v: building"
    GOBIN="$WORK/promtool-$v" go install -trimpath \
      -ldflags "-s -w -X github.com/prometheus/common/version.Version=$v" \
      "github.com/prometheus/prometheus/cmd/promtool@$v"
    mv "$WORK/promtool-$v/promtool" "$BIN/promtool-$v"
  fi
  link promtool "$v"
}

# The Prometheus server of the demo and the end-to-end suite (same module and version as promtool), with
# only the Kubernetes service discovery: the other 26 discovery plugins (cloud SDKs) are most of a cold build.
build_prometheus() {
  local v="$PROMETHEUS_VERSION"
  if ! have prometheus "$v"; then
    log "prometheus $v: building (Kubernetes service discovery only)"
    GOBIN="$WORK/prometheus-$v" go install -trimpath -tags remove_all_sd,enable_kubernetes_sd \
      -ldflags "-s -w -X github.com/prometheus/common/version.Version=$v" \
      "github.com/prometheus/prometheus/cmd/prometheus@$v"
    mv "$WORK/prometheus-$v/prometheus" "$BIN/prometheus-$v"
  fi
  link prometheus "$v"
}

# go install <module>/<cmd>@<version> into the cache (modules without replace directives only).
go_install() { # go_install <name> <version> <package> [ldflags]
  local name="$1" v="$2" pkg="$3" ld="${4:-}"
  if ! have "$name" "$v"; then
    log "$name $v: building"
    GOBIN="$WORK/$name-$v" go install -trimpath -ldflags "-s -w $ld" "$pkg@$v"
    mv "$WORK/$name-$v/$(basename "${pkg%/}")" "$BIN/$name-$v"
  fi
  link "$name" "$v"
}

# Cluster DNS for the real node (kube-dns Service); run on the host by hack/node.py. Built with only the
# plugins the node's Corefile uses (CoreDNS's documented way: import them, set dnsserver.Directives), which
# skips compiling the cloud providers' SDKs of the stock build.
build_coredns() {
  local v="$COREDNS_VERSION"
  if ! have coredns "$v"; then
    log "coredns $v: building (plugins bind, health, errors, cache, kubernetes)"
    local dir="$WORK/coredns-$v"
    mkdir -p "$dir"
    printf 'module modelloop.dev/corednsbuild\n\ngo 1.26.0\n\nrequire github.com/coredns/coredns %s\n' "$v" >"$dir/go.mod"
    cat >"$dir/main.go" <<'GO'
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
)

// The order of plugin.cfg, restricted to the plugins above.
func init() { dnsserver.Directives = []string{"bind", "health", "errors", "cache", "kubernetes"} }

func main() { coremain.Run() }
GO
    (cd "$dir" && GOFLAGS="-mod=mod -buildvcs=false" go mod tidy >/dev/null 2>&1 && \
      GOFLAGS="-mod=mod -buildvcs=false" go build -trimpath -ldflags "-s -w" -o "$BIN/coredns-$v" .)
  fi
  link coredns "$v"
}
# Resource metrics for HPAs (metrics.k8s.io), scraping the kubelet; run on the host by hack/node.py.
build_metrics-server() {
  go_install metrics-server "$METRICS_SERVER_VERSION" sigs.k8s.io/metrics-server/cmd/metrics-server \
    "-X k8s.io/client-go/pkg/version.gitVersion=$METRICS_SERVER_VERSION"
}

# The S3-compatible server of the tests and the demo (tests/fixtures/s3.py, hack/demo.py), run with its posix
# backend on a directory. Apache-2.0 (MinIO is AGPL).
build_versitygw() {
  go_install versitygw "$VERSITYGW_VERSION" github.com/versity/versitygw/cmd/versitygw "-X main.Version=$VERSITYGW_VERSION"
}

# NetworkPolicy enforcement on the real node (firewall mode only: hack/node.py runs it on the host beside
# kube-proxy, with routing, service proxy and CNI off). v2.1.0 is the only version the module proxy serves here;
# it is test infrastructure, never shipped (docs/security.md). Static: the node needs no cgo.
build_kube-router() {
  CGO_ENABLED=0 go_install kube-router "$KUBE_ROUTER_VERSION" github.com/cloudnativelabs/kube-router/v2/cmd/kube-router \
    "-X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$KUBE_ROUTER_VERSION"
}

# The harness that runs the chart's Argo CD health checks (charts/modelloop/argocd/*.lua) in gopher-lua, the
# interpreter Argo CD uses (its version is pinned in hack/argocd-health/go.mod). Our own source: its version is
# a hash of that source, so an edit rebuilds it (a cold build takes seconds).
build_argocd-health() {
  local src="$here/argocd-health" v
  v="$(cat "$src/go.mod" "$src/go.sum" "$src"/*.go | sha256sum | cut -c1-12)"
  if ! have argocd-health "$v"; then
    log "argocd-health $v: building ($(grep -o 'gopher-lua v[0-9.]*' "$src/go.mod"))"
    (cd "$src" && go build -trimpath -ldflags "-s -w -X main.version=$v" -o "$BIN/argocd-health-$v" .)
  fi
  link argocd-health "$v"
}

# The Gateway API's standard-channel CRDs (HTTPRoute, Gateway, GatewayClass, ReferenceGrant, ...) for the canary's
# HTTPRoute (spec.rollout.gateway; tests/integration/test_gateway_route.py): files from the module, no binary, in
# $CACHE/gateway-api-crds-<version>/. The module's ValidatingAdmissionPolicy (it refuses experimental CRDs over
# standard ones) is left out: it is not a CRD.
build_gateway-api-crds() {
  local v="$GATEWAY_API_VERSION" dest="$CACHE/gateway-api-crds-$GATEWAY_API_VERSION" tmp
  if [[ ! -d "$dest" ]]; then
    log "gateway-api $v: taking the standard-channel CRDs from the module"
    tmp="$(mktemp -d "$CACHE/.gateway-api-crds-$v.XXXXXX")"
    cp "$(module_dir "sigs.k8s.io/gateway-api@$v")"/config/crd/standard/gateway.networking.k8s.io_*.yaml "$tmp/"
    rm -f "$tmp"/gateway.networking.k8s.io_vap_*.yaml
    chmod -R u+w "$tmp"  # the module cache is read-only
    mv -T "$tmp" "$dest" 2>/dev/null || rm -rf "$tmp"  # whole or not at all; a concurrent run may have won
  fi
}

# The one list of what each entry point runs; a set name expands to its components. The order is the build
# order: what starts the cluster first, so a cold `make demo` spends its first minutes on what it needs first.
# tests/unit/test_build_sets.py fails when code runs a binary (BIN / "name") that its entry point's set lacks.
#   control-plane  hack/cluster.py with MODELLOOP_NODE=0 (etcd, the Kubernetes binaries, kwok)
#   node           what hack/node.py runs on the host beside the kubelet
#   demo           make demo: the cluster, helm (operator install), versitygw (store), prometheus
#   test           make test: the demo's set, promtool (the alert rules' unit tests), argocd-health (the
#                  Argo CD health-check harness) and the Gateway API CRDs
declare -A SETS=([control-plane]="etcd kwok k8s" [node]="coredns metrics-server kube-router")
SETS[demo]="${SETS[control-plane]} ${SETS[node]} helm versitygw prometheus"
SETS[test]="${SETS[demo]} promtool argocd-health gateway-api-crds"
# The binaries a component puts in $BIN (k8s builds several, gateway-api-crds none; every other one builds one of its
# name).
products() {
  case "$1" in
    k8s) echo kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy ;;
    gateway-api-crds) ;;  # files, not a binary
    *) echo "$1" ;;
  esac
}
list=0
if [[ "${1:-}" == --list ]]; then list=1; shift; fi  # --list: print the binaries of the components, build nothing
components=()
for arg in "${@:-test}"; do
  if [[ -n "${SETS[$arg]:-}" ]]; then
    read -r -a expanded <<<"${SETS[$arg]}"
    components+=("${expanded[@]}")
  elif declare -F "build_$arg" >/dev/null; then
    components+=("$arg")
  else
    echo "hack/build-binaries.sh: unknown component or set '$arg' (sets: ${!SETS[*]})" >&2
    exit 2
  fi
done
if ((list)); then
  for c in "${components[@]}"; do products "$c"; done | tr ' ' '\n'
  exit 0
fi
for c in "${components[@]}"; do
  start=$SECONDS
  "build_$c"
  log "$c ready ($((SECONDS - start))s)"
done
echo "$BIN"
