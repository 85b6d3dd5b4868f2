"""Which network addresses a connector may open connections to (`IB_CONNECTOR_ALLOWED_NETWORKS`).

account-api checks a host before it stores an integration and the connector checks again before
every connect, both by resolving the name the same way (`getaddrinfo`, TCP) and requiring every
address it yields to be inside the allowed networks and outside the always-denied ones.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

LOOPBACK = "127.0.0.0/8,::1/128"
PRIVATE_RANGES = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"
# Link-local (cloud metadata lives at 169.254.169.254 / fd00:ec2::254), the unspecified and
# broadcast/multicast addresses, and Alibaba's metadata address: never a gateway.
ALWAYS_DENIED = (
    "169.254.0.0/16,fe80::/10,fd00:ec2::254/128,100.100.100.200/32,"
    "0.0.0.0/8,::/128,224.0.0.0/4,ff00::/8,255.255.255.255/32"
)

RESOLVE_TIMEOUT_S = 5.0


class HostNotAllowed(Exception):
    """The host resolves to an address outside the allowed networks (or does not resolve).

    The message never carries the resolved addresses: they are the operator's business."""

    def __init__(self, message: str, *, code: str = "host_not_allowed") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def parse_networks(raw: str | Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parse comma-separated CIDRs; raises ValueError naming the bad entry's position."""
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    networks = []
    for position, item in enumerate(items, start=1):
        text = item.strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"entry {position} is not a CIDR network") from None
    return tuple(networks)


def _plain(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True)
class NetworkReach:
    """The allowed and the always-denied networks; denied wins."""

    allowed: tuple[IPNetwork, ...]
    denied: tuple[IPNetwork, ...]

    @classmethod
    def from_settings(cls, allowed: str, extra_denied: str = "") -> NetworkReach:
        return cls(
            parse_networks(allowed),
            parse_networks(ALWAYS_DENIED) + parse_networks(extra_denied),
        )

    def permits(self, address: IPAddress) -> bool:
        plain = _plain(address)
        if any(plain in net for net in self.denied if net.version == plain.version):
            return False
        return any(plain in net for net in self.allowed if net.version == plain.version)

    async def resolve(self, host: str, port: int) -> list[str]:
        """Every address `host` resolves to for a TCP connect, when all are permitted."""
        try:
            literal: IPAddress | None = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            found = [literal]
        else:
            try:
                async with asyncio.timeout(RESOLVE_TIMEOUT_S):
                    infos = await asyncio.get_running_loop().getaddrinfo(
                        host, port, type=socket.SOCK_STREAM
                    )
            except (OSError, UnicodeError, TimeoutError):
                raise HostNotAllowed(
                    "host does not resolve to an address", code="host_unresolvable"
                ) from None
            found = []
            for info in infos:
                address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
                if address not in found:
                    found.append(address)
            if not found:
                raise HostNotAllowed(
                    "host does not resolve to an address", code="host_unresolvable"
                )
        if not all(self.permits(a) for a in found):
            raise HostNotAllowed(
                "host is outside the networks this installation may connect to"
            )
        return [str(_plain(a)) for a in found]
