"""Configuring an integration: set or change it, remove it, test the connection. Every change
connectors must learn of is written to the outbox in the same transaction, with an audit entry."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from brokerlink_shared.contracts.events import (
    IntegrationTestReply,
    IntegrationTestRequest,
)
from brokerlink_shared.contracts.plugins import IBConfigIn, plugin_for
from brokerlink_shared.contracts.values import GATEWAY_OWNED_ELSEWHERE
from brokerlink_shared.crypto import SecretBox
from brokerlink_shared.messaging import request_model
from brokerlink_shared.subjects import INTEGRATION_TEST, Broker, Topology
from faststream.nats import NatsBroker
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from account_api.actor import Actor
from account_api.audit.service import Change, audit
from account_api.config import Settings
from account_api.gateways.service import (
    GatewayEndpoints,
    GatewayOwnedElsewhere,
    ResolvedEndpoints,
)
from account_api.integrations import lifecycle, rules
from account_api.integrations.reads import integration_out, owned_account
from account_api.integrations.refreshes import RefreshService
from account_api.integrations.repository import integration_state
from account_api.integrations.schemas import (
    IntegrationIn,
    IntegrationOut,
    TestResultOut,
)
from account_api.limits import ensure_integration_quota
from account_api.tables import Account
from account_api.throttling import rate_limit
from account_api.unit_of_work import UnitOfWork


class IntegrationConfiguration:
    def __init__(
        self,
        settings: Settings,
        secrets: SecretBox,
        broker: NatsBroker,
        topology: Topology,
        refreshes: RefreshService,
    ) -> None:
        self._settings = settings
        self._secrets = secrets
        self._broker = broker
        self._topology = topology
        self._refreshes = refreshes
        self._gateways = GatewayEndpoints(settings.ib_reach)

    async def resolve(self, body: IntegrationIn) -> ResolvedEndpoints | None:
        """Before the transaction: an IB config's gateway hosts resolved and held to the
        allowed networks (None for any other broker). Resolving a name can take seconds."""
        if isinstance(body.config, IBConfigIn):
            return await self._gateways.resolve(body.config)
        return None

    async def check_configuration(
        self,
        uow: UnitOfWork,
        actor: Actor,
        account: Account,
        body: IntegrationIn,
        endpoints: ResolvedEndpoints | None,
    ) -> None:
        """Before `apply_configuration`: a new integration must fit the user's quota, and an
        IB config's gateways (`endpoints`: `resolve(body)`) must be free or the actor's own
        (the free ones become the actor's)."""
        if account.integration_type is None:
            await ensure_integration_quota(
                uow.quotas, actor.user_id, self._settings.max_integrations_per_user
            )
        if isinstance(body.config, IBConfigIn):
            if endpoints is None:
                raise RuntimeError("an IB config's endpoints are resolved first")
            await self._gateways.claim(
                uow.gateway_endpoints, actor.user_id, body.config, endpoints
            )

    def apply_configuration(
        self, uow: UnitOfWork, actor: Actor, account: Account, body: IntegrationIn
    ) -> Change:
        """Change the account's integration in the open transaction; returns the change to
        audit (its `fields` empty when nothing changed, and then nothing was written)."""
        before_type, before = account.integration_type, account.integration_config
        action = "integration.update" if before_type else "integration.create"
        stored = self._merged(account, body)
        changed = rules.changed_fields(
            before if before_type == body.type else None, stored
        )
        if before_type != body.type:
            changed = ["type", *changed]
        if changed:
            now = datetime.now(UTC)
            transition = lifecycle.configured(
                integration_state(account),
                body.type,
                stored,
                correlation_id=actor.request_id,
                now=now,
            )
            uow.integrations.save(account, transition)
            account.updated_at = now
        return Change(action, account.id, changed)

    def _merged(self, account: Account, body: IntegrationIn) -> dict[str, Any]:
        """The stored form `body` would give this account, by its type's declaration (omitted
        secrets and kept-when-absent fields such as IB's backups stay as stored)."""
        same = (
            account.integration_config
            if account.integration_type == body.type
            else None
        )
        return rules.stored_config(body.type, body.config, same, self._secrets)

    def apply_removal(self, uow: UnitOfWork, actor: Actor, account: Account) -> Change:
        """Remove the integration in the open transaction and tell the connector."""
        now = datetime.now(UTC)
        transition = lifecycle.removed(
            integration_state(account), correlation_id=actor.request_id, now=now
        )
        uow.integrations.save(account, transition)
        account.updated_at = now
        return Change("integration.delete", account.id, ["type"])

    async def configure(
        self, uow: UnitOfWork, actor: Actor, account_id: int, body: IntegrationIn
    ) -> IntegrationOut:
        endpoints = await self.resolve(body)
        async with uow:
            account = await owned_account(uow, actor, account_id, lock=True)
            await self.check_configuration(uow, actor, account, body, endpoints)
            change = self.apply_configuration(uow, actor, account, body)
            refresh_id = None
            if change.fields:
                await audit(uow, actor, change)
                refresh_id = self.first_refresh(uow, actor, account)
                await uow.commit()
            return integration_out(account, refresh_id)

    def first_refresh(
        self, uow: UnitOfWork, actor: Actor, account: Account
    ) -> uuid.UUID | None:
        """After a saved change, queue the refresh that shows the first balance without anyone
        asking — when one could succeed now (IB; Schwab once signed in)."""
        if not rules.can_refresh(account.integration_type, account.integration_config):
            return None
        return self._refreshes.stage(
            uow, account, correlation=actor.request_id, job_id=None
        )

    async def remove(self, uow: UnitOfWork, actor: Actor, account_id: int) -> None:
        async with uow:
            account = await owned_account(uow, actor, account_id, lock=True)
            integration_state(account).require_configured()
            await audit(uow, actor, self.apply_removal(uow, actor, account))
            await uow.commit()

    async def test(
        self,
        uow: UnitOfWork,
        actor: Actor,
        account_id: int,
        body: IntegrationIn | None = None,
    ) -> TestResultOut:
        """Test the saved settings, or (a dry run) `body` as it would be saved; stores nothing."""
        endpoints = await self.resolve(body) if body is not None else None
        async with uow:
            account = await owned_account(uow, actor, account_id)
            if body is not None:
                kind = Broker(body.type)
                if isinstance(body.config, IBConfigIn) and endpoints is not None:
                    # the same reach and ownership rules as a save, recording nothing
                    await self._gateways.check(
                        uow.gateway_endpoints, actor.user_id, body.config, endpoints
                    )
                stored = self._merged(account, body)
            else:
                state = lifecycle.tested(integration_state(account)).state
                kind = Broker(state.require_configured())
                stored = dict(state.config or {})
            await rate_limit(
                uow.throttle,
                f"test:acct:{account.id}",
                self._settings.tests_per_account_per_minute,
                "connection tests of an account",
            )
            await uow.commit()
            timeout_s = max(
                self._settings.integration_test_timeout_s,
                plugin_for(kind).test_timeout_s or 0.0,
            )
            request = IntegrationTestRequest(
                broker=kind,
                account_id=account.id,
                user_id=actor.user_id,
                config=rules.bus_connection(kind.value, stored),
                timeout_s=timeout_s,
            )
        try:
            reply = await request_model(
                self._broker,
                self._topology.subject(INTEGRATION_TEST, kind),
                request,
                IntegrationTestReply,
                timeout_s=timeout_s + 1,
            )
            result = TestResultOut(
                success=reply.success, message=reply.message, code=reply.code
            )
        except (NoRespondersError, NatsTimeout, TimeoutError):
            result = TestResultOut(
                success=False,
                message=f"no {kind.value} connector answered; is it running?",
                code="no_connector",
            )
        async with uow:
            await audit(
                uow,
                actor,
                Change(
                    "integration.test",
                    account_id,
                    detail={"success": result.success, "unsaved": body is not None},
                ),
            )
            await uow.commit()
        if result.code == GATEWAY_OWNED_ELSEWHERE:
            # the connector found the gateway's accounts claimed by another user (reached under
            # an address account-api cannot tell is the same gateway): the same 409 as a save
            raise GatewayOwnedElsewhere("config.host")
        return result
