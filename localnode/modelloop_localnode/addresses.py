"""Pod IPs: one local address per pod, from the node's pod CIDR.

The API server refuses loopback addresses (127.0.0.0/8) in EndpointSlices, so pod IPs come from an
ordinary private range that the agent makes local with one route, `ip route add local <cidr> dev lo`
(Linux "AnyIP": every address of the range can be bound and reached on this host, no per-pod setup).
That needs CAP_NET_ADMIN once; without it the agent falls back to 127.0.x.y, where processes still get
their own address but Services cannot list them.
"""
from __future__ import annotations

import ipaddress
import socket
import struct
import subprocess
import threading
from pathlib import Path

from .log import log

LOOPBACK_FALLBACK = "127.0.0.0/16"


def bindable(address: str) -> bool:
    with socket.socket() as s:
        try:
            s.bind((address, 0))
            return True
        except OSError:
            return False


def ensure_local_range(cidr: str) -> str:
    """Make `cidr` bindable on this host; returns the range pods get addresses from."""
    network = ipaddress.ip_network(cidr)
    probe = str(next(network.hosts()))
    if bindable(probe):
        return cidr
    if not network.is_loopback:
        try:
            result = subprocess.run(["ip", "route", "add", "local", cidr, "dev", "lo"], capture_output=True, text=True)
            error = result.stderr.strip()
        except OSError as e:  # no `ip` command
            error = str(e)
        if bindable(probe):
            log("pod_cidr.route_added", cidr=cidr, undo=f"ip route del local {cidr} dev lo")
            return cidr
        log("pod_cidr.unroutable", level="warning", cidr=cidr, fallback=LOOPBACK_FALLBACK, error=error or "bind failed",
            consequence="pod IPs are loopback addresses, which EndpointSlices reject: Services get no endpoints")
    return LOOPBACK_FALLBACK


def bound_addresses() -> set[str]:
    """IPv4 addresses that sockets on this host are bound to (from /proc/net/{tcp,udp}): another
    agent's pods (a second cluster on the same host) may already use addresses of our range."""
    found = set()
    for table in ("tcp", "udp"):
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local = line.split()[1].split(":")[0]
            found.add(socket.inet_ntoa(struct.pack("<I", int(local, 16))))
    return found


class AddressPool:
    """Hands out the lowest free address of the range: never .0 or .255 of a /24, never 127.0.0.x,
    never one a socket on this host is bound to."""

    def __init__(self, cidr: str) -> None:
        self.network = ipaddress.ip_network(cidr)
        self._by_owner: dict[str, str] = {}
        self._lock = threading.Lock()

    def _candidates(self):
        for address in self.network.hosts():
            text = str(address)
            last = int(address) & 0xFF
            if last in (0, 255) or (address.is_loopback and (int(address) >> 8) & 0xFF == 0):
                continue
            yield text

    def contains(self, address: str) -> bool:
        try:
            return ipaddress.ip_address(address) in self.network
        except ValueError:
            return False

    def allocate(self, owner: str, preferred: str | None = None) -> str:
        with self._lock:
            if owner in self._by_owner:
                return self._by_owner[owner]
            taken = set(self._by_owner.values())
            if preferred and preferred not in taken and self.contains(preferred):
                self._by_owner[owner] = preferred
                return preferred
            taken |= bound_addresses()
            for address in self._candidates():
                if address not in taken:
                    self._by_owner[owner] = address
                    return address
        raise RuntimeError(f"no free pod address left in {self.network}")

    def release(self, owner: str) -> None:
        with self._lock:
            self._by_owner.pop(owner, None)
