"""The legacy routes' behaviour over per-account integrations: IB settings map to the IB
integration of `target_account_id`'s account, Schwab settings to every Schwab account of the
user. Writes go through `IntegrationConfiguration.configure` (validation, outbox event, audit)."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime
from typing import Any

from pydantic import ValidationError

from account_api.accounts.repository import AccountRepository
from account_api.actor import Actor
from account_api.compat.schemas import (
    IBBalanceOut,
    IBSettingsIn,
    IBSettingsOut,
    SchwabSettingsIn,
    SchwabSettingsOut,
    SchwabTokenStatusOut,
)
from account_api.db import UnitOfWork
from account_api.errors import Conflict, InvalidField
from account_api.integrations import rules
from account_api.integrations.schemas import IBIntegrationIn, SchwabIntegrationIn
from account_api.integrations.service import IntegrationService
from account_api.tables import Account

log = logging.getLogger("account_api.compat")


class UsageLog:
    """Logs each deprecated route once per user per day (in this process: with several workers,
    at most once per worker)."""

    def __init__(self) -> None:
        self._day: date | None = None
        self._seen: set[tuple[int, str]] = set()

    def use(self, user_id: int, route: str) -> bool:
        today = datetime.now(UTC).date()
        if today != self._day:
            self._day, self._seen = today, set()
        if (user_id, route) in self._seen:
            return False
        self._seen.add((user_id, route))
        log.warning("deprecated route used", extra={"user_id": user_id, "route": route})
        return True


usage = UsageLog()


def _invalid(exc: ValidationError) -> InvalidField:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"] if p != "config")
    return InvalidField(f"{where}: {first['msg']}", field=where)


async def _integrated(uow: UnitOfWork, actor: Actor, kind: str) -> list[Account]:
    return [
        a
        for a in await AccountRepository(uow.session).integrated(actor.user_id)
        if a.integration_type == kind
    ]


def _epoch(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment else None


def _ib_view(accounts: list[Account], chosen: Account | None) -> IBSettingsOut:
    rows = [
        {
            "account_id": a.id,
            "name": a.name,
            **rules.public_config("IB", a.integration_config or {}),
            "status": a.integration_status,
        }  # type: ignore[dict-item]
        for a in accounts
    ]
    if chosen is None:
        return IBSettingsOut(configured=False, accounts=rows)
    config = chosen.integration_config or {}
    return IBSettingsOut(
        configured=True,
        host=config.get("host"),
        port=config.get("port"),
        client_id=config.get("client_id"),
        target_account_id=chosen.id,
        is_connected=chosen.integration_status == "connected",
        status=chosen.integration_status,
        last_connected=chosen.last_connected_at,
        account_balance=chosen.current_balance,
        account_currency=chosen.currency,
        error=chosen.last_error,
        accounts=rows,
    )


class CompatService:
    def __init__(self, integrations: IntegrationService) -> None:
        self._integrations = integrations

    async def ib_settings(
        self, uow: UnitOfWork, actor: Actor, target_account_id: int | None = None
    ) -> IBSettingsOut:
        async with uow:
            accounts = await _integrated(uow, actor, "IB")
            chosen = (
                next((a for a in accounts if a.id == target_account_id), None)
                if target_account_id
                else (accounts[0] if accounts else None)
            )
            return _ib_view(accounts, chosen)

    async def save_ib_settings(
        self, uow: UnitOfWork, actor: Actor, body: IBSettingsIn
    ) -> IBSettingsOut:
        async with uow:
            configs = {
                a.id: dict(a.integration_config or {})
                for a in await _integrated(uow, actor, "IB")
            }
        account_id = body.target_account_id
        if account_id is None:
            if len(configs) != 1:
                raise InvalidField(
                    "target_account_id is required: name the account these IB settings belong to",
                    field="target_account_id",
                )
            account_id = next(iter(configs))
        previous = configs.get(account_id, {})
        config: dict[str, Any] = {
            "host": body.host,
            "port": body.port,
            "client_id": body.client_id,
        }
        for keep in (
            "account_code",
            "backups",
        ):  # the legacy client knows nothing of these: keep them
            if previous.get(keep):
                config[keep] = previous[keep]
        try:
            integration = IBIntegrationIn.model_validate(
                {"type": "IB", "config": config}
            )
        except ValidationError as exc:
            raise _invalid(exc) from None
        await self._integrations.configuration.configure(
            uow, actor, account_id, integration
        )
        return await self.ib_settings(uow, actor, account_id)

    async def ib_balance(self, uow: UnitOfWork, actor: Actor) -> IBBalanceOut:
        async with uow:
            accounts = await _integrated(uow, actor, "IB")
            rows = [
                {
                    "account_id": a.id,
                    "name": a.name,
                    "balance": a.current_balance,
                    "currency": a.currency,
                    "last_updated": a.last_success_at or a.last_updated,
                    "status": a.integration_status,
                }
                for a in accounts
            ]
            first = accounts[0] if accounts else None
            return IBBalanceOut(
                balance=first.current_balance if first else None,
                currency=first.currency if first else None,
                account_id=first.id if first else None,
                last_updated=(first.last_success_at or first.last_updated)
                if first
                else None,
                accounts=rows,
            )

    async def ib_refresh(self, uow: UnitOfWork, actor: Actor) -> list[dict[str, Any]]:
        async with uow:
            ids = [a.id for a in await _integrated(uow, actor, "IB")]
        if not ids:
            raise Conflict("no IB integration configured", field="target_account_id")
        out = []
        for account_id in ids:
            result = await self._integrations.refreshes.refresh(
                uow, actor, account_id, 0
            )
            out.append(
                {
                    "account_id": account_id,
                    "refresh_id": str(result.refresh_id),
                    "status": result.status,
                }
            )
        return out

    async def schwab_settings(self, uow: UnitOfWork, actor: Actor) -> SchwabSettingsOut:
        async with uow:
            accounts = await _integrated(uow, actor, "SCHWAB")
            if not accounts:
                return SchwabSettingsOut(configured=False)
            first = (
                rules.public_config("SCHWAB", accounts[0].integration_config or {})
                or {}
            )
            return SchwabSettingsOut(
                configured=True,
                app_key=first.get("app_key"),
                has_tokens=any(
                    (a.integration_config or {}).get("token_enc") for a in accounts
                ),
                token_expires_at=_epoch(accounts[0].token_access_expires_at),
                accounts=[
                    {
                        "account_id": a.id,
                        "name": a.name,
                        "status": a.integration_status,
                        **(
                            rules.public_config("SCHWAB", a.integration_config or {})
                            or {}
                        ),
                    }
                    for a in accounts
                ],
            )

    async def save_schwab_settings(
        self, uow: UnitOfWork, actor: Actor, body: SchwabSettingsIn
    ) -> SchwabSettingsOut:
        async with uow:
            ids = [a.id for a in await _integrated(uow, actor, "SCHWAB")]
        if not ids:
            raise Conflict(
                "no Schwab account is linked yet: configure one with PUT /api/accounts/{id}/integration",
                field="app_key",
            )
        try:
            integration = SchwabIntegrationIn.model_validate(
                {
                    "type": "SCHWAB",
                    "config": {"app_key": body.app_key, "app_secret": body.app_secret},
                }
            )
        except ValidationError as exc:
            raise _invalid(exc) from None
        for account_id in ids:
            await self._integrations.configuration.configure(
                uow, actor, account_id, integration
            )
        return await self.schwab_settings(uow, actor)

    async def schwab_token_status(
        self, uow: UnitOfWork, actor: Actor
    ) -> SchwabTokenStatusOut:
        async with uow:
            accounts = await _integrated(uow, actor, "SCHWAB")
            now = datetime.now(UTC)
            if not accounts:
                return SchwabTokenStatusOut(
                    configured=False,
                    has_tokens=False,
                    is_expired=True,
                    needs_reauth=True,
                    token_expires_at=None,
                    refresh_token_expires_at=None,
                    status=None,
                )
            a = accounts[0]
            has = bool((a.integration_config or {}).get("token_enc"))
            refresh_dead = (
                a.token_refresh_expires_at is not None
                and a.token_refresh_expires_at <= now
            )
            return SchwabTokenStatusOut(
                configured=True,
                has_tokens=has,
                is_expired=a.token_access_expires_at is None
                or a.token_access_expires_at <= now,
                needs_reauth=not has
                or refresh_dead
                or a.integration_status == "reauth_required",
                token_expires_at=_epoch(a.token_access_expires_at),
                refresh_token_expires_at=_epoch(a.token_refresh_expires_at),
                status=a.integration_status,
            )
