"""Audit log reads."""

from __future__ import annotations

from account_api.accounts.repository import AccountRepository
from account_api.actor import Actor
from account_api.audit.repository import AuditRepository
from account_api.audit.schemas import AuditOut
from account_api.db import UnitOfWork
from account_api.errors import AccountNotFound


async def account_audit(
    uow: UnitOfWork, actor: Actor, account_id: int
) -> list[AuditOut]:
    """The newest entries of one of the actor's accounts."""
    async with uow:
        if (
            await AccountRepository(uow.session).owned(actor.user_id, account_id)
            is None
        ):
            raise AccountNotFound()
        return [
            AuditOut.model_validate(e)
            for e in await AuditRepository(uow.session).for_account(account_id)
        ]
