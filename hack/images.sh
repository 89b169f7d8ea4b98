#!/usr/bin/env bash
# `make images`: build modelloop's images with the local Docker engine, each cached by content.
#
#   base      Debian bookworm + Python 3.11 (mmdebstrap from the machine's apt sources, `docker import`),
#             standing in for python:3.11-slim because no registry is reachable here
#   pause     the node's sandbox image (a static Go program FROM scratch)
#   operator  Dockerfile, target operator  (modelloop-operator)
#   runtime   Dockerfile, target runtime   (modelloop-train, modelloop-serve)
#
# Every image is tagged with a hash of what went into it, so a warm run only hashes files (seconds) and a
# changed source file rebuilds just the layers after its COPY. Prints KEY=VALUE lines:
#   BASE_IMAGE= PAUSE_IMAGE= OPERATOR_IMAGE= RUNTIME_IMAGE=   (and *_ID= with each image's sha256 id)
# With MODELLOOP_CONTAINERD_SOCKET set, also imports the images into that containerd (namespace k8s.io),
# which is how the embedded node gets them without a registry.
set -euo pipefail
shopt -s inherit_errexit

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
REPO="${MODELLOOP_IMAGE_REPO:-modelloop.local}"
log() { printf '[images] %s\n' "$*" >&2; }

"$here/host-deps.sh"

hash_of() { sha256sum | cut -c1-16; }
exists() { docker image inspect "$1" >/dev/null 2>&1; }
image_id() { docker image inspect --format '{{.Id}}' "$1"; }

# --- base: the root filesystem changes only when this package list (or the Debian suite) does
BASE_PACKAGES="python3,python3-venv,ca-certificates"
base_tag="$(printf 'bookworm %s v1' "$BASE_PACKAGES" | hash_of)"
BASE_IMAGE="$REPO/base:bookworm-py311-$base_tag"
if ! exists "$BASE_IMAGE"; then
  log "base: mmdebstrap bookworm ($BASE_PACKAGES), about 3 minutes"
  sources="$(ls /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 || true)"
  [[ -n "$sources" ]] || sources=/etc/apt/sources.list
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  mmdebstrap --quiet --variant=minbase --include="$BASE_PACKAGES" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    bookworm "$tmp/rootfs.tar" "$sources" >&2
  docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$tmp/rootfs.tar" "$BASE_IMAGE" >/dev/null
fi

# --- pause
pause_src="$here/images/pause"
pause_tag="$(cat "$pause_src"/* | hash_of)"
PAUSE_IMAGE="$REPO/pause:$pause_tag"
if ! exists "$PAUSE_IMAGE"; then
  log "pause: building"
  (cd "$pause_src" && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-buildvcs=false go build -trimpath -ldflags='-s -w' -o "$pause_src/pause" .)
  docker build -q -t "$PAUSE_IMAGE" "$pause_src" >/dev/null
  rm -f "$pause_src/pause"
fi

# --- operator and runtime: hash the files their Dockerfiles copy, the Dockerfile and the base
sources_hash() {
  (cd "$root" && { git ls-files -co --exclude-standard -- pyproject.toml README.md operator model-server 2>/dev/null \
                   || find pyproject.toml README.md operator model-server -type f; } \
     | grep -v '__pycache__' | LC_ALL=C sort | xargs sha256sum)
}
src_hash="$(sources_hash | hash_of)"
extra_ca="$(cat /usr/local/share/ca-certificates/*.crt 2>/dev/null || true)"
build_app() { # build_app <target>: a target of the Dockerfile
  local name="$1" ref
  ref="$(app_ref "$name")"
  if ! exists "$ref"; then
    require_space "$docker_root" 2048 "building $ref"
    log "$name: docker build --target $name (the dependency layer is cached until the dependencies change)"
    # --network=host: pip reaches PyPI the way the host does.
    docker build -q --network=host --build-arg "BASE=$BASE_IMAGE" --build-arg "EXTRA_CA_CERTS=$extra_ca" \
      --target "$name" -t "$ref" "$root" >/dev/null
  fi
}
app_ref() { echo "$REPO/$1:$( { echo "$src_hash $1"; cat "$root/Dockerfile"; image_id "$BASE_IMAGE"; } | hash_of)"; }
OPERATOR_IMAGE="$(app_ref operator)"
RUNTIME_IMAGE="$(app_ref runtime)"

# --- keep the disk bounded. Every source change makes new tags (about 1 GiB of layers per build, twice
# that again once imported into the node), so older tags of our repositories go before anything is built:
# Docker keeps the current tag and the MODELLOOP_IMAGE_KEEP (2) most recent others (another checkout may
# be using them); the node's containerd keeps only what this run imports (below).
keep="${MODELLOOP_IMAGE_KEEP:-2}"
for ref in "$BASE_IMAGE" "$PAUSE_IMAGE" "$OPERATOR_IMAGE" "$RUNTIME_IMAGE"; do
  docker images --format '{{.Repository}}:{{.Tag}}' "${ref%:*}" | grep -vxF "$ref" | tail -n +"$((keep + 1))" \
    | xargs -r docker rmi >/dev/null 2>&1 || true
done
# Builds also leave their first stage behind untagged (the dependency layer is the next build's cache):
# the chains no newer build uses go after a day.
docker image prune -f --filter until=24h >/dev/null 2>&1 || true
# What is left must fit; checked only where there is work to do, so a warm run never fails on it.
require_space() { # require_space <dir> <MiB> <what>
  local probe="$1" free_mib
  while [[ ! -e "$probe" ]]; do probe="$(dirname "$probe")"; done
  free_mib="$(df --output=avail -BM "$probe" | tail -n1 | tr -dc 0-9)"
  if (( free_mib < $2 )); then
    log "only ${free_mib} MiB free under $1; $3 needs about $2 MiB"
    log "(\`docker system df\` shows what Docker holds; \`make cluster-down && docker system prune\` frees what modelloop left)"
    exit 1
  fi
}
docker_root="$(docker info --format '{{.DockerRootDir}}' 2>/dev/null || echo /var/lib/docker)"
build_app operator
build_app runtime

if [[ -n "${MODELLOOP_CONTAINERD_SOCKET:-}" ]]; then
  # An import names each image twice (its tag and sha256:<image id>); what names none of today's goes first.
  current=()
  for ref in "$PAUSE_IMAGE" "$OPERATOR_IMAGE" "$RUNTIME_IMAGE"; do current+=(-e "$ref" -e "$(image_id "$ref")"); done
  ctr --address "$MODELLOOP_CONTAINERD_SOCKET" -n k8s.io images ls -q 2>/dev/null | grep -E "^($REPO/|sha256:)" \
    | grep -vxF "${current[@]}" \
    | xargs -r ctr --address "$MODELLOOP_CONTAINERD_SOCKET" -n k8s.io images rm --sync >/dev/null 2>&1 || true
  for ref in "$PAUSE_IMAGE" "$OPERATOR_IMAGE" "$RUNTIME_IMAGE"; do
    if ! ctr --address "$MODELLOOP_CONTAINERD_SOCKET" -n k8s.io images ls -q "name==$ref" 2>/dev/null | grep -q .; then
      require_space "${MODELLOOP_CONTAINERD_ROOT:-/var/lib/modelloop/containerd}" 2048 "importing $ref into the node"
      log "importing $ref into the node's containerd"
      docker save "$ref" | ctr --address "$MODELLOOP_CONTAINERD_SOCKET" -n k8s.io images import - >/dev/null
    fi
  done
fi

for v in BASE_IMAGE PAUSE_IMAGE OPERATOR_IMAGE RUNTIME_IMAGE; do
  echo "$v=${!v}"
  echo "${v%_IMAGE}_ID=$(image_id "${!v}")"
done
