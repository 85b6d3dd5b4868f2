"""Pending links: list, attach to an account (same validation, outbox event and audit as
`PUT /api/accounts/{id}/integration`, and the item is deleted in the same transaction), discard."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from brokerlink_shared.crypto import SecretBox, SecretDecryptionError
from pydantic import ValidationError

from account_api.actor import Actor
from account_api.audit.service import Change, audit
from account_api.errors import AccountNotFound, Conflict, InvalidField, NotFound
from account_api.integrations import lifecycle, rules
from account_api.integrations.reads import integration_out
from account_api.integrations.repository import integration_state, store_state
from account_api.integrations.schemas import (
    IBConfigIn,
    IBIntegrationIn,
    IntegrationOut,
    IntegrationRequest,
    SchwabIntegrationIn,
)
from account_api.integrations.service import IntegrationService
from account_api.pending_links.schemas import PendingLinkOut
from account_api.tables import Account, PendingLink
from account_api.unit_of_work import UnitOfWork

IB_FIELDS = ("host", "port", "client_id", "account_code", "read_only", "backups")
REFRESH_TTL = timedelta(days=7)


class PendingLinkNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("pending link not found")


class PendingLinkChanged(Conflict):
    """A migrator rerun changed the item's gateway while it was being attached."""

    def __init__(self) -> None:
        super().__init__(
            "the pending link changed while it was being attached; try again",
            field="pending_link_id",
        )


def summary(item: PendingLink) -> str:
    """What the item is, in a person's words (no secrets)."""
    c = item.config or {}
    if item.integration_type == "IB":
        if not c.get("host"):
            return "IB connection (its settings could not be read)"
        return f"IB gateway {c.get('host') or '?'}:{c.get('port') or '?'} (client id {c.get('client_id', '?')})"
    key = rules.public_config("SCHWAB", c) or {}
    return f"Schwab login (app key {key.get('app_key') or '?'})"


def _out(item: PendingLink) -> PendingLinkOut:
    return PendingLinkOut(
        id=item.id,
        type=item.integration_type,
        kind=item.kind if item.kind in ("link", "conflict", "quarantine") else "link",
        summary=summary(item),
        config=rules.public_config(item.integration_type, item.config),
        reason=item.reason,
        suggested_account_ids=list(item.suggestions or []),
        verified_account_ids=list(item.verified_suggestions or []),
        legacy_table=item.legacy_table,
        legacy_id=item.legacy_id,
        created_at=item.created_at,
    )


def _validation_error(exc: ValidationError) -> InvalidField:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return InvalidField(
        f"the stored settings are not valid ({where}: {first['msg']}); discard this item and configure the account instead",
        field=where,
    )


def _schwab_number(account: Account | None) -> str | None:
    digits = re.sub(r"[\s-]", "", (account.account_number if account else None) or "")
    return digits if digits.isdigit() and 4 <= len(digits) <= 12 else None


def build_integration_in(
    item: PendingLink, account: Account | None, secrets: SecretBox
) -> IntegrationRequest:
    """The request body `PUT .../integration` would take for this item, validated the same way
    (an IB item's does not depend on the account)."""
    config = item.config or {}
    try:
        if item.integration_type == "IB":
            return IBIntegrationIn.model_validate(
                {
                    "type": "IB",
                    "config": {k: config[k] for k in IB_FIELDS if k in config},
                }
            )
        secret_enc = config.get("app_secret_enc")
        try:
            secret = secrets.decrypt(secret_enc) if secret_enc else None
        except SecretDecryptionError:
            raise InvalidField(
                "the stored app secret cannot be decrypted", field="config.app_secret"
            ) from None
        return SchwabIntegrationIn.model_validate(
            {
                "type": "SCHWAB",
                "config": {
                    "app_key": config.get("app_key"),
                    "app_secret": secret,
                    "account_number": _schwab_number(account),
                },
            }
        )
    except ValidationError as exc:
        raise _validation_error(exc) from None


class PendingLinkService:
    def __init__(self, integrations: IntegrationService, secrets: SecretBox) -> None:
        self._integrations = integrations
        self._secrets = secrets

    async def list_pending(self, uow: UnitOfWork, actor: Actor) -> list[PendingLinkOut]:
        async with uow:
            return [_out(i) for i in await uow.pending_links.for_user(actor.user_id)]

    async def link(
        self, uow: UnitOfWork, actor: Actor, link_id: int, account_ids: list[int]
    ) -> list[IntegrationOut]:
        """Attach the item to the account(s) in one transaction and delete it. Several accounts
        only for a Schwab login (they share it, tokens included); an IB connection is one."""
        configuration = self._integrations.configuration
        # An IB item's gateway is resolved before the transaction that locks the accounts
        # (the body of an IB item does not depend on the account).
        async with uow:
            item = await uow.pending_links.owned(actor.user_id, link_id)
            if item is None:
                raise PendingLinkNotFound()
            if item.integration_type != "SCHWAB" and len(account_ids) > 1:
                raise InvalidField(
                    "an IB connection attaches to one account", field="account_ids"
                )
            ib_body = (
                build_integration_in(item, None, self._secrets)
                if item.integration_type == "IB"
                else None
            )
        endpoints = await configuration.resolve(ib_body) if ib_body else None
        async with uow:
            repo = uow.pending_links
            item = await repo.owned(actor.user_id, link_id, for_update=True)
            if item is None:
                raise PendingLinkNotFound()
            accounts = []
            for account_id in sorted(account_ids):  # lock order: by id, as everywhere
                account = await uow.accounts.owned(
                    actor.user_id, account_id, for_update=True
                )
                if account is None:
                    raise AccountNotFound()
                accounts.append(account)
            detail = {
                "pending_link_id": item.id,
                "legacy_table": item.legacy_table,
                "legacy_id": item.legacy_id,
            }
            out = []
            for account in sorted(accounts, key=lambda a: account_ids.index(a.id)):
                body = build_integration_in(item, account, self._secrets)
                if (
                    endpoints is not None
                    and isinstance(body.config, IBConfigIn)
                    and not endpoints.covers(body.config)
                ):
                    raise PendingLinkChanged()
                await configuration.check_configuration(
                    uow, actor, account, body, endpoints
                )
                change = configuration.apply_configuration(uow, actor, account, body)
                if item.integration_type == "SCHWAB":
                    self._keep_legacy_login(account, item.config or {})
                await audit(uow, actor, dataclasses.replace(change, detail=detail))
                out.append(integration_out(account))
            await repo.delete(item)
            await uow.commit()
            return out

    def _keep_legacy_login(self, account: Account, pending: dict[str, Any]) -> None:
        """A Schwab item keeps the legacy login's tokens and their expiries, when readable."""
        token_enc = pending.get("token_enc")
        access = refresh = None
        if token_enc:
            try:
                token = json.loads(self._secrets.decrypt(token_enc))
                access = datetime.fromtimestamp(token["token"]["expires_at"], UTC)
                refresh = (
                    datetime.fromtimestamp(token["creation_timestamp"], UTC)
                    + REFRESH_TTL
                )
            except (SecretDecryptionError, ValueError, KeyError, TypeError):
                access = refresh = None
        transition = lifecycle.legacy_login_adopted(
            integration_state(account),
            token_enc=token_enc,
            access_expires_at=access,
            refresh_expires_at=refresh,
        )
        store_state(account, transition.state)

    async def discard(self, uow: UnitOfWork, actor: Actor, link_id: int) -> None:
        async with uow:
            repo = uow.pending_links
            item = await repo.owned(actor.user_id, link_id, for_update=True)
            if item is None:
                raise PendingLinkNotFound()
            await audit(
                uow,
                actor,
                Change(
                    "pending_link.discard",
                    None,
                    detail={
                        "pending_link_id": item.id,
                        "type": item.integration_type,
                        "legacy_table": item.legacy_table,
                        "legacy_id": item.legacy_id,
                    },
                ),
            )
            await repo.delete(item)
            await uow.commit()
