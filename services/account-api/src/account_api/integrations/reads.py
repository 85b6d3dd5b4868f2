"""Integration read models: one account's integration, the health board, and the positions and
cash of the last balance."""

from __future__ import annotations

import uuid

from account_api.actor import Actor
from account_api.errors import AccountNotFound
from account_api.integrations import rules
from account_api.integrations.schemas import (
    CashOut,
    HealthRowOut,
    IntegrationOut,
    PositionOut,
)
from account_api.tables import Account
from account_api.unit_of_work import UnitOfWork


def integration_out(
    account: Account, refresh_id: uuid.UUID | None = None
) -> IntegrationOut:
    return IntegrationOut(
        type=account.integration_type,  # type: ignore[arg-type]
        config=rules.public_config(
            account.integration_type, account.integration_config
        ),
        status=account.integration_status,
        sync=rules.sync_facts_of(account),  # type: ignore[arg-type]
        refresh_id=refresh_id,
        last_error=account.last_error,
        last_error_code=account.last_error_code,
        last_refresh_at=account.last_refresh_at,
        last_success_at=account.last_success_at,
        last_connected_at=account.last_connected_at,
        token_access_expires_at=account.token_access_expires_at,
        token_refresh_expires_at=account.token_refresh_expires_at,
    )


async def owned_account(
    uow: UnitOfWork, actor: Actor, account_id: int, *, lock: bool = False
) -> Account:
    """The actor's account, in the open transaction; `AccountNotFound` otherwise."""
    account = await uow.accounts.owned(actor.user_id, account_id, for_update=lock)
    if account is None:
        raise AccountNotFound()
    return account


class IntegrationReads:
    async def get(
        self, uow: UnitOfWork, actor: Actor, account_id: int
    ) -> IntegrationOut:
        async with uow:
            return integration_out(await owned_account(uow, actor, account_id))

    async def health(self, uow: UnitOfWork, actor: Actor) -> list[HealthRowOut]:
        async with uow:
            accounts = await uow.accounts.integrated(actor.user_id)
            return [
                HealthRowOut(
                    account_id=a.id,
                    account_name=a.name,
                    type=a.integration_type or "",
                    status=a.integration_status,
                    sync=rules.sync_facts_of(a),  # type: ignore[arg-type]
                    last_success_at=a.last_success_at,
                    last_refresh_at=a.last_refresh_at,
                    last_error=a.last_error,
                    last_error_code=a.last_error_code,
                    token_access_expires_at=a.token_access_expires_at,
                    token_refresh_expires_at=a.token_refresh_expires_at,
                )
                for a in accounts
            ]

    async def positions(
        self, uow: UnitOfWork, actor: Actor, account_id: int
    ) -> list[PositionOut]:
        async with uow:
            await owned_account(uow, actor, account_id)
            rows = await uow.snapshots.positions(account_id)
            return [PositionOut.model_validate(r, from_attributes=True) for r in rows]

    async def cash(
        self, uow: UnitOfWork, actor: Actor, account_id: int
    ) -> list[CashOut]:
        async with uow:
            await owned_account(uow, actor, account_id)
            rows = await uow.snapshots.cash(account_id)
            return [CashOut.model_validate(r, from_attributes=True) for r in rows]
