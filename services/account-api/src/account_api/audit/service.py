"""The audit trail: `audit` writes who changed what (one helper for every use case), and
`account_audit` reads an account's newest entries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from account_api.actor import Actor
from account_api.audit.schemas import AuditOut
from account_api.errors import AccountNotFound
from account_api.unit_of_work import UnitOfWork


@dataclass(frozen=True, slots=True)
class Change:
    """What an actor did: the action, the account it touched, the names (never the values) of
    the fields it changed, and any detail worth keeping."""

    action: str
    account_id: int | None = None
    fields: Sequence[str] = ()
    detail: dict[str, Any] | None = field(default=None)


async def audit(uow: UnitOfWork, actor: Actor, change: Change) -> None:
    """Append `change` by `actor` to the audit log, in the open transaction."""
    await uow.audit_log.record(
        actor=str(actor.user_id),
        user_id=actor.user_id,
        account_id=change.account_id,
        action=change.action,
        changed_fields=list(change.fields),
        request_id=actor.request_id,
        detail=change.detail,
    )


async def account_audit(
    uow: UnitOfWork, actor: Actor, account_id: int
) -> list[AuditOut]:
    """The newest entries of one of the actor's accounts."""
    async with uow:
        if await uow.accounts.owned(actor.user_id, account_id) is None:
            raise AccountNotFound()
        return [
            AuditOut.model_validate(e)
            for e in await uow.audit_log.for_account(account_id)
        ]
