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
  local name="$1" tag ref
  tag="$( { echo "$src_hash $name"; cat "$root/Dockerfile"; image_id "$BASE_IMAGE"; } | hash_of)"
  ref="$REPO/$name:$tag"
  if ! exists "$ref"; then
    log "$name: docker build --target $name (the dependency layer is cached until the dependencies change)"
    # --network=host: pip reaches PyPI the way the host does.
    docker build -q --network=host --build-arg "BASE=$BASE_IMAGE" --build-arg "EXTRA_CA_CERTS=$extra_ca" \
      --target "$name" -t "$ref" "$root" >/dev/null
  fi
  echo "$ref"
}
OPERATOR_IMAGE="$(build_app operator)"
RUNTIME_IMAGE="$(build_app runtime)"

if [[ -n "${MODELLOOP_CONTAINERD_SOCKET:-}" ]]; then
  for ref in "$PAUSE_IMAGE" "$OPERATOR_IMAGE" "$RUNTIME_IMAGE"; do
    if ! ctr --address "$MODELLOOP_CONTAINERD_SOCKET" -n k8s.io images ls -q "name==$ref" 2>/dev/null | grep -q .; then
      log "importing $ref into the node's containerd"
      docker save "$ref" | ctr --address "$MODELLOOP_CONTAINERD_SOCKET" -n k8s.io images import - >/dev/null
    fi
  done
fi

for v in BASE_IMAGE PAUSE_IMAGE OPERATOR_IMAGE RUNTIME_IMAGE; do
  echo "$v=${!v}"
  echo "${v%_IMAGE}_ID=$(image_id "${!v}")"
done
