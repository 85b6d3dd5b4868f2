"""Configuring an integration: set or change it, remove it, test the connection. Every change
connectors must learn of is written to the outbox in the same transaction, with an audit entry."""

from __future__ import annotations

from datetime import UTC, datetime

from brokerlink_shared.contracts.events import (
    IntegrationTestReply,
    IntegrationTestRequest,
)
from brokerlink_shared.crypto import SecretBox
from brokerlink_shared.messaging import EventPublisher, request_model
from brokerlink_shared.subjects import INTEGRATION_TEST, Broker, Topology
from faststream.nats import NatsBroker
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from account_api.actor import Actor
from account_api.audit.service import Change, audit
from account_api.config import Settings
from account_api.db import UnitOfWork
from account_api.integrations import lifecycle, rules
from account_api.integrations.reads import integration_out, owned_account
from account_api.integrations.repository import (
    IntegrationRepository,
    integration_state,
)
from account_api.integrations.schemas import (
    IBIntegrationIn,
    IntegrationIn,
    IntegrationOut,
    TestResultOut,
)
from account_api.tables import Account


class IntegrationConfiguration:
    def __init__(
        self,
        settings: Settings,
        secrets: SecretBox,
        publisher: EventPublisher,
        broker: NatsBroker,
        topology: Topology,
    ) -> None:
        self._settings = settings
        self._secrets = secrets
        self._publisher = publisher
        self._broker = broker
        self._topology = topology

    def apply_configuration(
        self, uow: UnitOfWork, actor: Actor, account: Account, body: IntegrationIn
    ) -> Change:
        """Change the account's integration in the open transaction; returns the change to
        audit (its `fields` empty when nothing changed, and then nothing was written)."""
        before_type, before = account.integration_type, account.integration_config
        action = "integration.update" if before_type else "integration.create"
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
        if changed:
            now = datetime.now(UTC)
            transition = lifecycle.configured(
                integration_state(account),
                body.type,
                stored,
                correlation_id=actor.request_id,
                now=now,
            )
            self._integrations(uow).save(account, transition)
            account.updated_at = now
        return Change(action, account.id, changed)

    def apply_removal(self, uow: UnitOfWork, actor: Actor, account: Account) -> Change:
        """Remove the integration in the open transaction and tell the connector."""
        now = datetime.now(UTC)
        transition = lifecycle.removed(
            integration_state(account), correlation_id=actor.request_id, now=now
        )
        self._integrations(uow).save(account, transition)
        account.updated_at = now
        return Change("integration.delete", account.id, ["type"])

    def _integrations(self, uow: UnitOfWork) -> IntegrationRepository:
        return IntegrationRepository(uow.session, self._publisher)

    async def configure(
        self, uow: UnitOfWork, actor: Actor, account_id: int, body: IntegrationIn
    ) -> IntegrationOut:
        async with uow:
            account = await owned_account(uow, actor, account_id, lock=True)
            change = self.apply_configuration(uow, actor, account, body)
            if change.fields:
                await audit(uow, actor, change)
                await uow.commit()
            return integration_out(account)

    async def remove(self, uow: UnitOfWork, actor: Actor, account_id: int) -> None:
        async with uow:
            account = await owned_account(uow, actor, account_id, lock=True)
            integration_state(account).require_configured()
            await audit(uow, actor, self.apply_removal(uow, actor, account))
            await uow.commit()

    async def test(
        self, uow: UnitOfWork, actor: Actor, account_id: int
    ) -> TestResultOut:
        async with uow:
            account = await owned_account(uow, actor, account_id)
            state = lifecycle.tested(integration_state(account)).state
            kind = Broker(state.require_configured())
            request = IntegrationTestRequest(
                broker=kind,
                account_id=account.id,
                user_id=actor.user_id,
                config=rules.bus_connection(kind.value, dict(state.config or {})),
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
            await audit(
                uow,
                actor,
                Change(
                    "integration.test", account_id, detail={"success": result.success}
                ),
            )
            await uow.commit()
        return result
