#!/usr/bin/env bash
# Host packages the embedded node needs, from Debian (the only place this machine gets system software):
# Docker (builds the images), containerd + runc (the node's container runtime, run as its own instance),
# the CNI plugins, iptables/conntrack (kube-proxy), ipset (kube-router's NetworkPolicy sets), mmdebstrap (the base image's root filesystem),
# Chromium (the report tests look at the DriftMonitor report as a person would: a headless screenshot).
# Idempotent: installs only what is missing; starts dockerd when it is not answering.
set -euo pipefail

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[[ -x /usr/lib/cni/bridge ]] || need+=(containernetworking-plugins)
command -v iptables >/dev/null || need+=(iptables)
command -v conntrack >/dev/null || need+=(conntrack)
command -v ipset >/dev/null || need+=(ipset)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v ip >/dev/null || need+=(iproute2)
command -v openssl >/dev/null || need+=(openssl)
command -v chromium >/dev/null || need+=(chromium)
if ((${#need[@]})); then
  echo "[host] installing ${need[*]} from Debian" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# dockerd without systemd: start it in its own session, record its pid, wait for the socket.
if ! docker info >/dev/null 2>&1; then
  echo "[host] starting dockerd" >&2
  mkdir -p /var/log/modelloop
  setsid sh -c 'echo $$ > /run/modelloop-dockerd.pid; exec dockerd' >/var/log/modelloop/dockerd.log 2>&1 </dev/null &
  for _ in $(seq 1 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { echo "[host] dockerd did not start; see /var/log/modelloop/dockerd.log" >&2; exit 1; }
fi
