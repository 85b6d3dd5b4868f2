"""Integration use cases: configure, remove, test, refresh (single, bulk, scheduled), health,
snapshots and the Schwab OAuth flow. Every change that connectors must learn of is written to
the outbox in the same transaction as the change, with an audit entry."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import secrets as pysecrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from brokerlink_shared.contracts.events import (
    IntegrationConfigured,
    IntegrationRemoved,
    IntegrationTestReply,
    IntegrationTestRequest,
    RefreshRequested,
    SchwabOAuthExchangeReply,
    SchwabOAuthExchangeRequest,
)
from brokerlink_shared.contracts.values import IntegrationStatus
from brokerlink_shared.crypto import SecretBox
from brokerlink_shared.messaging import EventPublisher, request_model
from brokerlink_shared.subjects import (
    INTEGRATION_TEST,
    SCHWAB_OAUTH_EXCHANGE,
    Broker,
    Topology,
)
from faststream.nats import NatsBroker
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from account_api.accounts.repository import AccountRepository
from account_api.audit.repository import AuditRepository
from account_api.config import Settings
from account_api.db import UnitOfWork
from account_api.deps import Actor
from account_api.errors import (
    AccountNotFound,
    Conflict,
    IntegrationNotConfigured,
    InvalidField,
    NotFound,
    UpstreamFailed,
)
from account_api.integrations import rules
from account_api.integrations.repository import (
    OAuthStateRepository,
    RefreshRepository,
    SnapshotRepository,
    accounts_sharing_login,
    of_login,
)
from account_api.integrations.schemas import (
    CashOut,
    HealthRowOut,
    IBIntegrationIn,
    IntegrationIn,
    IntegrationOut,
    OAuthStartOut,
    PositionOut,
    RefreshJobOut,
    RefreshOut,
    TestResultOut,
)
from account_api.integrations.waiter import RefreshWaiter
from account_api.outbox.repository import OutboxRepository
from account_api.tables import Account

log = logging.getLogger(__name__)
CALLBACK_PATH = "/api/integrations/schwab/callback"


def integration_out(account: Account) -> IntegrationOut:
    return IntegrationOut(
        type=account.integration_type,  # type: ignore[arg-type]
        config=rules.public_config(
            account.integration_type, account.integration_config
        ),
        status=account.integration_status,
        last_error=account.last_error,
        last_error_code=account.last_error_code,
        last_refresh_at=account.last_refresh_at,
        last_success_at=account.last_success_at,
        last_connected_at=account.last_connected_at,
        token_access_expires_at=account.token_access_expires_at,
        token_refresh_expires_at=account.token_refresh_expires_at,
    )


class IntegrationService:
    def __init__(
        self,
        settings: Settings,
        secrets: SecretBox,
        publisher: EventPublisher,
        broker: NatsBroker,
        topology: Topology,
        waiter: RefreshWaiter,
    ) -> None:
        self._settings = settings
        self._secrets = secrets
        self._publisher = publisher
        self._broker = broker
        self._topology = topology
        self._waiter = waiter

    # ---- configuration -------------------------------------------------------------------

    async def _owned(
        self, uow: UnitOfWork, actor: Actor, account_id: int, *, lock: bool = False
    ) -> Account:
        account = await AccountRepository(uow.session).owned(
            actor.user_id, account_id, for_update=lock
        )
        if account is None:
            raise AccountNotFound()
        return account

    def apply_configuration(
        self, uow: UnitOfWork, actor: Actor, account: Account, body: IntegrationIn
    ) -> list[str]:
        """Change the account's integration in the open transaction; returns changed field names."""
        before_type, before = account.integration_type, account.integration_config
        if isinstance(body, IBIntegrationIn):
            stored = rules.merge_ib(body.config)
        else:
            previous = before if before_type == "SCHWAB" else None
            stored = rules.merge_schwab(body.config, previous, self._secrets)
        changed = rules.changed_fields(
            before if before_type == body.type else None, stored
        )
        if before_type != body.type:
            changed = ["type", *changed]
        if not changed:
            return []
        if before_type == "SCHWAB" and (
            body.type != "SCHWAB"
            or (before or {}).get("app_key") != stored.get("app_key")
        ):
            account.token_access_expires_at = account.token_refresh_expires_at = None
        account.integration_type = body.type
        account.integration_config = stored
        account.integration_version += 1
        account.integration_status = IntegrationStatus.PENDING.value
        account.integration_status_at = datetime.now(UTC)
        account.last_error = account.last_error_code = None
        account.updated_at = datetime.now(UTC)
        self._outbox(uow).add(
            IntegrationConfigured(
                user_id=actor.user_id,
                account_id=account.id,
                correlation_id=actor.request_id,
                payload={
                    "broker": body.type,
                    "config": rules.bus_connection(body.type, stored),
                    "version": account.integration_version,
                },
            )
        )
        return changed

    def apply_removal(self, uow: UnitOfWork, actor: Actor, account: Account) -> None:
        """Remove the integration in the open transaction and tell the connector."""
        kind = account.integration_type
        assert kind is not None
        account.integration_version += 1
        self._outbox(uow).add(
            IntegrationRemoved(
                user_id=actor.user_id,
                account_id=account.id,
                correlation_id=actor.request_id,
                payload={
                    "broker": kind,
                    "config": rules.bus_connection(
                        kind, account.integration_config or {}
                    ),
                    "version": account.integration_version,
                },
            )
        )
        account.integration_type = None
        account.integration_config = None
        account.integration_status = IntegrationStatus.NOT_CONFIGURED.value
        account.integration_status_at = datetime.now(UTC)
        account.last_error = account.last_error_code = None
        account.token_access_expires_at = account.token_refresh_expires_at = None
        account.updated_at = datetime.now(UTC)

    def _outbox(self, uow: UnitOfWork) -> OutboxRepository:
        return OutboxRepository(uow.session, self._publisher)

    async def configure(
        self, uow: UnitOfWork, actor: Actor, account_id: int, body: IntegrationIn
    ) -> IntegrationOut:
        async with uow:
            account = await self._owned(uow, actor, account_id, lock=True)
            action = (
                "integration.update"
                if account.integration_type
                else "integration.create"
            )
            changed = self.apply_configuration(uow, actor, account, body)
            if changed:
                await AuditRepository(uow.session).record(
                    actor=str(actor.user_id),
                    user_id=actor.user_id,
                    account_id=account.id,
                    action=action,
                    changed_fields=changed,
                    request_id=actor.request_id,
                )
                await uow.commit()
            return integration_out(account)

    async def get(
        self, uow: UnitOfWork, actor: Actor, account_id: int
    ) -> IntegrationOut:
        async with uow:
            return integration_out(await self._owned(uow, actor, account_id))

    async def remove(self, uow: UnitOfWork, actor: Actor, account_id: int) -> None:
        async with uow:
            account = await self._owned(uow, actor, account_id, lock=True)
            if account.integration_type is None:
                raise IntegrationNotConfigured()
            self.apply_removal(uow, actor, account)
            await AuditRepository(uow.session).record(
                actor=str(actor.user_id),
                user_id=actor.user_id,
                account_id=account.id,
                action="integration.delete",
                changed_fields=["type"],
                request_id=actor.request_id,
            )
            await uow.commit()

    # ---- test ----------------------------------------------------------------------------

    async def test(
        self, uow: UnitOfWork, actor: Actor, account_id: int
    ) -> TestResultOut:
        async with uow:
            account = await self._owned(uow, actor, account_id)
            if account.integration_type is None:
                raise IntegrationNotConfigured()
            kind = Broker(account.integration_type)
            request = IntegrationTestRequest(
                broker=kind,
                account_id=account.id,
                user_id=actor.user_id,
                config=rules.bus_connection(
                    kind.value, account.integration_config or {}
                ),
                timeout_s=self._settings.integration_test_timeout_s,
            )
        try:
            reply = await request_model(
                self._broker,
                self._topology.subject(INTEGRATION_TEST, kind),
                request,
                IntegrationTestReply,
                timeout_s=self._settings.integration_test_timeout_s + 1,
            )
            result = TestResultOut(success=reply.success, message=reply.message)
        except (NoRespondersError, NatsTimeout, TimeoutError):
            result = TestResultOut(
                success=False,
                message=f"no {kind.value} connector answered; is it running?",
            )
        async with uow:
            await AuditRepository(uow.session).record(
                actor=str(actor.user_id),
                user_id=actor.user_id,
                account_id=account_id,
                action="integration.test",
                request_id=actor.request_id,
                detail={"success": result.success},
            )
            await uow.commit()
        return result

    # ---- refresh -------------------------------------------------------------------------

    def _stage_refresh(
        self,
        uow: UnitOfWork,
        account: Account,
        *,
        user_id: int,
        correlation: str | None,
        job_id: uuid.UUID | None,
        refresh_id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        refresh_id = refresh_id or uuid.uuid4()
        kind = account.integration_type
        assert kind is not None
        RefreshRepository(uow.session).add(
            refresh_id, account.id, account.integration_version, job_id
        )
        account.last_refresh_at = datetime.now(UTC)
        self._outbox(uow).add(
            RefreshRequested(
                user_id=user_id,
                account_id=account.id,
                correlation_id=correlation,
                payload={
                    "broker": kind,
                    "refresh_id": refresh_id,
                    "job_id": job_id,
                    "config": rules.bus_connection(
                        kind, account.integration_config or {}
                    ),
                    "version": account.integration_version,
                },
            )
        )
        return refresh_id

    async def refresh(
        self, uow: UnitOfWork, actor: Actor, account_id: int, wait_s: float
    ) -> RefreshOut:
        refresh_id = uuid.uuid4()
        async with self._waiter.watch(refresh_id) as done:
            async with uow:
                account = await self._owned(uow, actor, account_id, lock=True)
                if account.integration_type is None:
                    raise IntegrationNotConfigured()
                self._stage_refresh(
                    uow,
                    account,
                    user_id=actor.user_id,
                    correlation=actor.request_id,
                    job_id=None,
                    refresh_id=refresh_id,
                )
                await AuditRepository(uow.session).record(
                    actor=str(actor.user_id),
                    user_id=actor.user_id,
                    account_id=account.id,
                    action="integration.refresh",
                    request_id=actor.request_id,
                    detail={"refresh_id": str(refresh_id)},
                )
                await uow.commit()
            if wait_s > 0:
                await self._wait_for(uow, account_id, refresh_id, done, wait_s)
        return await self.refresh_status(uow, actor, account_id, refresh_id)

    async def _wait_for(
        self,
        uow: UnitOfWork,
        account_id: int,
        refresh_id: uuid.UUID,
        done: asyncio.Event,
        wait_s: float,
    ) -> None:
        deadline = asyncio.get_running_loop().time() + wait_s
        while (remaining := deadline - asyncio.get_running_loop().time()) > 0:
            # Re-check now and then in case a notification was lost with a connection.
            timeout = (
                remaining if self._waiter.listening.is_set() else min(remaining, 1.0)
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout)
            done.clear()
            async with uow:
                refresh = await RefreshRepository(uow.session).get_for_account(
                    refresh_id, account_id
                )
                if refresh is not None and refresh.status != "pending":
                    return

    async def refresh_status(
        self, uow: UnitOfWork, actor: Actor, account_id: int, refresh_id: uuid.UUID
    ) -> RefreshOut:
        async with uow:
            await self._owned(uow, actor, account_id)
            refresh = await RefreshRepository(uow.session).get_for_account(
                refresh_id, account_id
            )
            if refresh is None:
                raise NotFound("refresh not found")
            if refresh.status == "failed":
                raise UpstreamFailed(refresh.message or "refresh failed")
            return RefreshOut(
                refresh_id=refresh.id,
                status=refresh.status,  # type: ignore[arg-type]
                balance=refresh.balance,
                updated_at=refresh.completed_at,
                message=refresh.message,
            )

    async def refresh_all(
        self, uow: UnitOfWork, actor: Actor | None, trigger: str = "user"
    ) -> RefreshJobOut:
        """Refresh every integrated account of the actor (or of everyone, for the scheduler)."""
        job_id = uuid.uuid4()
        async with uow:
            # Locked, so a concurrent change of an integration cannot slip between our read of
            # its config and the refresh command we queue with it.
            accounts = await AccountRepository(uow.session).integrated(
                actor.user_id if actor else None, lock=True
            )
            RefreshRepository(uow.session).add_job(
                job_id, actor.user_id if actor else None, len(accounts), trigger
            )
            for account in accounts:
                self._stage_refresh(
                    uow,
                    account,
                    user_id=account.user_id,
                    correlation=actor.request_id if actor else f"scheduled-{job_id}",
                    job_id=job_id,
                )
            if actor:
                await AuditRepository(uow.session).record(
                    actor=str(actor.user_id),
                    user_id=actor.user_id,
                    account_id=None,
                    action="integration.refresh_all",
                    request_id=actor.request_id,
                    detail={"job_id": str(job_id), "accounts": len(accounts)},
                )
            await uow.commit()
            return RefreshJobOut(
                job_id=job_id,
                total=len(accounts),
                done=0,
                failed=0,
                pending=len(accounts),
                created_at=datetime.now(UTC),
            )

    async def job(
        self, uow: UnitOfWork, actor: Actor, job_id: uuid.UUID
    ) -> RefreshJobOut:
        async with uow:
            repo = RefreshRepository(uow.session)
            job = await repo.job(job_id, actor.user_id)
            if job is None:
                raise NotFound("refresh job not found")
            counts = await repo.job_counts(job_id)
            done, failed = counts.get("succeeded", 0), counts.get("failed", 0)
            return RefreshJobOut(
                job_id=job.id,
                total=job.total,
                done=done,
                failed=failed,
                pending=job.total - done - failed,
                created_at=job.created_at,
            )

    # ---- read models ---------------------------------------------------------------------

    async def health(self, uow: UnitOfWork, actor: Actor) -> list[HealthRowOut]:
        async with uow:
            accounts = await AccountRepository(uow.session).integrated(actor.user_id)
            return [
                HealthRowOut(
                    account_id=a.id,
                    account_name=a.name,
                    type=a.integration_type or "",
                    status=a.integration_status,
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
            await self._owned(uow, actor, account_id)
            rows = await SnapshotRepository(uow.session).positions(account_id)
            return [PositionOut.model_validate(r, from_attributes=True) for r in rows]

    async def cash(
        self, uow: UnitOfWork, actor: Actor, account_id: int
    ) -> list[CashOut]:
        async with uow:
            await self._owned(uow, actor, account_id)
            rows = await SnapshotRepository(uow.session).cash(account_id)
            return [CashOut.model_validate(r, from_attributes=True) for r in rows]

    # ---- Schwab OAuth --------------------------------------------------------------------

    def _sign(self, nonce: str) -> str:
        key = self._settings.jwt_secret.get_secret_value().encode()
        mac = hmac.new(key, f"oauth-state:{nonce}".encode(), hashlib.sha256).digest()
        return f"{nonce}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"

    def _verify(self, state: str) -> str | None:
        nonce, _, _sig = state.partition(".")
        # Bytes: compare_digest refuses non-ASCII str, and the state comes from anyone's browser.
        if not nonce or not hmac.compare_digest(
            self._sign(nonce).encode(), state.encode()
        ):
            return None
        return nonce

    async def oauth_start(
        self, uow: UnitOfWork, actor: Actor, account_id: int
    ) -> OAuthStartOut:
        async with uow:
            account = await self._owned(uow, actor, account_id)
            if account.integration_type != "SCHWAB":
                raise Conflict(
                    "OAuth applies to Schwab integrations; configure one first",
                    field="type",
                )
            nonce = pysecrets.token_urlsafe(24)
            expires = datetime.now(UTC) + timedelta(
                seconds=self._settings.oauth_state_ttl_s
            )
            OAuthStateRepository(uow.session).add(
                nonce, actor.user_id, account.id, expires
            )
            await AuditRepository(uow.session).record(
                actor=str(actor.user_id),
                user_id=actor.user_id,
                account_id=account.id,
                action="integration.reauth_start",
                request_id=actor.request_id,
            )
            await uow.commit()
            query = urlencode(
                {
                    "response_type": "code",
                    "client_id": (account.integration_config or {})["app_key"],
                    "redirect_uri": self.callback_url,
                    "state": self._sign(nonce),
                }
            )
            return OAuthStartOut(
                authorize_url=f"{self._settings.schwab_authorize_url}?{query}",
                expires_at=expires,
            )

    @property
    def callback_url(self) -> str:
        return self._settings.public_url.rstrip("/") + CALLBACK_PATH

    async def oauth_callback(
        self, uow: UnitOfWork, code: str, state: str, request_id: str
    ) -> tuple[int, bool, str]:
        """Finish the OAuth dance; returns (account id, success, message)."""
        nonce = self._verify(state)
        if nonce is None:
            raise InvalidField("invalid OAuth state", field="state")
        async with uow:
            row = await OAuthStateRepository(uow.session).consume(
                nonce, datetime.now(UTC)
            )
            if row is None:
                raise InvalidField("OAuth state expired or already used", field="state")
            user_id, account_id = row.user_id, row.account_id
            account = await AccountRepository(uow.session).owned(user_id, account_id)
            if account is None or account.integration_type != "SCHWAB":
                raise AccountNotFound()
            config = dict(account.integration_config or {})
            await uow.commit()  # the state is spent whatever happens next
        request = SchwabOAuthExchangeRequest(
            user_id=user_id,
            account_id=account_id,
            app_key=config["app_key"],
            app_secret_enc=config["app_secret_enc"],
            code_enc=self._secrets.encrypt(code),
            redirect_uri=self.callback_url,
            account_number=config.get("account_number"),
        )
        try:
            reply = await request_model(
                self._broker,
                self._topology.subject(SCHWAB_OAUTH_EXCHANGE),
                request,
                SchwabOAuthExchangeReply,
                timeout_s=self._settings.integration_test_timeout_s + 5,
            )
        except (NoRespondersError, NatsTimeout, TimeoutError):
            reply = SchwabOAuthExchangeReply(
                success=False, message="the Schwab connector did not answer"
            )
        actor = Actor(user_id=user_id, request_id=request_id)
        async with uow:
            siblings = await accounts_sharing_login(
                uow.session, user_id, config["app_key"]
            )
            account = await self._owned(uow, actor, account_id, lock=True)
            audit = AuditRepository(uow.session)
            current = account.integration_config or {}
            if (
                account.integration_type != "SCHWAB"
                or current.get("app_key") != config["app_key"]
            ):
                # The integration changed while the user was at Schwab: these tokens are not its.
                await audit.record(
                    actor=str(user_id),
                    user_id=user_id,
                    account_id=account_id,
                    action="integration.reauth",
                    request_id=request_id,
                    detail={"success": False, "reason": "integration changed"},
                )
                await uow.commit()
                return (
                    account_id,
                    False,
                    "the integration changed during sign-in; start again",
                )
            if not reply.success or not reply.token_enc:
                account.integration_status = IntegrationStatus.REAUTH_REQUIRED.value
                account.last_error = reply.message
                await audit.record(
                    actor=str(user_id),
                    user_id=user_id,
                    account_id=account_id,
                    action="integration.reauth",
                    request_id=request_id,
                    detail={"success": False},
                )
                await uow.commit()
                return account_id, False, reply.message
            # Only this login's accounts: other logins on the same app key keep their own.
            for sibling in {
                *of_login(siblings, reply.login, reply.visible_accounts),
                account,
            }:
                self._store_tokens(
                    sibling,
                    reply.token_enc,
                    reply.access_expires_at,
                    reply.refresh_expires_at,
                    reply.login,
                )
            stored = dict(account.integration_config or {})
            if reply.account_hash:
                stored["account_hash"] = reply.account_hash
                stored.pop("unverified", None)
            account.integration_config = stored
            account.integration_version += 1
            account.integration_status = IntegrationStatus.CONNECTED.value
            account.integration_status_at = datetime.now(UTC)
            account.last_connected_at = datetime.now(UTC)
            account.last_error = account.last_error_code = None
            self._outbox(uow).add(
                IntegrationConfigured(
                    user_id=user_id,
                    account_id=account_id,
                    correlation_id=request_id,
                    payload={
                        "broker": "SCHWAB",
                        "config": rules.bus_connection("SCHWAB", stored),
                        "version": account.integration_version,
                    },
                )
            )
            await audit.record(
                actor=str(user_id),
                user_id=user_id,
                account_id=account_id,
                action="integration.reauth",
                changed_fields=["tokens"],
                request_id=request_id,
                detail={"success": True},
            )
            await uow.commit()
            return account_id, True, reply.message

    @staticmethod
    def _store_tokens(
        account: Account,
        token_enc: str,
        access_exp: datetime | None,
        refresh_exp: datetime | None,
        login: str | None,
    ) -> None:
        config: dict[str, Any] = dict(account.integration_config or {})
        config["token_enc"] = token_enc
        if login:
            config["login"] = login
        account.integration_config = config
        account.token_access_expires_at = access_exp
        account.token_refresh_expires_at = refresh_exp
