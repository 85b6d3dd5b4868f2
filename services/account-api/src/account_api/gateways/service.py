"""Gateway endpoints belong to users: the first user to configure an IB Gateway's (host, port)
owns it, and nobody else may point an integration at it.

A real IB Gateway cannot tell brokerlink's users apart (it trusts the connector's address), so
this is what keeps one user from reading another's accounts. An endpoint is recorded under its
name and under every address the name resolves to, so `localhost` and `127.0.0.1` are one
endpoint. Hosts are resolved the way the connector will connect (`NetworkReach`), and a host
outside the allowed networks is refused before anything is stored. Names are resolved before
the request's transaction opens (`GatewayEndpoints.resolve`), never while it holds a lock.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from brokerlink_shared.contracts.values import (
    GATEWAY_OWNED_ELSEWHERE,
    GATEWAY_OWNED_ELSEWHERE_MESSAGE,
)
from brokerlink_shared.reach import HostNotAllowed, NetworkReach

from account_api.errors import Conflict, InvalidField
from account_api.integrations.schemas import IBConfigIn


class EndpointOwners(Protocol):
    """Who owns which endpoint (`GatewayEndpointRepository`, or a fake in the fast tests)."""

    async def claim(
        self, user_id: int, endpoints: Iterable[tuple[str, int]]
    ) -> dict[tuple[str, int], int]: ...

    async def used_by_others(
        self, user_id: int, endpoints: Iterable[tuple[str, int]]
    ) -> set[tuple[str, int]]: ...

    async def owners(
        self, endpoints: Iterable[tuple[str, int]]
    ) -> dict[tuple[str, int], int]: ...


class GatewayOwnedElsewhere(Conflict):
    def __init__(self, field: str) -> None:
        # Names no account and no user, and reads the same whether the address was taken here
        # or the connector found the gateway's accounts claimed (ib-connector's account claims).
        super().__init__(GATEWAY_OWNED_ELSEWHERE_MESSAGE, field=field)
        self.code = GATEWAY_OWNED_ELSEWHERE


class HostOutsideReach(InvalidField):
    def __init__(self, refused: HostNotAllowed, field: str) -> None:
        super().__init__(refused.message, field=field)
        self.code = refused.code


@dataclass(frozen=True)
class ResolvedEndpoints:
    """An IB config's gateway endpoints, each recorded under its name and every address it
    resolves to (key -> the config field it came from). Resolved before the transaction
    opens: a slow name server must not hold an account's row lock, on which stored refresh
    results wait, or a pooled connection."""

    endpoints: tuple[tuple[str, str, int], ...]  # (field, host, port) as configured
    field_of: dict[tuple[str, int], str]

    def covers(self, config: IBConfigIn) -> bool:
        """Resolved for exactly these endpoints."""
        return self.endpoints == _endpoints(config)


def _endpoints(config: IBConfigIn) -> tuple[tuple[str, str, int], ...]:
    return (
        ("config.host", config.host, config.port),
        *(
            (f"config.backups.{i}.host", b.host, b.port)
            for i, b in enumerate(config.backups or [])  # absent: the stored ones stay
        ),
    )


class GatewayEndpoints:
    def __init__(self, reach: NetworkReach) -> None:
        self._reach = reach

    async def resolve(self, config: IBConfigIn) -> ResolvedEndpoints:
        """Every endpoint of `config` resolved; a host outside the allowed networks (or one
        that resolves to nothing) is refused here, before anything is read or locked."""
        endpoints = _endpoints(config)
        field_of: dict[tuple[str, int], str] = {}
        for field, host, port in endpoints:
            try:
                addresses = await self._reach.resolve(host, port)
            except HostNotAllowed as exc:
                raise HostOutsideReach(exc, field) from None
            for key in [
                (_name(host), port),
                *((_address_key(a), port) for a in addresses),
            ]:
                field_of.setdefault(key, field)
        return ResolvedEndpoints(endpoints, field_of)

    async def claim(
        self,
        endpoints_repo: EndpointOwners,
        user_id: int,
        config: IBConfigIn,
        resolved: ResolvedEndpoints,
    ) -> None:
        """Check every endpoint of `config` is free or the user's own, and record the user as
        owner of the free ones (in the caller's transaction)."""
        await self._refuse_taken(endpoints_repo, user_id, config, resolved, record=True)

    async def check(
        self,
        endpoints_repo: EndpointOwners,
        user_id: int,
        config: IBConfigIn,
        resolved: ResolvedEndpoints,
    ) -> None:
        """As `claim`, recording nothing: for a dry test of settings that are not saved."""
        await self._refuse_taken(
            endpoints_repo, user_id, config, resolved, record=False
        )

    async def _refuse_taken(
        self,
        endpoints_repo: EndpointOwners,
        user_id: int,
        config: IBConfigIn,
        resolved: ResolvedEndpoints,
        *,
        record: bool,
    ) -> None:
        if not resolved.covers(config):
            raise RuntimeError("gateway endpoints resolved for another configuration")
        field_of = resolved.field_of
        taken = await endpoints_repo.used_by_others(user_id, field_of)
        owners = await (
            endpoints_repo.claim(user_id, field_of)
            if record
            else endpoints_repo.owners(field_of)
        )
        taken |= {key for key, owner in owners.items() if owner != user_id}
        if taken:
            fields = {field_of[key] for key in taken}
            raise GatewayOwnedElsewhere(
                "config.host" if "config.host" in fields else min(fields)
            )


LOOPBACK_KEY = "loopback"


def _address_key(address: str) -> str:
    """One key for every address of one machine we can recognise: a gateway that listens on
    all interfaces answers on every loopback address, so owning one of them owns them all."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return LOOPBACK_KEY if ip.is_loopback else str(ip)


def _name(host: str) -> str:
    name = host.strip().strip("[]").lower().rstrip(".")
    return LOOPBACK_KEY if name == "localhost" else _address_key(name)
