"""Account use cases. Reads go through the psycopg read model; writes through the unit of work."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from account_api.accounts.repository import AccountReadModel, AccountRepository
from account_api.accounts.schemas import (
    AccountCreate,
    AccountOut,
    AccountUpdate,
    CurrencyTotalOut,
    TotalsOut,
)
from account_api.actor import Actor
from account_api.audit.service import Change, audit
from account_api.db import UnitOfWork
from account_api.errors import AccountNotFound
from account_api.integrations import rules
from account_api.integrations.service import IntegrationService
from account_api.limits import ensure_account_quota
from account_api.tables import Account


def account_view(row: dict[str, Any]) -> dict[str, Any]:
    """A row of the read model as the API shows it (secrets masked, sync facts gathered)."""
    row["sync"] = rules.sync_facts(row)
    for name in ("last_success_at", "last_failure_at", "last_error_code"):
        del row[name]
    row["integration_config"] = rules.public_config(
        row["integration_type"], row["integration_config"]
    )
    return row


_ROW_FIELDS = (set(AccountOut.model_fields) - {"sync"}) | set(rules.SYNC_COLUMNS)


def _out(account: Account) -> AccountOut:
    return AccountOut.model_validate(
        account_view({k: getattr(account, k) for k in _ROW_FIELDS})
    )


async def list_accounts(
    reads: AccountReadModel, actor: Actor, *, history_limit: int = 0
) -> list[dict[str, Any]]:
    """The actor's accounts; with `history_limit`, each with its newest history rows."""
    rows = (
        await reads.list_with_history(actor.user_id, history_limit)
        if history_limit
        else await reads.list_for_user(actor.user_id)
    )
    return [account_view(r) for r in rows]


async def totals(reads: AccountReadModel, actor: Actor) -> TotalsOut:
    """Per-currency totals; one net worth only where the currencies agree (no FX source)."""
    base, rows = await reads.totals_for_user(actor.user_id)
    by_currency = [CurrencyTotalOut.model_validate(r) for r in rows]
    single = by_currency[0] if len(by_currency) == 1 else None
    return TotalsOut(
        base_currency=base,
        by_currency=by_currency,
        net_worth=single.total if single else None,
        net_worth_currency=single.currency if single else None,
    )


async def get_account(
    reads: AccountReadModel, actor: Actor, account_id: int
) -> dict[str, Any]:
    row = await reads.one_for_user(actor.user_id, account_id)
    if row is None:
        raise AccountNotFound()
    return account_view(row)


async def create_account(
    uow: UnitOfWork, actor: Actor, body: AccountCreate, max_accounts: int
) -> AccountOut:
    async with uow:
        await ensure_account_quota(uow.quotas, actor.user_id, max_accounts)
        account = await AccountRepository(uow.session).add(
            Account(
                user_id=actor.user_id,
                name=body.name,
                currency=body.currency,
                account_type=body.account_type,
                account_number=body.account_number or None,
                original_capital=body.original_capital,
                current_balance=body.current_balance
                if body.current_balance is not None
                else body.original_capital,
                last_updated=datetime.now(UTC),
            )
        )
        await audit(
            uow,
            actor,
            Change("account.create", account.id, sorted(body.model_fields_set)),
        )
        await uow.commit()
        return _out(account)


async def update_account(
    uow: UnitOfWork,
    integrations: IntegrationService,
    actor: Actor,
    account_id: int,
    body: AccountUpdate,
) -> AccountOut:
    configuration = integrations.configuration
    endpoints = (
        await configuration.resolve(body.integration)
        if body.integration is not None and not body.remove_integration
        else None
    )
    async with uow:
        account = await AccountRepository(uow.session).owned(
            actor.user_id, account_id, for_update=True
        )
        if account is None:
            raise AccountNotFound()
        changed: list[str] = []
        for field in (
            "name",
            "currency",
            "account_type",
            "account_number",
            "original_capital",
            "current_balance",
        ):
            value = getattr(body, field)
            if (
                field in body.model_fields_set
                and value is not None
                and getattr(account, field) != value
            ):
                setattr(account, field, value)
                changed.append(field)
        if "current_balance" in changed:
            account.last_updated = datetime.now(UTC)
        if body.remove_integration:
            removal = configuration.apply_removal(uow, actor, account)
            await audit(uow, actor, removal)
        elif body.integration is not None:
            await configuration.check_configuration(
                uow, actor, account, body.integration, endpoints
            )
            change = configuration.apply_configuration(
                uow, actor, account, body.integration
            )
            if change.fields:
                await audit(uow, actor, change)
                configuration.first_refresh(uow, actor, account)
        if changed:
            account.updated_at = datetime.now(UTC)
            await audit(uow, actor, Change("account.update", account.id, changed))
        await uow.commit()
        return _out(account)


async def delete_account(
    uow: UnitOfWork, integrations: IntegrationService, actor: Actor, account_id: int
) -> None:
    async with uow:
        repo = AccountRepository(uow.session)
        account = await repo.owned(actor.user_id, account_id, for_update=True)
        if account is None:
            raise AccountNotFound()
        if account.integration_type is not None:
            integrations.configuration.apply_removal(uow, actor, account)
        await audit(
            uow,
            actor,
            Change("account.delete", account.id, detail={"name": account.name}),
        )
        await repo.delete(account)
        await uow.commit()
