"""Gateway endpoint owners."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Integer, and_, case, func, or_, select, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from account_api.gateways.service import LOOPBACK_KEY
from account_api.tables import Account, GatewayEndpoint


class GatewayEndpointRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def claim(
        self, user_id: int, endpoints: Iterable[tuple[str, int]]
    ) -> dict[tuple[str, int], int]:
        """Record `user_id` as owner of every endpoint nobody owns; returns every owner.

        A concurrent claim of the same endpoint waits on the primary key until the first
        commits, then sees its owner."""
        keys = sorted(set(endpoints))
        if not keys:
            return {}
        await self._session.execute(
            insert(GatewayEndpoint)
            .values([{"address": a, "port": p, "user_id": user_id} for a, p in keys])
            .on_conflict_do_nothing()
        )
        return await self.owners(keys)

    async def owners(
        self, endpoints: Iterable[tuple[str, int]]
    ) -> dict[tuple[str, int], int]:
        """The owner of each of `endpoints` that has one."""
        keys = sorted(set(endpoints))
        if not keys:
            return {}
        rows = await self._session.execute(
            select(
                GatewayEndpoint.address, GatewayEndpoint.port, GatewayEndpoint.user_id
            ).where(tuple_(GatewayEndpoint.address, GatewayEndpoint.port).in_(keys))
        )
        return {(a, p): owner for a, p, owner in rows.all()}

    async def used_by_others(
        self, user_id: int, endpoints: Iterable[tuple[str, int]]
    ) -> set[tuple[str, int]]:
        """Which of `endpoints` another user's IB integration points at (integrations written
        before endpoints had owners, such as those imported from the legacy app)."""
        keys = sorted(set(endpoints))
        if not keys:
            return set()
        config = Account.integration_config
        raw = func.lower(config["host"].astext)
        # The same folding as the service's endpoint keys, for rows that were never claimed.
        host = case(
            (
                or_(
                    raw.in_(("localhost", "::1", "[::1]")),
                    raw.like("127.%"),
                ),
                LOOPBACK_KEY,
            ),
            else_=raw,
        )
        port = config["port"].astext.cast(Integer)
        found = await self._session.execute(
            select(host, port)
            .where(
                Account.integration_type == "IB",
                Account.user_id != user_id,
                or_(*(and_(host == a, port == p) for a, p in keys)),
            )
            .distinct()
        )
        return {(a, p) for a, p in found.all()}
